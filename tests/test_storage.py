"""Parquet shards: round trip, zero-copy reads, normalization policy, and every bad input."""

from __future__ import annotations

import os
import stat

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffgap_search.errors import DiffgapError
from diffgap_search.storage import (
    append_shard,
    read_embeddings,
    read_npy,
    validate_shard,
    write_file_atomic,
    write_shard,
)

from conftest import unit_rows


def test_round_trip_keeps_ids_vectors_metadata_and_space(shard):
    path, x = shard
    emb = read_embeddings(path)
    np.testing.assert_array_equal(emb.ids, np.arange(100, 300))
    np.testing.assert_allclose(emb.vectors, x, atol=1e-7)
    assert emb.metadata.column("path")[5].as_py() == "clips/5.wav"
    assert (emb.space, emb.modality, emb.dim, emb.renormalized) == ("test-space", "audio", 32, 0)
    schema = pq.read_schema(path)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert schema.field("id").type == pa.int64()


def test_read_is_zero_copy_from_arrow(shard):
    path, _ = shard
    table = pq.read_table(path, memory_map=True)
    emb = read_embeddings(path)
    # a zero-copy view is read-only; a copy would own its data and be writable
    assert not emb.vectors.flags.writeable
    assert emb.vectors.base is not None and not emb.vectors.flags.owndata
    assert table.num_rows == len(emb)
    assert read_embeddings(path, writable=True).vectors.flags.writeable


def test_non_unit_rows_are_normalized_and_counted(tmp_path):
    x = unit_rows(10, 8) * 3.0
    x[0] /= 3.0  # already unit
    table = pa.table({"id": np.arange(10), "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)})
    pq.write_table(table, tmp_path / "raw.parquet")
    emb = read_embeddings(tmp_path / "raw.parquet")
    assert emb.renormalized == 9
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(emb.vectors, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)


def test_variable_list_and_float64_columns_are_accepted(tmp_path):
    x = unit_rows(5, 4).astype(np.float64)
    pq.write_table(pa.table({"embedding": [list(r) for r in x]}), tmp_path / "lists.parquet")
    emb = read_embeddings(tmp_path / "lists.parquet")
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (5, 4)
    assert not emb.has_ids and list(emb.ids) == [0, 1, 2, 3, 4]


def test_append_adds_rows_and_refuses_taken_ids(shard):
    path, x = shard
    append_shard(path, np.array([1, 2]), unit_rows(2, 32, seed=9), pa.table({"path": ["a.wav", "b.wav"]}))
    emb = read_embeddings(path)
    assert len(emb) == 202 and list(emb.ids[-2:]) == [1, 2]
    assert emb.metadata.column("path")[-1].as_py() == "b.wav" and emb.space == "test-space"
    with pytest.raises(DiffgapError, match="id 150 is already in the index"):
        append_shard(path, np.array([150]), unit_rows(1, 32))
    with pytest.raises(DiffgapError, match="dim is 16, expected 32"):
        append_shard(path, np.array([7]), unit_rows(1, 16))


def test_validate_reports_contents(shard):
    path, _ = shard
    report = validate_shard(path)
    assert report["rows"] == 200 and report["dim"] == 32 and report["metadata_columns"] == ["path"]


def _write_raw(path, vectors, ids=None):
    cols = {"embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel().astype(np.float32)), vectors.shape[1])}
    if ids is not None:
        cols = {"id": pa.array(ids, type=pa.int64()), **cols}
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("nan", r"bad\.parquet: row 3 contains NaN or inf"),
        ("inf", r"bad\.parquet: row 3 contains NaN or inf"),
        ("zero", r"bad\.parquet: row 3 is a zero vector"),
        ("dup", r"bad\.parquet: duplicate id 7 at rows 1 and 4"),
        ("wrong_dim", r"bad\.parquet: embedding dim is 8, expected 16"),
        ("no_embedding", r"bad\.parquet: missing column 'embedding' \(columns: id, vec\)"),
        ("no_rows", r"bad\.parquet: the file has no rows"),
        ("empty_file", r"bad\.parquet: empty file \(0 bytes\)"),
        ("garbage", r"bad\.parquet: not a readable parquet file"),
        ("missing", r"bad\.parquet: no such file"),
        ("ragged", r"bad\.parquet: column 'embedding' row 1 has 3 values, row 0 has 2"),
        ("null_row", r"bad\.parquet: column 'embedding' row 1 is null"),
        ("string_ids", r"bad\.parquet: column 'id' has type string; expected int64"),
    ],
)
def test_bad_shards_give_one_clear_line(tmp_path, case, pattern):
    path = tmp_path / "bad.parquet"
    x = unit_rows(6, 8)
    dim = None
    if case in ("nan", "inf", "zero"):
        x[3] = {"nan": np.nan, "inf": np.inf, "zero": 0.0}[case]
        _write_raw(path, x)
    elif case == "dup":
        _write_raw(path, x, ids=[0, 7, 2, 3, 7, 5])
    elif case == "wrong_dim":
        _write_raw(path, x)
        dim = 16
    elif case == "no_embedding":
        pq.write_table(pa.table({"id": [1], "vec": [[1.0, 0.0]]}), path)
    elif case == "no_rows":
        _write_raw(path, x[:0].reshape(0, 8))
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"this is not parquet at all" * 10)
    elif case == "ragged":
        pq.write_table(pa.table({"embedding": [[1.0, 0.0], [0.0, 1.0, 0.0]]}), path)
    elif case == "null_row":
        pq.write_table(pa.table({"embedding": [[1.0, 0.0], None]}), path)
    elif case == "string_ids":
        pq.write_table(pa.table({"id": ["a"], "embedding": [[1.0, 0.0]]}), path)
    with pytest.raises(DiffgapError, match=pattern) as info:
        read_embeddings(path, dim=dim)
    assert "\n" not in str(info.value)


def test_npy_with_metadata_csv(tmp_path):
    x = unit_rows(4, 8)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "meta.csv").write_text("id,caption\n10,a dog\n11,rain\n12,a car\n13,birds\n")
    emb = read_npy(tmp_path / "x.npy", metadata=tmp_path / "meta.csv")
    assert list(emb.ids) == [10, 11, 12, 13] and emb.metadata.column("caption")[1].as_py() == "rain"
    (tmp_path / "short.csv").write_text("caption\na\nb\n")
    with pytest.raises(DiffgapError, match=r"short\.csv: 2 metadata rows for 4 vectors"):
        read_npy(tmp_path / "x.npy", metadata=tmp_path / "short.csv")


def test_npy_never_unpickles(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DiffgapError, match=r"obj\.npy: not a readable \.npy array"):
        read_npy(tmp_path / "obj.npy")


def test_write_shard_refuses_bad_rows_and_leaves_old_file(shard):
    path, _ = shard
    before = path.read_bytes()
    bad = unit_rows(3, 32)
    bad[1] = np.nan
    with pytest.raises(DiffgapError, match="row 1 contains NaN"):
        write_shard(path, np.arange(3), bad)
    assert path.read_bytes() == before
    assert not list(path.parent.glob(".*.tmp"))


def test_streaming_writer_is_atomic(shard):
    """Rows streamed through AtomicParquetWriter appear only on a clean exit."""
    from diffgap_search.storage import AtomicParquetWriter, embeddings_table

    shard, _ = shard
    before = read_embeddings(shard)
    schema = embeddings_table(before.ids[:1], before.vectors[:1], before.metadata.slice(0, 1)).schema
    with pytest.raises(RuntimeError):
        with AtomicParquetWriter(shard, schema) as w:
            w.write(embeddings_table(before.ids[:10], before.vectors[:10], before.metadata.slice(0, 10)))
            raise RuntimeError("killed mid-way")
    after = read_embeddings(shard)
    np.testing.assert_array_equal(after.ids, before.ids)  # the old file is untouched
    assert [p.name for p in shard.parent.iterdir()] == [shard.name]  # no temporary left

    with AtomicParquetWriter(shard, schema) as w:
        for lo in (0, 50):
            w.write(embeddings_table(before.ids[lo:lo + 50], before.vectors[lo:lo + 50], before.metadata.slice(lo, 50)))
    after = read_embeddings(shard)
    np.testing.assert_array_equal(after.ids, before.ids[:100])
    np.testing.assert_array_equal(after.vectors, before.vectors[:100])



def test_write_file_atomic_gives_a_plain_files_mode(tmp_path):
    """Not mkstemp's 0600: 0644 under umask 022, as open() gives (translate's .npy, *.errors.csv, missing.csv)."""
    old = os.umask(0o022)
    try:
        path = write_file_atomic(tmp_path / "x.npy", lambda fh: np.save(fh, np.arange(3)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert np.load(path).tolist() == [0, 1, 2] and [p.name for p in tmp_path.iterdir()] == ["x.npy"]
