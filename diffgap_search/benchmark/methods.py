"""Benchmark methods: the baselines, the translator's scores, and the engine's chain over a test gallery."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diffgap_search.benchmark.data import Validation
from diffgap_search.benchmark.report import DIRECTIONS
from diffgap_search.metrics import audio_to_text_ranks, target_ranks, text_to_audio_ranks
from diffgap_search.pairs import Pairs
from diffgap_search.types import Direction

SAMPLES = (1, 4)  # K grid, chosen on validation
GUIDANCE = (1.0, 2.0, 4.0)  # w grid, chosen on validation


def _r1_key(ranks: np.ndarray) -> tuple:
    return float((ranks < 1).mean()), float((ranks < 10).mean())


def fit_baseline(method: str, fit: Pairs, val: Validation, reverse: bool, seed: int):
    """One baseline mapper (query->audio, or audio->query when `reverse`) and its chosen settings."""
    from diffgap_search.baselines import MeanShift, fit_mlp, fit_ridge

    v = val.pairs
    if not reverse:  # b -> a; validation: every query against the clips
        a, b, g, q, t, group = fit.a, fit.b, val.gallery, v.b, val.target, fit.group
    else:  # a -> b; validation: every clip against all queries, its target its first query
        a, b, g, q, t, group = fit.b, fit.a, v.b, val.gallery, val.first, fit.group
    if method == "mean-shift":
        return MeanShift().fit(a, b), ""
    if method == "ridge":
        model, lam = fit_ridge(a, b, g, q, t)
        return model, f"lambda {lam:g}"
    if method in ("mlp", "infonce"):
        model, chosen = fit_mlp(a, b, g, q, t, "regression" if method == "mlp" else "infonce", group=group, seed=seed)
        return model, f"dropout {chosen['dropout']:g}, epoch {chosen['epoch']}"
    raise AssertionError(method)


def translation_scores(translator, test: Pairs, sampling: dict, steps: int, seed: int) -> dict[str, np.ndarray]:
    """{"query->audio": [Q, G], "audio->query": [G, Q]} cosines of the translator's two directions.

    A translator without a from-audio direction (BST off) scores audio->query with the
    query->audio matrix transposed.
    """
    gallery, _ = test.gallery()
    k, w = sampling["query->audio"]
    x = translator.translate(test.b, "to-audio", steps=steps, samples=k, guidance=w,
                             generator=torch.Generator().manual_seed(seed))
    out = {"query->audio": x @ gallery.T}
    if translator.config.bidirectional:
        k, w = sampling["audio->query"]
        y = translator.translate(gallery, "from-audio", steps=steps, samples=k, guidance=w,
                                 generator=torch.Generator().manual_seed(seed))
        out["audio->query"] = y @ test.b.T
    else:
        out["audio->query"] = np.ascontiguousarray(out["query->audio"].T)
    return out


def ranks_of(scores: dict[str, np.ndarray], group: np.ndarray) -> dict[str, np.ndarray]:
    return {"query->audio": text_to_audio_ranks(scores["query->audio"], group),
            "audio->query": audio_to_text_ranks(scores["audio->query"], group)}


def choose_sampling(translator, val: Validation, seed: int) -> tuple[dict, dict]:
    """K and w per direction by validation R@1 (then R@10) at S = 5; the grid's scores."""
    v = val.pairs
    chosen, grid = {}, {}
    for direction in DIRECTIONS:
        if direction == "audio->query" and not translator.config.bidirectional:
            chosen[direction] = (1, 1.0)
            continue
        scores = {}
        for k in SAMPLES:
            for w in GUIDANCE:
                gen = torch.Generator().manual_seed(seed)
                if direction == "query->audio":
                    x = translator.translate(v.b, "to-audio", steps=5, samples=k, guidance=w, generator=gen)
                    scores[(k, w)] = _r1_key(target_ranks(x, val.gallery, val.target))
                else:
                    y = translator.translate(val.gallery, "from-audio", steps=5, samples=k, guidance=w, generator=gen)
                    scores[(k, w)] = _r1_key(audio_to_text_ranks(y @ v.b.T, v.group))
        chosen[direction] = max(scores, key=scores.get)
        grid[direction] = {f"K={k} w={w:g}": round(s[0], 4) for (k, w), s in scores.items()}
    return chosen, grid


def chain_ranks(translator, test: Pairs, direction: Direction, config, *, raw: bool,
                rerank: bool | None = None) -> np.ndarray:
    """Ranks (laion_clap protocol) of the engine's query chain over the test gallery in one direction.

    The gallery goes into an exact in-memory Index and every query runs `Engine.run`, the chain
    `query` runs: its candidates come first in fused order, then every other item in the order
    of the translated cosine (a miss of the top-N still gets a finite rank for R@10 and median rank).
    """
    from diffgap_search.calibrate import calibration_task
    from diffgap_search.engine import Route
    from diffgap_search.signals import SIGNALS

    engine, queries, _, _, _ = calibration_task(translator, test, direction)
    signals = None if rerank is None else [n for n in SIGNALS if n != "diffusion" or rerank]
    results = engine.run(queries, Route(direction, raw), config, config.candidates, signals)
    full = results.translated.astype(np.float64) @ engine.index.vectors().T  # first-stage cosines in [-1, 1]
    hits = results.positions >= 0
    lifted = 2.0 + results.scores - np.where(hits, results.scores, np.inf).min(axis=1, keepdims=True)
    rows = np.broadcast_to(np.arange(len(hits))[:, None], hits.shape)
    full[rows[hits], results.positions[hits]] = lifted[hits]
    return text_to_audio_ranks(full, test.group) if direction is Direction.TO_AUDIO else audio_to_text_ranks(full, test.group)


def can_score(translator, direction: Direction) -> bool:
    """Rerank and fusion score with the reverse direction: a one-way translator scores only to-audio."""
    return direction is Direction.TO_AUDIO or translator.config.bidirectional


def train_config(options, **overrides):
    from diffgap_search.diffusion.train import TrainConfig

    config = TrainConfig.from_dict(dict(options.training), "training settings")
    return replace(config, seed=options.seed, **overrides)


def train_translator(pairs: Pairs, config, workdir: Path, name: str, options, log) -> tuple:
    """Train a translator (diffusion.train.train) in `workdir`/`name`; (translator, notes)."""
    from diffgap_search.diffusion.train import direction_at, train

    t0 = time.perf_counter()
    translator = train(pairs, workdir / name, config, device=options.device, progress=options.progress, log=lambda s: None)
    training = translator.config.training
    steps = int(training.get("steps", 0))
    from_audio = sum(direction_at(s, config.interval, config.bidirectional) for s in range(steps))
    notes = {"train_s": round(time.perf_counter() - t0, 1), "kept_epoch": (training.get("epoch") or {}).get("epoch"),
             "kept_steps": steps, "from_audio_steps_at_kept": from_audio, "parameters": translator.parameter_count,
             "interval": config.interval, "bidirectional": config.bidirectional, "epochs": config.epochs}
    log(f"  trained a translator ({name}) in {notes['train_s']} s: kept epoch {notes['kept_epoch']}, {steps} steps "
        f"({from_audio} from-audio)")
    return translator, notes


