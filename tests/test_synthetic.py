"""Tests for the seeded modality-gap pair generator (diffgap_search.synthetic)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from diffgap_search.errors import DiffgapError
from diffgap_search.synthetic import (
    BLOCK_ROWS,
    GapConfig,
    PairsChunk,
    gap_stats,
    iter_pairs,
    make_pairs,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = GapConfig(dim_a=16, dim_b=16, latent_dim=8, n_clusters=8, hidden_dim=32)


def _concat(chunks: list[PairsChunk]) -> PairsChunk:
    return PairsChunk(
        pair_id=np.concatenate([c.pair_id for c in chunks]),
        group_id=np.concatenate([c.group_id for c in chunks]),
        a=np.concatenate([c.a for c in chunks]),
        b=np.concatenate([c.b for c in chunks]),
        cluster_id=np.concatenate([c.cluster_id for c in chunks]),
    )


def _assert_same(x: PairsChunk, y: PairsChunk) -> None:
    for name in ("pair_id", "group_id", "cluster_id", "a", "b"):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


def _ridge_b_to_a(a_train, b_train, lam: float = 1.0):
    """Closed-form ridge a ~ (b - mean_b) W + mean_a; returns the mapping function."""
    a_train = a_train.astype(np.float64)
    b_train = b_train.astype(np.float64)
    mean_a, mean_b = a_train.mean(axis=0), b_train.mean(axis=0)
    bc = b_train - mean_b
    w = np.linalg.solve(bc.T @ bc + lam * np.eye(bc.shape[1]), bc.T @ (a_train - mean_a))
    return lambda b: (b.astype(np.float64) - mean_b) @ w + mean_a


def test_same_seed_gives_identical_output():
    _assert_same(make_pairs(300, seed=3), make_pairs(300, seed=3))


def test_different_seed_gives_different_output():
    x, y = make_pairs(300, seed=0), make_pairs(300, seed=1)
    assert not np.array_equal(x.a, y.a)
    assert not np.array_equal(x.b, y.b)
    # not a mere reshuffle: the two data sets share no row
    assert np.abs(x.a @ y.a.T).max() < 0.9999


def test_output_does_not_depend_on_chunk_size():
    n = 2500
    fine = _concat(list(iter_pairs(n, seed=5, chunk_size=7)))
    coarse = _concat(list(iter_pairs(n, seed=5, chunk_size=1000)))
    _assert_same(fine, coarse)
    _assert_same(fine, make_pairs(n, seed=5))
    assert len(fine.pair_id) == n


def test_chunks_across_block_boundaries_and_prefixes():
    n = 2 * BLOCK_ROWS + 123  # three internal blocks
    whole = make_pairs(n, SMALL, seed=2)
    for chunk_size in (1000, BLOCK_ROWS - 1, BLOCK_ROWS + 1):
        chunks = list(iter_pairs(n, SMALL, seed=2, chunk_size=chunk_size))
        assert [len(c.pair_id) for c in chunks[:-1]] == [chunk_size] * (len(chunks) - 1)
        _assert_same(_concat(chunks), whole)
    # a smaller n is a prefix of a larger one
    prefix = make_pairs(BLOCK_ROWS + 5, SMALL, seed=2)
    np.testing.assert_array_equal(prefix.a, whole.a[: BLOCK_ROWS + 5])
    np.testing.assert_array_equal(prefix.b, whole.b[: BLOCK_ROWS + 5])
    tiny = make_pairs(5, SMALL, seed=2)  # one block, computed without worker threads
    np.testing.assert_array_equal(tiny.a, whole.a[:5])
    np.testing.assert_array_equal(tiny.b, whole.b[:5])


def test_iter_pairs_is_lazy_for_large_n():
    first = next(iter_pairs(1_000_000, SMALL, seed=0, chunk_size=10))
    np.testing.assert_array_equal(first.pair_id, np.arange(10))
    assert first.a.shape == (10, 16)


def test_dtypes_shapes_contiguity_and_unit_norms():
    chunks = list(iter_pairs(1000, seed=0, chunk_size=300))
    assert [len(c.pair_id) for c in chunks] == [300, 300, 300, 100]
    start = 0
    for c in chunks:
        m = len(c.pair_id)
        assert c.pair_id.dtype == np.int64 and c.group_id.dtype == np.int64
        assert c.cluster_id.dtype == np.int64
        np.testing.assert_array_equal(c.pair_id, np.arange(start, start + m))
        for x, d in ((c.a, 512), (c.b, 512)):
            assert x.dtype == np.float32 and x.shape == (m, d)
            assert x.flags.c_contiguous
            np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
        start += m
    assert chunks[-1].cluster_id.min() >= 0
    assert chunks[-1].cluster_id.max() < GapConfig().n_clusters


def test_default_config_resembles_real_data_on_1000_way():
    p = make_pairs(1000, seed=0)
    stats = gap_stats(p.a, p.b, n_way=1000)
    assert stats["n_way"] == 1000 and stats["n"] == 1000
    assert 0.2 <= stats["raw_r1"] <= 0.4, stats
    assert 0.5 <= stats["mean_distance"] <= 0.9, stats


def test_ridge_mapper_beats_raw_cosine_on_held_out_pairs():
    p = make_pairs(11_000, seed=1)
    train, test = slice(0, 10_000), slice(10_000, 11_000)
    to_a = _ridge_b_to_a(p.a[train], p.b[train])
    raw = gap_stats(p.a[test], p.b[test])["raw_r1"]
    mapped = gap_stats(p.a[test], to_a(p.b[test]))["raw_r1"]
    assert mapped > raw + 0.2, (raw, mapped)


def test_clusters_are_real():
    p = make_pairs(2000, seed=0)
    cos = p.a.astype(np.float64) @ p.a.T  # [n, n]
    same = p.cluster_id[:, None] == p.cluster_id[None, :]
    off_diagonal = ~np.eye(len(cos), dtype=bool)
    assert cos[same & off_diagonal].mean() > cos[~same].mean() + 0.2
    np.fill_diagonal(cos, -np.inf)
    nearest = cos.argmax(axis=1)
    assert (p.cluster_id[nearest] == p.cluster_id).mean() > 0.9


def test_different_dims():
    config = GapConfig(dim_a=48, dim_b=80)
    p = make_pairs(500, config, seed=0)
    assert p.a.shape == (500, 48) and p.b.shape == (500, 80)
    np.testing.assert_allclose(np.linalg.norm(p.b, axis=1), 1.0, atol=1e-5)
    stats = gap_stats(p.a, p.b)
    assert stats["raw_r1"] is None and stats["mean_distance"] is None
    assert 0.3 < stats["mean_norm_a"] < 1.0 and 0.3 < stats["mean_norm_b"] < 1.0
    # the b side still carries the content: a mapper recovers it
    q = make_pairs(3000, config, seed=0)
    to_a = _ridge_b_to_a(q.a[:2500], q.b[:2500])
    assert gap_stats(q.a[2500:], to_a(q.b[2500:]), n_way=500)["raw_r1"] > 0.3


def test_gap_stats_against_brute_force():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 6)) * 3.0  # not unit: gap_stats normalizes
    b = a + rng.standard_normal((50, 6)) * 1.5
    stats = gap_stats(a, b, n_way=40)
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    hits = [int(np.argmax(ub[i] @ ua[:40].T) == i) for i in range(40)]
    assert stats["raw_r1"] == pytest.approx(np.mean(hits))
    assert stats["mean_distance"] == pytest.approx(np.linalg.norm(ua.mean(0) - ub.mean(0)))
    assert stats["mean_norm_a"] == pytest.approx(np.linalg.norm(ua.mean(0)))
    assert stats["n"] == 50 and stats["n_way"] == 40
    same = gap_stats(a, a)
    assert same["raw_r1"] == 1.0 and same["mean_distance"] == pytest.approx(0.0, abs=1e-12)


def test_config_round_trips_through_json():
    config = GapConfig(dim_a=np.int64(64), shared=1)
    assert type(config.dim_a) is int and type(config.shared) is float
    assert GapConfig(**json.loads(json.dumps(asdict(config)))) == config


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda: make_pairs(0), "n=0"),
        (lambda: make_pairs(2.5), "n=2.5"),
        (lambda: iter_pairs(10, chunk_size=0), "chunk_size=0"),
        (lambda: iter_pairs(10, seed=-1), "seed=-1"),
        (lambda: make_pairs(10, config={"dim_a": 8}), "config="),
        (lambda: GapConfig(dim_a=1), "dim_a=1"),
        (lambda: GapConfig(dim_b=True), "dim_b=True"),
        (lambda: GapConfig(latent_dim=0), "latent_dim=0"),
        (lambda: GapConfig(shared=1.5), "shared=1.5"),
        (lambda: GapConfig(noise_a=-0.1), "noise_a=-0.1"),
        (lambda: GapConfig(offset_b=math.nan), "offset_b=nan"),
        (lambda: gap_stats(np.ones((3, 4)), np.ones((2, 4))), "3 and 2"),
        (lambda: gap_stats(np.ones(4), np.ones(4)), "(4,)"),
        (lambda: gap_stats(np.ones((3, 4)), np.ones((3, 4)), n_way=0), "n_way=0"),
    ],
)
def test_bad_arguments_raise(call, named):
    with pytest.raises(DiffgapError) as info:
        call()
    assert named in str(info.value)


@pytest.mark.skipif(
    not (DATA / "embeddings" / "convirt.npy").exists(),
    reason=f"real embedding pairs not found at {DATA / 'embeddings'} (shared data absent)",
)
def test_gap_stats_on_real_convirt_pairs():
    pairs = np.load(DATA / "embeddings" / "convirt.npy")  # [2, N, D]: image side, text side
    stats = gap_stats(pairs[0], pairs[1], n_way=1000)
    assert stats["n"] == pairs.shape[1] == stats["n_way"]
    assert stats["mean_distance"] == pytest.approx(0.823, abs=0.01)
    assert stats["raw_r1"] == pytest.approx(0.022, abs=0.01)


def test_write_synthetic_files_agree_with_the_generator(tmp_path):
    """corpus = the a side, queries = b rows of their target ids, pairs = both, split fixed."""
    from diffgap_search.storage import read_embeddings
    from diffgap_search.synthetic import write_synthetic
    import pyarrow.parquet as pq

    config = GapConfig(dim_a=24, dim_b=16)
    files = write_synthetic(tmp_path, 700, config, seed=3, n_queries=4, chunk_size=256, progress=False)
    ref = make_pairs(700, config, seed=3)
    corpus = read_embeddings(files["corpus"])
    np.testing.assert_array_equal(corpus.ids, np.arange(700))
    np.testing.assert_allclose(corpus.vectors, ref.a, atol=1e-6)
    assert (corpus.space, corpus.modality) == ("synthetic-gap-a", "audio")
    queries = read_embeddings(files["queries"])
    assert list(queries.ids) == [0, 233, 466, 699]
    np.testing.assert_array_equal(queries.metadata.column("target_id").to_numpy(), queries.ids)
    np.testing.assert_allclose(queries.vectors, ref.b[queries.ids], atol=1e-6)
    assert (queries.space, queries.modality) == ("synthetic-gap-b", "text")
    pairs = pq.read_table(files["pairs"])
    assert pairs.column("split").to_pylist()[8:11] == ["val", "test", "train"]
    np.testing.assert_allclose(np.stack(pairs.column("b").to_numpy(zero_copy_only=False)), ref.b, atol=1e-6)
