"""Cheap translators to compare DiffGAP against: mean shift, ridge regression, MLP mappers.

Each is fitted on training pairs (query side b -> audio side a) and maps query
vectors into the audio space as unit vectors, like `Translator.translate(..., "to-audio")`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from diffgap_search.errors import DiffgapError

RIDGE_LAMBDAS = (1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0, 10.0, 100.0)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


class MeanShift:
    """b - mean(b) + mean(a): removes the constant offset between the two cones (same dim only)."""

    def fit(self, a: np.ndarray, b: np.ndarray) -> "MeanShift":
        if a.shape[1] != b.shape[1]:
            raise DiffgapError(f"mean shift needs one dim on both sides; got {a.shape[1]} and {b.shape[1]}")
        self.shift = (a.mean(0) - b.mean(0)).astype(np.float32)
        return self

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return _unit(b + self.shift)


class Ridge:
    """Least squares b -> a with an L2 penalty, on centred data: a ~ (b - mb) W + ma.

    lam is relative: the penalty is lam * trace(B'B) / d_b, so one grid fits any scale.
    """

    def __init__(self, lam: float = 1.0):
        self.lam = lam

    def fit(self, a: np.ndarray, b: np.ndarray) -> "Ridge":
        a, b = a.astype(np.float64), b.astype(np.float64)
        self.ma, self.mb = a.mean(0), b.mean(0)
        bc, ac = b - self.mb, a - self.ma
        gram = bc.T @ bc
        penalty = self.lam * np.trace(gram) / gram.shape[0]
        self.w = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), bc.T @ ac)
        return self

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return _unit((b.astype(np.float64) - self.mb) @ self.w + self.ma)


def fit_ridge(a: np.ndarray, b: np.ndarray, val_a: np.ndarray, val_b: np.ndarray, val_target: np.ndarray,
              lambdas=RIDGE_LAMBDAS) -> tuple[Ridge, float]:
    """Ridge with lam chosen by validation R@1 (ties -> mean rank); refitted on train only."""
    from diffgap_search.metrics import target_ranks

    best = None
    for lam in lambdas:
        model = Ridge(lam).fit(a, b)
        ranks = target_ranks(model(val_b), val_a, val_target)
        key = ((ranks < 1).mean(), -ranks.mean())
        if best is None or key > best[0]:
            best = (key, model)
    return best[1], best[1].lam


# ---------------------------------------------------------------------------
# learned MLP mappers: regression (V2A-Mapper's "regression" variant) and contrastive (InfoNCE)
# ---------------------------------------------------------------------------

MLP_LOSSES = ("regression", "infonce")


@dataclass(frozen=True)
class MLPConfig:
    """One MLP mapper b -> a: out = skip(x) + W2 gelu(W1 x), x the standardized query vector.

    loss "regression": 1 - cos(out, a) (the MSE of unit vectors, 2 - 2 cos, halved), as
    V2A-Mapper's regression variant; "infonce": the symmetric contrastive loss of CLIP over
    the batch, cos(out_i, a_j) / tau with a learned tau, other captions of one clip masked
    out as negatives. The epoch kept is the one of best validation R@1 (early stopping).
    """

    loss: str = "regression"
    hidden: int = 512
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 20
    patience: int = 4  # epochs without a better validation R@1 before stopping
    temperature: float = 0.07  # initial tau of infonce (learned)
    seed: int = 0


# the validation grid of `fit_mlp`: dropout (the regularization that mattered on the small sets) x loss settings
MLP_DROPOUTS = (0.1, 0.5)


class _MLPNet(torch.nn.Module):
    def __init__(self, dim_b: int, dim_a: int, config: MLPConfig):
        super().__init__()
        nn = torch.nn
        self.skip = nn.Linear(dim_b, dim_a)
        self.mlp = nn.Sequential(nn.Linear(dim_b, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.hidden, dim_a))
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / config.temperature))))

    def forward(self, x):
        return self.skip(x) + self.mlp(x)


class MLPMapper:
    """An MLP b -> a trained with `MLPConfig.loss`; call it on query vectors to get unit a-space vectors."""

    def __init__(self, config: MLPConfig = MLPConfig()):
        if config.loss not in MLP_LOSSES:
            raise DiffgapError(f"MLP mapper loss {config.loss!r} is unknown; use one of {', '.join(MLP_LOSSES)}")
        self.config = config
        self.epoch = 0  # the kept epoch
        self.val_r1: float | None = None

    def fit(self, a: np.ndarray, b: np.ndarray, group: np.ndarray | None = None,
            val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> "MLPMapper":
        """a [n, d_a], b [n, d_b] pairs; group [n] (clip of each pair, for the infonce mask);
        val = (gallery [G, d_a], queries [m, d_b], target [m]) keeps the epoch of best R@1."""
        import torch.nn.functional as F

        from diffgap_search.metrics import target_ranks

        cfg = self.config
        torch.manual_seed(cfg.seed)
        a_t = torch.from_numpy(_unit(np.asarray(a, np.float32)))
        b_np = np.asarray(b, np.float32)
        self.mean = b_np.mean(0)
        self.scale = float(np.sqrt(((b_np - self.mean) ** 2).sum(1).mean() / b_np.shape[1])) or 1.0
        b_t = torch.from_numpy(self._standardize(b_np))
        group_t = torch.from_numpy(np.asarray(group if group is not None else np.arange(len(a)), np.int64))
        self.net = _MLPNet(b_t.shape[1], a_t.shape[1], cfg)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(cfg.seed)
        best, since = None, 0
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            for idx in torch.randperm(len(a_t), generator=g).split(cfg.batch_size):
                out = F.normalize(self.net(b_t[idx]), dim=-1)  # [m, d_a]
                if cfg.loss == "regression":
                    loss = (1 - (out * a_t[idx]).sum(-1)).mean()
                else:
                    logits = out @ a_t[idx].T * self.net.log_scale.clamp(max=np.log(100)).exp()  # [m, m]
                    same = group_t[idx][:, None] == group_t[idx][None, :]
                    logits = logits.masked_fill(same & ~torch.eye(len(idx), dtype=torch.bool), float("-inf"))
                    target = torch.arange(len(idx))
                    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if val is None:
                continue
            gallery, queries, target = val
            mapped = self(queries)
            ranks = target_ranks(mapped, gallery, target)
            # R@1, then mean rank, then the mean cosine to the target (breaks ties once retrieval saturates)
            score = (float((ranks < 1).mean()), -float(ranks.mean()), float((mapped * gallery[target]).sum(1).mean()))
            if best is None or score > best[0]:
                best, since = (score, epoch, {k: v.clone() for k, v in self.net.state_dict().items()}), 0
            else:
                since += 1
                if since >= cfg.patience:
                    break
        if best is not None:
            self.net.load_state_dict(best[2])
            self.epoch, self.val_r1 = best[1], best[0][0]
        else:
            self.epoch = cfg.epochs
        self.net.eval()
        return self

    def _standardize(self, b: np.ndarray) -> np.ndarray:
        return ((_unit(np.asarray(b, np.float32)) - self.mean) / self.scale).astype(np.float32)

    def __call__(self, b: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _unit(self.net(torch.from_numpy(self._standardize(b))).numpy())


def fit_mlp(a: np.ndarray, b: np.ndarray, val_a: np.ndarray, val_b: np.ndarray, val_target: np.ndarray,
            loss: str = "regression", *, group: np.ndarray | None = None, seed: int = 0,
            dropouts=MLP_DROPOUTS, base: MLPConfig | None = None) -> tuple[MLPMapper, dict]:
    """An MLP mapper with dropout and epoch chosen by validation R@1 (val_a = gallery, val_b = queries)."""
    base = base or MLPConfig()
    best = None
    for dropout in dropouts:
        config = MLPConfig(**{**asdict(base), "loss": loss, "dropout": dropout, "seed": seed})
        model = MLPMapper(config).fit(a, b, group, (val_a, val_b, val_target))
        if best is None or model.val_r1 > best.val_r1:
            best = model
    return best, {"dropout": best.config.dropout, "epoch": best.epoch, "hidden": best.config.hidden,
                  "val R@1": round(best.val_r1, 4)}


# ---------------------------------------------------------------------------
# CDM off: the DiffGAP network without diffusion (the paper's component ablation)
# ---------------------------------------------------------------------------


def direct_loss(run, x0: torch.Tensor, cond: torch.Tensor, direction: int, rows: torch.Tensor) -> torch.Tensor:
    """The translator's loss at t = T - 1 with x_t = 0, no condition dropout: MSE in normalized space to the clean
    target regressed from the condition alone, + contrastive_weight x InfoNCE (captions of one clip share its audio)."""
    from diffgap_search.diffusion.loss import info_nce

    cfg = run.config
    t = torch.full((len(x0),), cfg.schedule.train_timesteps - 1, device=x0.device)
    pred = run.model(torch.zeros_like(x0), t, cond, direction)  # [m, d_target]
    loss = torch.nn.functional.mse_loss(pred, x0)
    if cfg.contrastive_weight > 0:
        keep = torch.ones(len(x0), dtype=torch.bool, device=x0.device)
        loss = loss + cfg.contrastive_weight * info_nce(pred, x0, keep, cfg.contrastive_temperature, run.groups[direction][rows])
    return loss


class DirectDenoiser:
    """The DiffGAP denoiser trained as a deterministic mapper: "CDM off" of the paper's Table VII.

    Same network (`Denoiser`), normalization, optimizer, batches, number of steps, EMA and
    direction flips every `interval` steps (both directions unless `bidirectional` is
    False) as `diffusion.train.train`; only the diffusion is gone: the network always sees
    x_t = 0 at t = T - 1 and regresses the clean target from the condition with the
    translator's loss (MSE in normalized space + `contrastive_weight` x InfoNCE). Validated where
    training validates (epoch ends, every `val_every` steps); the weights of best validation R@1
    (to-audio) among those after the first flip are kept, as in training.
    `translate` has the signature of `Translator.translate`; sampling settings are ignored.
    """

    deterministic = True  # one forward pass per vector: no sampling steps, samples or guidance

    def __init__(self, config):
        self.config = config  # a diffusion.train.TrainConfig

    def fit(self, pairs, log=lambda s: None) -> "DirectDenoiser":
        from diffgap_search.diffusion.train import TrainingRun, both_directions_trained
        from diffgap_search.metrics import target_ranks
        from diffgap_search.pairs import split_train_val

        cfg = self.config
        train, val = split_train_val(pairs, cfg.val_fraction, cfg.seed)
        run = TrainingRun(cfg, train, loss=direct_loss)  # training's loop, this loss
        self.network, self.norms = run.ema, (run.norm_a, run.norm_b)
        self.t_last = cfg.schedule.train_timesteps - 1
        best = None

        def on_validation(epoch: int, _train_loss: float) -> None:  # where training validates
            nonlocal best
            if val is None or not cfg.keep_best:
                return
            gallery, target = val.gallery()
            rows = np.arange(min(len(val), cfg.val_queries))
            r1 = float((target_ranks(self.translate(val.b[rows]), gallery, target[rows]) < 1).mean())
            key = (both_directions_trained(run.step, cfg), r1)  # as in training: an under-trained direction loses
            if best is None or key > best[0]:
                best = (key, epoch, {k: v.clone() for k, v in self.network.state_dict().items()}, run.step)

        run.fit(on_validation=on_validation)
        if best is not None:
            self.network.load_state_dict(best[2])
        self.epoch = best[1] if best is not None else cfg.epochs
        self.steps = best[3] if best is not None else run.step  # steps of the kept weights
        return self

    def dims(self, direction) -> tuple[int, int]:
        a, b = self.norms[0].mean.shape[0], self.norms[1].mean.shape[0]
        return (b, a) if direction in (0, "to-audio") else (a, b)

    @torch.no_grad()
    def translate(self, x, direction="to-audio", **_sampling) -> np.ndarray:
        d = 0 if direction in (0, "to-audio") else 1
        if d == 1 and not self.config.bidirectional:
            raise DiffgapError("this mapper was trained to-audio only (bidirectional off) and has no from-audio direction")
        src_norm, tgt_norm = self.norms[1 - d], self.norms[d]
        cond = src_norm(torch.from_numpy(np.array(x, np.float32)))
        out = []
        for lo in range(0, len(cond), 8192):
            c = cond[lo : lo + 8192]
            x0 = torch.zeros(len(c), self.dims(d)[1])
            out.append(tgt_norm.inverse(self.network(x0, torch.full((len(c),), self.t_last), c, d)))
        return torch.cat(out).numpy()
