"""The Index: FAISS over embedding shards, in a folder or in memory.

An index folder holds

    manifest.json            format version, space, dim, count, FAISS factory string,
                             tuned search parameters, shard list, timestamps
    index.faiss              the FAISS index; its labels are row positions 0..n-1
    shards/part-NNNNN.parquet  the rows in position order (ids, unit vectors, metadata)

Every write goes to a temporary sibling folder that is swapped into place
atomically (`renameat2(RENAME_EXCHANGE)` on Linux), so a build or an `add` killed
at any point leaves the previous index intact and loadable. Shards are immutable:
`add` hard-links the old parts into the new version and writes new parts.

`Index.build(vectors, out=None)` makes the same index in memory (no folder): what
`calibrate` and `benchmark` search their galleries with. Index kinds and their
tuning live in `kinds.py`; inputs and the id rule in `inputs.py`.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from diffgap_search import __version__
from diffgap_search.atomic import replace_dir, restore_interrupted_swap, scratch_dir
from diffgap_search.errors import DiffgapError
from diffgap_search.index.inputs import (
    assign_ids,
    common_modality,
    common_space,
    read_inputs,
)
from diffgap_search.index.kinds import (
    KINDS,
    TUNE_K,
    IndexPlan,
    parse_bytes,
    plan_index,
    set_search_params,
    tuning_queries,
)
from diffgap_search.locks import writer_lock
from diffgap_search.storage import (
    EMBEDDING,
    ID,
    Embeddings,
    check_vectors,
    embeddings_table,
    read_embeddings,
    read_json,
    write_json_atomic,
    write_table_atomic,
)

FORMAT_VERSION = 1
DEVICES = ("auto", "cpu", "cuda")
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
SHARD_DIR = "shards"
SHARD_ROWS = 262_144  # rows per stored part file
ADD_CHUNK = 65_536  # rows per faiss.add call (progress granularity)


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise DiffgapError(f"device {device!r} is unknown; choose one of {', '.join(DEVICES)}")
    gpus = faiss.get_num_gpus()
    if device == "cuda" and gpus == 0:
        raise DiffgapError("--device cuda, but FAISS sees no GPU; use --device cpu (or auto) on this machine")
    return "cuda" if (device == "auto" and gpus > 0) or device == "cuda" else "cpu"


class SearchResult:
    """Top-k of a plain FAISS search: scores (cosine, -inf where no hit), ids and positions (-1 where no hit)."""

    def __init__(self, scores: np.ndarray, ids: np.ndarray, positions: np.ndarray, index: "Index"):
        self.scores, self.ids, self.positions, self.index = scores, ids, positions, index

    def rows(self, q: int) -> list[dict]:
        """Ranked hits of query q with their metadata; ranks are 1-based."""
        keep = self.positions[q] >= 0
        meta = self.index.metadata(self.positions[q][keep])
        return [{"rank": r + 1, "score": float(s), "id": int(i), **m}
                for r, (s, i, m) in enumerate(zip(self.scores[q][keep], self.ids[q][keep], meta))]


class Index:
    """An index of unit vectors of one space. FAISS labels are row positions; `ids` maps them to ids.

        Index.build(vectors_or_paths, out=DIR)   # or out=None: in memory
        Index.open(DIR)
        index.add(vectors_or_paths)               # a new version (the folder is swapped atomically)
        index.search(xq, k)                       # SearchResult
    """

    def __init__(self, root: Path | None, manifest: dict, index: faiss.Index, ids: np.ndarray, meta: pa.Table,
                 device: str, vectors: np.ndarray | None = None):
        self.root = root  # None: in memory
        self.manifest = manifest
        self.index = index
        self.ids = ids  # int64 [n], in position order
        self._meta = meta  # metadata columns (and `id`), in position order
        self.device = device
        self._vectors = vectors
        self._id_order: np.ndarray | None = None
        self.added = 0  # rows the `add` that made this version appended
        self._shards: list[tuple[int | None, Path]] = []  # (descriptor, path) of each shard of this version

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def space(self) -> str | None:
        return self.manifest.get("space")

    @property
    def modality(self) -> str | None:
        return self.manifest.get("modality")

    @property
    def name(self) -> str:
        return str(self.root) if self.root is not None else "in-memory index"

    def __len__(self) -> int:
        return int(self.manifest["count"])

    # -- building ----------------------------------------------------------
    @classmethod
    def build(cls, data, out: str | Path | None = None, *, ids=None, metadata=None, space: str | None = None,
              modality: str | None = None, index_type: str = "auto", device: str = "auto",
              memory_budget: int | str = "4GB", recall_target: float = 0.95, seed: int = 0,
              wait_s: float | None = None) -> "Index":
        """Index `data` (an array [n, d], or parquet shards / .npy paths) into `out` (None: in memory).

        Reads and validates every row, plans the FAISS index (kinds.py), trains, adds, tunes the
        search parameters to `recall_target` and writes the folder atomically, holding the folder's
        writer lock (locks.py; a second writer waits up to `wait_s` seconds).
        """
        if not 0.0 < recall_target <= 1.0:
            raise DiffgapError(f"recall target {recall_target} must be in (0, 1]; e.g. 0.95")
        budget = parse_bytes(memory_budget)
        device = resolve_device(device)
        parts = read_inputs(data, ids=ids, metadata=metadata, space=space, modality=modality)
        space = common_space(parts, space)
        next_id = assign_ids(parts, np.empty(0, np.int64), 0)
        n, d = sum(len(p) for p in parts), parts[0].dim
        plan = plan_index(n, d, index_type, budget)
        xb = np.concatenate([p.vectors for p in parts]) if len(parts) > 1 else parts[0].vectors
        index, params, recall, train_s = _make_faiss(plan, xb, recall_target, seed)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = {
            "format_version": FORMAT_VERSION, "space": space, "modality": modality or common_modality(parts),
            "encoder": None, "encoder_checkpoint_sha256": None, "dim": d, "count": n, "metric": "inner_product",
            "index_type": plan.index_type, "factory": plan.factory, "search_params": params,
            "recall_target": recall_target, "tuned_recall_at_10": round(recall, 4), "train_seconds": round(train_s, 2),
            "next_id": next_id, "shards": [], "created": now, "updated": now,
            "diffgap_search_version": __version__, "faiss_version": faiss.__version__,
        }
        if out is None:
            return cls._in_memory(manifest, index, parts, device)
        out = Path(out)
        with writer_lock(out, wait_s):
            tmp = scratch_dir(out, subdirs=(SHARD_DIR,))
            try:
                manifest["shards"] = _write_parts(tmp, parts, first_part=0)
                _write_version(tmp, out, index, manifest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return cls.open(out, device=device)

    def add(self, data, *, ids=None, metadata=None, space: str | None = None, modality: str | None = None,
            wait_s: float | None = None) -> "Index":
        """Append rows (see inputs.py for the id rule); the FAISS index is extended, not rebuilt.

        Returns the new version. On a folder the writer lock is held from reading the newest
        version to swapping in the next one, so concurrent adds are applied one after the other
        (none is lost); a second writer waits up to `wait_s` seconds.
        """
        parts = read_inputs(data, ids=ids, metadata=metadata, space=space, modality=modality, dim=self.dim)
        if self.root is None:
            after = self._add_parts(parts, space)
            after.added = sum(len(p) for p in parts)
            return after
        with writer_lock(self.root, wait_s):
            newest = Index.open(self.root, device="cpu")  # another writer may have added since this version was read
            newest._add_parts(parts, space)
        after = Index.open(self.root, device=self.device)
        after.added = sum(len(p) for p in parts)
        return after

    def _add_parts(self, parts: list[Embeddings], space: str | None) -> "Index":
        common_space(parts, space, index_space=self.space)
        next_id = assign_ids(parts, np.sort(self.ids), int(self.manifest["next_id"]))
        xb = np.concatenate([p.vectors for p in parts]) if len(parts) > 1 else parts[0].vectors
        manifest = dict(self.manifest, next_id=next_id, updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if self.root is None:
            index = faiss.clone_index(self.index)
            _add_chunked(index, xb, desc="adding")
            manifest["count"] = int(index.ntotal)
            old = Embeddings(self.ids, self.vectors(), self._meta.drop_columns([ID]) if ID in self._meta.column_names else self._meta)
            return Index._in_memory(manifest, index, [old, *parts], self.device)
        index = faiss.read_index(str(self.root / INDEX_FILE))  # CPU copy, untouched on disk
        tmp = scratch_dir(self.root, subdirs=(SHARD_DIR,))
        try:
            for shard in self.manifest["shards"]:
                src, dst = self.root / shard["file"], tmp / shard["file"]
                try:
                    os.link(src, dst)  # shards are immutable: share, don't copy
                except OSError:
                    shutil.copy2(src, dst)
            manifest["shards"] = self.manifest["shards"] + _write_parts(tmp, parts, first_part=len(self.manifest["shards"]))
            _add_chunked(index, xb, desc="adding")
            manifest["count"] = int(index.ntotal)
            _write_version(tmp, self.root, index, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self

    @classmethod
    def _in_memory(cls, manifest: dict, index: faiss.Index, parts: list[Embeddings], device: str) -> "Index":
        ids = np.concatenate([p.ids for p in parts])
        vectors = np.concatenate([p.vectors for p in parts]) if len(parts) > 1 else parts[0].vectors
        metas = [pa.Table.from_arrays([pa.array(p.ids), *p.metadata.columns], names=[ID, *p.metadata.column_names])
                 for p in parts]  # `id` first, as shards store it (and a table of no columns keeps its rows)
        meta = pa.concat_tables(metas, promote_options="default") if len(metas) > 1 else metas[0]
        return cls(None, manifest, _to_device(index, manifest, device)[0], ids, meta, "cpu", vectors)

    # -- loading -----------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, *, device: str = "auto") -> "Index":
        """Load an index folder (FAISS index, ids and metadata; vectors on first use).

        Everything, the vectors read later included, comes from the one version that was in
        place when `open` began: the folder and then each shard file are held open by descriptors
        (`pin_folder`), so a writer swapping in a new version (and deleting the old one) meanwhile
        changes nothing this Index returns.
        """
        root = Path(root)
        restore_interrupted_swap(root)
        if not root.is_dir():
            read_manifest(root)  # the clear error for a missing folder or a file in its place
        dir_fd, view = pin_folder(root)
        try:
            manifest = read_manifest(view)
            try:
                index = faiss.read_index(str(view / INDEX_FILE))
            except RuntimeError as exc:
                raise DiffgapError(f"{view / INDEX_FILE}: unreadable FAISS index ({str(exc).strip().splitlines()[0][:120]}); "
                                   "rebuild with build-index") from None
            if index.ntotal != manifest["count"] or index.d != manifest["dim"]:
                raise DiffgapError(f"{view}: index.faiss holds {index.ntotal} x {index.d}, manifest says "
                                   f"{manifest['count']} x {manifest['dim']}; the folder was modified by hand: rebuild it")
            ids, meta = _read_shard_columns(view, manifest)
            shards = [pin_file(dir_fd, view, s["file"]) for s in manifest["shards"]]  # the vectors, read on first use
        except DiffgapError as exc:
            raise DiffgapError(str(exc).replace(str(view), str(root))) from None  # messages name the user's folder
        finally:
            _close(dir_fd)
        index, device = _to_device(index, manifest, resolve_device(device))
        opened = cls(root, manifest, index, ids, meta, device)
        opened._shards = shards
        return opened

    def __del__(self):
        for fd, _ in getattr(self, "_shards", None) or []:
            _close(fd)

    load = open  # the name the first wave used

    # -- querying ----------------------------------------------------------
    def check_queries(self, xq: np.ndarray, *, space: str | None = None, source: str = "queries") -> np.ndarray:
        """float32 C-contiguous unit rows of this index's dim and space, or a clear error."""
        if space and self.space and space != self.space:
            raise DiffgapError(
                f"{source} are in space {space!r}, the index {self.name} is in space {self.space!r}; "
                "query with embeddings of the index's space (or translate them first)"
            )
        xq = np.asarray(xq)
        if xq.ndim == 1:
            xq = xq[None, :]
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            got = xq.shape[-1] if xq.ndim else "scalar"
            raise DiffgapError(
                f"{source} have dim {got}, the index {self.name} has dim {self.dim} (space {self.space!r}); "
                "use embeddings from the index's encoder"
            )
        if xq.dtype != np.float32 or not xq.flags.c_contiguous:
            xq = np.ascontiguousarray(xq, dtype=np.float32)
        xq, _ = check_vectors(xq, source, inplace=False)  # the caller's array is never modified
        return xq

    def search(self, xq: np.ndarray, k: int = 10, *, space: str | None = None) -> SearchResult:
        """Top-k by inner product. xq: [nq, d] (normalized here)."""
        if k < 1:
            raise DiffgapError(f"k must be at least 1, got {k}")
        xq = self.check_queries(xq, space=space)
        D, I = self.index.search(xq, min(k, len(self)))
        ids = self.ids[I]  # position -1 (fewer than k hits) maps to the last id here; fixed below
        missing = I < 0
        if missing.any():
            ids[missing] = -1
            D[missing] = -np.inf
        return SearchResult(scores=D, ids=ids, positions=I, index=self)

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of the given ids (a clear error for unknown ids)."""
        if self._id_order is None:
            self._id_order = np.argsort(self.ids, kind="stable")
        ids = np.asarray(ids, dtype=np.int64)
        sorted_ids = self.ids[self._id_order]
        pos = np.searchsorted(sorted_ids, ids)
        ok = (pos < len(sorted_ids)) & (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == ids)
        if not ok.all():
            raise DiffgapError(f"id {int(ids[~ok][0])} is not in the index {self.name}")
        return self._id_order[pos]

    def vectors(self, ids: np.ndarray | None = None, *, positions: np.ndarray | None = None) -> np.ndarray:
        """Stored unit vectors of the given ids (or positions), float32 [..., d].

        The reranker needs the exact vectors of candidates, which IVF-PQ codes do not
        keep; they are read once from the shards (zero-copy per part) and cached.
        """
        if self._vectors is None:
            chunks = [read_embeddings(path).vectors for _, path in self._shards]
            self._vectors = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        if positions is None:
            if ids is None:
                return self._vectors
            positions = self.positions_of(ids)
        return self._vectors[np.asarray(positions)]

    def metadata(self, positions: Iterable[int]) -> list[dict]:
        positions = np.asarray(list(positions) if not isinstance(positions, np.ndarray) else positions, dtype=np.int64)
        return self._meta.take(pa.array(positions)).to_pylist()

    def info(self) -> dict:
        size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) if self.root else 0
        keys = ("count", "dim", "space", "modality", "index_type", "factory", "search_params",
                "tuned_recall_at_10", "created", "updated", "format_version")
        return {"path": self.name, **{k: self.manifest.get(k) for k in keys},
                "bytes_on_disk": size, "device": self.device, "shards": len(self.manifest["shards"])}


# ---------------------------------------------------------------------------
# helpers for build/add/open
# ---------------------------------------------------------------------------


def _make_faiss(plan: IndexPlan, xb: np.ndarray, recall_target: float, seed: int) -> tuple[faiss.Index, dict, float, float]:
    """Construct, train and fill the planned index, then tune it on queries near the data."""
    n, d = xb.shape
    kind = KINDS[plan.index_type]
    index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    kind.prepare(index)
    train_s = 0.0
    if plan.train_rows:
        rng = np.random.default_rng(seed)
        sample = xb if n <= plan.train_rows else xb[np.sort(rng.choice(n, plan.train_rows, replace=False))]
        t0 = time.perf_counter()
        if n > 100_000:
            tqdm.write(f"training {plan.factory} on {len(sample)} vectors ...")
        index.train(np.ascontiguousarray(sample))
        train_s = time.perf_counter() - t0
    _add_chunked(index, xb, desc=f"indexing ({plan.index_type})")
    xq = tuning_queries(xb, seed=seed)
    exact = faiss.IndexFlatIP(d)
    exact.add(xb)
    _, I_true = exact.search(xq, min(TUNE_K, n))
    params, recall = kind.tune(index, xq, I_true, recall_target)
    return index, params, recall, train_s


def _to_device(index: faiss.Index, manifest: dict, device: str) -> tuple[faiss.Index, str]:
    """Move the index to the GPUs when asked and its kind can live there; set its search parameters."""
    if device == "cuda" and KINDS[manifest["index_type"]].gpu:
        try:
            index = faiss.index_cpu_to_all_gpus(index)
        except RuntimeError:
            device = "cpu"  # e.g. an IVF-PQ refinement stage that has no GPU version
    else:
        device = "cpu"
    set_search_params(index, manifest.get("search_params", {}))
    return index, device


def _write_version(tmp: Path, dst: Path, index: faiss.Index, manifest: dict) -> None:
    faiss.write_index(index, str(tmp / INDEX_FILE))
    write_json_atomic(manifest, tmp / MANIFEST)
    replace_dir(tmp, dst)


def _write_parts(root: Path, parts: list[Embeddings], first_part: int) -> list[dict]:
    """Write rows in position order as shards/part-NNNNN.parquet, SHARD_ROWS rows per part."""
    shards, k = [], first_part
    total = sum(len(p) for p in parts)
    with tqdm(total=total, desc="writing shards", unit="row", disable=total < 200_000) as bar:
        for p in parts:
            for start in range(0, len(p), SHARD_ROWS):
                stop = min(start + SHARD_ROWS, len(p))
                name = f"{SHARD_DIR}/part-{k:05d}.parquet"
                meta = p.metadata.slice(start, stop - start) if p.metadata.num_columns else None
                table = embeddings_table(p.ids[start:stop], p.vectors[start:stop], meta, space=p.space, modality=p.modality)
                write_table_atomic(table, root / name)
                shards.append({"file": name, "rows": stop - start, "source": p.source})
                k += 1
                bar.update(stop - start)
    return shards


def _add_chunked(index: faiss.Index, xb: np.ndarray, desc: str) -> None:
    with tqdm(total=len(xb), desc=desc, unit="vec", disable=len(xb) < 200_000) as bar:
        for start in range(0, len(xb), ADD_CHUNK):
            chunk = np.ascontiguousarray(xb[start : start + ADD_CHUNK])
            index.add(chunk)
            bar.update(len(chunk))


def pin_folder(root: Path) -> tuple[int | None, Path]:
    """(descriptor, path) that read this folder's current version even after it is swapped away.

    On Linux /proc/self/fd/N names the directory the descriptor holds, whatever is renamed
    in its place later; elsewhere the plain path (no pinning).
    """
    if not Path("/proc/self/fd").is_dir():
        return None, root
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    return fd, Path(f"/proc/self/fd/{fd}")


def pin_file(dir_fd: int | None, view: Path, name: str) -> tuple[int | None, Path]:
    """(descriptor, path) of a file of a pinned folder; the path reads it even after it is deleted (Linux)."""
    if dir_fd is None:
        return None, view / name
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except OSError as exc:
        raise DiffgapError(f"{view / name}: unreadable shard ({exc.strerror}); rebuild the index") from None
    return fd, Path(f"/proc/self/fd/{fd}")


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def read_manifest(root: Path) -> dict:
    if not root.exists():
        raise DiffgapError(f"{root}: no such index folder; build one with `diffgap-search build-index`")
    path = root / MANIFEST
    if not path.exists():
        raise DiffgapError(f"{root}: not an index folder (no {MANIFEST}); build one with `diffgap-search build-index`")
    manifest = read_json(path, "rebuild the index")
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise DiffgapError(
            f"{path}: index format version {version!r}, this diffgap-search {__version__} reads version "
            f"{FORMAT_VERSION}; rebuild the index with this version"
        )
    missing = [k for k in ("dim", "count", "shards", "index_type") if k not in manifest]
    if missing:
        raise DiffgapError(f"{path}: missing {', '.join(missing)}; rebuild the index")
    if manifest["index_type"] not in KINDS:
        raise DiffgapError(f"{path}: index_type {manifest['index_type']!r} is unknown (known: {', '.join(KINDS)}); rebuild the index")
    return manifest


def _read_shard_columns(root: Path, manifest: dict) -> tuple[np.ndarray, pa.Table]:
    """ids and metadata of every shard, in position order (the embedding column is not read)."""
    ids, metas = [], []
    for shard in manifest["shards"]:
        path = root / shard["file"]
        try:
            schema = pq.read_schema(path)
            cols = [c for c in schema.names if c != EMBEDDING]
            table = pq.read_table(path, columns=cols, memory_map=True)
        except (pa.ArrowException, OSError) as exc:
            raise DiffgapError(f"{path}: unreadable shard ({str(exc).splitlines()[0]}); rebuild the index") from None
        if table.num_rows != shard["rows"]:
            raise DiffgapError(f"{path}: {table.num_rows} rows, manifest says {shard['rows']}; rebuild the index")
        ids.append(table.column(ID).to_numpy().astype(np.int64, copy=False))
        metas.append(table)  # keeps `id`: a zero-column table would lose its row count
    meta = pa.concat_tables(metas, promote_options="default") if len(metas) > 1 else metas[0]
    return np.concatenate(ids), meta
