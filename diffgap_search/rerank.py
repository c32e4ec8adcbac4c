"""Candidate scoring and fusion: the second use of the DiffGAP translator.

Three signals score each query's candidates (DESIGN.md, "Diffusion reranking"):

    raw         cosine of the raw query and the candidate (only when both live in one space)
    translated  cosine of the translated query (S DDIM steps, K samples) and the candidate
    diffusion   the reverse direction (query <- candidate) denoises the query, noised with a
                fixed set of J (timestep, noise) pairs shared by every candidate, conditioned
                on the candidate; score = -(mean squared error). A candidate that explains the
                query lets the network recover it better.

Each signal is standardized per query over that query's candidates (z-score; a signal
that is constant over them contributes 0), and the fused score is the weighted sum.
The weights, N, S, K, guidance and J form a `FusionConfig`; calibration chooses them
on a validation pairs file and stores them in the translator's config.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

SIGNALS = ("raw", "translated", "diffusion")


@dataclass(frozen=True)
class FusionConfig:
    """How a query is searched and its candidates scored; JSON round-trip via to_dict/from_dict."""

    raw: float = 0.0  # weight of the raw-query cosine (used only when query and index share a space)
    translated: float = 1.0  # weight of the translated-query cosine
    diffusion: float = 0.5  # weight of the diffusion score (0: no reranking forward passes at all)
    candidates: int = 100  # N: top-N of the translated query (united with top-N of the raw query)
    steps: int = 5  # S: DDIM steps of the translation
    samples: int = 1  # K: translations averaged per query
    guidance: float = 1.0  # classifier-free guidance scale of the translation
    timesteps: int = 8  # J: (timestep, noise) draws of the diffusion score
    t_min: int = 100  # the J timesteps are spread evenly over [t_min, t_max]
    t_max: int = 600
    seed: int = 0  # seed of the translation noise and of the J noise draws

    def weights(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in SIGNALS}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "fusion settings") -> "FusionConfig":
        """Build and validate; ValueError naming the first bad or unknown setting."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected an object of settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        config = cls(**d)
        check_fusion(config, source)
        return config


def check_fusion(config: FusionConfig, source: str = "fusion settings") -> None:
    """Raise ValueError naming the first unusable setting."""
    for name in SIGNALS + ("guidance",):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{source}: {name} = {value!r} is not a finite number >= 0")
    for name in ("candidates", "steps", "samples", "timesteps"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{source}: {name} = {value!r} is not a positive integer")
    for name in ("t_min", "t_max", "seed"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{source}: {name} = {value!r} is not an integer >= 0")
    if config.t_min > config.t_max:
        raise ValueError(f"{source}: t_min = {config.t_min} is above t_max = {config.t_max}")
    if not any(config.weights().values()):
        raise ValueError(f"{source}: every weight (raw, translated, diffusion) is 0; give at least one a positive weight")


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
                     direction: str = "from-audio") -> np.ndarray:
    """-(mean denoising error) of each query given each of its candidates: [Q, N].

    queries [Q, d_q] are the denoising targets (query side of `direction`), candidates
    [Q, N, d_c] the conditions; `direction` is the reverse of the translation direction
    ("from-audio" for text/video queries over an audio index). One batched call over
    candidates x timesteps (`Translator.denoise_error`).
    """
    target_dim = translator.dims(direction)[1]
    timesteps, noise = noise_draws(config, target_dim, translator.config.schedule.train_timesteps)
    return -translator.denoise_error(queries, candidates, timesteps, noise, direction)


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

    Signals absent from `signals` (raw when the spaces differ, diffusion when reranking is
    off) and signals of weight 0 take no part.
    """
    fused = np.zeros(mask.shape, dtype=np.float64)
    for name, scores in signals.items():
        w = float(weights.get(name, 0.0))
        if w:
            fused += w * standardize(scores, mask)
    return np.where(mask, fused, -np.inf)
