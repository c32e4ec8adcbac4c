"""Bidirectional split training (Algorithm 1 of the DiffGAP paper).

One network, minibatches of pairs. Iterations [0, m) train direction 0 (to-audio: denoise the audio
vector a conditioned on the query-side vector b), [m, 2m) direction 1 (from-audio), and so on: the
direction flips at every multiple of the interval m and nowhere else (`direction_at`).
`bidirectional=False` trains only to-audio (the paper's "no BST" ablation).

Each step: the loss of `loss.denoising_loss` (MSE to the prediction target after DDPM noising, with
condition dropout for classifier-free guidance, plus `contrastive_weight` x InfoNCE; 0 gives the
paper's loss), Adam, gradient clipping, EMA weights for inference. `TrainingRun` holds a run and its
loop (`fit`); `train` drives it with validation, logs and checkpoints, `baselines.DirectDenoiser`
with a loss without diffusion.

Reproducible: weights from `seed`, each epoch's order from (seed, epoch), every draw of t / noise /
dropout from one generator saved in the training state, so `resume` continues bit-for-bit (on CPU).

Output folder:
    model.safetensors, config.json   the translator (rewritten at every validation that beats the kept one)
    training_state.safetensors       weights, EMA, Adam moments, RNG state, step (for --resume)
    log.jsonl, log.csv               one row per validation (every epoch's end and every `val_every` steps)

Keep-best: the saved translator is the validated step of best translated-query R@1 (S = val_steps,
K = val_samples, w = val_guidance) among those where both directions have trained
(`both_directions_trained`); config.json records that S, K, w as the translator's default sampling
(`Translator.sampling`) and the steps each direction had (`Translator.direction_steps`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffgap_search.diffusion.network import DIRECTIONS, Denoiser, NetworkConfig, check_network, count_parameters
from diffgap_search.diffusion.normalize import SpaceNorm
from diffgap_search.diffusion.loss import denoising_loss
from diffgap_search.diffusion.schedule import ScheduleConfig, check_schedule, prediction_target, training_scheduler
from diffgap_search.diffusion.translator import (
    Sampling,
    Space,
    Translator,
    TranslatorConfig,
    direction_shortfall,
    save_checkpoint,
)
from diffgap_search.errors import DiffgapError
from diffgap_search.pairs import Pairs, read_pairs, split_train_val
from diffgap_search.storage import read_json, write_file_atomic

STATE = "training_state.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-4
    # m: the direction flips at every multiple of m iterations. 100 (not the paper's 5000): both
    # directions train from the start and the early retrieval peak may be kept (translator_steps.md);
    # the paper's setting is in training/paper-*.json
    interval: int = 100
    bidirectional: bool = True
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    checkpoint_every: int = 1000  # steps between training-state saves (and at every epoch end)
    seed: int = 0
    val_queries: int = 1000  # validation R@1 is measured on at most this many queries
    # validation R@1 translates with S steps, K samples and guidance w, as retrieval does (K = 1, w = 1
    # ranks steps by a translation nobody uses: on xmodel it stays flat while K = 4, w = 4 improves);
    # the kept translator stores them as its default sampling
    val_steps: int = 5
    val_samples: int = 4
    val_guidance: float = 4.0
    # steps between validations (each one a candidate for keep-best), besides every epoch's end;
    # 0 = at epoch ends only. Retrieval can peak within an epoch on large pair sets.
    val_every: int = 500
    max_steps: int | None = None  # stop after this many steps in total (for tests and quick runs)
    keep_best: bool = True  # the saved translator is the validated step with the best validation R@1 (not the last)
    # weight of the contrastive (InfoNCE) term on the clean-target estimate (0 = the paper's pure
    # denoising loss); see `loss.step_loss` and benchmarks/results/translator_contrastive.md
    contrastive_weight: float = 0.3
    contrastive_temperature: float = 0.1
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict:
        return asdict(self)

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
        for name in ("epochs", "batch_size", "interval", "checkpoint_every", "val_queries", "val_steps", "val_samples"):
            number(name, lo=1)
        for name in ("seed", "val_every"):
            number(name, lo=0)
        for name in ("cond_dropout", "ema_decay", "val_fraction"):
            number(name, real, lo=0, hi=1)
        number("lr", real, lo=0, lo_open=True)
        number("grad_clip", real, lo=0)
        number("val_guidance", real)
        number("max_steps", lo=1, optional=True)
        number("contrastive_weight", real, lo=0)
        number("contrastive_temperature", real, lo=0, lo_open=True)
        for name in ("keep_best", "bidirectional"):
            if not isinstance(getattr(self, name), bool):
                raise DiffgapError(f"{source}: {name} = {getattr(self, name)!r} is not true or false")
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


def direction_steps(steps: int, interval: int, bidirectional: bool = True) -> dict[str, int]:
    """How many of the first `steps` steps trained each direction: {"to-audio": n, "from-audio": m}."""
    cycles, rest = divmod(steps, 2 * interval)  # each cycle of 2m steps: m to-audio, then m from-audio
    back = cycles * interval + max(0, rest - interval) if bidirectional else 0
    return {DIRECTIONS[0]: steps - back, DIRECTIONS[1]: back}


def both_directions_trained(steps_done: int, config: "TrainConfig") -> bool:
    """Whether each direction has trained enough after `steps_done` steps (`direction_shortfall`: at least
    25% of the other direction's steps); never with --no-bidirectional. Keep-best keeps a validated step
    where this is false only when no later one has it true (a run too short, warned about at its start)."""
    counts = direction_steps(steps_done, config.interval, config.bidirectional)
    return config.bidirectional and all(direction_shortfall(counts, d) is None for d in DIRECTIONS)


KEPT = "best validation R@1 among validations after both directions have trained"


def load_recipe(path: str | Path, _extended: tuple[Path, ...] = ()) -> dict:
    """A recipe's settings; one holding {"extends": "other.json"} adds its settings to that recipe's (a path
    relative to its own folder), as training/audiocaps.json, the old name of training/paper-audiocaps.json, does."""
    path = Path(path)
    if not path.exists():
        raise DiffgapError(f"{path}: no such recipe; recipes live in training/*.json")
    recipe = read_json(path, "fix the recipe's JSON")
    if not isinstance(recipe, dict):
        raise DiffgapError(f"{path}: a recipe is a JSON object of settings, e.g. {{\"epochs\": 30}}")
    base = recipe.pop("extends", None)
    if base is None:
        return recipe
    chain = (*_extended, path.resolve())
    if not isinstance(base, str) or (path.parent / base).resolve() in chain:
        raise DiffgapError(f"{path}: extends = {base!r}; name another recipe file (no cycle), e.g. \"paper-audiocaps.json\"")
    return {**load_recipe(path.parent / base, chain), **recipe}


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------

# loss(run, x0 [m, d_target], cond [m, d_source], direction, rows [m] of the training pairs) -> scalar
StepLoss = Callable[["TrainingRun", torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]


class TrainingRun:
    """Everything a training run holds, so that it can be saved and restored whole, and its loop (`fit`).

    `loss`: the loss of one batch; `denoising_loss` (the translator's) unless given.
    """

    def __init__(self, config: TrainConfig, train: Pairs, device: torch.device = torch.device("cpu"),
                 loss: StepLoss | None = None):
        self.config = config
        self.device = device
        self.loss = loss or denoising_loss
        net_config = NetworkConfig(**{**asdict(config.network), "dim_a": train.dim_a, "dim_b": train.dim_b})
        torch.manual_seed(config.seed)
        self.model = Denoiser(net_config).to(device)
        self.ema = Denoiser(net_config).to(device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.pairs = train
        self.norm_a = SpaceNorm(train.dim_a).fit(torch.from_numpy(np.array(train.a))).to(device)
        self.norm_b = SpaceNorm(train.dim_b).fit(torch.from_numpy(np.array(train.b))).to(device)
        self._normalize()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.scheduler = training_scheduler(config.schedule)
        self.step = 0
        # direction -> the clip of each training target: audio targets (to-audio) by the pairs' group, query targets by row
        self.groups = {0: torch.as_tensor(train.group, device=device), 1: torch.arange(len(train), device=device)}
        self.steps_per_epoch = math.ceil(len(train) / config.batch_size)
        self.total = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total = min(self.total, config.max_steps)

    def _normalize(self) -> None:
        self.a = self.norm_a(torch.from_numpy(np.array(self.pairs.a)).to(self.device))  # [n, d_a]
        self.b = self.norm_b(torch.from_numpy(np.array(self.pairs.b)).to(self.device))  # [n, d_b]

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
        self._normalize()

    # -- the loop ---------------------------------------------------------------------------

    def train_step(self, x0: torch.Tensor, cond: torch.Tensor, direction: int, rows: torch.Tensor | None = None) -> float:
        """One optimizer step on a batch; `rows` = its rows in the training pairs (InfoNCE: same-clip targets)."""
        cfg = self.config
        loss = self.loss(self, x0, cond, direction, rows)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))  # short warm-up of the EMA
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - decay)
        self.step += 1
        return float(loss.detach())

    def fit(self, *, on_step: Callable[[int, int, float], None] | None = None,
            on_validation: Callable[[int, float], None] | None = None,
            on_checkpoint: Callable[[], None] | None = None, progress: bool = False) -> None:
        """Algorithm 1 from `step` to `total`: batches in each epoch's seeded order, the direction of each step.

        After each step: on_step(step, direction, loss); at every epoch's end and every `val_every` steps
        on_validation(epoch, mean training loss since the last one); at every epoch's end and every
        `checkpoint_every` steps on_checkpoint().
        """
        from tqdm.auto import tqdm

        cfg, n = self.config, len(self.pairs)
        losses: list[float] = []
        done = [0, 0]  # steps of each direction in this call
        order, order_epoch = None, -1
        bar = tqdm(total=self.total, initial=self.step, unit="step", desc="train", disable=not progress, smoothing=0.05)
        try:
            while self.step < self.total:
                epoch, i = divmod(self.step, self.steps_per_epoch)
                if epoch != order_epoch:
                    seed = cfg.seed * 1_000_003 + epoch
                    order, order_epoch = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device), epoch
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                d = direction_at(self.step, cfg.interval, cfg.bidirectional)
                x0, cond = (self.a[idx], self.b[idx]) if d == 0 else (self.b[idx], self.a[idx])
                step = self.step
                loss = self.train_step(x0, cond, d, idx)
                done[d] += 1  # shown per direction: a direction sampled every 50 steps aliases with the interval
                if not math.isfinite(loss):
                    raise DiffgapError(f"the loss became {loss} at step {step}; lower --lr or check the pairs")
                losses.append(loss)
                if on_step is not None:
                    on_step(step, d, loss)
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", steps=f"{done[0]} to-audio/{done[1]} from-audio")
                end_of_epoch = self.step % self.steps_per_epoch == 0 or self.step == self.total
                if on_validation is not None and (end_of_epoch or (cfg.val_every and self.step % cfg.val_every == 0)):
                    on_validation(epoch + 1, float(np.mean(losses)))
                    losses = []
                if on_checkpoint is not None and (end_of_epoch or self.step % cfg.checkpoint_every == 0):
                    on_checkpoint()
        finally:
            bar.close()


# ---------------------------------------------------------------------------
# `train`: the loop with validation, keep-best, logs and checkpoints
# ---------------------------------------------------------------------------


def translator_config(run: TrainingRun, train: Pairs, extra: dict) -> TranslatorConfig:
    """The kept translator's config.json: spaces, network, schedule, the run's settings and `extra` results, and
    as its default sampling the S, K, w that validation ranked the steps by."""
    cfg = run.config
    return TranslatorConfig(
        space_a=Space(train.space_a, train.dim_a, "audio"), space_b=Space(train.space_b, train.dim_b, train.modality_b),
        network=run.model.config, schedule=cfg.schedule, bidirectional=cfg.bidirectional,
        training={**{k: v for k, v in cfg.to_dict().items() if k not in ("network", "schedule")}, **extra},
        sampling=Sampling(cfg.val_steps, cfg.val_samples, float(cfg.val_guidance)))


@torch.no_grad()
def validate(run: TrainingRun, val: Pairs, train: Pairs) -> dict:
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


def train(pairs: str | Path | Pairs, out: str | Path, config: TrainConfig = TrainConfig(), *, resume: bool = False,
          device: str = "cpu", progress: bool = True, on_step: Callable[[int, int, float], None] | None = None,
          log: Callable[[str], None] = print) -> Translator:
    """Train a translator on a pairs file; returns it (EMA weights) after writing `out`."""
    config.validate()
    out = Path(out)
    all_pairs = pairs if isinstance(pairs, Pairs) else read_pairs(pairs)
    train_pairs, val_pairs = split_train_val(all_pairs, config.val_fraction, config.seed)
    if len(train_pairs) == 0:
        names, counts = np.unique(all_pairs.split, return_counts=True)
        raise DiffgapError(f"{all_pairs.source or 'pairs'}: no training rows (split counts: "
                           f"{', '.join(f'{s} {c}' for s, c in zip(names, counts))}); train on pairs with split == 'train' "
                           "rows (prepare --split train) or without a split column")
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
    run = TrainingRun(config, train_pairs, torch.device(device))
    elapsed0, best = _resume(run, out) if resume else (0.0, None)
    params = count_parameters(run.model)
    log(f"denoiser: {params:,} parameters ({params * 4 / 1e6:.1f} MB fp32); {len(train_pairs)} training pairs, "
        f"{len(val_pairs) if val_pairs else 0} validation pairs; {run.total} steps of batch {config.batch_size}"
        + (f", direction flips every {config.interval}" if config.bidirectional else ", to-audio only (no BST)"))
    if config.bidirectional and not both_directions_trained(run.total, config):
        back = direction_steps(run.total, config.interval)[DIRECTIONS[1]]
        log(f"warning: the direction flips every {config.interval} steps and this run has {run.total}: the from-audio "
            f"direction (used to rerank) will train {back} of them; pass --interval {max(1, run.total // 10)} or fewer")
    t_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_start

    def on_validation(epoch: int, train_loss: float) -> None:
        nonlocal best
        row = {"epoch": epoch, "step": run.step, "train_loss": train_loss}
        if val_pairs is not None:
            row.update(validate(run, val_pairs, train_pairs))
        row["both_directions_trained"] = both_directions_trained(run.step, config)
        row["elapsed_s"] = round(elapsed(), 2)
        _append_log(out, row)
        # keep the step that validates best (translated R@1, then loss): small pair sets overfit, and on
        # large ones retrieval peaks early (translator_steps.md). A step where a direction is under-trained
        # (with BST, before the from-audio one has had a quarter of the to-audio one's steps) is kept only
        # until one where both have trained.
        score = [int(row["both_directions_trained"]), row["val_R@1"], -row["val_loss_to-audio"]] if "val_R@1" in row else None
        if not config.keep_best or score is None or best is None or score > best["score"]:
            best = {"score": score, "epoch": epoch, "step": run.step}
            extra = {"parameters": params, "steps": run.step, "epoch": row,
                     "direction_steps": direction_steps(run.step, config.interval, config.bidirectional),
                     "selected": KEPT if config.keep_best and score is not None else "last"}
            save_checkpoint(out, translator_config(run, train_pairs, extra), run.ema.state_dict(),
                            run.model.state_dict(), (run.norm_a, run.norm_b))

    def on_checkpoint() -> None:
        _save_state(run, out, {"step": run.step, "config": config.to_dict(), "elapsed_s": elapsed(), "best": best})

    run.fit(on_step=on_step, on_validation=on_validation, on_checkpoint=on_checkpoint, progress=progress)
    return Translator.load(out, device)


def _resume(run: TrainingRun, out: Path) -> tuple[float, dict | None]:
    """Restore the run saved in `out`; (seconds it had run, its best validation so far)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    state_path = out / STATE
    try:
        with safe_open(str(state_path), "pt") as fh:
            meta = json.loads(fh.metadata()["state"])
        tensors = load_file(str(state_path))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise DiffgapError(f"{state_path}: unreadable training state ({exc}); start a new run in another folder") from None
    saved = TrainConfig.from_dict({k: v for k, v in meta["config"].items() if k != "max_steps"} | {"max_steps": None}, str(state_path))
    free = {"max_steps": None, "epochs": None, "checkpoint_every": None}
    mine, theirs = run.config.to_dict() | free, saved.to_dict() | free
    for d in (mine, theirs):
        d["network"] = {k: v for k, v in d["network"].items() if k not in ("dim_a", "dim_b")}
    differ = sorted(k for k in mine if mine[k] != theirs[k])
    if differ:
        raise DiffgapError(f"{out}: the run was started with {differ[0]}={theirs[differ[0]]!r}, now {mine[differ[0]]!r}; "
                           "resume with the original settings (epochs may grow)")
    run.load_state_tensors(tensors, state_path)
    run.step = int(meta["step"])
    return float(meta.get("elapsed_s", 0.0)), meta.get("best")


def _save_state(run: TrainingRun, out: Path, meta: dict) -> None:
    from safetensors.torch import save

    blob = save(run.state_tensors(), metadata={"state": json.dumps(meta)})
    write_file_atomic(out / STATE, lambda fh: fh.write(blob))


def _append_log(out: Path, row: dict) -> None:
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    text = io.StringIO()
    writer = csv.DictWriter(text, list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_file_atomic(out / "log.csv", lambda fh: fh.write(text.getvalue()), "w", newline="")


def steps_done(out: str | Path) -> int:
    """Steps done by the run in `out`: the step of its log's last row (0 before the first validation)."""
    log = Path(out) / "log.jsonl"
    lines = [line for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0
