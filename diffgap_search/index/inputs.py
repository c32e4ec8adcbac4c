"""What an index is built from: shard paths, `.npy` files or in-memory arrays, as `Embeddings` parts.

Id rule: a row keeps the id its source gives it (a parquet `id` column, an `ids=` array,
an `id` column of a .npy's metadata) when the source marks ids as the index's own. Rows
without such ids (an array without `ids=`, a .npy without an id column, and every shard
written by `embed`, whose ids are row numbers within that file) are numbered on the
way in, continuing after the largest id the index has ever held. An id given twice is
refused, naming it.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from diffgap_search.errors import DiffgapError
from diffgap_search.storage import Embeddings, check_ids, check_vectors, read_embeddings, read_npy



def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder -> its *.parquet and *.npy files; a quoted glob -> its matches, sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted([*p.glob("*.parquet"), *p.glob("*.npy")])
            if not found:
                raise DiffgapError(f"{p}: folder holds no .parquet or .npy files")
            out += found
        elif any(ch in str(p) for ch in "*?["):
            found = sorted(Path(x) for x in glob.glob(str(p)))
            if not found:
                raise DiffgapError(f"{p}: pattern matches no files")
            out += found
        else:
            out.append(p)
    return out


def metadata_table(metadata, n: int, source: str) -> pa.Table:
    """Metadata rows for an array: None, a pyarrow Table, a dict of columns or a list of dicts."""
    if metadata is None:
        return pa.table({})
    if isinstance(metadata, pa.Table):
        table = metadata
    elif isinstance(metadata, dict):
        table = pa.table({k: list(v) if not isinstance(v, np.ndarray) else v for k, v in metadata.items()})
    elif isinstance(metadata, (list, tuple)):
        table = pa.Table.from_pylist(list(metadata))
    else:
        raise DiffgapError(f"{source}: metadata must be a pyarrow Table, a dict of columns or a list of dicts, "
                           f"got {type(metadata).__name__}")
    if table.num_rows != n:
        raise DiffgapError(f"{source}: metadata has {table.num_rows} rows for {n} vectors; give one row per vector")
    return table


def array_part(vectors, *, ids=None, metadata=None, space: str | None = None, modality: str | None = None,
               dim: int | None = None, source: str = "array") -> Embeddings:
    """An in-memory matrix [n, d] as one validated part (rows L2-normalized, NaN/zero refused)."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number):
        raise DiffgapError(f"{source}: expected a non-empty numeric matrix [n, d], got shape {x.shape} ({x.dtype})")
    x, renormalized = check_vectors(np.array(x, dtype=np.float32, order="C"), source, dim=dim)
    has_ids = ids is not None
    ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids)
    if ids.shape != (len(x),) or not np.issubdtype(ids.dtype, np.integer):
        raise DiffgapError(f"{source}: ids must be {len(x)} integers, one per vector (got shape {ids.shape}, {ids.dtype})")
    ids = ids.astype(np.int64)
    check_ids(ids, source)
    return Embeddings(ids=ids, vectors=x, metadata=metadata_table(metadata, len(x), source), source=source,
                      space=space, modality=modality, renormalized=renormalized, has_ids=has_ids)


def read_inputs(data, *, ids=None, metadata=None, space: str | None = None, modality: str | None = None,
                dim: int | None = None) -> list[Embeddings]:
    """Parts to index: an array (with optional ids/metadata), or parquet shards and `.npy` files
    (a path `metadata` goes with exactly one .npy)."""
    if isinstance(data, Embeddings):
        return [data]
    if isinstance(data, np.ndarray) or (isinstance(data, (list, tuple)) and data and not isinstance(data[0], (str, Path))):
        return [array_part(data, ids=ids, metadata=metadata, space=space, modality=modality, dim=dim)]
    if ids is not None:
        raise DiffgapError("ids= goes with an array of vectors; shards carry their ids in an `id` column")
    paths = expand_inputs([data] if isinstance(data, (str, Path)) else data)
    if not paths:
        raise DiffgapError("no embeddings given; pass --embeddings PATH (parquet shards or a .npy file)")
    if metadata is not None and (len(paths) != 1 or Path(paths[0]).suffix != ".npy"):
        raise DiffgapError("--metadata goes with exactly one .npy file of embeddings (rows in the same order)")
    parts = []
    for p in tqdm(paths, desc="reading embeddings", unit="file", disable=len(paths) < 2):
        p = Path(p)
        emb = read_npy(p, metadata=Path(metadata) if metadata else None, dim=dim) if p.suffix == ".npy" else read_embeddings(p, dim=dim)
        dim = dim or emb.dim
        parts.append(emb)
    return parts


def assign_ids(parts: list[Embeddings], taken: np.ndarray, next_id: int) -> int:
    """Number the rows without ids after every id so far (see the module docstring); return the next free id."""
    given = [p.ids for p in parts if p.has_ids]
    if given:
        next_id = max(next_id, int(max(g.max() for g in given)) + 1)
    for p in parts:
        if not p.has_ids:
            p.ids = np.arange(next_id, next_id + len(p), dtype=np.int64)
            next_id += len(p)
    all_ids = np.concatenate([p.ids for p in parts])
    check_ids(all_ids, " + ".join(p.source for p in parts), taken=taken)
    return next_id


def common_space(parts: list[Embeddings], space: str | None, index_space: str | None = None) -> str | None:
    spaces = {p.space for p in parts if p.space}
    if space is None and len(spaces) > 1:
        raise DiffgapError(f"inputs come from different spaces ({', '.join(sorted(spaces))}); index one space at a time")
    space = space or (spaces.pop() if spaces else None) or index_space
    for p in parts:
        if p.space and space and p.space != space:
            raise DiffgapError(f"{p.source}: embeddings are in space {p.space!r}, the index is {space!r}")
    return space


def common_modality(parts: list[Embeddings]) -> str | None:
    mods = {p.modality for p in parts if p.modality}
    return mods.pop() if len(mods) == 1 else None
