"""The pairs file: what the translator trains on and benchmarks evaluate.

A parquet file with

    a          fixed_size_list<float32>[d_a] (or list<float>), audio-space embedding
    b          fixed_size_list<float32>[d_b], query-side (text or video) embedding
    pair_id    int64, optional (default: row number)
    group_id   the clip a pair belongs to (several captions share one), int or string;
               optional (default: pair_id)
    split      optional: train / val / test
    ...        any metadata (captions, paths)

File metadata `diffgap.space_a` / `diffgap.space_b` (and `diffgap.modality_b`) name
the spaces when known. Rows of `a` and `b` follow the storage norm policy: finite
non-zero rows are L2-normalized, zero/NaN/inf rows are refused with file, column and
row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffgap_search.errors import DiffgapError
from diffgap_search.storage import check_vectors, vectors_from_column

SPLITS = ("train", "val", "test")


@dataclass
class Pairs:
    a: np.ndarray  # float32 [n, d_a], unit rows
    b: np.ndarray  # float32 [n, d_b], unit rows
    pair_id: np.ndarray  # int64 [n]
    group: np.ndarray  # int64 [n]: index of the pair's group (clip) in 0..n_groups-1
    group_id: np.ndarray  # [n] the file's group ids (int or str)
    split: np.ndarray | None  # str [n] or None
    metadata: pa.Table
    source: str = ""
    space_a: str | None = None
    space_b: str | None = None
    modality_b: str | None = None

    def __len__(self) -> int:
        return len(self.pair_id)

    @property
    def dim_a(self) -> int:
        return int(self.a.shape[1])

    @property
    def dim_b(self) -> int:
        return int(self.b.shape[1])

    def subset(self, rows: np.ndarray) -> "Pairs":
        rows = np.asarray(rows)
        _, group = np.unique(self.group[rows], return_inverse=True)
        return Pairs(
            a=self.a[rows], b=self.b[rows], pair_id=self.pair_id[rows], group=group.astype(np.int64),
            group_id=self.group_id[rows], split=None if self.split is None else self.split[rows],
            metadata=self.metadata.take(pa.array(rows)), source=self.source,
            space_a=self.space_a, space_b=self.space_b, modality_b=self.modality_b,
        )

    def gallery(self) -> tuple[np.ndarray, np.ndarray]:
        """One `a` row per group (the first), and each pair's row in that gallery.

        For retrieval: every `b` is a query whose answer is its group's `a`.
        """
        _, first = np.unique(self.group, return_index=True)
        return self.a[first], self.group


def read_pairs(path: str | Path, *, split: str | None = None, dim_a: int | None = None, dim_b: int | None = None) -> Pairs:
    """Read and validate a pairs file; `split` keeps only the rows of that split."""
    path = Path(path)
    if not path.exists():
        raise DiffgapError(f"{path}: no such pairs file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DiffgapError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    for column in ("a", "b"):
        if column not in table.column_names:
            raise DiffgapError(
                f"{path}: missing column '{column}' (a pairs file needs 'a' = audio-space and 'b' = query-side "
                f"embeddings; it has {', '.join(table.column_names) or 'no columns'})"
            )
    if split is not None:
        if "split" not in table.column_names:
            raise DiffgapError(f"{path}: asked for split {split!r} but the file has no 'split' column")
        table = table.filter(pc.equal(table.column("split"), split))
    if table.num_rows == 0:
        raise DiffgapError(f"{path}: no pairs" + (f" in split {split!r}" if split else ""))
    a = vectors_from_column(table.column("a"), str(path), "a")
    b = vectors_from_column(table.column("b"), str(path), "b")
    a, _ = check_vectors(a, f"{path} column 'a'", dim=dim_a)
    b, _ = check_vectors(b, f"{path} column 'b'", dim=dim_b)
    n = table.num_rows
    pair_id = table.column("pair_id").to_numpy().astype(np.int64) if "pair_id" in table.column_names else np.arange(n)
    if "group_id" in table.column_names:
        group_col = table.column("group_id")
        if group_col.null_count:
            raise DiffgapError(f"{path}: column 'group_id' has {group_col.null_count} empty values")
        group_id = np.asarray(group_col.to_pylist() if not pa.types.is_integer(group_col.type) else group_col.to_numpy())
    else:
        group_id = pair_id.copy()
    _, group = np.unique(group_id, return_inverse=True)
    split_values = np.asarray(table.column("split").to_pylist()) if "split" in table.column_names else None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    reserved = {"a", "b", "pair_id", "group_id", "split"}
    return Pairs(
        a=a, b=b, pair_id=pair_id, group=group.astype(np.int64), group_id=group_id, split=split_values,
        metadata=table.select([c for c in table.column_names if c not in reserved]), source=str(path),
        space_a=meta.get("diffgap.space_a"), space_b=meta.get("diffgap.space_b"),
        modality_b=meta.get("diffgap.modality_b"),
    )


def split_train_val(pairs: Pairs, val_fraction: float, seed: int = 0) -> tuple[Pairs, Pairs | None]:
    """The file's own train/val split when it has one, else a seeded split by group.

    Splitting by group keeps every caption of a clip on one side, so validation
    retrieval never sees a clip it trained on.
    """
    if pairs.split is not None and (pairs.split == "val").any():
        return pairs.subset(np.flatnonzero(pairs.split == "train")), pairs.subset(np.flatnonzero(pairs.split == "val"))
    if val_fraction <= 0:
        return pairs, None
    if not 0 < val_fraction < 1:
        raise DiffgapError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_groups = int(pairs.group.max()) + 1
    order = np.random.default_rng(seed).permutation(n_groups)
    n_val = max(1, int(round(val_fraction * n_groups)))
    if n_val >= n_groups:
        raise DiffgapError(f"{pairs.source}: {n_groups} groups are too few for a validation split; use --val-fraction 0")
    is_val = np.zeros(n_groups, bool)
    is_val[order[:n_val]] = True
    rows_val = is_val[pairs.group]
    return pairs.subset(np.flatnonzero(~rows_val)), pairs.subset(np.flatnonzero(rows_val))


def write_pairs(path: str | Path, a: np.ndarray, b: np.ndarray, *, group_id=None, split=None,
                metadata: dict | None = None, space_a: str | None = None, space_b: str | None = None,
                modality_b: str | None = None) -> Path:
    """Write a pairs file atomically."""
    from diffgap_search.storage import fixed_size_vectors, write_table_atomic

    n = len(a)
    columns = {"pair_id": np.arange(n, dtype=np.int64), "a": fixed_size_vectors(a), "b": fixed_size_vectors(b)}
    if group_id is not None:
        columns["group_id"] = pa.array(group_id)
    if split is not None:
        columns["split"] = pa.array(split, pa.string())
    for k, v in (metadata or {}).items():
        columns[k] = pa.array(v)
    kv = {}
    if space_a:
        kv[b"diffgap.space_a"] = space_a.encode()
    if space_b:
        kv[b"diffgap.space_b"] = space_b.encode()
    if modality_b:
        kv[b"diffgap.modality_b"] = modality_b.encode()
    return write_table_atomic(pa.table(columns).replace_schema_metadata(kv or None), path)


@dataclass
class PairReport:
    out: Path
    pairs: int
    groups: int
    unmatched: int  # query rows whose key has no audio row


def pair_shards(audio: str | Path, query: str | Path, out: str | Path, *, on: str = "path") -> PairReport:
    """Join an audio shard and a query-side shard (video, text) on a key column into a pairs file.

    Every query row whose key has an audio row becomes one pair (several captions of one
    clip share its audio row and its group); query rows without audio are counted and
    left out. Built for the shards `embed` writes: embed a video folder once as audio and
    once as video, and pair them on `path`.
    """
    from diffgap_search.storage import read_embeddings

    audio_emb, query_emb = read_embeddings(audio), read_embeddings(query)
    for emb, name in ((audio_emb, audio), (query_emb, query)):
        if on not in emb.metadata.column_names:
            raise DiffgapError(f"{name}: no column {on!r} to pair on (it has {', '.join(emb.metadata.column_names) or 'none'}); "
                               "choose one with --on")
    audio_keys = [str(k) for k in audio_emb.metadata.column(on).to_pylist()]
    row_of: dict[str, int] = {}
    for i, k in enumerate(audio_keys):
        if k in row_of:
            raise DiffgapError(f"{audio}: {on} {k!r} has several rows (a --per-window shard?); pair clip-level embeddings, "
                               "one row per clip")
        row_of[k] = i
    query_keys = [str(k) for k in query_emb.metadata.column(on).to_pylist()]
    matched = [(j, row_of[k]) for j, k in enumerate(query_keys) if k in row_of]
    if not matched:
        raise DiffgapError(f"no {on} of {query} appears in {audio}; were they embedded from the same files?")
    q_rows = np.array([j for j, _ in matched], np.int64)
    a_rows = np.array([i for _, i in matched], np.int64)
    keys = [query_keys[j] for j in q_rows]
    write_pairs(out, audio_emb.vectors[a_rows], query_emb.vectors[q_rows], group_id=keys, metadata={on: keys},
                space_a=audio_emb.space, space_b=query_emb.space, modality_b=query_emb.modality)
    return PairReport(Path(out), len(matched), len(set(keys)), len(query_keys) - len(matched))
