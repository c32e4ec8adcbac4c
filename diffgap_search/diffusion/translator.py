"""Translator: a trained DiffGAP denoiser plus everything needed to use it.

    Translator.load(dir)                       # model.safetensors + config.json, never a pickle
    translate(x, "to-audio")                   # query-side vectors -> unit audio-space vectors (S, K, w: .sampling)
    translate(a, "from-audio", steps=5, ...)   # the reverse direction
    denoise_error(target, conditions, t, eps)  # per-candidate denoising error, for reranking
    sampling, direction_steps, undertrained(d) # its default S, K, w; how much each direction trained

Sampling runs diffusers' DDIMScheduler over S steps from Gaussian noise (or, with
`start_step`, from the source vector noised to that step, when both spaces have one
dim), with classifier-free guidance `w` (w = 1: plain conditional; w = 0:
unconditional) and K samples averaged on the unit sphere of the target space.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from diffgap_search.diffusion.network import DIRECTIONS, Denoiser, NetworkConfig, check_network, count_parameters
from diffgap_search.diffusion.normalize import SpaceNorm
from diffgap_search.diffusion.schedule import (
    ScheduleConfig,
    check_schedule,
    prediction_target,
    sampling_scheduler,
    training_scheduler,
)
from diffgap_search.errors import DiffgapError
from diffgap_search.storage import read_json
from diffgap_search.types import Space  # noqa: F401  (re-exported: translator configs are made of Spaces)

FORMAT = "diffgap-translator"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def direction_index(direction: str | int) -> int:
    if direction in (0, 1):
        return int(direction)
    if direction in DIRECTIONS:
        return DIRECTIONS.index(direction)
    raise DiffgapError(f"direction {direction!r} is unknown; use one of {', '.join(DIRECTIONS)}")


@dataclass(frozen=True)
class Sampling:
    """How a translator samples when not told: S DDIM steps, K samples averaged, guidance w.

    `train` stores the settings its validation ranked the steps by (TrainConfig val_steps, val_samples,
    val_guidance); these defaults are the ones it validates at, for translators saved without them.
    """

    steps: int = 5
    samples: int = 4
    guidance: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, timesteps: int) -> "Sampling":
        """Raises ValueError naming the bad value (made one line naming config.json by `TranslatorConfig.from_dict`)."""
        sampling = cls(**d)
        for name, lo, hi in (("steps", 1, timesteps), ("samples", 1, None)):
            value = getattr(sampling, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
                raise ValueError(f"sampling.{name} = {value!r} is not a whole number in {lo}..{hi or 'any'}")
        if not isinstance(sampling.guidance, (int, float)) or isinstance(sampling.guidance, bool):
            raise ValueError(f"sampling.guidance = {sampling.guidance!r} is not a number")
        return replace(sampling, guidance=float(sampling.guidance))

    def fill(self, steps: int | None = None, samples: int | None = None, guidance: float | None = None) -> "Sampling":
        """These settings with the ones given (not None) in their place."""
        return Sampling(self.steps if steps is None else steps, self.samples if samples is None else samples,
                        self.guidance if guidance is None else guidance)


# A direction is under-trained when it had fewer steps than this share of the other direction's (or none).
# Algorithm 1 with interval m: the from-audio direction passes it at step 1.25 m, and stays above it.
MIN_DIRECTION_SHARE = 0.25


def direction_shortfall(counts: dict[str, int], direction: str) -> str | None:
    """Why `direction` is under-trained given the steps per direction `counts`, in one line; None if it is not."""
    mine, other = counts[direction], counts[DIRECTIONS[1 - DIRECTIONS.index(direction)]]
    if mine > 0 and mine >= MIN_DIRECTION_SHARE * other:
        return None
    return (f"its {direction} direction trained {mine:,} of {mine + other:,} steps (under {MIN_DIRECTION_SHARE:.0%} of "
            f"the other direction's {other:,}); retrain with a smaller --interval (the default, 100, alternates them "
            "from the start)")


@dataclass
class TranslatorConfig:
    space_a: Space
    space_b: Space
    network: NetworkConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    bidirectional: bool = True
    training: dict = field(default_factory=dict)  # settings and results of the run that made it
    sampling: Sampling | None = None  # default S, K, w (`Translator.sampling`); None: Sampling()

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spaces": {"a": vars(self.space_a), "b": vars(self.space_b)},
            "network": self.network.to_dict(),
            "schedule": self.schedule.to_dict(),
            "bidirectional": self.bidirectional,
            "training": self.training,
            "sampling": None if self.sampling is None else self.sampling.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "TranslatorConfig":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DiffgapError(f"{source}: not a diffgap translator config; a translator folder is made by `diffgap-search train`")
        if d.get("format_version") != FORMAT_VERSION:
            raise DiffgapError(
                f"{source}: translator format version {d.get('format_version')} is not supported by this "
                f"version of diffgap-search (it reads version {FORMAT_VERSION}); retrain it or install the "
                "diffgap-search version that wrote it"
            )
        try:
            schedule = ScheduleConfig(**d["schedule"])
            check_schedule(schedule)
            network = NetworkConfig(**d["network"])
            check_network(network)
            for side in ("a", "b"):
                dim = d["spaces"][side]["dim"]
                if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                    raise ValueError(f"spaces.{side}.dim = {dim!r} is not a positive integer")
            training = d.get("training") or {}
            sampling = d.get("sampling")
            if sampling is None and all(f"val_{k}" in training for k in ("steps", "samples", "guidance")):
                # written before "sampling" was: the settings its validation used are in the training section
                sampling = {k: training[f"val_{k}"] for k in ("steps", "samples", "guidance")}
            counts = training.get("direction_steps")
            if counts is not None and (not isinstance(counts, dict) or sorted(counts) != sorted(DIRECTIONS)
                                       or not all(isinstance(v, int) and v >= 0 for v in counts.values())):
                raise ValueError(f"training.direction_steps = {counts!r} is not {{{', '.join(map(repr, DIRECTIONS))}: steps}}")
            return cls(
                space_a=Space(**d["spaces"]["a"]),
                space_b=Space(**d["spaces"]["b"]),
                network=network,
                schedule=schedule,
                bidirectional=bool(d["bidirectional"]),
                training=training,
                sampling=None if sampling is None else Sampling.from_dict(sampling, schedule.train_timesteps),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DiffgapError(f"{source}: malformed translator config ({exc!r})") from None



class Translator:
    """The EMA denoiser in inference mode, with the two spaces' normalization."""

    def __init__(self, config: TranslatorConfig, network: Denoiser, norm_a: SpaceNorm, norm_b: SpaceNorm, device: str = "cpu"):
        self.config = config
        self.network = network.eval().requires_grad_(False).to(device)
        self.norms = (norm_a.to(device), norm_b.to(device))  # index = space: 0 = a, 1 = b
        self.device = torch.device(device)
        self.train_scheduler = training_scheduler(config.schedule)
        self.path: Path | None = None  # the folder it was loaded from

    # -- construction -----------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", *, weights: str = "ema") -> "Translator":
        """Load a checkpoint folder. `weights`: "ema" (default, for inference) or "model"."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        config_path, weights_path = path / CONFIG, path / WEIGHTS
        for p in (config_path, weights_path):
            if not p.exists():
                raise DiffgapError(f"{p}: missing; a translator folder holds {CONFIG} and {WEIGHTS} (made by `diffgap-search train`)")
        raw = read_json(config_path, "the checkpoint is damaged, retrain or restore it")
        config = TranslatorConfig.from_dict(raw, str(config_path))
        try:
            tensors = load_file(str(weights_path), device="cpu")  # safetensors: no code is executed
        except (SafetensorError, OSError, ValueError) as exc:
            raise DiffgapError(f"{weights_path}: unreadable weights ({exc}); the checkpoint is damaged, retrain or restore it") from None
        prefix = f"{weights}."
        _check_shapes(config, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, weights_path)
        network = Denoiser(config.network)
        norm_a, norm_b = SpaceNorm(config.space_a.dim), SpaceNorm(config.space_b.dim)
        _load_into(network, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, weights_path)
        _load_into(norm_a, {k[7:]: v for k, v in tensors.items() if k.startswith("norm_a.")}, weights_path)
        _load_into(norm_b, {k[7:]: v for k, v in tensors.items() if k.startswith("norm_b.")}, weights_path)
        translator = cls(config, network, norm_a, norm_b, device)
        translator.path = path  # where calibration.json lives (calibrate.load_calibration)
        return translator

    def save(self, path: str | Path, model_state: dict | None = None) -> Path:
        """Write the folder atomically: a temporary folder renamed over the old one."""
        return save_checkpoint(path, self.config, self.network.state_dict(), model_state or self.network.state_dict(), self.norms)

    # -- properties ----------------------------------------------------------------------

    @property
    def parameter_count(self) -> int:
        return count_parameters(self.network)

    @property
    def sampling(self) -> Sampling:
        """S, K, w that `translate` (and `query`, `translate`, `bridge`, `generate`) use when not told.

        config.json's "sampling", which `train` writes: the settings its validation ranked the steps by.
        Checkpoints written before it: the training section's val_steps/val_samples/val_guidance when it
        has all three, else `Sampling()` (S = 5, K = 4, w = 4).
        """
        return self.config.sampling or Sampling()

    @property
    def direction_steps(self) -> dict[str, int] | None:
        """The training steps each direction had in the kept checkpoint: {"to-audio": n, "from-audio": m}.

        Recorded by `train`; for checkpoints written before it, counted from the training section's
        "steps" and "interval" (Algorithm 1 fixes the direction of every step); None when neither is there
        (a translator not made by `train`).
        """
        training = self.config.training
        if "direction_steps" in training:
            return dict(training["direction_steps"])
        steps, interval = training.get("steps"), training.get("interval")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (steps, interval)) or interval < 1:
            return None
        from diffgap_search.diffusion.train import direction_steps

        return direction_steps(steps, interval, self.config.bidirectional)

    def undertrained(self, direction: str | int) -> str | None:
        """One line saying why `direction` is not trained enough to rely on, or None.

        Under-trained: no direction (--no-bidirectional and from-audio), or fewer steps than
        MIN_DIRECTION_SHARE (25%) of the other direction's (`direction_shortfall`). None too when
        `direction_steps` is unknown.
        """
        d = direction_index(direction)
        if d == 1 and not self.config.bidirectional:
            return "this translator was trained with --no-bidirectional and has no from-audio direction"
        counts = self.direction_steps
        return None if counts is None else direction_shortfall(counts, DIRECTIONS[d])

    def dims(self, direction: str | int) -> tuple[int, int]:
        """(source dim, target dim) of a direction."""
        d = direction_index(direction)
        a, b = self.config.space_a.dim, self.config.space_b.dim
        return (b, a) if d == 0 else (a, b)

    def _check(self, x, dim: int, what: str) -> torch.Tensor:
        x = torch.tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != dim:
            raise DiffgapError(f"{what} have dim {x.shape[-1] if x.ndim else 0}, the translator expects {dim}; use vectors of the space it was trained on")
        if not torch.isfinite(x).all():
            raise DiffgapError(f"{what} contain NaN or inf")
        return x.to(self.device)

    # -- translation ---------------------------------------------------------------------

    @torch.no_grad()
    def translate(
        self,
        x,
        direction: str | int = "to-audio",
        *,
        steps: int | None = None,
        samples: int | None = None,
        guidance: float | None = None,
        eta: float = 0.0,
        start_step: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 4096,
    ) -> np.ndarray:
        """Source vectors [n, d_source] -> unit vectors [n, d_target] of the other space.

        `steps`, `samples`, `guidance`: S, K, w; each one not given is the translator's (`sampling`).
        """
        steps, samples, guidance = astuple(self.sampling.fill(steps, samples, guidance))
        d = direction_index(direction)
        if d == 1 and not self.config.bidirectional:
            raise DiffgapError("this translator was trained with --no-bidirectional and has no from-audio direction")
        if not 1 <= steps <= self.config.schedule.train_timesteps or samples < 1:
            raise DiffgapError(f"steps must be in 1..{self.config.schedule.train_timesteps} and samples >= 1 "
                               f"(got steps={steps}, samples={samples})")
        src_dim, tgt_dim = self.dims(d)
        x = self._check(x, src_dim, f"{DIRECTIONS[d]} inputs")
        if start_step is not None and src_dim != tgt_dim:
            raise DiffgapError(f"start_step needs source and target of one dim; they are {src_dim} and {tgt_dim}")
        out = [self._translate_batch(x[i : i + batch_size], d, steps, samples, guidance, eta, start_step, generator)
               for i in range(0, len(x), batch_size)]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, tgt_dim), np.float32)

    def _translate_batch(self, x, d, steps, samples, guidance, eta, start_step, generator) -> torch.Tensor:
        src_norm, tgt_norm = self.norms[1 - d], self.norms[d]
        n, tgt_dim = len(x), self.dims(d)[1]
        cond = src_norm(x).repeat_interleave(samples, dim=0)  # [n*K, d_source]
        scheduler = self._sampler(steps)
        timesteps = scheduler.timesteps
        shape = (n * samples, tgt_dim)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        if start_step is not None:
            if not 0 <= start_step < self.config.schedule.train_timesteps:
                raise DiffgapError(f"start_step must be in [0, {self.config.schedule.train_timesteps}), got {start_step}")
            timesteps = timesteps[timesteps <= start_step]
            if len(timesteps) == 0:
                timesteps = torch.tensor([start_step])
            t0 = timesteps[:1].repeat(len(cond))
            sample = scheduler.add_noise(tgt_norm(x).repeat_interleave(samples, dim=0), noise, t0)
        else:
            sample = noise
        for t in timesteps:
            t_batch = torch.full((len(sample),), int(t), device=self.device, dtype=torch.long)
            output = self.guided_output(sample, t_batch, cond, d, guidance)
            variance_noise = None
            if eta > 0:
                variance_noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
            sample = scheduler.step(output, int(t), sample, eta=eta, variance_noise=variance_noise).prev_sample
        # the last DDIM step (alpha_prev = 1) returns the clean estimate; average the K samples on the sphere
        unit = tgt_norm.inverse(sample).view(n, samples, tgt_dim).mean(dim=1)
        return torch.nn.functional.normalize(unit, dim=-1)

    def _sampler(self, steps: int):
        """DDIM scheduler with S steps set, built once per S (building one costs about a millisecond)."""
        cache = self.__dict__.setdefault("_samplers", {})
        if steps not in cache:
            cache[steps] = sampling_scheduler(self.config.schedule, steps)
        return cache[steps]

    def guided_output(self, sample, t, cond, direction: int, guidance: float) -> torch.Tensor:
        """Network output with classifier-free guidance: u + w (c - u)."""
        net = self.network
        if guidance == 1.0:
            return net(sample, t, cond, direction)
        if guidance == 0.0:
            return net(sample, t, None, direction)
        both = net(torch.cat([sample, sample]), torch.cat([t, t]), torch.cat([cond, cond]), direction,
                   keep=torch.cat([torch.ones(len(t), dtype=torch.bool, device=t.device), torch.zeros(len(t), dtype=torch.bool, device=t.device)]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    # -- reranking signal ----------------------------------------------------------------

    @torch.no_grad()
    def denoise_error(self, target, conditions, timesteps, noise, direction: str | int = "from-audio",
                      max_rows: int | None = None) -> np.ndarray:
        """Mean denoising error of each (target, condition) pair over shared (timestep, noise) pairs.

        target [Q, d_t] (e.g. text queries), conditions [Q, N, d_c] or [N, d_c] shared
        (e.g. the N candidate audio vectors), timesteps [J] ints, noise [J, d_t].
        Each target is noised J ways (the same J for every candidate); the network,
        conditioned on each candidate, predicts its training target; the error is the
        squared error per dimension, averaged over dims and the J draws -> [Q, N].
        A lower error means the candidate explains the query better.
        """
        d = direction_index(direction)
        src_dim, tgt_dim = self.dims(d)
        target = self._check(target, tgt_dim, "denoise_error targets")
        conditions = (torch.tensor(np.asarray(conditions, dtype=np.float32)) if not isinstance(conditions, torch.Tensor) else conditions.float()).to(self.device)
        if conditions.ndim == 2:
            conditions = conditions[None].expand(len(target), -1, -1)
        if conditions.ndim != 3 or conditions.shape[0] != len(target) or conditions.shape[2] != src_dim:
            raise DiffgapError(f"conditions have shape {tuple(conditions.shape)}; expected [{len(target)}, N, {src_dim}]")
        timesteps = torch.as_tensor(timesteps, dtype=torch.long, device=self.device).reshape(-1)
        noise = torch.as_tensor(noise, dtype=torch.float32).to(self.device).reshape(len(timesteps), tgt_dim)
        q, n_cand, j = len(target), conditions.shape[1], len(timesteps)
        x0 = self.norms[d](target)  # [Q, d_t]
        cond = self.norms[1 - d](conditions.reshape(-1, src_dim)).reshape(q, n_cand, src_dim)
        sched = self.train_scheduler
        flat = (x0[:, None].expand(q, j, tgt_dim).reshape(-1, tgt_dim), noise[None].expand(q, j, tgt_dim).reshape(-1, tgt_dim),
                timesteps[None].expand(q, j).reshape(-1))  # (x0, noise, t) for every (query, draw)
        x_t = sched.add_noise(*flat).view(q, j, tgt_dim)
        goal = prediction_target(sched, *flat).view(q, j, tgt_dim)
        errors = torch.empty(q, n_cand, device=self.device)
        per_query = n_cand * j
        if max_rows is None:  # rows per forward pass: large chunks pay on a GPU; on a CPU they thrash the caches
            max_rows = 262_144 if self.device.type == "cuda" else 16_384  # ~1.8x faster per query than 262,144 on 2 CPU cores
        chunk = max(1, max_rows // per_query)
        for lo in range(0, q, chunk):
            hi = min(q, lo + chunk)
            m = hi - lo
            xt = x_t[lo:hi, None].expand(m, n_cand, j, tgt_dim).reshape(-1, tgt_dim)
            tt = timesteps[None, None].expand(m, n_cand, j).reshape(-1)
            cc = cond[lo:hi, :, None].expand(m, n_cand, j, src_dim).reshape(-1, src_dim)
            pred = self.network(xt, tt, cc, d).view(m, n_cand, j, tgt_dim)
            errors[lo:hi] = (pred - goal[lo:hi, None]).pow(2).mean(dim=(-1, -2))
        return errors.cpu().numpy()


def _check_shapes(config: TranslatorConfig, state: dict, source: Path) -> None:
    """Refuse a config.json that disagrees with the tensors in model.safetensors before anything is allocated.

    The network is first built on the "meta" device (shapes, no memory); the number of blocks is
    checked against the file's keys first, so a tampered config can neither allocate nor loop for long.
    """
    for side, space, dim in (("a", config.space_a, config.network.dim_a), ("b", config.space_b, config.network.dim_b)):
        if space.dim != dim:
            raise DiffgapError(f"{source.parent / CONFIG}: spaces.{side}.dim = {space.dim} but network.dim_{side} = {dim}; "
                               "the folder was modified: retrain or restore it")
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if config.network.blocks != len(blocks):
        raise DiffgapError(f"{source}: the weights hold {len(blocks)} blocks, config.json says network.blocks = "
                           f"{config.network.blocks}; the folder was modified: retrain or restore it")
    with torch.device("meta"):
        expected = Denoiser(config.network)
    _load_into(expected, state, source, shapes_only=True)


def _load_into(module: torch.nn.Module, state: dict, source: Path, shapes_only: bool = False) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise DiffgapError(f"{source}: weights lack {missing[0]} (and {len(missing) - 1} more); the file does not match its config.json")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise DiffgapError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, config.json implies {tuple(v.shape)}")
    if not shapes_only:
        module.load_state_dict({k: state[k] for k in expected})


def save_checkpoint(path: str | Path, config: TranslatorConfig, ema_state: dict, model_state: dict, norms) -> Path:
    """Write model.safetensors (ema.*, model.*, norm_a.*, norm_b.*) then config.json into `path`.

    Each file is written to a temporary file and renamed into place, so a reader sees
    old or new files, never half of one. Other files in the folder (a training run's
    state and logs) are left alone.
    """
    from safetensors.torch import save

    from diffgap_search.storage import write_file_atomic, write_json_atomic

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema_state.items()}
    tensors.update({f"model.{k}": v.detach().cpu().clone() for k, v in model_state.items()})  # may alias ema
    for name, norm in zip(("norm_a", "norm_b"), norms):
        for k, v in norm.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    blob = save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    write_file_atomic(path / WEIGHTS, lambda fh: fh.write(blob))
    write_json_atomic(config.to_dict(), path / CONFIG)
    return path
