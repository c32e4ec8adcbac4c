"""Retrieval benchmark: every method side by side, both directions, and the paper's ablations.

`run_benchmark` is what `diffgap-search benchmark` calls. For each fold (one train/test
split, or K of them with `kfold`) it

1. fits every baseline on the training pairs, choosing its hyperparameters on a validation
   split of them (the split `diffusion.train.train` holds out to keep its epoch; never the
   test pairs): mean shift, ridge (lambda), MLP regression and InfoNCE mappers (dropout,
   epoch); each baseline is fitted twice, query->audio and audio->query;
2. trains one DiffGAP translator (both directions, Algorithm 1) and chooses its sampling
   K (samples) and w (guidance) per direction on the validation split at S = 5;
3. scores the test pairs in both directions with the laion_clap protocol (`metrics`):
   every query (caption / video) against the test clips (query->audio), every clip against
   all test queries, its rank the best of its own queries' (audio->query);
4. runs the ablations asked for: sampling steps S (translation only), the direction
   interval m (retraining), CDM and BST on/off (retraining; CDM off is the same network
   as a deterministic mapper, `baselines.DirectDenoiser`; BST off trains to-audio only).

Methods (a method's query->audio score is cos(f(query), clip), its audio->query score
cos(g(clip), query) with g the reverse mapper; where a method has no reverse, the
query->audio score matrix is used transposed, as CLAP does for its two directions):

  raw         cosine of the raw vectors (only when both sides are one space)
  mean-shift  b - mean(b) + mean(a) (one dim only)
  ridge       closed-form ridge regression
  mlp         MLP regression mapper (V2A-Mapper's "regression" variant, cosine loss)
  infonce     the same MLP trained with the symmetric contrastive loss
  diffgap     the DiffGAP translation (S DDIM steps, K samples, guidance w)
  rerank      diffgap's top-N re-scored with the diffusion score of the other direction
              (z-scored, weights translated 1 / diffusion 0.5: the `query` defaults)
  fusion      calibrated fusion: query->audio with `calibrate` (weights, N, S chosen on the
              validation split); audio->query with the weights chosen the same way at the
              N and S of query->audio

Ranks follow `metrics`: ties count against the query; for rerank and fusion the
candidates come first in fused order, then every other item in translated-cosine order.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from diffgap_search.errors import DiffgapError
from diffgap_search.metrics import audio_to_text_ranks, recall_at, target_ranks, text_to_audio_ranks
from diffgap_search.pairs import Pairs, read_pairs, split_train_val

METHODS = ("raw", "mean-shift", "ridge", "mlp", "infonce", "diffgap", "rerank", "fusion")
TRAINED_BASELINES = ("mean-shift", "ridge", "mlp", "infonce")
DIFFGAP_METHODS = ("diffgap", "rerank", "fusion")
ABLATIONS = ("steps", "interval", "components")
ABLATION_STEPS = (50, 20, 5)  # the paper's Table V
ABLATION_INTERVALS = (100, 1000, 5000, 10000)  # Table VI's, and our default 100
DIRECTIONS = ("query->audio", "audio->query")
METRICS = ("R@1", "R@5", "R@10", "mAP@10", "median rank")
SAMPLES = (1, 4)  # K grid, chosen on validation
GUIDANCE = (1.0, 2.0, 4.0)  # w grid, chosen on validation
VAL_CLIPS = 1000  # at most this many validation clips take part in choosing hyperparameters
QUERY_CHUNK = 256  # queries per diffusion-scoring call
# The benchmark's training settings when no --recipe is given: the paper's (Adam 2e-4, batch 64,
# 30 epochs, the default network) but the direction flips every 100 steps, not 5,000: retrieval
# peaks within the first ~1,000-2,000 steps on these sets, and a step may be kept only once the
# from-audio direction (audio->query translation, the diffusion score of rerank) has trained
# (benchmarks/results/translator_steps.md).
DEFAULT_TRAINING = {"epochs": 30, "interval": 100, "val_fraction": 0.1}


@dataclass
class BenchmarkOptions:
    methods: tuple[str, ...] | None = None  # None: every method the data allow
    ablate: tuple[str, ...] = ()
    training: dict = field(default_factory=lambda: dict(DEFAULT_TRAINING))  # TrainConfig settings
    kfold: int | None = None
    seed: int = 0
    steps: int = 20  # S of the diffgap translation and of rerank's first stage
    candidates: int = 100  # N of rerank
    device: str = "cpu"
    progress: bool = True


@dataclass
class Fold:
    name: str
    train: Pairs | None
    test: Pairs


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def pairs_from_arrays(a: np.ndarray, b: np.ndarray, group=None, split=None, source: str = "") -> Pairs:
    """In-memory pairs (unit rows), one group per row unless `group` says otherwise; `split` [n] optional."""
    from diffgap_search.storage import check_vectors

    n = len(a)
    group = np.arange(n) if group is None else np.asarray(group)
    _, inverse = np.unique(group, return_inverse=True)
    a, _ = check_vectors(np.array(a, dtype=np.float32), f"{source} side a")
    b, _ = check_vectors(np.array(b, dtype=np.float32), f"{source} side b")
    return Pairs(a=a, b=b, pair_id=np.arange(n), group=inverse.astype(np.int64), group_id=group,
                 split=None if split is None else np.asarray(split),
                 metadata=pa.table({"row": np.arange(n)}), source=source)


def read_benchmark_pairs(path: str | Path) -> Pairs:
    """A pairs parquet, or a .npy of shape (2, N, D): [0] the index (audio) side, [1] the query side."""
    path = Path(path)
    if path.suffix != ".npy":
        return read_pairs(path)
    if not path.exists():
        raise DiffgapError(f"{path}: no such file")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DiffgapError(f"{path}: not a readable .npy file ({exc})") from None
    if x.ndim != 3 or x.shape[0] != 2 or x.shape[1] < 2:
        raise DiffgapError(f"{path}: a .npy of pairs has shape (2, N, D) ([0] audio/index side, [1] query side, "
                           f"row i of each a pair); this one has shape {x.shape}")
    return pairs_from_arrays(x[0], x[1], source=str(path))


def _rows_of_split(pairs: Pairs, keep: Callable[[np.ndarray], np.ndarray]) -> Pairs:
    if pairs.split is None:
        return pairs
    rows = np.flatnonzero(keep(pairs.split))
    if len(rows) == 0:
        raise DiffgapError(f"{pairs.source}: no rows left after choosing the split")
    sub = pairs.subset(rows)
    sub.source = pairs.source
    return sub


def benchmark_folds(pairs: str | Path, train: str | Path | None, kfold: int | None, seed: int) -> list[Fold]:
    """The (train, test) splits to evaluate.

    - `kfold` K: the groups (clips) of `pairs` in K seeded folds; train on K-1, test on one;
    - `train`: test = `pairs` (its rows of split "test" when it has a split column with them),
      train = `train` (its rows not in split "test"): one file with a split column serves both;
    - neither: test = `pairs`, no training (raw cosine, or a given translator).
    """
    test = read_benchmark_pairs(pairs)
    if kfold is not None:
        if train is not None:
            raise DiffgapError("--kfold splits --pairs into train and test folds itself; leave out --train")
        n_groups = int(test.group.max()) + 1
        if not 2 <= kfold <= n_groups:
            raise DiffgapError(f"--kfold {kfold}: needs 2 <= K <= the number of clips ({n_groups})")
        order = np.random.default_rng(seed).permutation(n_groups)
        fold_of = np.empty(n_groups, np.int64)
        fold_of[order] = np.arange(n_groups) % kfold
        out = []
        for k in range(kfold):
            in_test = fold_of[test.group] == k
            tr, te = test.subset(np.flatnonzero(~in_test)), test.subset(np.flatnonzero(in_test))
            tr.source = te.source = test.source
            out.append(Fold(f"fold {k + 1}/{kfold}", tr, te))
        return out
    has_test = test.split is not None and (test.split == "test").any()
    test = _rows_of_split(test, lambda s: s == "test") if has_test else test
    train_pairs = None
    if train is not None:
        train_pairs = read_benchmark_pairs(train)
        if train_pairs.split is not None and (train_pairs.split == "test").any():
            train_pairs = _rows_of_split(train_pairs, lambda s: s != "test")
        if (train_pairs.dim_a, train_pairs.dim_b) != (test.dim_a, test.dim_b):
            raise DiffgapError(f"{train}: dims a={train_pairs.dim_a}, b={train_pairs.dim_b}, but {pairs} has "
                               f"a={test.dim_a}, b={test.dim_b}; train and test pairs must come from the same spaces")
    return [Fold("test", train_pairs, test)]


def one_space(pairs: Pairs) -> bool:
    """Raw cosine between b and a means something: one dim, and one space name when both are known."""
    return pairs.dim_a == pairs.dim_b and (pairs.space_a == pairs.space_b if pairs.space_a and pairs.space_b else True)


def choose_methods(requested: tuple[str, ...] | None, same_space: bool, trainable: bool, has_model: bool) -> list[str]:
    """The methods to run: the requested ones (checked), or every one the inputs allow."""
    if requested is None:
        out = [m for m in METHODS if (m not in ("raw", "mean-shift") or same_space)
               and (m not in TRAINED_BASELINES or trainable) and (m not in DIFFGAP_METHODS or trainable or has_model)]
        return out
    unknown = [m for m in requested if m not in METHODS]
    if unknown:
        raise DiffgapError(f"--methods: {unknown[0]!r} is not a method; choose from {','.join(METHODS)}")
    for m in requested:
        if m in ("raw", "mean-shift") and not same_space:
            raise DiffgapError(f"--methods {m}: the query side and the audio side are different spaces (dims or space "
                               "names differ), so raw cosine means nothing; leave it out")
        if m in TRAINED_BASELINES and not trainable:
            raise DiffgapError(f"--methods {m} is fitted on training pairs; give --train TRAIN.parquet (or --kfold K)")
        if m in DIFFGAP_METHODS and not (trainable or has_model):
            raise DiffgapError(f"--methods {m} needs a translator: give --train TRAIN.parquet (or --kfold K) or --model DIR")
    return [m for m in METHODS if m in requested]


# ---------------------------------------------------------------------------
# scoring: full score matrices, both directions
# ---------------------------------------------------------------------------


@dataclass
class Validation:
    """The validation pairs used to choose hyperparameters, in both directions' protocols."""

    pairs: Pairs
    gallery: np.ndarray  # [G, d_a] one audio vector per clip
    target: np.ndarray  # [Q] each query's clip
    first: np.ndarray  # [G] row of each clip's first query (the reverse mappers' target)

    @classmethod
    def of(cls, pairs: Pairs, seed: int) -> "Validation":
        n_groups = int(pairs.group.max()) + 1
        if n_groups > VAL_CLIPS:
            keep = np.random.default_rng(seed).permutation(n_groups)[:VAL_CLIPS]
            pairs = pairs.subset(np.flatnonzero(np.isin(pairs.group, keep)))
        gallery, target = pairs.gallery()
        _, first = np.unique(pairs.group, return_index=True)
        return cls(pairs, gallery, target, first)


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


# -- rerank and fusion over top-N candidates --------------------------------


def _diffusion(translator, queries: np.ndarray, items: np.ndarray, pool: np.ndarray, config, direction: str) -> np.ndarray:
    """Diffusion score of each pooled item for each query: [nq, U] (pool -1 entries get any value)."""
    from diffgap_search.rerank import diffusion_scores

    out = np.empty(pool.shape, dtype=np.float32)
    for lo in range(0, len(queries), QUERY_CHUNK):
        rows = slice(lo, lo + QUERY_CHUNK)
        out[rows] = diffusion_scores(translator, queries[rows], items[np.maximum(pool[rows], 0)], config, direction)
    return out


def candidate_signals(first: np.ndarray, raw: np.ndarray | None, n: int, diffusion: Callable | None):
    """Top-n of `first` (united with top-n of `raw`), and each signal's per-query z-score there.

    first, raw [nq, ng] cosines; diffusion(pool [nq, U]) -> [nq, U]. Returns (pool, valid, z).
    """
    from diffgap_search.calibrate import top_positions
    from diffgap_search.rerank import standardize
    from diffgap_search.search import unite

    tops = [top_positions(first, n)] + ([top_positions(raw, n)] if raw is not None else [])
    pool = unite(*tops) if len(tops) > 1 else tops[0]
    valid = pool >= 0
    safe = np.maximum(pool, 0)
    z = {"translated": standardize(np.take_along_axis(first, safe, axis=1), valid)}
    if raw is not None:
        z["raw"] = standardize(np.take_along_axis(raw, safe, axis=1), valid)
    if diffusion is not None:
        z["diffusion"] = standardize(diffusion(pool), valid)
    return pool, valid, z


def combined_scores(first: np.ndarray, pool: np.ndarray, valid: np.ndarray, z: dict, weights: dict) -> np.ndarray:
    """A full score matrix that ranks the candidates first, by their fused score, then the rest by `first`.

    first [nq, ng] cosines in [-1, 1]; candidates get 2 + (fused - the row's lowest fused): above 1.
    """
    fused = sum(w * z[name] for name, w in weights.items() if w and name in z)
    fused = np.where(valid, fused, np.inf)
    lifted = 2.0 + fused - fused.min(axis=1, keepdims=True)
    out = np.array(first, dtype=np.float64)
    rows = np.repeat(np.arange(len(pool)), pool.shape[1])
    keep = valid.ravel()
    out[rows[keep], pool.ravel()[keep]] = lifted.ravel()[keep]
    return out


@dataclass
class Direction:
    """What rerank and fusion need of one retrieval direction."""

    name: str
    queries: np.ndarray  # [nq, d] the raw query vectors (diffusion targets)
    items: np.ndarray  # [ng, d'] the raw gallery vectors (diffusion conditions)
    score_direction: str  # the translator direction whose denoising error scores (target = the query)
    raw: np.ndarray | None  # [nq, ng] raw cosines when one space


def rerank_ranks(translator, d: Direction, first: np.ndarray, n: int, weights: dict, fusion_config, group: np.ndarray,
                 raw: bool = False) -> np.ndarray:
    score = (lambda pool: _diffusion(translator, d.queries, d.items, pool, fusion_config, d.score_direction)) \
        if weights.get("diffusion") else None
    pool, valid, z = candidate_signals(first, d.raw if raw else None, n, score)
    full = combined_scores(first, pool, valid, z, weights)
    return text_to_audio_ranks(full, group) if d.name == "query->audio" else audio_to_text_ranks(full, group)


def can_score(translator, direction: str) -> bool:
    return direction == "to-audio" or translator.config.bidirectional


# ---------------------------------------------------------------------------
# one fold
# ---------------------------------------------------------------------------


def _row(method: str, direction: str, ranks: np.ndarray, settings: str = "", seconds: float | None = None) -> dict:
    m = recall_at(ranks)
    return {"method": method, "direction": direction, **{k: m[k] for k in (*METRICS, "N")}, "settings": settings,
            **({"s": round(seconds, 1)} if seconds is not None else {})}


def train_config(options: BenchmarkOptions, **overrides):
    from diffgap_search.diffusion.train import TrainConfig

    config = TrainConfig.from_dict(dict(options.training), "training settings")
    return replace(config, seed=options.seed, **overrides)


def train_translator(pairs: Pairs, config, workdir: Path, name: str, options: BenchmarkOptions, log) -> tuple:
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


def run_fold(fold: Fold, methods: list[str], options: BenchmarkOptions, workdir: Path, translator=None,
             log=lambda s: None, bar=None) -> tuple[list[dict], dict, dict]:
    """(rows, ablation rows by name, notes) of one fold."""
    from diffgap_search.rerank import FusionConfig

    def tick(stage: str):
        if bar is not None:
            bar.set_postfix_str(f"{fold.name}: {stage}")
            bar.update(1)

    test = fold.test
    gallery, _ = test.gallery()
    group = test.group
    rows: list[dict] = []
    notes: dict = {"fold": fold.name, "test_queries": len(test), "test_clips": len(gallery),
                   "train_pairs": len(fold.train) if fold.train is not None else 0}
    same = one_space(test)
    raw_scores = test.b @ gallery.T if same else None  # [Q, G]
    log(f"{fold.name}: {len(test):,} test queries, {len(gallery):,} clips" +
        (f", {len(fold.train):,} training pairs" if fold.train is not None else ""))

    if "raw" in methods:
        r = ranks_of({"query->audio": raw_scores, "audio->query": np.ascontiguousarray(raw_scores.T)}, group)
        rows += [_row("raw", d, r[d], "cosine of the raw vectors") for d in DIRECTIONS]
        tick("raw")

    val = None
    if fold.train is not None:
        config = train_config(options)
        fit, val_pairs = split_train_val(fold.train, config.val_fraction, config.seed)
        if val_pairs is None:
            raise DiffgapError("the benchmark chooses hyperparameters on a validation split; val_fraction must be > 0")
        val = Validation.of(val_pairs, options.seed)
        notes["val_clips"], notes["val_queries"] = len(val.gallery), len(val.pairs)
        for method in (m for m in TRAINED_BASELINES if m in methods):
            t0 = time.perf_counter()
            forward, s_f = fit_baseline(method, fit, val, False, options.seed)
            reverse, s_r = fit_baseline(method, fit, val, True, options.seed)
            scores = {"query->audio": forward(test.b) @ gallery.T, "audio->query": reverse(gallery) @ test.b.T}
            r = ranks_of(scores, group)
            seconds = time.perf_counter() - t0
            rows += [_row(method, d, r[d], s, seconds) for d, s in zip(DIRECTIONS, (s_f, s_r))]
            log(f"  {method}: R@1 {rows[-2]['R@1']:.3f} / {rows[-1]['R@1']:.3f} ({seconds:.0f} s)")
            tick(method)

    wanted_diffgap = [m for m in DIFFGAP_METHODS if m in methods]
    ablations: dict[str, list[dict]] = {}
    if not wanted_diffgap and not options.ablate:
        return rows, ablations, notes

    # -- DiffGAP -------------------------------------------------------------------------------
    if translator is None:
        translator, notes["translator"] = train_translator(fold.train, train_config(options), workdir,
                                                           f"{fold.name}-main".replace("/", "of").replace(" ", "_"), options, log)
        tick("train diffgap")
    else:
        notes["translator"] = {"parameters": translator.parameter_count, "given": True,
                               "bidirectional": translator.config.bidirectional}
    if val is not None:
        sampling, notes["sampling_grid"] = choose_sampling(translator, val, options.seed)
    else:
        from diffgap_search.search import stored_config

        stored = stored_config(translator)
        kw = (stored.samples, stored.guidance) if stored else (1, 1.0)
        sampling = {d: kw for d in DIRECTIONS}
    notes["sampling"] = {d: {"K": k, "w": w} for d, (k, w) in sampling.items()}

    def diffgap_rows(t, label: str, steps: int, sampling_of=sampling) -> tuple[list[dict], dict]:
        t0 = time.perf_counter()
        scores = translation_scores(t, test, sampling_of, steps, options.seed)
        r = ranks_of(scores, group)
        seconds = time.perf_counter() - t0
        out = []
        for d in DIRECTIONS:
            k, w = sampling_of[d]
            how = "one forward pass (no diffusion)" if getattr(t, "deterministic", False) else f"S={steps}, K={k}, w={w:g}"
            if d == "audio->query" and not t.config.bidirectional:
                how += "; no from-audio direction: query->audio scores transposed"
            out.append(_row(label, d, r[d], how, seconds))
        return out, scores

    translated = None
    if "diffgap" in methods or "rerank" in methods:
        diffgap, translated = diffgap_rows(translator, "diffgap", options.steps)
        if "diffgap" in methods:
            rows += diffgap
            log(f"  diffgap: R@1 {diffgap[0]['R@1']:.3f} / {diffgap[1]['R@1']:.3f}")
        tick("diffgap")

    directions = {
        "query->audio": Direction("query->audio", test.b, gallery, "from-audio", raw_scores),
        "audio->query": Direction("audio->query", gallery, test.b, "to-audio",
                                  None if raw_scores is None else np.ascontiguousarray(raw_scores.T)),
    }
    if "rerank" in methods:
        for d in DIRECTIONS:
            k, w = sampling[d]
            fc = FusionConfig(samples=k, guidance=w, seed=options.seed)
            direction = directions[d]
            if not can_score(translator, direction.score_direction):
                rows.append({"method": "rerank", "direction": d, "settings": "n/a: no from-audio direction (BST off)"})
                continue
            t0 = time.perf_counter()
            weights = {"translated": fc.translated, "diffusion": fc.diffusion}
            r = rerank_ranks(translator, direction, translated[d], options.candidates, weights, fc, group)
            rows.append(_row("rerank", d, r, f"top-{options.candidates} of diffgap; translated 1, diffusion "
                             f"{fc.diffusion:g} ({direction.score_direction} score, J={fc.timesteps})",
                             time.perf_counter() - t0))
        log(f"  rerank: R@1 {rows[-2].get('R@1', float('nan')):.3f} / {rows[-1].get('R@1', float('nan')):.3f}")
        tick("rerank")

    if "fusion" in methods:
        rows += fusion_rows(translator, test, val, sampling, directions, same, options, notes)
        log(f"  fusion: R@1 {rows[-2].get('R@1', float('nan')):.3f} / {rows[-1].get('R@1', float('nan')):.3f}")
        tick("fusion")

    # -- ablations -----------------------------------------------------------------------------
    if "steps" in options.ablate:
        ablations["steps"] = []
        for s in ABLATION_STEPS:
            out, _ = diffgap_rows(translator, f"S={s}", s)
            ablations["steps"] += out
        tick("ablation: steps")
    if "interval" in options.ablate:
        ablations["interval"] = []
        for m in ABLATION_INTERVALS:
            if m == translator.config.training.get("interval") and translator.config.bidirectional:
                t, t_notes = translator, notes["translator"]
            else:
                t, t_notes = train_translator(fold.train, train_config(options, interval=m), workdir,
                                              f"{fold.name}-interval{m}".replace("/", "of").replace(" ", "_"), options, log)
            samp, _ = choose_sampling(t, val, options.seed)
            out, scores = diffgap_rows(t, f"m={m}", options.steps, samp)
            for row in out:
                row["settings"] += f"; kept epoch {t_notes.get('kept_epoch')}, {t_notes.get('from_audio_steps_at_kept')} " \
                                   f"of {t_notes.get('kept_steps')} steps from-audio"
            ablations["interval"] += out
            for d in DIRECTIONS:
                k, w = samp[d]
                fc = FusionConfig(samples=k, guidance=w, seed=options.seed)
                r = rerank_ranks(t, directions[d], scores[d], options.candidates,
                                 {"translated": fc.translated, "diffusion": fc.diffusion}, fc, group)
                ablations["interval"].append(_row(f"m={m} + rerank", d, r, f"top-{options.candidates}, diffusion {fc.diffusion:g}"))
            tick(f"ablation: interval {m}")
    if "components" in options.ablate:
        from diffgap_search.baselines import DirectDenoiser

        ablations["components"] = []
        variants = (("CDM on, BST on", True, True), ("CDM on, BST off", True, False),
                    ("CDM off, BST on", False, True), ("CDM off, BST off", False, False))
        for label, cdm, bst in variants:
            config = train_config(options, bidirectional=bst)
            if cdm and bst:
                t = translator
            elif cdm:
                t, _ = train_translator(fold.train, config, workdir, f"{fold.name}-no-bst".replace("/", "of").replace(" ", "_"),
                                        options, log)
            else:
                t0 = time.perf_counter()
                t = DirectDenoiser(config).fit(fold.train)
                log(f"  trained the deterministic network ({label}) in {time.perf_counter() - t0:.0f} s")
            samp, _ = choose_sampling(t, val, options.seed) if cdm else ({d: (1, 1.0) for d in DIRECTIONS}, None)
            out, _ = diffgap_rows(t, label, options.steps if cdm else 1, samp)
            ablations["components"] += out
            tick(f"ablation: {label}")
    return rows, ablations, notes


def fusion_rows(translator, test: Pairs, val: Validation | None, sampling: dict, directions: dict, same: bool,
                options: BenchmarkOptions, notes: dict) -> list[dict]:
    """Calibrated fusion, both directions (see the module docstring)."""
    from diffgap_search.calibrate import CalibrationGrid, calibrate
    from diffgap_search.rerank import FusionConfig
    from diffgap_search.search import stored_config

    group = test.group
    k, w = sampling["query->audio"]
    if val is not None:
        t0 = time.perf_counter()
        cal = calibrate(translator, val.pairs, FusionConfig(samples=k, guidance=w, seed=options.seed), CalibrationGrid())
        chosen = cal.config
        notes["calibration"] = {"chosen": chosen.to_dict(), "val": cal.scores, "s": round(time.perf_counter() - t0, 1)}
    else:
        chosen = stored_config(translator)
        if chosen is None:
            return [{"method": "fusion", "direction": d, "settings": "n/a: the model is not calibrated "
                     "(run `diffgap-search calibrate`) and no --train pairs were given"} for d in DIRECTIONS]
    out = []
    for d in DIRECTIONS:
        direction = directions[d]
        kd, wd = sampling[d]
        fc = replace(chosen, samples=kd, guidance=wd)
        if d == "audio->query" and not can_score(translator, "from-audio"):
            out.append({"method": "fusion", "direction": d, "settings": "n/a: no from-audio direction (BST off)"})
            continue
        t0 = time.perf_counter()
        tr_dir = "to-audio" if d == "query->audio" else "from-audio"
        src = test.b if d == "query->audio" else direction.queries
        x = translator.translate(src, tr_dir, steps=fc.steps, samples=kd, guidance=wd,
                                 generator=torch.Generator().manual_seed(options.seed))
        first = x @ direction.items.T
        if d == "query->audio":
            weights = chosen.weights()
        elif val is None:
            out.append({"method": "fusion", "direction": d, "settings": "n/a: audio->query weights are chosen on "
                        "validation pairs (--train)"})
            continue
        else:
            weights = choose_reverse_weights(translator, val, fc, same)
            notes.setdefault("calibration", {})["audio->query weights"] = weights
        # candidates: the translated top-N, united with the raw top-N when one space (as `calibrate` and `query`)
        r = rerank_ranks(translator, direction, first, fc.candidates, weights, fc, group, raw=same)
        settings = (f"raw {weights.get('raw', 0):g}, translated {weights['translated']:g}, diffusion "
                    f"{weights['diffusion']:g}; N={fc.candidates}, S={fc.steps}, K={kd}, w={wd:g}")
        out.append(_row("fusion", d, r, settings, time.perf_counter() - t0))
    return out


def choose_reverse_weights(translator, val: Validation, fc, same: bool) -> dict:
    """audio->query fusion weights by validation R@1 (then mAP@10) at the N and S query->audio chose."""
    from diffgap_search.calibrate import CalibrationGrid, weight_vectors

    v = val.pairs
    y = translator.translate(val.gallery, "from-audio", steps=fc.steps, samples=fc.samples, guidance=fc.guidance,
                             generator=torch.Generator().manual_seed(fc.seed))
    first = y @ v.b.T  # [G, Q]
    raw = val.gallery @ v.b.T if same else None
    score = lambda pool: _diffusion(translator, val.gallery, v.b, pool, fc, "to-audio")  # noqa: E731
    pool, valid, z = candidate_signals(first, raw, fc.candidates, score)
    best = None
    for weights in weight_vectors(CalibrationGrid().weights, raw is not None, True):
        m = recall_at(audio_to_text_ranks(combined_scores(first, pool, valid, z, weights), v.group))
        key = (m["R@1"], m["mAP@10"], -(weights["diffusion"] > 0))
        if best is None or key > best[0]:
            best = (key, weights)
    return best[1]


# ---------------------------------------------------------------------------
# the run and its report
# ---------------------------------------------------------------------------


def average_rows(per_fold: list[list[dict]]) -> list[dict]:
    """Mean of each metric over folds, N summed (rows matched by method and direction)."""
    if len(per_fold) == 1:
        return per_fold[0]
    out = []
    for first in per_fold[0]:
        key = (first["method"], first["direction"])
        same = [r for rows in per_fold for r in rows if (r["method"], r["direction"]) == key]
        if "R@1" not in first:
            out.append(first)
            continue
        merged = {"method": key[0], "direction": key[1], **{m: float(np.mean([r[m] for r in same])) for m in METRICS},
                  "N": int(sum(r["N"] for r in same))}
        settings = {r["settings"] for r in same}
        merged["settings"] = settings.pop() if len(settings) == 1 else "chosen per fold (see the JSON)"
        out.append(merged)
    return out


def run_benchmark(pairs: str | Path, out: str | Path, *, train: str | Path | None = None, model: str | Path | None = None,
                  options: BenchmarkOptions = BenchmarkOptions(), command: str = "", log=lambda s: None) -> dict:
    """Evaluate, write `out`.md / .json / -r1.png (and -steps.png), return the record."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    load_start = _load_average()
    out = Path(out)
    unknown = [a for a in options.ablate if a not in ABLATIONS]
    if unknown:
        raise DiffgapError(f"--ablate {unknown[0]!r}: choose from {', '.join(ABLATIONS)}")
    if train is not None and model is not None:
        raise DiffgapError("give --train (a translator is trained) or --model (a trained one is used), not both")
    if model is not None and options.kfold is not None:
        raise DiffgapError("--kfold trains on each fold; it cannot use a given --model")
    if model is not None and set(options.ablate) - {"steps"}:
        raise DiffgapError("--ablate interval/components retrain the translator; give --train instead of --model")
    train_config(options)  # bad settings fail before any work
    folds = benchmark_folds(pairs, train, options.kfold, options.seed)
    trainable = folds[0].train is not None
    if options.ablate and not (trainable or model is not None):
        raise DiffgapError("--ablate needs a translator: give --train TRAIN.parquet (or --kfold K) or --model DIR")
    translator = None
    if model is not None:
        from diffgap_search.diffusion.translator import Translator

        translator = Translator.load(model, options.device)
        a, b = translator.config.space_a, translator.config.space_b
        test = folds[0].test
        if (test.dim_a, test.dim_b) != (a.dim, b.dim):
            raise DiffgapError(f"{pairs}: pairs have dims a={test.dim_a}, b={test.dim_b}, the model {model} expects "
                               f"a={a.dim}, b={b.dim}; benchmark it on pairs of the spaces it was trained on")
    methods = choose_methods(options.methods, one_space(folds[0].test), trainable, model is not None)
    stages = len(methods) + (1 if trainable and any(m in methods for m in DIFFGAP_METHODS) else 0) \
        + sum({"steps": 1, "interval": len(ABLATION_INTERVALS), "components": 4}[a] for a in options.ablate)
    workdir = Path(tempfile.mkdtemp(prefix="diffgap-benchmark-"))
    per_fold, fold_notes, fold_ablations = [], [], []
    try:
        with tqdm(total=stages * len(folds), desc="benchmark", unit="stage", disable=not options.progress) as bar:
            for fold in folds:
                rows, ablations, notes = run_fold(fold, methods, options, workdir, translator, log, bar)
                per_fold.append(rows)
                fold_ablations.append(ablations)
                fold_notes.append(notes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record = {
        "command": command,
        "pairs": str(pairs), "train": None if train is None else str(train), "model": None if model is None else str(model),
        "kfold": options.kfold, "seed": options.seed, "methods": methods, "ablate": list(options.ablate),
        "training": train_config(options).to_dict() if trainable else None,
        "steps": options.steps, "candidates": options.candidates,
        "rows": average_rows(per_fold),
        "ablations": {name: average_rows([a[name] for a in fold_ablations]) for name in fold_ablations[0]},
        "folds": fold_notes, "per_fold": per_fold,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    from diffgap_search.machine import machine

    record["machine"] = machine()
    # other processes on the machine slow a run down: the 1-minute load average beside the core count says so
    record["machine"]["load average (1 min) at start / end"] = f"{load_start} / {_load_average()}"
    write_report(record, out)
    return record


def _load_average() -> str:
    import os

    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (OSError, AttributeError):
        return "unknown"


def _fmt(row: dict, metric: str) -> str:
    v = row.get(metric)
    if v is None:
        return "-"
    return f"{v:.1f}" if metric == "median rank" else f"{v:.3f}"


def report_tables(record: dict) -> str:
    """The Markdown tables (what the command prints, and the body of PREFIX.md)."""
    from diffgap_search.machine import markdown_table

    parts = []
    for title, rows in [("Methods", record["rows"])] + [(f"Ablation: {k}", v) for k, v in record["ablations"].items()]:
        for d in DIRECTIONS:
            sub = [r for r in rows if r["direction"] == d]
            if not sub:
                continue
            table = [{"method": r["method"], **{m: _fmt(r, m) for m in METRICS}, "N": r.get("N", "-"),
                      "settings": r.get("settings", "")} for r in sub]
            parts.append(f"### {title}, {d}\n\n" + markdown_table(table, ["method", *METRICS, "N", "settings"]))
    return "\n\n".join(parts)


def write_report(record: dict, out: Path) -> None:
    from diffgap_search.storage import write_json_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    n0 = record["folds"][0]
    folds = len(record["folds"])
    lines = [f"# Benchmark: {Path(record['pairs']).name}", "",
             f"`diffgap-search benchmark {record['command']}`", "",
             f"{n0['test_queries']:,} test queries against {n0['test_clips']:,} clips"
             + (f" per fold, {folds} folds (metrics are the mean over folds; N is summed)" if folds > 1 else "")
             + (f"; {n0['train_pairs']:,} training pairs" if n0["train_pairs"] else "")
             + f". Seed {record['seed']}. Wall time {record['wall_s']:.0f} s.", "",
             "laion_clap protocol: query->audio ranks each query's clip among the test clips; audio->query ranks each "
             "clip's best query among all test queries. R@k = share of queries with rank < k; mAP@10 = mean 1/(rank+1) "
             "over ranks < 10; median rank is 1-based; ties count against the query. Hyperparameters (ridge lambda, "
             "MLP dropout and epoch, DiffGAP K and w, fusion weights) are chosen on a validation split of the training "
             "pairs, never on the test pairs.", ""]
    if record.get("training"):
        t = record["training"]
        lines += [f"DiffGAP training: {json.dumps({k: v for k, v in t.items() if k not in ('network', 'schedule')})}, "
                  f"network {json.dumps(t['network'])}; translation S={record['steps']}; rerank N={record['candidates']}.", ""]
    for notes in record["folds"]:
        tn = notes.get("translator")
        if tn and not tn.get("given"):
            lines.append(f"- {notes['fold']}: translator {tn['parameters']:,} parameters, trained in {tn['train_s']} s, "
                         f"kept epoch {tn['kept_epoch']} ({tn['kept_steps']} steps, {tn['from_audio_steps_at_kept']} of "
                         f"them from-audio); K, w chosen: " + ", ".join(
                             f"{d} {v['K']}/{v['w']:g}" for d, v in notes["sampling"].items()))
            if tn["bidirectional"] and tn["from_audio_steps_at_kept"] == 0:
                lines.append("  **the from-audio direction had no training step before the kept epoch**: audio->query "
                             "translation and the diffusion score are untrained (lower the interval)")
    lines += ["", report_tables(record), "", f"![R@1 per method]({out.name}-r1.png)"]
    if "steps" in record["ablations"]:
        lines.append(f"![R@1 against sampling steps]({out.name}-steps.png)")
    lines += ["", "<details><summary>machine</summary>", "",
              "\n".join(f"- {k}: {v}" for k, v in record["machine"].items()), "</details>", ""]
    text = "\n".join(lines)
    record["markdown"] = text
    write_json_atomic({k: v for k, v in record.items() if k != "markdown"}, out.with_name(out.name + ".json"))
    tmp = out.with_name(f".{out.name}.md.tmp")
    tmp.write_text(text)
    tmp.replace(out.with_name(out.name + ".md"))
    plot_r1(record, out.with_name(out.name + "-r1.png"))
    if "steps" in record["ablations"]:
        plot_steps(record, out.with_name(out.name + "-steps.png"))


def plot_r1(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in record["rows"] if "R@1" in r]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.6))
    x = np.arange(len(methods))
    for i, d in enumerate(DIRECTIONS):
        values = [next((r["R@1"] for r in rows if r["method"] == m and r["direction"] == d), np.nan) for m in methods]
        bars = ax.bar(x + (i - 0.5) * 0.38, values, 0.38, label=d)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, methods)
    ax.set_ylabel("R@1")
    ax.set_title(f"{Path(record['pairs']).name}: R@1 per method (N = {rows[0]['N'] if rows else 0} queries)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_steps(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["ablations"]["steps"]
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for d in DIRECTIONS:
        pts = sorted((int(r["method"].split("=")[1]), r["R@1"]) for r in rows if r["direction"] == d and "R@1" in r)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=d)
    ax.set_xlabel("DDIM sampling steps S")
    ax.set_ylabel("R@1")
    ax.set_xticks(list(ABLATION_STEPS))
    ax.set_title(f"{Path(record['pairs']).name}: DiffGAP R@1 against S", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
