"""Parquet embedding shards: the on-disk format that every other part reads.

A shard is one parquet file with the columns

    id          int64, unique within an index
    embedding   fixed_size_list<float32>[d], one L2-normalized row per entry
    ...         any metadata columns (path, start_s, duration_s, caption, label, sha256)

and the file-level key/value metadata `diffgap.space` (the embedding space, e.g. the
CLAP checkpoint; text and audio of one CLAP model share a space) and
`diffgap.modality` (audio, text, video).

Norm policy: every stored row is unit-norm, so that inner product is cosine
everywhere downstream. Input rows that are finite and non-zero but not unit-norm
(another tool's raw features) are L2-normalized on the way in and counted in
`Embeddings.renormalized`; zero rows, NaN and inf are refused, naming the file and
the row, because no direction can be recovered from them.

Reads are zero-copy from Arrow to numpy where the layout allows it (one chunk,
float32, no nulls); otherwise one copy is made.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from diffgap_search.atomic import _mkstemp, read_json, write_file_atomic, write_json_atomic  # noqa: F401  (one home: atomic.py)
from diffgap_search.errors import DiffgapError

SPACE_KEY = b"diffgap.space"
MODALITY_KEY = b"diffgap.modality"
IDS_KEY = b"diffgap.ids"  # "local": the id column numbers rows within this file only (shards `embed` writes)
NORM_TOL = 1e-4  # |norm - 1| above this counts as "not unit-norm"
EMBEDDING = "embedding"
ID = "id"
VECTOR_COLUMNS = (EMBEDDING, "a", "b")  # float columns stored uncompressed (noise does not compress)


@dataclass
class Embeddings:
    """Rows read from one source: ids, unit-norm vectors and their metadata."""

    ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, d], C-contiguous, unit rows
    metadata: pa.Table  # n rows, every column but `embedding` and `id`
    source: str = ""  # file(s) these rows came from, for messages
    space: str | None = None
    modality: str | None = None
    renormalized: int = 0  # rows that were L2-normalized on read
    has_ids: bool = True  # False: the source had no `id` column and ids are 0..n-1

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def check_vectors(
    vectors: np.ndarray, source: str, *, dim: int | None = None, row_offset: int = 0, inplace: bool = True
) -> tuple[np.ndarray, int]:
    """Refuse NaN/inf/zero rows and wrong dims; L2-normalize rows that are not unit-norm.

    Returns (vectors, number of rows normalized). The input is returned as is when
    every row is already unit-norm (a zero-copy view stays one); otherwise rows are
    normalized in place (`inplace` and writable), or in a copy.
    `row_offset` makes row numbers in messages count from the start of the file.
    """
    if vectors.ndim != 2:
        raise DiffgapError(f"{source}: embeddings must be a 2-D array [rows, dim], got shape {vectors.shape}")
    if vectors.shape[0] == 0:
        raise DiffgapError(f"{source}: no rows; give a file with at least one embedding")
    if dim is not None and vectors.shape[1] != dim:
        raise DiffgapError(
            f"{source}: embedding dim is {vectors.shape[1]}, expected {dim}; "
            "use embeddings from the same encoder as the index"
        )
    # fast path (every query goes through here): all squared norms within tolerance of 1;
    # NaN or inf make min/max non-finite and take the slow path, which names the row
    squared = np.einsum("ij,ij->i", vectors, vectors)
    lo, hi = float(squared.min()), float(squared.max())
    if math.isfinite(lo) and math.isfinite(hi) and (1 - NORM_TOL) ** 2 <= lo and hi <= (1 + NORM_TOL) ** 2:
        return vectors, 0
    norms = np.sqrt(squared)
    if not np.isfinite(norms).all():
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise DiffgapError(
                f"{source}: row {row + row_offset} contains NaN or inf "
                f"({int((~finite).sum())} such rows); re-embed or drop those rows"
            )
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)  # finite values too large to square in float32
    zero = norms == 0
    if zero.any():
        row = int(np.flatnonzero(zero)[0])
        raise DiffgapError(
            f"{source}: row {row + row_offset} is a zero vector ({int(zero.sum())} such rows); "
            "a zero embedding has no direction: re-embed or drop it"
        )
    off = np.abs(norms - 1.0) > NORM_TOL
    if off.any():
        if not (inplace and vectors.flags.writeable):
            vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
        vectors[off] = (vectors[off] / norms[off, None]).astype(np.float32)
    return vectors, int(off.sum())


def check_ids(ids: np.ndarray, source: str, *, taken: np.ndarray | None = None) -> None:
    """Refuse duplicate ids within `ids`, and ids already in `taken` (sorted)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        value = int(sorted_ids[dup[0]])
        rows = np.flatnonzero(ids == value)[:2]
        raise DiffgapError(
            f"{source}: duplicate id {value} at rows {rows[0]} and {rows[1]}; ids must be unique"
        )
    if taken is not None and taken.size:
        pos = np.searchsorted(taken, ids)
        hit = (pos < taken.size) & (taken[np.minimum(pos, taken.size - 1)] == ids)
        if hit.any():
            row = int(np.flatnonzero(hit)[0])
            raise DiffgapError(
                f"{source}: row {row}: id {int(ids[row])} is already in the index; "
                "give new ids, or drop the id column to have ids assigned"
            )


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _open_parquet(path: Path) -> pa.Table:
    if not path.exists():
        raise DiffgapError(f"{path}: no such file")
    if path.is_dir():
        raise DiffgapError(f"{path}: is a folder; give parquet files (e.g. {path}/*.parquet)")
    if path.stat().st_size == 0:
        raise DiffgapError(f"{path}: empty file (0 bytes); it is not a parquet file")
    try:
        return pq.read_table(path, memory_map=True)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DiffgapError(f"{path}: not a readable parquet file ({first})") from None


def vectors_from_column(column: pa.ChunkedArray, source: str, name: str = EMBEDDING) -> np.ndarray:
    """A list column of floats -> float32 [n, d] numpy, zero-copy when possible."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    t = arr.type
    if (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) and arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DiffgapError(f"{source}: column '{name}' row {row} is null; every row needs an embedding")
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != lengths.max()):
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DiffgapError(
                f"{source}: column '{name}' row {row} has {lengths[row]} values, row 0 has "
                f"{lengths[0]}; every embedding must have the same dim"
            )
        d = int(lengths[0]) if len(lengths) else 0
    else:
        raise DiffgapError(
            f"{source}: column '{name}' has type {t}; expected fixed_size_list<float32>[d] "
            "(a list of floats per row)"
        )
    values = arr.flatten()
    if values.null_count:
        flat = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DiffgapError(f"{source}: column '{name}' row {flat // max(d, 1)} has a null value")
    if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
        raise DiffgapError(f"{source}: column '{name}' holds {values.type}; expected float32 values")
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), d)


def read_embeddings(path: str | Path, *, dim: int | None = None, writable: bool = False) -> Embeddings:
    """Read and validate one parquet shard (or a `.npy` matrix, see `read_npy`).

    Rows are returned unit-norm (see the module docstring). `writable=True`
    guarantees a private, writable copy of the vectors.
    """
    path = Path(path)
    if path.suffix == ".npy":
        return read_npy(path, dim=dim)
    table = _open_parquet(path)
    source = str(path)
    if table.num_rows == 0:
        raise DiffgapError(f"{source}: the file has no rows; give a shard with at least one embedding")
    if EMBEDDING not in table.column_names:
        raise DiffgapError(
            f"{source}: missing column '{EMBEDDING}' (columns: {', '.join(table.column_names)}); "
            "a shard needs 'embedding' as fixed_size_list<float32>[d]"
        )
    vectors = vectors_from_column(table.column(EMBEDDING), source)
    if ID in table.column_names:
        id_col = table.column(ID)
        if not pa.types.is_integer(id_col.type):
            raise DiffgapError(f"{source}: column 'id' has type {id_col.type}; expected int64")
        if id_col.null_count:
            row = int(np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DiffgapError(f"{source}: column 'id' row {row} is null")
        ids = id_col.to_numpy().astype(np.int64, copy=False)
    else:
        ids = np.arange(table.num_rows, dtype=np.int64)
    check_ids(ids, source)
    if writable and not vectors.flags.writeable:
        vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    vectors, renormalized = check_vectors(vectors, source, dim=dim)
    meta = table.schema.metadata or {}
    keep = [c for c in table.column_names if c not in (EMBEDDING, ID)]
    return Embeddings(
        ids=ids,
        vectors=vectors,
        metadata=table.select(keep),
        source=source,
        space=meta.get(SPACE_KEY, b"").decode() or None,
        modality=meta.get(MODALITY_KEY, b"").decode() or None,
        renormalized=renormalized,
        has_ids=ID in table.column_names and meta.get(IDS_KEY) != b"local",
    )


def read_metadata_table(path: Path) -> pa.Table:
    """Metadata for a `.npy` matrix: a parquet or CSV file, one row per vector."""
    if path.suffix == ".csv":
        if not path.exists():
            raise DiffgapError(f"{path}: no such file")
        try:
            return pacsv.read_csv(path)
        except pa.ArrowException as exc:
            raise DiffgapError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    return _open_parquet(path)


def read_npy(path: Path, *, metadata: Path | None = None, dim: int | None = None) -> Embeddings:
    """A `.npy` float matrix [n, d] plus optional metadata rows in the same order.

    Ids come from the metadata's `id` column when it has one, else 0..n-1.
    `allow_pickle=False`: loading never executes code.
    """
    path = Path(path)
    if not path.exists():
        raise DiffgapError(f"{path}: no such file")
    try:
        vectors = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise DiffgapError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") from None
    if vectors.dtype.kind not in "fiu":
        raise DiffgapError(f"{path}: array dtype is {vectors.dtype}; expected float32")
    if vectors.ndim != 2:
        raise DiffgapError(f"{path}: array shape is {vectors.shape}; expected [rows, dim]")
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    table = pa.table({}) if metadata is None else read_metadata_table(Path(metadata))
    if metadata is not None and table.num_rows != len(vectors):
        raise DiffgapError(
            f"{metadata}: {table.num_rows} metadata rows for {len(vectors)} vectors in {path}; "
            "they must be in the same order, one row per vector"
        )
    has_ids = ID in table.column_names
    if has_ids:
        ids = table.column(ID).to_numpy().astype(np.int64)
        table = table.drop_columns([ID])
    else:
        ids = np.arange(len(vectors), dtype=np.int64)
    if EMBEDDING in table.column_names:
        table = table.drop_columns([EMBEDDING])
    source = str(path)
    check_ids(ids, str(metadata or path))
    vectors, renormalized = check_vectors(vectors, source, dim=dim)
    if table.num_columns == 0:
        table = pa.table({"_row": pa.array(np.arange(len(vectors)))}).drop_columns(["_row"])
    return Embeddings(
        ids=ids, vectors=vectors, metadata=table, source=source, renormalized=renormalized, has_ids=has_ids
    )


def shard_rows(path: str | Path) -> int:
    """Row count from the parquet footer, without reading the data."""
    return pq.ParquetFile(path).metadata.num_rows


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def embeddings_table(
    ids: np.ndarray,
    vectors: np.ndarray,
    metadata: pa.Table | None = None,
    *,
    space: str | None = None,
    modality: str | None = None,
    local_ids: bool = False,
) -> pa.Table:
    """Build the Arrow table of a shard (no validation; see `write_shard`).

    `local_ids`: the ids are row numbers within this file, not ids for an index; `build-index`
    and `add` number such rows after the index's largest id (index/inputs.py, the id rule).
    """
    n = len(vectors)
    columns = {ID: pa.array(np.asarray(ids, dtype=np.int64)), EMBEDDING: fixed_size_vectors(vectors)}
    if metadata is not None:
        if metadata.num_rows != n:
            raise DiffgapError(f"metadata has {metadata.num_rows} rows for {n} embeddings")
        for name in metadata.column_names:
            if name in columns:
                raise DiffgapError(f"metadata column '{name}' clashes with a reserved column name")
            columns[name] = metadata.column(name)
    table = pa.table(columns)
    kv = {}
    if space:
        kv[SPACE_KEY] = space.encode()
    if modality:
        kv[MODALITY_KEY] = modality.encode()
    if local_ids:
        kv[IDS_KEY] = b"local"
    return table.replace_schema_metadata(kv or None)


class AtomicParquetWriter:
    """Stream record batches into a parquet file that appears only when complete.

    Used as a context manager: rows go to a temporary file beside `path`; a clean
    exit fsyncs and renames it into place, an exception deletes it and leaves any
    previous file at `path` untouched. For outputs too large to build in memory.
    """

    def __init__(self, path: str | Path, schema: pa.Schema):
        self.path = Path(path)
        self.schema = schema
        self._fd: int | None = None
        self._tmp: str | None = None
        self._writer: pq.ParquetWriter | None = None
        self._fh = None

    def __enter__(self) -> "AtomicParquetWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = _mkstemp(self.path)
        self._fh = os.fdopen(fd, "wb")
        names = self.schema.names
        self._writer = pq.ParquetWriter(
            self._fh,
            self.schema,
            compression={c: ("none" if c in VECTOR_COLUMNS else "zstd") for c in names},
            use_dictionary=[c for c in names if c not in VECTOR_COLUMNS],
        )
        return self

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(self.schema))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.close()
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def fixed_size_vectors(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """float32 [n, d] -> fixed_size_list<float32>[d] without copying when C-contiguous."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), vectors.shape[1])


def write_table_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write a parquet file via a temporary file in the same folder + rename.

    A crash at any point leaves either the old file or the new one, never half a
    file. Embedding values are stored uncompressed (float noise does not compress,
    and plain pages read fastest); metadata columns use zstd.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compression = {c: ("none" if c in VECTOR_COLUMNS else "zstd") for c in table.column_names}
    return write_file_atomic(path, lambda fh: pq.write_table(
        table, fh, compression=compression, use_dictionary=[c for c in table.column_names if c not in VECTOR_COLUMNS]))


def write_shard(
    path: str | Path,
    ids: np.ndarray,
    vectors: np.ndarray,
    metadata: pa.Table | None = None,
    *,
    space: str | None = None,
    modality: str | None = None,
    local_ids: bool = False,
) -> Path:
    """Validate (ids unique, rows finite and non-zero), normalize, write atomically (`local_ids`: see embeddings_table)."""
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(vectors):
        raise DiffgapError(f"{path}: {len(ids)} ids for {len(vectors)} embeddings")
    check_ids(ids, str(path))
    vectors, _ = check_vectors(vectors, str(path))
    return write_table_atomic(embeddings_table(ids, vectors, metadata, space=space, modality=modality, local_ids=local_ids), path)


def append_shard(path: str | Path, ids: np.ndarray, vectors: np.ndarray, metadata: pa.Table | None = None) -> Path:
    """Append rows to an existing shard (rewritten atomically; parquet is immutable).

    The new rows must have the shard's dim and metadata columns and new ids.
    """
    old = read_embeddings(path)
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    ids = np.asarray(ids, dtype=np.int64)
    vectors, _ = check_vectors(vectors, f"{path} (appended rows)", dim=old.dim)
    check_ids(ids, f"{path} (appended rows)", taken=np.sort(old.ids))
    if metadata is None:
        metadata = pa.table({c: pa.nulls(len(ids), old.metadata.schema.field(c).type) for c in old.metadata.column_names})
    if set(metadata.column_names) != set(old.metadata.column_names):
        raise DiffgapError(
            f"{path}: appended metadata columns {sorted(metadata.column_names)} differ from the shard's "
            f"{sorted(old.metadata.column_names)}"
        )
    merged_meta = pa.concat_tables([old.metadata, metadata.select(old.metadata.column_names).cast(old.metadata.schema)])
    return write_table_atomic(
        embeddings_table(
            np.concatenate([old.ids, ids]),
            np.concatenate([old.vectors, vectors]),
            merged_meta,
            space=old.space,
            modality=old.modality,
        ),
        path,
    )


def validate_shard(path: str | Path, *, dim: int | None = None) -> dict:
    """Read a shard fully and report what it holds; raises DiffgapError on any problem."""
    emb = read_embeddings(path, dim=dim)
    return {
        "path": str(path),
        "rows": len(emb),
        "dim": emb.dim,
        "space": emb.space,
        "modality": emb.modality,
        "metadata_columns": emb.metadata.column_names,
        "renormalized_rows": emb.renormalized,
    }
