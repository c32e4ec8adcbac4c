"""Calibration: choose the fusion weights, N and S of each direction on validation pairs, through the Engine.

The pairs' gallery goes into an exact in-memory `Index` and is searched by the very
chain `query` runs (`Engine.translate`, `Engine.candidates`, `Engine.score`,
`signals.combine`):

    to-audio    every `b` (caption, video) is a query; its answer is its clip's `a`
    from-audio  every clip's `a` is a query; its answers are the clip's `b` rows (best one counts)

For each S of the grid the queries are translated once; for each N the candidate set is
exactly what the engine takes (translated top-N, united with raw top-N when `a` and `b`
share a space); every signal is computed once over the union of all candidate sets, and
every weight vector of the grid (zero included) is scored by R@1, ties broken by mAP@10,
then by cost (no diffusion, fewer steps, fewer candidates).

The grid holds, for every (S, N), raw cosine alone (when the spaces are one) and
translation alone. With N >= 10 those rank the top 10 exactly as plain search does, so
the chosen settings are never below raw search nor below translation alone on the data
they were calibrated on. The result is stored beside the translator in calibration.json.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffgap_search.errors import DiffgapError
from diffgap_search.metrics import recall_at
from diffgap_search.pairs import Pairs
from diffgap_search.signals import SIGNALS, FusionConfig, combine, standardize
from diffgap_search.types import Direction

CALIBRATION = "calibration.json"
QUERY_CHUNK = 256  # queries per signal-scoring call (bounds the [chunk, U, d] candidate tensor; progress granularity)


@dataclass(frozen=True)
class CalibrationGrid:
    candidates: tuple[int, ...] = (10, 20, 50, 100)  # N; values below 10 would change mAP@10, so 10 is the floor
    steps: tuple[int, ...] = (1, 2, 5, 10)  # S
    weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)  # each signal's weight takes these values


@dataclass
class Calibration:
    direction: Direction
    config: FusionConfig  # the chosen settings
    scores: dict[str, dict]  # each signal alone and fused, at the chosen N and S
    queries: int
    gallery: int
    source: str

    def to_section(self) -> dict:
        return {"settings": self.config.to_dict(),
                "validation": {"source": self.source, "queries": self.queries, "gallery": self.gallery, "scores": self.scores}}


def shares_space(pairs: Pairs) -> bool:
    """Raw cosine between b and a means something: one dim, and one space name when both are known."""
    return pairs.dim_a == pairs.dim_b and (pairs.space_a == pairs.space_b if pairs.space_a and pairs.space_b else True)


def weight_vectors(values: tuple[float, ...], with_raw: bool, with_diffusion: bool = True) -> list[dict[str, float]]:
    """Every combination of weights, zero included, but not all zero; scaled copies of one direction dropped."""
    seen, out = set(), []
    for translated, raw, diffusion in itertools.product(values, values if with_raw else (0.0,), values if with_diffusion else (0.0,)):
        top = max(translated, raw, diffusion)
        if top <= 0:
            continue
        key = tuple(round(v / top, 6) for v in (raw, translated, diffusion))
        if key not in seen:
            seen.add(key)
            out.append({"raw": raw, "translated": translated, "diffusion": diffusion})
    return out


def fused_ranks(fused: np.ndarray, mask: np.ndarray, correct: np.ndarray, gallery: int) -> np.ndarray:
    """Rank of each query's best correct candidate under `fused` [Q, U]: how many other (not correct)
    candidates score at least as high (ties against the query); no correct candidate ranks `gallery`."""
    hit = correct & mask
    best = np.where(hit, fused, -np.inf).max(axis=1)
    rank = (mask & ~correct & (fused >= best[:, None])).sum(axis=1)
    return np.where(hit.any(axis=1), rank, gallery)


def member(pool: np.ndarray, chosen: np.ndarray, size: int) -> np.ndarray:
    """Row-wise: is pool[q, j] among chosen[q]? ([Q, U], [Q, n], positions < size; -1 = none) -> bool [Q, U]."""
    table = np.zeros((len(pool), size + 1), dtype=bool)
    np.put_along_axis(table, np.where(chosen >= 0, chosen, size), True, axis=1)
    table[:, size] = False
    return np.take_along_axis(table, np.where(pool >= 0, pool, size), axis=1)


def _score_key(metrics: dict, weights: dict, steps: int, n: int) -> tuple:
    return (metrics["R@1"], metrics["mAP@10"], -(weights["diffusion"] > 0), -steps, -n)


def calibration_task(translator, pairs: Pairs, direction: Direction):
    """(engine over an exact in-memory gallery, the queries, the route, query groups, gallery groups)."""
    from diffgap_search.engine import Engine, Route
    from diffgap_search.index import Index
    from diffgap_search.queries import Queries

    gallery, _ = pairs.gallery()  # [G, d_a] one vector per clip
    clips = np.arange(len(gallery))
    if direction is Direction.TO_AUDIO:
        items, item_group, queries, query_group = gallery, clips, pairs.b, pairs.group
    else:
        items, item_group, queries, query_group = pairs.b, pairs.group, gallery, clips
    index = Index.build(items, None, index_type="flat", device="cpu")
    engine = Engine(index, translator, configs={})
    return engine, Queries(queries), Route(direction, shares_space(pairs)), query_group, item_group


def calibrate(translator, pairs: Pairs, base: FusionConfig | None = None, grid: CalibrationGrid = CalibrationGrid(),
              *, direction: Direction | str = Direction.TO_AUDIO, progress: bool = False, log=lambda s: None) -> Calibration:
    """Search the grid on `pairs` for one direction and return the best settings with their scores."""
    from diffgap_search.engine import unite
    from diffgap_search.queries import Queries

    direction = Direction.of(direction)
    _check_pairs(translator, pairs, direction)
    base = base or default_configs(translator, stored=False)[direction]
    engine, queries, route, query_group, item_group = calibration_task(translator, pairs, direction)
    g = len(engine.index)
    n_values = sorted({min(max(n, 10), g) for n in grid.candidates})
    rerank = translator.config.bidirectional  # a one-way translator has no reverse direction to rerank with
    q = len(queries)
    bar = tqdm(total=len(grid.steps) + q, desc=f"calibrate {direction.value}", unit="query", disable=not progress)

    # 1. translations per S and the engine's candidate set per (S, N); the pool is their union
    translated, sets = {}, {}
    for s in grid.steps:
        translated[s] = engine.translate(queries, route, replace(base, steps=s))
        for n in n_values:
            sets[s, n] = engine.candidates(queries, translated[s], route, n)
        bar.update(1)
    pool = unite(*(sets[s, n_values[-1]] for s in grid.steps))  # [Q, U]
    valid = pool >= 0
    correct = valid & (item_group[np.maximum(pool, 0)] == query_group[:, None])

    # 2. every signal over the pool, once (the translated cosine once per S)
    log(f"signals of {int(valid.sum()):,} candidates ({q:,} queries, {g:,}-way) ...")
    once = [n for n in SIGNALS if n != "translated" and (n != "diffusion" or rerank)]
    signals = {name: np.empty(pool.shape, np.float32) for name in once}
    cosine = {s: np.empty(pool.shape, np.float32) for s in grid.steps}
    for lo in range(0, q, QUERY_CHUNK):
        rows = slice(lo, lo + QUERY_CHUNK)
        chunk = Queries(queries.vectors[rows])
        for name, values in engine.score(chunk, translated[grid.steps[0]][rows], pool[rows], route, base, once).items():
            signals[name][rows] = values
        for s in grid.steps:
            cosine[s][rows] = engine.score(chunk, translated[s][rows], pool[rows], route, base, ["translated"])["translated"]
        bar.update(len(chunk))
    bar.close()

    # 3. every (S, N, weights): z-scores per (S, N) once, then the weighted sums
    best = None
    for s, n in itertools.product(grid.steps, n_values):
        mask = member(pool, sets[s, n], g)
        z = {name: standardize(v, mask) for name, v in {**signals, "translated": cosine[s]}.items()}
        for weights in weight_vectors(grid.weights, route.raw and "raw" in z, "diffusion" in z):
            metrics = recall_at(fused_ranks(combine(z, weights, mask), mask, correct, g))
            key = _score_key(metrics, weights, s, n)
            if best is None or key > best[0]:
                best = (key, s, n, weights, z, mask)
    _, s, n, weights, z, mask = best
    scores = {name: _metrics(recall_at(fused_ranks(combine(z, {name: 1.0}, mask), mask, correct, g))) for name in SIGNALS if name in z}
    scores["fused"] = _metrics(recall_at(fused_ranks(combine(z, weights, mask), mask, correct, g)))
    config = replace(base, candidates=n, steps=s).with_weights(**weights)
    return Calibration(direction, config, scores, q, g, pairs.source)


def calibrate_directions(translator, pairs: Pairs, base: dict | None = None, grid: CalibrationGrid = CalibrationGrid(),
                         *, progress: bool = False, log=lambda s: None) -> dict[Direction, Calibration]:
    """Both directions (from-audio only when the translator has it)."""
    directions = [Direction.TO_AUDIO] + ([Direction.FROM_AUDIO] if translator.config.bidirectional else [])
    return {d: calibrate(translator, pairs, (base or {}).get(d), grid, direction=d, progress=progress, log=log)
            for d in directions}


def _metrics(m: dict) -> dict:
    return {k: m[k] for k in ("R@1", "R@5", "R@10", "mAP@10", "N")}


def _check_pairs(translator, pairs: Pairs, direction: Direction) -> None:
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
    if direction is Direction.FROM_AUDIO and not translator.config.bidirectional:
        raise DiffgapError("this translator has no from-audio direction (trained with --no-bidirectional)")


# ---------------------------------------------------------------------------
# storage: calibration.json beside the translator
# ---------------------------------------------------------------------------


def write_calibration(model: str | Path, calibrations: dict[Direction, Calibration] | Calibration) -> Path:
    """Write `model`/calibration.json atomically ({direction: {settings, validation}}); other directions are kept."""
    from diffgap_search.storage import write_json_atomic

    if isinstance(calibrations, Calibration):
        calibrations = {calibrations.direction: calibrations}
    path = Path(model) / CALIBRATION
    sections = _read_sections(path) if path.exists() else {}
    sections.update({d.value: c.to_section() for d, c in calibrations.items()})
    return write_json_atomic({"format": "diffgap-calibration", "format_version": 1, **sections}, path)


def _read_sections(path: Path) -> dict:
    from diffgap_search.storage import read_json

    raw = read_json(path, "run `diffgap-search calibrate` again")
    if not isinstance(raw, dict):
        raise DiffgapError(f"{path}: not a calibration file; run `diffgap-search calibrate` again")
    return {k: v for k, v in raw.items() if k in {d.value for d in Direction}}


def load_calibration(model: str | Path) -> dict[Direction, FusionConfig]:
    """The settings stored in `model`/calibration.json, per direction ({} when not calibrated).

    A translator calibrated by the first wave kept its to-audio settings in config.json's
    "fusion" section; those are read too.
    """
    path = Path(model) / CALIBRATION
    sections = _read_sections(path) if path.exists() else {}
    if not sections:
        legacy = _legacy_fusion(Path(model))
        sections = {Direction.TO_AUDIO.value: legacy} if legacy else {}
    out = {}
    for name, section in sections.items():
        try:
            out[Direction.of(name)] = FusionConfig.from_dict(section["settings"], f"{path} {name}.settings")
        except (KeyError, TypeError, ValueError) as exc:
            raise DiffgapError(f"{path}: {exc}; run `diffgap-search calibrate` again") from None
    return out


def _legacy_fusion(model: Path) -> dict | None:
    try:
        return json.loads((model / "config.json").read_text()).get("fusion")
    except (OSError, ValueError, AttributeError):
        return None


def default_configs(translator, *, stored: bool = True) -> dict[Direction, FusionConfig]:
    """Each direction's settings: the calibration stored beside the translator (when `stored`), else the
    defaults with the sampling (S, K, w) the translator's validation chose at train time."""
    if translator is None:
        return {}
    calibrated = load_calibration(translator.path) if stored and translator.path is not None else {}
    s = translator.sampling
    fallback = FusionConfig(steps=s.steps, samples=s.samples, guidance=s.guidance)
    return {d: calibrated.get(d, fallback) for d in Direction}
