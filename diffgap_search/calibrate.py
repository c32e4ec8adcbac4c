"""Calibration: choose the fusion weights, N and S on a validation pairs file.

Every `b` of the pairs file is a query whose answer is its clip's `a`; the gallery is
the file's unique clips, searched exactly. For each S of the grid the queries are
translated once; for each N the candidates are the translated top-N, united with the
raw top-N when `a` and `b` share a space; the three signals (raw cosine, translated
cosine, diffusion score) are computed once over the union of every candidate set, and
every weight vector of the grid (zero included) is scored by R@1, ties broken by
mAP@10, then by cost (no diffusion, fewer steps, fewer candidates).

The grid holds, for every (S, N), the weight vectors (1, 0, 0) = raw cosine alone
(when the spaces are one) and (0, 1, 0) = translation alone. With N >= 10 those rank
the top 10 exactly as plain cosine search does, so the chosen settings are never
below raw search nor below translation alone on the data they were calibrated on.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from diffgap_search.errors import DiffgapError
from diffgap_search.metrics import recall_at
from diffgap_search.pairs import Pairs
from diffgap_search.rerank import SIGNALS, FusionConfig, diffusion_scores, standardize
from diffgap_search.search import unite

QUERY_CHUNK = 256  # queries per diffusion-scoring call (bounds the [chunk, U, d] candidate tensor)


@dataclass(frozen=True)
class CalibrationGrid:
    candidates: tuple[int, ...] = (10, 20, 50, 100)  # N; values below 10 would change mAP@10, so 10 is the floor
    steps: tuple[int, ...] = (1, 2, 5, 10)  # S
    weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)  # each signal's weight takes these values


@dataclass
class Calibration:
    config: FusionConfig  # the chosen settings
    scores: dict[str, dict]  # raw / translated / diffusion alone and fused, at the chosen N and S
    queries: int
    gallery: int
    source: str

    def to_section(self) -> dict:
        """The "fusion" section of the translator's config.json."""
        return {"settings": self.config.to_dict(),
                "validation": {"source": self.source, "queries": self.queries, "gallery": self.gallery, "scores": self.scores}}


def shares_space(pairs: Pairs) -> bool:
    """Raw cosine between b and a means something: one dim, and one space name when both are known."""
    return pairs.dim_a == pairs.dim_b and (pairs.space_a == pairs.space_b if pairs.space_a and pairs.space_b else True)


def weight_vectors(values: tuple[float, ...], with_raw: bool, with_diffusion: bool = True) -> list[dict[str, float]]:
    """Every combination of weights, zero included, but not all zero; scaled copies of one direction dropped."""
    seen, out = set(), []
    for combo in itertools.product(values, values if with_raw else (0.0,), values if with_diffusion else (0.0,)):
        translated, raw, diffusion = combo
        top = max(combo)
        if top <= 0:
            continue
        key = tuple(round(v / top, 6) for v in (raw, translated, diffusion))
        if key not in seen:
            seen.add(key)
            out.append({"raw": raw, "translated": translated, "diffusion": diffusion})
    return out


def top_positions(scores: np.ndarray, n: int) -> np.ndarray:
    """Exact top-n gallery rows of each query, best first: [Q, G] -> [Q, n]."""
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def list_rank(pool: np.ndarray, ordered: np.ndarray, gallery: int) -> np.ndarray:
    """Rank of each pooled row in a query's ordered top list, `gallery` when absent: [Q, U]."""
    rank = np.full((len(pool), gallery + 1), gallery, dtype=np.int64)  # column `gallery` absorbs the -1 padding
    np.put_along_axis(rank, ordered, np.arange(ordered.shape[1])[None].repeat(len(pool), 0), axis=1)
    return np.take_along_axis(rank, np.where(pool >= 0, pool, gallery), axis=1)


def fused_ranks(z: dict[str, np.ndarray], weights: dict[str, float], mask: np.ndarray, target_col: np.ndarray, gallery: int) -> np.ndarray:
    """Rank of each query's target under the fused score; ties count against it, a target
    outside the candidates ranks `gallery` (a miss for R@k and mAP@10)."""
    fused = sum(w * z[name] for name, w in weights.items() if w and name in z)
    rows = np.arange(len(mask))
    present = (target_col >= 0) & mask[rows, np.maximum(target_col, 0)]
    own = fused[rows, np.maximum(target_col, 0)]
    rank = (mask & (fused >= own[:, None])).sum(axis=1) - 1
    return np.where(present, rank, gallery)


def _score_key(metrics: dict, weights: dict, steps: int, n: int) -> tuple:
    return (metrics["R@1"], metrics["mAP@10"], -(weights["diffusion"] > 0), -steps, -n)


def calibrate(translator, pairs: Pairs, base: FusionConfig = FusionConfig(), grid: CalibrationGrid = CalibrationGrid(),
              *, log=lambda s: None) -> Calibration:
    """Search the grid on `pairs` (b queries, a gallery) and return the best settings with their scores."""
    _check_pairs(translator, pairs)
    gallery, target = pairs.gallery()  # [G, d_a], [Q]
    queries, g = pairs.b, len(gallery)
    raw = shares_space(pairs)
    n_values = sorted({min(max(n, 10), g) for n in grid.candidates})
    n_max = n_values[-1]

    # 1. exact scores of every query against the gallery, raw and translated for each S
    cosines = {("raw", 0): queries @ gallery.T} if raw else {}
    for s in grid.steps:
        translated = translator.translate(queries, "to-audio", steps=s, samples=base.samples, guidance=base.guidance,
                                          generator=torch.Generator().manual_seed(base.seed))
        cosines[("translated", s)] = translated @ gallery.T
    # 2. the pool: every candidate any (S, N) could hold, and each pooled row's rank in each top list
    tops = {key: top_positions(c, n_max) for key, c in cosines.items()}
    pool = unite(*tops.values())  # [Q, U]
    valid = pool >= 0
    ranks = {key: list_rank(pool, top, g) for key, top in tops.items()}
    pooled = {key: np.take_along_axis(c, np.maximum(pool, 0), axis=1) for key, c in cosines.items()}
    target_col = _column_of(pool, target)
    # 3. the diffusion score of every pooled candidate, once
    rerank = translator.config.bidirectional  # a one-way translator has no reverse direction to rerank with
    if rerank:
        log(f"diffusion scores of {int(valid.sum())} candidates ({len(queries)} queries) ...")
    diffusion = _diffusion_over_pool(translator, queries, gallery, pool, base) if rerank else np.zeros(pool.shape)
    # 4. every (S, N, weights): z-scores per (S, N) once, then the weighted sums
    best = None
    for s, n in itertools.product(grid.steps, n_values):
        mask = valid & (ranks[("translated", s)] < n)
        if raw:
            mask |= valid & (ranks[("raw", 0)] < n)
        z = {"translated": standardize(pooled[("translated", s)], mask)}
        if rerank:
            z["diffusion"] = standardize(diffusion, mask)
        if raw:
            z["raw"] = standardize(pooled[("raw", 0)], mask)
        for weights in weight_vectors(grid.weights, raw, rerank):
            metrics = recall_at(fused_ranks(z, weights, mask, target_col, g))
            key = _score_key(metrics, weights, s, n)
            if best is None or key > best[0]:
                best = (key, s, n, weights, z, mask)
    _, s, n, weights, z, mask = best
    scores = {name: _metrics(recall_at(fused_ranks(z, {name: 1.0}, mask, target_col, g))) for name in SIGNALS if name in z}
    scores["fused"] = _metrics(recall_at(fused_ranks(z, weights, mask, target_col, g)))
    config = replace(base, candidates=n, steps=s, **weights)
    return Calibration(config, scores, len(queries), g, pairs.source)


def _metrics(m: dict) -> dict:
    return {k: m[k] for k in ("R@1", "R@5", "R@10", "mAP@10", "N")}


def _column_of(pool: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Column of each query's target in its pool row, -1 when absent: [Q]."""
    hit = pool == target[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def _diffusion_over_pool(translator, queries, gallery, pool, config: FusionConfig) -> np.ndarray:
    out = np.empty(pool.shape, dtype=np.float32)
    for lo in range(0, len(queries), QUERY_CHUNK):
        rows = slice(lo, lo + QUERY_CHUNK)
        out[rows] = diffusion_scores(translator, queries[rows], gallery[np.maximum(pool[rows], 0)], config, "from-audio")
    return out


def _check_pairs(translator, pairs: Pairs) -> None:
    a, b = translator.config.space_a, translator.config.space_b
    if (pairs.dim_a, pairs.dim_b) != (a.dim, b.dim):
        raise DiffgapError(f"{pairs.source}: pairs have dims a={pairs.dim_a}, b={pairs.dim_b}, the translator expects "
                           f"a={a.dim}, b={b.dim}; calibrate on pairs of the spaces it was trained on")
    for side, ours, theirs in (("a", a.name, pairs.space_a), ("b", b.name, pairs.space_b)):
        if ours and theirs and ours != theirs:
            raise DiffgapError(f"{pairs.source}: column {side} is in space {theirs!r}, the translator's is {ours!r}; "
                               "calibrate on pairs of the spaces it was trained on")
    if int(pairs.group.max()) + 1 < 2:
        raise DiffgapError(f"{pairs.source}: all pairs belong to one clip; calibration needs a gallery of several clips")


def write_calibration(model: str | Path, calibration: Calibration) -> Path:
    """Store the calibration as the "fusion" section of `model`/config.json, atomically; every other key is kept."""
    from diffgap_search.diffusion.translator import CONFIG, TranslatorConfig
    from diffgap_search.storage import write_json_atomic

    path = Path(model) / CONFIG
    raw = json.loads(path.read_text())
    raw["fusion"] = calibration.to_section()
    TranslatorConfig.from_dict(raw, str(path))  # what we write must load
    return write_json_atomic(raw, path)
