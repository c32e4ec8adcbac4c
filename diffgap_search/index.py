"""FAISS index over embedding shards: plan, build, add, tune, save/load, search.

An index folder holds

    manifest.json            format version, space, dim, count, FAISS factory string,
                             tuned search parameters, shard list, timestamps
    index.faiss              the FAISS index; its labels are row positions 0..n-1
    shards/part-NNNNN.parquet  the rows in position order (ids, unit vectors, metadata)

Every write goes to a temporary sibling folder that is swapped into place
atomically (`renameat2(RENAME_EXCHANGE)` on Linux), so a build or an `add` killed
at any point leaves the previous index intact and loadable. Shards are immutable:
`add` hard-links the old parts into the new version and writes new parts.

Index types (all exact or approximate maximum inner product = cosine on unit rows):
    flat    IndexFlatIP, exact
    hnsw    HNSW graph over the raw vectors; efSearch tuned to a recall target
    ivfpq   IVF + product quantization, re-ranked by an SQ8 refinement stage when the
            memory budget allows; nprobe and k_factor tuned to a recall target
    auto    flat up to FLAT_MAX_ROWS while it fits the memory budget, else HNSW while
            the graph fits, else IVF-PQ (the autofaiss rule of thumb)
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from diffgap_search import __version__
from diffgap_search.atomic import replace_dir, restore_interrupted_swap, scratch_dir
from diffgap_search.errors import DiffgapError
from diffgap_search.storage import (
    EMBEDDING,
    ID,
    Embeddings,
    check_ids,
    check_vectors,
    embeddings_table,
    read_embeddings,
    read_npy,
    write_json_atomic,
    write_table_atomic,
)

FORMAT_VERSION = 1
INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
DEVICES = ("auto", "cpu", "cuda")
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
SHARD_DIR = "shards"
SHARD_ROWS = 262_144  # rows per stored part file
ADD_CHUNK = 65_536  # rows per faiss.add call (progress granularity)

FLAT_MAX_ROWS = 1_000_000  # DESIGN.md "Scale": exact search up to about 1M vectors
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
EF_SEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
K_FACTOR_LADDER = (1, 2, 4, 8, 16, 32, 64)
TUNE_QUERIES = 500
TUNE_K = 10


# ---------------------------------------------------------------------------
# planning: which FAISS index for n vectors of dim d under a memory budget
# ---------------------------------------------------------------------------


def parse_bytes(text: str | int) -> int:
    """'4GB' / '512MiB' / '1e9' / 1000 -> bytes (decimal and binary units)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)?\s*", str(text).lower())
    if not m:
        raise DiffgapError(f"memory budget {text!r} is not a size; write e.g. 4GB, 512MB or 2GiB")
    value = float(m.group(1))
    unit = (m.group(2) or "b").rstrip("b") or ""
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return int(value * scale[unit])


@dataclass(frozen=True)
class IndexPlan:
    index_type: str  # flat | hnsw | ivfpq
    factory: str  # FAISS index_factory string
    bytes_estimate: int  # memory of the index itself
    train_rows: int  # rows needed for training (0: no training)


def _ivfpq_parts(n: int, d: int) -> tuple[int, int]:
    """nlist ~ 4 sqrt(n) (a power of two, 16..65536) and a 4-bit fast-scan PQ with 4 dims
    per sub-quantizer (d/8 bytes per vector).

    4-bit codebooks (16 centroids) train in a fraction of the time of 8-bit ones and
    scan with SIMD lookups; the SQ8 refinement stage recovers the precision they lose.
    k-means wants >= 39 training points per centroid.
    """
    nlist = 2 ** int(round(math.log2(max(16.0, 4 * math.sqrt(n)))))
    nlist = int(min(65536, max(16, nlist), max(16, n // 39)))
    m = max(1, d // 4)
    while d % m:
        m -= 1
    return nlist, m


def plan_index(n: int, d: int, index_type: str = "auto", memory_budget: int = 4 * 10**9) -> IndexPlan:
    if index_type not in INDEX_TYPES:
        raise DiffgapError(f"index type {index_type!r} is unknown; choose one of {', '.join(INDEX_TYPES)}")
    flat_bytes = n * d * 4
    hnsw_bytes = n * (d * 4 + HNSW_M * 2 * 4 + 16)
    nlist, m = _ivfpq_parts(n, d)
    ivf_codes = n * ((m + 1) // 2 + 8) + nlist * d * 4
    refine_bytes = n * d  # SQ8: one byte per dimension
    ivfpq_refined = ivf_codes + refine_bytes <= memory_budget
    ivf_factory = f"IVF{nlist},PQ{m}x4fsr" + (",Refine(SQ8)" if ivfpq_refined else "")
    train_rows = 39 * max(nlist, 16) * 2  # 78 points per centroid
    ivf_plan = IndexPlan("ivfpq", ivf_factory, ivf_codes + (refine_bytes if ivfpq_refined else 0), train_rows)
    plans = {
        "flat": IndexPlan("flat", "Flat", flat_bytes, 0),
        "hnsw": IndexPlan("hnsw", f"HNSW{HNSW_M},Flat", hnsw_bytes, 0),
        "ivfpq": ivf_plan,
    }
    if index_type == "auto":
        if n <= FLAT_MAX_ROWS and flat_bytes <= memory_budget:
            index_type = "flat"
        elif hnsw_bytes <= memory_budget:
            index_type = "hnsw"
        else:
            index_type = "ivfpq"
    plan = plans[index_type]
    if index_type == "ivfpq" and n < 4 * 39:
        raise DiffgapError(
            f"ivfpq needs at least {4 * 39} vectors to train, got {n}; use --index-type flat for small corpora"
        )
    if plan.bytes_estimate > memory_budget:
        raise DiffgapError(
            f"a {index_type} index of {n} x {d} needs about {plan.bytes_estimate / 1e9:.2f} GB, over the "
            f"memory budget of {memory_budget / 1e9:.2f} GB; raise --memory-budget or use --index-type auto"
        )
    return plan


# ---------------------------------------------------------------------------
# tuning: the cheapest search parameters that reach a recall target
# ---------------------------------------------------------------------------


def tuning_queries(xb: np.ndarray, nq: int = TUNE_QUERIES, seed: int = 0) -> np.ndarray:
    """Queries near the data: database rows plus noise of norm ~0.5 (cosine ~0.9), unit rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(xb), size=min(nq, len(xb)), replace=False)
    xq = xb[np.sort(rows)] + 0.5 * rng.standard_normal((len(rows), xb.shape[1]), dtype=np.float32) / math.sqrt(xb.shape[1])
    faiss.normalize_L2(xq)
    return np.ascontiguousarray(xq, dtype=np.float32)


def recall_at_k(I: np.ndarray, I_true: np.ndarray) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    k = I_true.shape[1]
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(I, I_true))
    return hits / (k * len(I_true))


def set_search_params(index: faiss.Index, params: dict) -> None:
    space = faiss.GpuParameterSpace() if _on_gpu(index) else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))


def tune_search(index: faiss.Index, index_type: str, xq: np.ndarray, I_true: np.ndarray, target: float) -> tuple[dict, float]:
    """Walk each parameter ladder from cheap to costly; stop at the first that reaches `target`."""
    k = I_true.shape[1]

    def measure(params: dict) -> float:
        set_search_params(index, params)
        _, I = index.search(xq, k)
        return recall_at_k(I, I_true)

    if index_type == "flat":
        return {}, measure({})
    if index_type == "hnsw":
        for ef in EF_SEARCH_LADDER:
            r = measure({"efSearch": max(ef, k)})
            if r >= target:
                break
        return {"efSearch": max(ef, k)}, r
    # ivfpq: nprobe first (the dominant cost), with a generous refinement;
    # then the smallest k_factor that still reaches the target.
    refined = isinstance(faiss.downcast_index(index), faiss.IndexRefine)
    nlist = faiss.extract_index_ivf(index).nlist
    ladder = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if p < nlist] + [nlist]
    kf_max = K_FACTOR_LADDER[-1] if refined else None
    for nprobe in ladder:
        params = {"nprobe": nprobe} | ({"k_factor_rf": kf_max} if refined else {})
        r = measure(params)
        if r >= target:
            break
    if refined and r >= target:
        for kf in K_FACTOR_LADDER:
            rk = measure({"nprobe": nprobe, "k_factor_rf": kf})
            if rk >= target:
                params, r = {"nprobe": nprobe, "k_factor_rf": kf}, rk
                break
    set_search_params(index, params)
    return params, r


# ---------------------------------------------------------------------------
# reading inputs
# ---------------------------------------------------------------------------


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


def read_inputs(paths: Sequence[str | Path], *, metadata: str | Path | None = None, dim: int | None = None) -> list[Embeddings]:
    """Parquet shards, or `.npy` matrices (with `metadata` rows for a single .npy)."""
    paths = expand_inputs(paths)
    if not paths:
        raise DiffgapError("no embeddings given; pass --embeddings PATH (parquet shards or a .npy file)")
    if metadata is not None and (len(paths) != 1 or Path(paths[0]).suffix != ".npy"):
        raise DiffgapError("--metadata goes with exactly one .npy file of embeddings (rows in the same order)")
    parts = []
    for p in tqdm(paths, desc="reading embeddings", unit="file", disable=len(paths) < 2):
        p = Path(p)
        emb = read_npy(p, metadata=Path(metadata) if metadata else None, dim=dim) if p.suffix == ".npy" else read_embeddings(p, dim=dim)
        if dim is None:
            dim = emb.dim
        parts.append(emb)
    return parts


def _assign_ids(parts: list[Embeddings], taken: np.ndarray, next_id: int) -> int:
    """Sources without an `id` column get ids that continue after every id so far."""
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


def _common_space(parts: list[Embeddings], space: str | None, index_space: str | None = None) -> str | None:
    spaces = {p.space for p in parts if p.space}
    if space is None and len(spaces) > 1:
        raise DiffgapError(f"inputs come from different spaces ({', '.join(sorted(spaces))}); index one space at a time")
    space = space or (spaces.pop() if spaces else None) or index_space
    for p in parts:
        if p.space and space and p.space != space:
            raise DiffgapError(f"{p.source}: embeddings are in space {p.space!r}, the index is {space!r}")
    return space


# ---------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------


@dataclass
class SearchResult:
    scores: np.ndarray  # float32 [nq, k], inner product = cosine; -inf where no hit
    ids: np.ndarray  # int64 [nq, k], -1 where no hit
    positions: np.ndarray  # int64 [nq, k] row positions in the index, -1 where no hit
    index: "EmbeddingIndex"

    def rows(self, q: int) -> list[dict]:
        """Ranked hits of query q with their metadata."""
        keep = self.positions[q] >= 0
        meta = self.index.metadata(self.positions[q][keep])
        return [
            {"rank": r, "score": float(s), "id": int(i), **m}
            for r, (s, i, m) in enumerate(zip(self.scores[q][keep], self.ids[q][keep], meta))
        ]


def _on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(faiss.downcast_index(index)).__name__ if hasattr(faiss, "GpuParameterSpace") else False


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise DiffgapError(f"device {device!r} is unknown; choose one of {', '.join(DEVICES)}")
    gpus = faiss.get_num_gpus()
    if device == "cuda" and gpus == 0:
        raise DiffgapError("--device cuda, but FAISS sees no GPU; use --device cpu (or auto) on this machine")
    return "cuda" if (device == "auto" and gpus > 0) or device == "cuda" else "cpu"


class EmbeddingIndex:
    """A loaded index folder. Labels inside FAISS are row positions; `ids` maps them to ids."""

    def __init__(self, root: Path, manifest: dict, index: faiss.Index, ids: np.ndarray, meta: pa.Table, device: str):
        self.root = root
        self.manifest = manifest
        self.index = index
        self.ids = ids  # int64 [n], in position order
        self._meta = meta  # metadata columns, in position order (may have no columns)
        self.device = device
        self._vectors: np.ndarray | None = None
        self._id_order: np.ndarray | None = None

    # -- properties --------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def space(self) -> str | None:
        return self.manifest.get("space")

    def __len__(self) -> int:
        return int(self.manifest["count"])

    # -- building ----------------------------------------------------------
    @classmethod
    def build(
        cls,
        inputs: Sequence[str | Path],
        out: str | Path,
        *,
        index_type: str = "auto",
        space: str | None = None,
        device: str = "auto",
        memory_budget: int | str = "4GB",
        recall_target: float = 0.95,
        metadata: str | Path | None = None,
        seed: int = 0,
    ) -> "EmbeddingIndex":
        """Read, validate, index, tune, and write an index folder atomically."""
        out = Path(out)
        if not 0.0 < recall_target <= 1.0:
            raise DiffgapError(f"recall target {recall_target} must be in (0, 1]; e.g. 0.95")
        budget = parse_bytes(memory_budget)
        device = resolve_device(device)
        parts = read_inputs(inputs, metadata=metadata)
        space = _common_space(parts, space)
        next_id = _assign_ids(parts, np.empty(0, np.int64), 0)
        n, d = sum(len(p) for p in parts), parts[0].dim
        plan = plan_index(n, d, index_type, budget)
        xb = np.concatenate([p.vectors for p in parts]) if len(parts) > 1 else parts[0].vectors

        tmp = scratch_dir(out, subdirs=(SHARD_DIR,))
        try:
            shards = _write_parts(tmp, parts, first_part=0)
            index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
            if plan.index_type == "hnsw":
                faiss.downcast_index(index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            if plan.train_rows:
                rng = np.random.default_rng(seed)
                sample = xb if n <= plan.train_rows else xb[np.sort(rng.choice(n, plan.train_rows, replace=False))]
                t0 = time.perf_counter()
                if n > 100_000:
                    tqdm.write(f"training {plan.factory} on {len(sample)} vectors ...")
                index.train(np.ascontiguousarray(sample))
                train_s = time.perf_counter() - t0
            else:
                train_s = 0.0
            _add_chunked(index, xb, desc=f"indexing ({plan.index_type})")
            xq = tuning_queries(xb, seed=seed)
            exact = faiss.IndexFlatIP(d)
            exact.add(xb)
            k = min(TUNE_K, n)
            _, I_true = exact.search(xq, k)
            del exact
            params, recall = tune_search(index, plan.index_type, xq, I_true, recall_target)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            manifest = {
                "format_version": FORMAT_VERSION,
                "space": space,
                "modality": _common_modality(parts),
                "encoder": None,
                "encoder_checkpoint_sha256": None,
                "dim": d,
                "count": n,
                "metric": "inner_product",
                "index_type": plan.index_type,
                "factory": plan.factory,
                "search_params": params,
                "recall_target": recall_target,
                "tuned_recall_at_10": round(recall, 4),
                "train_seconds": round(train_s, 2),
                "next_id": next_id,
                "shards": shards,
                "created": now,
                "updated": now,
                "diffgap_search_version": __version__,
                "faiss_version": faiss.__version__,
            }
            faiss.write_index(index, str(tmp / INDEX_FILE))
            write_json_atomic(manifest, tmp / MANIFEST)
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.load(out, device=device)

    def add(self, inputs: Sequence[str | Path], *, metadata: str | Path | None = None) -> "EmbeddingIndex":
        """Append rows: new ids continue after the largest; the FAISS index is extended, not rebuilt."""
        parts = read_inputs(inputs, metadata=metadata, dim=self.dim)
        _common_space(parts, None, index_space=self.space)
        next_id = _assign_ids(parts, np.sort(self.ids), int(self.manifest["next_id"]))
        xb = np.concatenate([p.vectors for p in parts]) if len(parts) > 1 else parts[0].vectors
        index = faiss.read_index(str(self.root / INDEX_FILE))  # CPU copy, untouched on disk
        tmp = scratch_dir(self.root, subdirs=(SHARD_DIR,))
        try:
            for shard in self.manifest["shards"]:
                src, dst = self.root / shard["file"], tmp / shard["file"]
                try:
                    os.link(src, dst)  # shards are immutable: share, don't copy
                except OSError:
                    shutil.copy2(src, dst)
            shards = self.manifest["shards"] + _write_parts(tmp, parts, first_part=len(self.manifest["shards"]))
            _add_chunked(index, xb, desc="adding")
            manifest = dict(self.manifest)
            manifest.update(
                count=int(index.ntotal),
                next_id=next_id,
                shards=shards,
                updated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            faiss.write_index(index, str(tmp / INDEX_FILE))
            write_json_atomic(manifest, tmp / MANIFEST)
            replace_dir(tmp, self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return EmbeddingIndex.load(self.root, device=self.device)

    # -- loading -----------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path, *, device: str = "auto") -> "EmbeddingIndex":
        root = Path(root)
        restore_interrupted_swap(root)
        manifest = read_manifest(root)
        try:
            index = faiss.read_index(str(root / INDEX_FILE))
        except RuntimeError as exc:
            raise DiffgapError(
                f"{root / INDEX_FILE}: unreadable FAISS index ({str(exc).strip().splitlines()[0][:120]}); rebuild with build-index"
            ) from None
        if index.ntotal != manifest["count"] or index.d != manifest["dim"]:
            raise DiffgapError(
                f"{root}: index.faiss holds {index.ntotal} x {index.d}, manifest says "
                f"{manifest['count']} x {manifest['dim']}; the folder was modified by hand: rebuild it"
            )
        ids, meta = _read_shard_columns(root, manifest)
        device = resolve_device(device)
        if device == "cuda" and manifest["index_type"] != "hnsw":
            try:
                index = faiss.index_cpu_to_all_gpus(index)
            except RuntimeError:
                device = "cpu"  # e.g. an IVF-PQ refinement stage that has no GPU version
        else:
            device = "cpu"
        set_search_params(index, manifest.get("search_params", {}))
        return cls(root, manifest, index, ids, meta, device)

    # -- querying ----------------------------------------------------------
    def check_queries(self, xq: np.ndarray, *, space: str | None = None, source: str = "queries") -> np.ndarray:
        """float32 C-contiguous unit rows of this index's dim and space, or a clear error."""
        if space and self.space and space != self.space:
            raise DiffgapError(
                f"{source} are in space {space!r}, the index {self.root} is in space {self.space!r}; "
                "query with embeddings of the index's space (or translate them first)"
            )
        xq = np.asarray(xq)
        if xq.ndim == 1:
            xq = xq[None, :]
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            got = xq.shape[-1] if xq.ndim else "scalar"
            raise DiffgapError(
                f"{source} have dim {got}, the index {self.root} has dim {self.dim} (space {self.space!r}); "
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
        D, I = self.index.search(xq, k)
        ids = self.ids[I]  # position -1 (fewer than k hits) maps to the last id here; fixed below
        missing = I < 0
        if missing.any():
            ids[missing] = -1
            D[missing] = -np.inf
        return SearchResult(scores=D, ids=ids, positions=I, index=self)

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of the given ids (KeyError-free: a clear error for unknown ids)."""
        if self._id_order is None:
            self._id_order = np.argsort(self.ids, kind="stable")
        ids = np.asarray(ids, dtype=np.int64)
        sorted_ids = self.ids[self._id_order]
        pos = np.searchsorted(sorted_ids, ids)
        ok = (pos < len(sorted_ids)) & (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == ids)
        if not ok.all():
            raise DiffgapError(f"id {int(ids[~ok][0])} is not in the index {self.root}")
        return self._id_order[pos]

    def vectors(self, ids: np.ndarray | None = None, *, positions: np.ndarray | None = None) -> np.ndarray:
        """Stored unit vectors of the given ids (or positions), float32 [..., d].

        The reranker needs the exact vectors of candidates, which IVF-PQ codes do not
        keep; they are read once from the shards (zero-copy per part) and cached.
        """
        if self._vectors is None:
            chunks = [read_embeddings(self.root / s["file"]).vectors for s in self.manifest["shards"]]
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
        size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        keys = ("count", "dim", "space", "modality", "index_type", "factory", "search_params",
                "tuned_recall_at_10", "created", "updated", "format_version")
        return {"path": str(self.root), **{k: self.manifest.get(k) for k in keys},
                "bytes_on_disk": size, "device": self.device, "shards": len(self.manifest["shards"])}


# ---------------------------------------------------------------------------
# helpers for build/add/load
# ---------------------------------------------------------------------------


def _common_modality(parts: list[Embeddings]) -> str | None:
    mods = {p.modality for p in parts if p.modality}
    return mods.pop() if len(mods) == 1 else None


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


def read_manifest(root: Path) -> dict:
    if not root.exists():
        raise DiffgapError(f"{root}: no such index folder; build one with `diffgap-search build-index`")
    path = root / MANIFEST
    if not path.exists():
        raise DiffgapError(f"{root}: not an index folder (no {MANIFEST}); build one with `diffgap-search build-index`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiffgapError(f"{path}: not valid JSON ({exc}); rebuild the index") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise DiffgapError(
            f"{path}: index format version {version!r}, this diffgap-search {__version__} reads version "
            f"{FORMAT_VERSION}; rebuild the index with this version"
        )
    missing = [k for k in ("dim", "count", "shards", "index_type") if k not in manifest]
    if missing:
        raise DiffgapError(f"{path}: missing {', '.join(missing)}; rebuild the index")
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
