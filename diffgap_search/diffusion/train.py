"""Bidirectional split training (Algorithm 1 of the DiffGAP paper).

One network, minibatches of pairs. Iterations [0, m) train direction 0 (to-audio:
denoise the audio vector a conditioned on the query-side vector b), [m, 2m)
direction 1 (from-audio), and so on: the direction flips at every multiple of the
interval m and nowhere else (`direction_at`). `bidirectional=False` trains only
to-audio (the paper's "no BST" ablation).

Each step: t ~ U{0..T-1}, noise ~ N(0, I), x_t = DDPMScheduler.add_noise(x0, noise, t),
the condition replaced by the learned null condition with probability
`cond_dropout` (for classifier-free guidance), loss = MSE between the network output
and the prediction target (epsilon, x0 or v), plus `contrastive_weight` x an InfoNCE
term on the clean-target estimate (`step_loss`; 0 gives the paper's loss). Adam,
gradient clipping, EMA weights for inference.

Reproducible: the weights are initialized from `seed`, each epoch's order from
(seed, epoch), and every draw of t / noise / dropout from one generator whose
state is saved in the training state, so `resume` continues bit-for-bit the run
that was interrupted (on CPU).

Output folder:
    model.safetensors, config.json   the translator (rewritten at every validation that beats the kept one)
    training_state.safetensors       weights, EMA, Adam moments, RNG state, step (for --resume)
    log.jsonl, log.csv               one row per validation (every epoch's end and every `val_every`
                                     steps): losses, validation R@1, time

Keep-best: the saved translator is the validated step of best translated-query R@1 (S = val_steps,
K = val_samples, w = val_guidance) among those after the first direction flip.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffgap_search.diffusion.network import DIRECTIONS, Denoiser, NetworkConfig, check_network, count_parameters
from diffgap_search.diffusion.normalize import SpaceNorm
from diffgap_search.diffusion.schedule import ScheduleConfig, check_schedule, prediction_target, training_scheduler
from diffgap_search.diffusion.translator import Space, Translator, TranslatorConfig, save_checkpoint
from diffgap_search.errors import DiffgapError
from diffgap_search.pairs import Pairs, read_pairs, split_train_val

STATE = "training_state.safetensors"


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-4
    interval: int = 5000  # m: the direction flips at every multiple of m iterations
    bidirectional: bool = True
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    checkpoint_every: int = 1000  # steps between training-state saves (and at every epoch end)
    seed: int = 0
    val_queries: int = 1000  # validation R@1 is measured on at most this many queries
    val_steps: int = 5
    # validation R@1 translates with K samples and guidance w, as retrieval does (K = 1, w = 1 ranks
    # steps by a translation nobody uses: on xmodel it stays flat while K = 4, w = 4 improves)
    val_samples: int = 4
    val_guidance: float = 4.0
    # steps between validations (each one a candidate for keep-best), besides every epoch's end;
    # 0 = at epoch ends only. Retrieval can peak within an epoch on large pair sets.
    val_every: int = 500
    max_steps: int | None = None  # stop after this many steps in total (for tests and quick runs)
    keep_best: bool = True  # the saved translator is the validated step with the best validation R@1 (not the last)
    # weight of the contrastive (InfoNCE) term on the clean-target estimate (0 = the paper's pure
    # denoising loss); see `step_loss` and benchmarks/results/translator_contrastive.md
    contrastive_weight: float = 0.3
    contrastive_temperature: float = 0.1
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "recipe") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"description"})
        if unknown:
            raise DiffgapError(f"{source}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        d = {k: v for k, v in d.items() if k in known}
        try:
            if "network" in d:
                if not isinstance(d["network"], dict):
                    raise TypeError(f"network = {d['network']!r} is not an object")
                d["network"] = NetworkConfig(**{k: v for k, v in d["network"].items() if k not in ("dim_a", "dim_b")})
            if "schedule" in d:
                if not isinstance(d["schedule"], dict):
                    raise TypeError(f"schedule = {d['schedule']!r} is not an object")
                d["schedule"] = ScheduleConfig(**d["schedule"])
            config = cls(**d)
        except TypeError as exc:
            raise DiffgapError(f"{source}: {exc}") from None
        config.validate(source)
        return config

    def validate(self, source: str = "training settings") -> None:
        """Raise DiffgapError naming the first setting of the wrong type or range."""
        def number(name, kind=(int,), lo=None, hi=None, lo_open=False, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DiffgapError(f"{source}: {name} = {value!r} is not a {'whole number' if kind == (int,) else 'number'}")
            if lo is not None and (value <= lo if lo_open else value < lo):
                raise DiffgapError(f"{source}: {name} = {value!r} must be {'>' if lo_open else '>='} {lo}")
            if hi is not None and value >= hi:
                raise DiffgapError(f"{source}: {name} = {value!r} must be < {hi}")

        real = (int, float)
        number("epochs", lo=1)
        number("batch_size", lo=1)
        number("lr", real, lo=0, lo_open=True)
        number("interval", lo=1)
        number("cond_dropout", real, lo=0, hi=1)
        number("ema_decay", real, lo=0, hi=1)
        number("grad_clip", real, lo=0)
        number("val_fraction", real, lo=0, hi=1)
        number("checkpoint_every", lo=1)
        number("seed", lo=0)
        number("val_queries", lo=1)
        number("val_steps", lo=1)
        number("val_samples", lo=1)
        number("val_guidance", real)
        number("val_every", lo=0)
        number("max_steps", lo=1, optional=True)
        number("contrastive_weight", real, lo=0)
        number("contrastive_temperature", real, lo=0, lo_open=True)
        if not isinstance(self.keep_best, bool):
            raise DiffgapError(f"{source}: keep_best = {self.keep_best!r} is not true or false")
        if not isinstance(self.bidirectional, bool):
            raise DiffgapError(f"{source}: bidirectional = {self.bidirectional!r} is not true or false")
        try:
            check_network(replace(self.network, dim_a=1, dim_b=1))
            check_schedule(self.schedule)
        except ValueError as exc:
            raise DiffgapError(f"{source}: {exc}") from None
        if self.val_steps > self.schedule.train_timesteps:
            raise DiffgapError(f"{source}: val_steps = {self.val_steps} exceeds schedule.train_timesteps")


def direction_at(step: int, interval: int, bidirectional: bool = True) -> int:
    """Algorithm 1: direction 0 for steps [0, m), 1 for [m, 2m), 0 for [2m, 3m), ..."""
    return (step // interval) % 2 if bidirectional else 0


KEPT = "best validation R@1 among validations after both directions have trained"


def both_directions_trained(steps_done: int, total: int, config: "TrainConfig") -> bool:
    """Whether an epoch ending after `steps_done` steps may be kept as the best one.

    With BST, only once the from-audio direction has had a step (steps_done > m); a run too
    short to ever flip (total <= m, warned about at the start) keeps its best epoch anyway.
    """
    return not config.bidirectional or steps_done > config.interval or total <= config.interval


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise DiffgapError(f"{path}: no such recipe; recipes live in training/*.json")
    try:
        recipe = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiffgapError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(recipe, dict):
        raise DiffgapError(f"{path}: a recipe is a JSON object of settings, e.g. {{\"epochs\": 30}}")
    return recipe


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------


class _Run:
    """Everything a training run holds, so that it can be saved and restored whole."""

    def __init__(self, config: TrainConfig, train: Pairs, device: torch.device):
        self.config = config
        self.device = device
        net_config = NetworkConfig(**{**asdict(config.network), "dim_a": train.dim_a, "dim_b": train.dim_b})
        torch.manual_seed(config.seed)
        self.model = Denoiser(net_config).to(device)
        self.ema = Denoiser(net_config).to(device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.norm_a = SpaceNorm(train.dim_a).fit(torch.from_numpy(np.array(train.a))).to(device)
        self.norm_b = SpaceNorm(train.dim_b).fit(torch.from_numpy(np.array(train.b))).to(device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.scheduler = training_scheduler(config.schedule)
        self.step = 0
        self.groups: dict[int, torch.Tensor] = {}  # direction -> the clip of each training target (`set_groups`)

    def set_groups(self, group: np.ndarray) -> None:
        """Which training targets are one clip: audio targets (to-audio) by the pairs' group, query targets by row."""
        self.groups = {0: torch.as_tensor(group, device=self.device), 1: torch.arange(len(group), device=self.device)}

    # -- state ------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors.update({f"norm_a.{k}": v for k, v in self.norm_a.state_dict().items()})
        tensors.update({f"norm_b.{k}": v for k, v in self.norm_b.state_dict().items()})
        for i, st in self.optimizer.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"adam.{i}.{k}"] = torch.as_tensor(v)
        tensors["rng"] = self.generator.get_state()
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        def part(prefix: str) -> dict:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        try:
            self.model.load_state_dict(part("model."))
            self.ema.load_state_dict(part("ema."))
            self.norm_a.load_state_dict(part("norm_a."))
            self.norm_b.load_state_dict(part("norm_b."))
            adam: dict[int, dict] = {}
            for k, v in part("adam.").items():
                i, name = k.split(".", 1)
                adam.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
            opt_state = self.optimizer.state_dict()
            opt_state["state"] = adam
            self.optimizer.load_state_dict(opt_state)
            self.generator.set_state(tensors["rng"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise DiffgapError(f"{source}: the training state does not match these settings ({str(exc).splitlines()[0]}); "
                               "resume with the settings of the original run") from None

    # -- one step ---------------------------------------------------------------------------

    def train_step(self, x0: torch.Tensor, cond: torch.Tensor, direction: int, rows: torch.Tensor | None = None) -> float:
        """One optimizer step on a batch; `rows` = its rows in the training pairs (InfoNCE: same-clip targets)."""
        cfg, g, m = self.config, self.generator, len(x0)
        t = torch.randint(0, cfg.schedule.train_timesteps, (m,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        keep = torch.rand(m, generator=g) >= cfg.cond_dropout
        t, noise, keep = t.to(self.device), noise.to(self.device), keep.to(self.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        pred = self.model(x_t, t, cond, direction, keep=keep)
        groups = self.groups[direction][rows] if rows is not None and direction in self.groups else None
        loss = step_loss(self.scheduler, pred, x0, x_t, noise, t, keep, cfg.contrastive_weight, cfg.contrastive_temperature,
                         groups)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))  # short warm-up of the EMA
        with torch.no_grad():
            ema_params = list(self.ema.parameters())
            torch._foreach_lerp_(ema_params, list(self.model.parameters()), 1 - decay)
        self.step += 1
        return float(loss.detach())


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


def _save_state(run: _Run, out: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=f".{STATE}.", dir=out)
    os.close(fd)
    try:
        save_file(run.state_tensors(), tmp, metadata={"state": json.dumps(meta)})
        os.replace(tmp, out / STATE)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def translator_config(run: _Run, train: Pairs, extra: dict) -> TranslatorConfig:
    cfg = run.config
    return TranslatorConfig(
        space_a=Space(train.space_a, train.dim_a, "audio"),
        space_b=Space(train.space_b, train.dim_b, train.modality_b),
        network=run.model.config,
        schedule=cfg.schedule,
        bidirectional=cfg.bidirectional,
        training={**{k: v for k, v in cfg.to_dict().items() if k not in ("network", "schedule")}, **extra},
    )


@torch.no_grad()
def validate(run: _Run, val: Pairs, train: Pairs) -> dict:
    """Validation loss per direction (fixed draws, EMA weights) and translated-query R@1."""
    from diffgap_search.metrics import recall_at, target_ranks

    cfg = run.config
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n = min(len(val), 2048)
    a = run.norm_a(torch.from_numpy(np.array(val.a[:n])).to(run.device))
    b = run.norm_b(torch.from_numpy(np.array(val.b[:n])).to(run.device))
    out = {}
    for d in (0, 1) if cfg.bidirectional else (0,):
        x0, cond = (a, b) if d == 0 else (b, a)
        t = torch.randint(0, cfg.schedule.train_timesteps, (n,), generator=g).to(run.device)
        noise = torch.randn(x0.shape, generator=g).to(run.device)
        pred = run.ema(run.scheduler.add_noise(x0, noise, t), t, cond, d)
        out[f"val_loss_{DIRECTIONS[d]}"] = float(torch.nn.functional.mse_loss(pred, prediction_target(run.scheduler, x0, noise, t)))
    translator = Translator(translator_config(run, train, {}), run.ema, run.norm_a, run.norm_b, str(run.device))
    rows = np.arange(min(len(val), cfg.val_queries))
    gallery, target = val.gallery()
    translated = translator.translate(val.b[rows], "to-audio", steps=cfg.val_steps, samples=cfg.val_samples,
                                      guidance=cfg.val_guidance, generator=torch.Generator().manual_seed(cfg.seed + 2))
    out["val_R@1"] = recall_at(target_ranks(translated, gallery, target[rows]))["R@1"]
    out["val_N"] = int(len(rows))
    out["val_gallery"] = int(len(gallery))
    run.ema.requires_grad_(False)
    return out


def train(
    pairs: str | Path | Pairs,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    log: Callable[[str], None] = print,
) -> Translator:
    """Train a translator on a pairs file; returns it (EMA weights) after writing `out`."""
    config.validate()
    out = Path(out)
    if isinstance(pairs, Pairs):
        all_pairs = pairs
    else:
        all_pairs = read_pairs(pairs)
    train_pairs, val_pairs = split_train_val(all_pairs, config.val_fraction, config.seed)
    if (out / STATE).exists() and not resume:
        raise DiffgapError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    if resume and not (out / STATE).exists():
        raise DiffgapError(f"{out}: nothing to resume (no {STATE}); start without --resume")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(train_pairs, val_pairs, out, config, resume, device, progress, on_step, log)
    except BaseException:
        if created and not (out / STATE).exists():  # failed before saving anything: leave no empty folder
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(train_pairs, val_pairs, out, config, resume, device, progress, on_step, log) -> Translator:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    torch_device = torch.device(device)
    run = _Run(config, train_pairs, torch_device)
    a = torch.from_numpy(np.array(train_pairs.a)).to(torch_device)
    b = torch.from_numpy(np.array(train_pairs.b)).to(torch_device)
    a, b = run.norm_a(a), run.norm_b(b)
    n = len(train_pairs)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    elapsed0 = 0.0
    best = None
    if resume:
        state_path = out / STATE
        try:
            with safe_open(str(state_path), "pt") as fh:
                meta = json.loads(fh.metadata()["state"])
            tensors = load_file(str(state_path))
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise DiffgapError(f"{state_path}: unreadable training state ({exc}); start a new run in another folder") from None
        saved = TrainConfig.from_dict({k: v for k, v in meta["config"].items() if k != "max_steps"} | {"max_steps": None}, str(state_path))
        mine = config.to_dict() | {"max_steps": None, "epochs": None, "checkpoint_every": None}
        theirs = saved.to_dict() | {"max_steps": None, "epochs": None, "checkpoint_every": None}
        mine["network"] = {k: v for k, v in mine["network"].items() if k not in ("dim_a", "dim_b")}
        theirs["network"] = {k: v for k, v in theirs["network"].items() if k not in ("dim_a", "dim_b")}
        differ = sorted(k for k in mine if mine[k] != theirs[k])
        if differ:
            raise DiffgapError(f"{out}: the run was started with {differ[0]}={theirs[differ[0]]!r}, now {mine[differ[0]]!r}; "
                               "resume with the original settings (epochs may grow)")
        run.load_state_tensors(tensors, state_path)
        run.step = int(meta["step"])
        elapsed0 = float(meta.get("elapsed_s", 0.0))
        best = meta.get("best")
        a, b = run.norm_a(torch.from_numpy(np.array(train_pairs.a)).to(torch_device)), run.norm_b(torch.from_numpy(np.array(train_pairs.b)).to(torch_device))
    run.set_groups(train_pairs.group)

    params = count_parameters(run.model)
    log(f"denoiser: {params:,} parameters ({params * 4 / 1e6:.1f} MB fp32); {n} training pairs, "
        f"{len(val_pairs) if val_pairs else 0} validation pairs; {total} steps of batch {config.batch_size}"
        + (f", direction flips every {config.interval}" if config.bidirectional else ", to-audio only (no BST)"))
    if config.bidirectional and total <= config.interval:
        log(f"warning: the direction flips every {config.interval} steps and this run has {total}: the from-audio "
            f"direction (used to rerank) will not be trained; pass --interval {max(1, total // 10)} or fewer")

    def meta_now() -> dict:
        return {"step": run.step, "config": config.to_dict(), "elapsed_s": elapsed0 + time.perf_counter() - t_start, "best": best}

    t_start = time.perf_counter()
    losses: list[float] = []
    order, order_epoch = None, -1
    bar = tqdm(total=total, initial=run.step, unit="step", desc="train", disable=not progress, smoothing=0.05)
    try:
        while run.step < total:
            epoch, i = divmod(run.step, steps_per_epoch)
            if epoch != order_epoch:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)).to(torch_device)
                order_epoch = epoch
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            d = direction_at(run.step, config.interval, config.bidirectional)
            x0, cond = (a[idx], b[idx]) if d == 0 else (b[idx], a[idx])
            step = run.step
            loss = run.train_step(x0, cond, d, idx)
            if not math.isfinite(loss):
                raise DiffgapError(f"the loss became {loss} at step {step}; lower --lr or check the pairs")
            losses.append(loss)
            if on_step is not None:
                on_step(step, d, loss)
            bar.update(1)
            if run.step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", dir=DIRECTIONS[d])
            end_of_epoch = run.step % steps_per_epoch == 0 or run.step == total
            if end_of_epoch or (config.val_every and run.step % config.val_every == 0):
                row = {"epoch": epoch + 1, "step": run.step, "train_loss": float(np.mean(losses))}
                if val_pairs is not None:
                    row.update(validate(run, val_pairs, train_pairs))
                row["both_directions_trained"] = both_directions_trained(run.step, total, config)
                row["elapsed_s"] = round(elapsed0 + time.perf_counter() - t_start, 2)
                _append_log(out, row)
                losses = []
                # keep the step that validates best (translated R@1, then loss): small pair sets overfit,
                # and on large ones retrieval peaks early (translator_steps.md). With BST, a step before
                # the first flip has an untrained from-audio direction (the reranker): such steps are
                # kept only until one where both directions trained.
                score = [int(row["both_directions_trained"]), row["val_R@1"], -row["val_loss_to-audio"]] if "val_R@1" in row else None
                if not config.keep_best or score is None or best is None or score > best["score"]:
                    best = {"score": score, "epoch": row["epoch"], "step": run.step}
                    extra = {"parameters": params, "steps": run.step, "epoch": row, "selected": KEPT
                             if config.keep_best and score is not None else "last"}
                    save_checkpoint(out, translator_config(run, train_pairs, extra), run.ema.state_dict(),
                                    run.model.state_dict(), (run.norm_a, run.norm_b))
            if end_of_epoch or run.step % config.checkpoint_every == 0:
                _save_state(run, out, meta_now())
    finally:
        bar.close()
    return Translator.load(out, device)


def _append_log(out: Path, row: dict) -> None:
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    fd, tmp = tempfile.mkstemp(prefix=".log.csv.", dir=out)
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "log.csv")
