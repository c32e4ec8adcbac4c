"""Signals that score a query's candidates, and their fusion (DESIGN.md, "Diffusion reranking").

A signal is one class with a `name`, a test of whether it applies to a search
(`available`) and a `score` over a block of candidates. The registry `SIGNALS` lists
them in order; `FusionConfig.weights` maps signal names to weights, so a new signal
is one class plus one registration here:

    raw         cosine of the raw query and the candidate (only when both live in one space)
    translated  cosine of the translated query (S DDIM steps, K samples) and the candidate
    diffusion   the reverse direction (query <- candidate) denoises the query, noised with a
                fixed set of J (timestep, noise) pairs shared by every candidate, conditioned
                on the candidate; score = -(mean squared error). A candidate that explains the
                query lets the network recover it better.

Each signal is standardized per query over that query's candidates (z-score; a signal
that is constant over them contributes 0), and the fused score is the weighted sum.
The weights, N, S, K, guidance and J form a `FusionConfig`; `calibrate` chooses them
on validation pairs and stores them beside the translator (calibration.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np

from diffgap_search.types import Direction


# ---------------------------------------------------------------------------
# the context a signal scores in
# ---------------------------------------------------------------------------


@dataclass
class Batch:
    """One block of queries and their candidates, as the engine's chain hands it to signals."""

    queries: np.ndarray  # [b, d_q] raw query vectors (unit rows)
    translated: np.ndarray | None  # [b, d_index] translated queries, None without a translator
    vectors: np.ndarray  # [b, M, d_index] stored vectors of the candidates
    direction: Direction | None  # translation direction, None without a translator
    raw: bool  # query and index share a space
    translator: object | None
    config: "FusionConfig"


class Signal:
    """A score of each (query, candidate) pair; higher = better."""

    name: ClassVar[str]

    def available(self, batch: Batch) -> bool:
        raise NotImplementedError

    def score(self, batch: Batch) -> np.ndarray:  # [b, M]
        raise NotImplementedError


class RawCosine(Signal):
    name = "raw"

    def available(self, batch: Batch) -> bool:
        return batch.raw

    def score(self, batch: Batch) -> np.ndarray:
        return np.einsum("qd,qmd->qm", batch.queries, batch.vectors)


class TranslatedCosine(Signal):
    name = "translated"

    def available(self, batch: Batch) -> bool:
        return batch.translated is not None

    def score(self, batch: Batch) -> np.ndarray:
        return np.einsum("qd,qmd->qm", batch.translated, batch.vectors)


class DiffusionScore(Signal):
    name = "diffusion"

    def available(self, batch: Batch) -> bool:
        return batch.direction is not None and batch.translator.config.bidirectional

    def score(self, batch: Batch) -> np.ndarray:
        return diffusion_scores(batch.translator, batch.queries, batch.vectors, batch.config, batch.direction.reverse)


SIGNALS: dict[str, Signal] = {s.name: s for s in (RawCosine(), TranslatedCosine(), DiffusionScore())}


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------


def _default_weights() -> dict[str, float]:
    return {"raw": 0.0, "translated": 1.0, "diffusion": 0.5}


@dataclass(frozen=True)
class FusionConfig:
    """How a query is searched and its candidates scored; JSON round-trip via to_dict/from_dict."""

    weights: dict[str, float] = field(default_factory=_default_weights)  # signal name -> weight (0: not computed)
    candidates: int = 100  # N: top-N of the translated query (united with top-N of the raw query)
    steps: int = 5  # S: DDIM steps of the translation
    samples: int = 1  # K: translations averaged per query
    guidance: float = 1.0  # classifier-free guidance scale of the translation
    timesteps: int = 8  # J: (timestep, noise) draws of the diffusion score
    t_min: int = 100  # the J timesteps are spread evenly over [t_min, t_max]
    t_max: int = 600
    seed: int = 0  # seed of the translation noise and of the J noise draws

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, 0.0))

    def with_weights(self, **weights: float) -> "FusionConfig":
        return replace(self, weights={**{n: 0.0 for n in SIGNALS}, **weights})

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["weights"] = dict(self.weights)
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str = "fusion settings") -> "FusionConfig":
        """Build and validate; ValueError naming the first bad or unknown setting.

        Files written before signals had a `weights` object kept raw/translated/diffusion
        at the top level; those still load.
        """
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected an object of settings, got {type(d).__name__}")
        d = dict(d)
        legacy = {name: d.pop(name) for name in list(d) if name in SIGNALS}
        weights = d.pop("weights", None)
        if weights is None:
            weights = {**_default_weights(), **legacy} if legacy else _default_weights()
        if not isinstance(weights, dict):
            raise ValueError(f"{source}: weights must be an object of signal name -> number")
        known = {f.name for f in fields(cls)} - {"weights"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting {unknown[0]!r}; known: weights, {', '.join(sorted(known))}")
        config = cls(weights=dict(weights), **d)
        check_fusion(config, source)
        return config


def _number(value, lo: float = 0) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= lo


def check_fusion(config: FusionConfig, source: str = "fusion settings") -> None:
    """Raise ValueError naming the first unusable setting."""
    for name, value in config.weights.items():
        if name not in SIGNALS:
            raise ValueError(f"{source}: weights has unknown signal {name!r}; known: {', '.join(SIGNALS)}")
        if not _number(value):
            raise ValueError(f"{source}: weights.{name} = {value!r} is not a finite number >= 0")
    if not _number(config.guidance):
        raise ValueError(f"{source}: guidance = {config.guidance!r} is not a finite number >= 0")
    for name, lo in (("candidates", 1), ("steps", 1), ("samples", 1), ("timesteps", 1), ("t_min", 0), ("t_max", 0), ("seed", 0)):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{source}: {name} = {value!r} is not an integer >= {lo}")
    if config.t_min > config.t_max:
        raise ValueError(f"{source}: t_min = {config.t_min} is above t_max = {config.t_max}")
    if not any(config.weights.values()):
        raise ValueError(f"{source}: every weight is 0; give at least one signal a positive weight")


# ---------------------------------------------------------------------------
# the diffusion signal
# ---------------------------------------------------------------------------


def noise_draws(config: FusionConfig, dim: int, train_timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (timestep, noise) pairs shared by every candidate: timesteps [J] int64, noise [J, dim].

    Seeded by `config.seed` and independent of the queries, so a query's score of a
    candidate never depends on which other candidates or queries share the batch.
    """
    t_max = min(config.t_max, train_timesteps - 1)
    t_min = min(config.t_min, t_max)
    timesteps = np.round(np.linspace(t_min, t_max, config.timesteps)).astype(np.int64)
    noise = np.random.default_rng(config.seed).standard_normal((config.timesteps, dim)).astype(np.float32)
    return timesteps, noise


def diffusion_scores(translator, queries: np.ndarray, candidates: np.ndarray, config: FusionConfig,
                     direction: Direction | str = Direction.FROM_AUDIO) -> np.ndarray:
    """-(mean denoising error) of each query given each of its candidates: [Q, N].

    queries [Q, d_q] are the denoising targets (query side of `direction`), candidates
    [Q, N, d_c] the conditions; `direction` is the reverse of the translation direction
    (from-audio for text/video queries over an audio index).
    """
    direction = Direction.of(direction)
    target_dim = translator.dims(direction.value)[1]
    timesteps, noise = noise_draws(config, target_dim, translator.config.schedule.train_timesteps)
    return -translator.denoise_error(queries, candidates, timesteps, noise, direction.value)


# ---------------------------------------------------------------------------
# fusion
# ---------------------------------------------------------------------------


def standardize(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row z-score over the entries where `mask` is True: [Q, N] -> [Q, N] float64.

    A row whose valid entries are all equal (zero variance, or a single candidate)
    becomes 0: a signal that cannot tell the candidates apart must not move the fusion.
    Masked-out entries are 0.
    """
    x = np.where(mask, scores.astype(np.float64), 0.0)
    count = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    mean = x.sum(axis=1, keepdims=True) / count
    centred = np.where(mask, x - mean, 0.0)
    std = np.sqrt((centred**2).sum(axis=1, keepdims=True) / count)
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, np.inf)  # constant row -> 0
    return centred / scale


def fuse(signals: dict[str, np.ndarray], weights: dict[str, float], mask: np.ndarray) -> np.ndarray:
    """Weighted sum of the per-query z-scores of the signals: [Q, N] float64; -inf where masked.

    Signals absent from `signals` and signals of weight 0 take no part.
    """
    z = {name: standardize(scores, mask) for name, scores in signals.items() if weights.get(name)}
    return combine(z, weights, mask)


def combine(z: dict[str, np.ndarray], weights: dict[str, float], mask: np.ndarray) -> np.ndarray:
    """Weighted sum of already standardized signals (calibration scores many weight vectors over one z)."""
    fused = np.zeros(mask.shape, dtype=np.float64)
    for name, scores in z.items():
        w = float(weights.get(name, 0.0))
        if w:
            fused += w * scores
    return np.where(mask, fused, -np.inf)
