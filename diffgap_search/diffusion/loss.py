"""The training loss of one batch (the loop that uses it is `train.TrainingRun`).

    denoising_loss(run, x0, cond, direction, rows)    draws t, noise, dropout; noises x0; scores the network
    step_loss(scheduler, pred, x0, x_t, noise, t, keep, weight, temperature, groups)
                                                       MSE to the prediction target + weight x InfoNCE
"""

from __future__ import annotations

import torch

from diffgap_search.diffusion.schedule import prediction_target


def denoising_loss(run, x0: torch.Tensor, cond: torch.Tensor, direction: int,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
    """The translator's loss of one batch: draw t, noise and condition dropout from the run's generator, noise
    x0 to x_t, and score the network's output (`step_loss`)."""
    cfg, g, m = run.config, run.generator, len(x0)
    t = torch.randint(0, cfg.schedule.train_timesteps, (m,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    keep = torch.rand(m, generator=g) >= cfg.cond_dropout
    t, noise, keep = t.to(run.device), noise.to(run.device), keep.to(run.device)
    x_t = run.scheduler.add_noise(x0, noise, t)
    pred = run.model(x_t, t, cond, direction, keep=keep)
    groups = run.groups[direction][rows] if rows is not None else None
    return step_loss(run.scheduler, pred, x0, x_t, noise, t, keep, cfg.contrastive_weight, cfg.contrastive_temperature, groups)


def step_loss(scheduler, pred, x0, x_t, noise, t, keep, weight: float = 0.0, temperature: float = 0.1,
              groups: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of one batch: MSE to the prediction target, plus `weight` x InfoNCE.

    The contrastive term scores the network's estimate of the clean target x0_hat (the output
    itself for x0 prediction; derived from it for epsilon / v) against every x0 of the batch by
    cosine / temperature, and takes the cross-entropy of the row's own x0, over the rows that kept
    their condition (a dropped condition cannot tell its target apart). Why: the MSE optimum is
    the conditional mean E[x0 | condition], which on clustered data shrinks towards cluster
    centres and retrieves worse as it fits better (translator_epochs.md); the contrastive term
    keeps the estimate discriminative among the batch's targets. `groups`: see `info_nce`.
    """
    loss = torch.nn.functional.mse_loss(pred, prediction_target(scheduler, x0, noise, t))
    if weight > 0:
        loss = loss + weight * info_nce(clean_estimate(scheduler, pred, x_t, t), x0, keep, temperature, groups)
    return loss


def info_nce(x0_hat: torch.Tensor, x0: torch.Tensor, keep: torch.Tensor, temperature: float,
             groups: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the kept rows i of -log softmax_j(cos(x0_hat_i, x0_j) / temperature)[i] (0 if none is kept).

    With `groups` (one per row), a target j != i of row i's own group is the same clip (another
    caption of it drew the same audio into the batch), not a negative: it is left out of row i's softmax.
    """
    if not bool(keep.any()):
        return x0.new_zeros(())
    logits = torch.nn.functional.normalize(x0_hat[keep], dim=-1) @ torch.nn.functional.normalize(x0, dim=-1).T / temperature
    own = torch.arange(len(x0), device=x0.device)[keep]
    if groups is not None:
        same = groups[None, :] == groups[keep][:, None]
        same[torch.arange(len(own), device=x0.device), own] = False
        logits = logits.masked_fill(same, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, own)


def clean_estimate(scheduler, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0_hat from the network output, whatever the prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return pred
    abar = scheduler.alphas_cumprod.to(pred.device)[t][:, None]
    if kind == "epsilon":
        return (x_t - (1 - abar).sqrt() * pred) / abar.sqrt()
    return abar.sqrt() * x_t - (1 - abar).sqrt() * pred  # v prediction
