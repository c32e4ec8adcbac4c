"""Benchmark data: test pairs, train/test folds, validation subsets, and which methods the data allow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from diffgap_search.errors import DiffgapError
from diffgap_search.pairs import Pairs, read_pairs

METHODS = ("raw", "mean-shift", "ridge", "mlp", "infonce", "diffgap", "rerank", "fusion")
TRAINED_BASELINES = ("mean-shift", "ridge", "mlp", "infonce")
DIFFGAP_METHODS = ("diffgap", "rerank", "fusion")
VAL_CLIPS = 1000  # at most this many validation clips take part in choosing hyperparameters


@dataclass
class Fold:
    name: str
    train: Pairs | None
    test: Pairs


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


