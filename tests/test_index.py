"""FAISS index: exactness of flat, recall of tuned ANN types, planning, add, save/load, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from diffgap_search.errors import DiffgapError
from diffgap_search.index import EmbeddingIndex, parse_bytes, plan_index, recall_at_k
from diffgap_search.storage import write_shard

from conftest import unit_rows


def clustered(n: int, d: int, n_clusters: int = 100, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Gaussian clusters on the sphere: the structure that makes ANN indexes work (and fail)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(xb: np.ndarray, xq: np.ndarray, k: int):
    scores = xq @ xb.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_flat_equals_brute_force_numpy(shard, tmp_path):
    path, xb = shard
    index = EmbeddingIndex.build([path], tmp_path / "ix", index_type="flat")
    xq = unit_rows(25, 32, seed=5)
    result = index.search(xq, k=10)
    D_ref, I_ref = brute_force(xb, xq, 10)
    np.testing.assert_array_equal(result.ids, I_ref + 100)  # shard ids start at 100
    np.testing.assert_allclose(result.scores, D_ref, atol=1e-5)
    assert result.rows(0)[0]["path"] == f"clips/{I_ref[0, 0]}.wav"


@pytest.mark.slow
@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_ann_reaches_recall_target_on_100k_clustered(tmp_path, index_type):
    n, d = 100_000, 128
    xb = clustered(n, d)
    write_shard(tmp_path / "xb.parquet", np.arange(n), xb)
    index = EmbeddingIndex.build([tmp_path / "xb.parquet"], tmp_path / index_type, index_type=index_type)
    assert index.manifest["index_type"] == index_type
    # fresh queries, not the ones tuning used
    rng = np.random.default_rng(123)
    xq = xb[rng.choice(n, 300, replace=False)] + 0.5 * rng.standard_normal((300, d)).astype(np.float32) / np.sqrt(d)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    _, I_true = brute_force(xb, xq, 10)
    recall = recall_at_k(index.search(xq, 10).ids, I_true)
    print(f"{index_type}: recall@10 {recall:.3f} with {index.manifest['search_params']}")
    assert recall >= 0.95
    assert index.manifest["tuned_recall_at_10"] >= 0.95


def test_plan_auto_follows_size_and_budget():
    assert plan_index(10_000, 512, "auto", parse_bytes("4GB")).index_type == "flat"
    assert plan_index(2_000_000, 512, "auto", parse_bytes("16GB")).index_type == "hnsw"
    # flat needs 20 MB for 10k x 512, HNSW a bit more: a 5 MB budget leaves IVF-PQ
    plan = plan_index(10_000, 512, "auto", parse_bytes("10MB"))
    assert plan.index_type == "ivfpq" and plan.factory.endswith("Refine(SQ8)")
    assert "Refine" not in plan_index(100_000, 512, "auto", parse_bytes("20MB")).factory
    with pytest.raises(DiffgapError, match=r"over the memory budget of 0\.00 GB"):
        plan_index(100_000, 512, "flat", parse_bytes("1MB"))


def test_parse_bytes():
    assert parse_bytes("4GB") == 4 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5 gb") == 1_500_000_000
    with pytest.raises(DiffgapError, match="'lots' is not a size"):
        parse_bytes("lots")


def test_save_load_round_trip_and_manifest(shard, tmp_path):
    path, _ = shard
    built = EmbeddingIndex.build([path], tmp_path / "ix", index_type="hnsw")
    loaded = EmbeddingIndex.load(tmp_path / "ix", device="cpu")
    xq = unit_rows(7, 32, seed=3)
    a, b = built.search(xq, 5), loaded.search(xq, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    m = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["space"] == "test-space" and m["count"] == 200 and m["dim"] == 32
    assert m["factory"] == "HNSW32,Flat" and "efSearch" in m["search_params"]
    assert loaded.info()["bytes_on_disk"] > 200 * 32 * 4


def test_vectors_of_candidates_are_the_stored_rows(shard, tmp_path):
    path, xb = shard
    index = EmbeddingIndex.build([path], tmp_path / "ix", index_type="ivfpq", memory_budget="1GB")
    got = index.vectors(np.array([[105, 299], [100, 100]]))
    assert got.shape == (2, 2, 32)
    np.testing.assert_array_equal(got[0, 0], xb[5])
    np.testing.assert_array_equal(got[0, 1], xb[199])
    with pytest.raises(DiffgapError, match="id 5 is not in the index"):
        index.vectors(np.array([5]))


def test_add_continues_ids_without_rebuild_and_matches_full_build(tmp_path):
    x1, x2 = unit_rows(300, 16, seed=1), unit_rows(120, 16, seed=2)
    np.save(tmp_path / "x1.npy", x1)
    np.save(tmp_path / "x2.npy", x2)
    index = EmbeddingIndex.build([tmp_path / "x1.npy"], tmp_path / "ix", index_type="flat")
    inode = os.stat(tmp_path / "ix" / "shards" / "part-00000.parquet").st_ino
    grown = index.add([tmp_path / "x2.npy"])
    assert len(grown) == 420 and grown.manifest["next_id"] == 420
    np.testing.assert_array_equal(grown.ids, np.arange(420))
    # the old part is shared (hard link), not rewritten
    assert os.stat(tmp_path / "ix" / "shards" / "part-00000.parquet").st_ino == inode
    xq = unit_rows(10, 16, seed=9)
    D_ref, I_ref = brute_force(np.concatenate([x1, x2]), xq, 10)
    np.testing.assert_array_equal(grown.search(xq, 10).ids, I_ref)
    np.testing.assert_array_equal(grown.vectors(np.array([419])), x2[-1:])


def test_add_refuses_other_dim_and_taken_ids(shard, tmp_path):
    path, _ = shard
    index = EmbeddingIndex.build([path], tmp_path / "ix", index_type="flat")
    write_shard(tmp_path / "other.parquet", np.arange(3), unit_rows(3, 8))
    with pytest.raises(DiffgapError, match=r"embedding dim is 8, expected 32"):
        index.add([tmp_path / "other.parquet"])
    write_shard(tmp_path / "dup.parquet", np.array([150]), unit_rows(1, 32))
    with pytest.raises(DiffgapError, match="id 150 is already in the index"):
        index.add([tmp_path / "dup.parquet"])
    assert len(EmbeddingIndex.load(tmp_path / "ix")) == 200


def test_queries_of_another_space_or_dim_are_refused_naming_both(shard, tmp_path):
    path, _ = shard
    index = EmbeddingIndex.build([path], tmp_path / "ix", index_type="flat")
    with pytest.raises(DiffgapError, match=r"space 'clip-video'.*space 'test-space'"):
        index.search(unit_rows(1, 32), 3, space="clip-video")
    with pytest.raises(DiffgapError, match=r"dim 768, the index .* has dim 32"):
        index.search(unit_rows(1, 768), 3)
    bad = unit_rows(2, 32)
    bad[1] = np.nan
    with pytest.raises(DiffgapError, match="row 1 contains NaN"):
        index.search(bad, 3)


def test_npy_with_metadata_and_folder_input(tmp_path):
    x = unit_rows(50, 8)
    np.save(tmp_path / "x.npy", x)
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.table({"caption": [f"c{i}" for i in range(50)]}), tmp_path / "m.csv")
    index = EmbeddingIndex.build([tmp_path / "x.npy"], tmp_path / "ix", metadata=tmp_path / "m.csv")
    assert index.search(x[7], 1).rows(0)[0]["caption"] == "c7"
    shards = tmp_path / "shards"
    for i in range(3):
        write_shard(shards / f"s{i}.parquet", np.arange(i * 10, i * 10 + 10), unit_rows(10, 8, seed=i))
    assert len(EmbeddingIndex.build([shards], tmp_path / "ix2")) == 30


@pytest.mark.parametrize("damage", ["manifest_json", "format_version", "index_file", "missing"])
def test_damaged_index_folders_give_clear_errors(shard, tmp_path, damage):
    path, _ = shard
    root = tmp_path / "ix"
    EmbeddingIndex.build([path], root, index_type="flat")
    expected = {
        "manifest_json": r"manifest\.json: not readable JSON",
        "format_version": r"index format version 99, this diffgap-search .* reads version 1",
        "index_file": r"index\.faiss: unreadable FAISS index",
        "missing": r"no such index folder",
    }[damage]
    if damage == "manifest_json":
        (root / "manifest.json").write_text("{not json")
    elif damage == "format_version":
        m = json.loads((root / "manifest.json").read_text())
        m["format_version"] = 99
        (root / "manifest.json").write_text(json.dumps(m))
    elif damage == "index_file":
        (root / "index.faiss").write_bytes(b"\x00garbage")
    else:
        root = tmp_path / "nope"
    with pytest.raises(DiffgapError, match=expected):
        EmbeddingIndex.load(root)


def test_device_cuda_without_gpu_is_a_clear_error(shard, tmp_path):
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("this machine has a GPU")
    path, _ = shard
    with pytest.raises(DiffgapError, match="--device cuda, but FAISS sees no GPU"):
        EmbeddingIndex.build([path], tmp_path / "ix", device="cuda")
    assert not (tmp_path / "ix").exists()
