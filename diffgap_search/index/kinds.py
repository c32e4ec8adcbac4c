"""Index kinds: how each FAISS index is planned, prepared, tuned and placed on a GPU.

A kind is one class registered in `KINDS`; `plan_index` asks every kind for its plan
and `auto` takes the first that fits (the autofaiss rule of thumb: exact while small,
then a graph while it fits in memory, then compressed IVF codes):

    flat    IndexFlatIP, exact
    hnsw    HNSW graph over the raw vectors; efSearch tuned to a recall target
    ivfpq   IVF + 4-bit fast-scan product quantization, re-ranked by an SQ8 refinement
            stage when the memory budget allows; nprobe and k_factor tuned to a target

All are maximum inner product = cosine on unit rows. Adding a kind: one class here
with `plan` (factory string and memory), `tune` (search parameters for a recall
target) and `gpu` (whether FAISS can move it to a GPU), and one entry in `KINDS`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import faiss
import numpy as np

from diffgap_search.errors import DiffgapError

FLAT_MAX_ROWS = 1_000_000  # DESIGN.md "Scale": exact search up to about 1M vectors
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
EF_SEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
K_FACTOR_LADDER = (1, 2, 4, 8, 16, 32, 64)
TUNE_QUERIES = 500
TUNE_K = 10


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
    index_type: str  # a name in KINDS
    factory: str  # FAISS index_factory string
    bytes_estimate: int  # memory of the index itself
    train_rows: int  # rows needed for training (0: no training)


# ---------------------------------------------------------------------------
# tuning helpers shared by the kinds
# ---------------------------------------------------------------------------


def recall_at_k(I: np.ndarray, I_true: np.ndarray) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    k = I_true.shape[1]
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(I, I_true))
    return hits / (k * len(I_true))


def on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(faiss.downcast_index(index)).__name__ if hasattr(faiss, "GpuParameterSpace") else False


def set_search_params(index: faiss.Index, params: dict) -> None:
    space = faiss.GpuParameterSpace() if on_gpu(index) else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))


def measured_recall(index: faiss.Index, xq: np.ndarray, I_true: np.ndarray, params: dict) -> float:
    set_search_params(index, params)
    _, I = index.search(xq, I_true.shape[1])
    return recall_at_k(I, I_true)


# ---------------------------------------------------------------------------
# the kinds
# ---------------------------------------------------------------------------


class IndexKind:
    name: ClassVar[str]
    gpu: ClassVar[bool]  # FAISS can move it to a GPU (index_cpu_to_all_gpus)

    def plan(self, n: int, d: int, budget: int) -> IndexPlan:
        raise NotImplementedError

    def prepare(self, index: faiss.Index) -> None:
        """Construction settings applied before training and adding."""

    def tune(self, index: faiss.Index, xq: np.ndarray, I_true: np.ndarray, target: float) -> tuple[dict, float]:
        """The cheapest search parameters that reach `target` recall@k (or the best there are)."""
        return {}, measured_recall(index, xq, I_true, {})


class Flat(IndexKind):
    name, gpu = "flat", True

    def plan(self, n: int, d: int, budget: int) -> IndexPlan:
        return IndexPlan("flat", "Flat", n * d * 4, 0)


class Hnsw(IndexKind):
    name, gpu = "hnsw", False

    def plan(self, n: int, d: int, budget: int) -> IndexPlan:
        return IndexPlan("hnsw", f"HNSW{HNSW_M},Flat", n * (d * 4 + HNSW_M * 2 * 4 + 16), 0)

    def prepare(self, index: faiss.Index) -> None:
        faiss.downcast_index(index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION

    def tune(self, index, xq, I_true, target):
        k = I_true.shape[1]
        for ef in EF_SEARCH_LADDER:
            params = {"efSearch": max(ef, k)}
            r = measured_recall(index, xq, I_true, params)
            if r >= target:
                break
        return params, r


class IvfPq(IndexKind):
    name, gpu = "ivfpq", True

    @staticmethod
    def parts(n: int, d: int) -> tuple[int, int]:
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

    def plan(self, n: int, d: int, budget: int) -> IndexPlan:
        if n < 4 * 39:
            raise DiffgapError(f"ivfpq needs at least {4 * 39} vectors to train, got {n}; use --index-type flat for small corpora")
        nlist, m = self.parts(n, d)
        codes = n * ((m + 1) // 2 + 8) + nlist * d * 4
        refine = n * d  # SQ8: one byte per dimension
        refined = codes + refine <= budget
        factory = f"IVF{nlist},PQ{m}x4fsr" + (",Refine(SQ8)" if refined else "")
        return IndexPlan("ivfpq", factory, codes + (refine if refined else 0), 39 * max(nlist, 16) * 2)

    def tune(self, index, xq, I_true, target):
        # nprobe first (the dominant cost) with a generous refinement; then the smallest k_factor
        refined = isinstance(faiss.downcast_index(index), faiss.IndexRefine)
        nlist = faiss.extract_index_ivf(index).nlist
        extra = {"k_factor_rf": K_FACTOR_LADDER[-1]} if refined else {}
        for nprobe in [p for p in NPROBE_LADDER if p < nlist] + [nlist]:
            params = {"nprobe": nprobe, **extra}
            r = measured_recall(index, xq, I_true, params)
            if r >= target:
                break
        if refined and r >= target:
            for kf in K_FACTOR_LADDER:
                rk = measured_recall(index, xq, I_true, {"nprobe": nprobe, "k_factor_rf": kf})
                if rk >= target:
                    params, r = {"nprobe": nprobe, "k_factor_rf": kf}, rk
                    break
        set_search_params(index, params)
        return params, r


KINDS: dict[str, IndexKind] = {k.name: k for k in (Flat(), Hnsw(), IvfPq())}
INDEX_TYPES = ("auto", *KINDS)


def plan_index(n: int, d: int, index_type: str = "auto", memory_budget: int = 4 * 10**9) -> IndexPlan:
    """The plan of `index_type`, or for auto: flat up to FLAT_MAX_ROWS within the budget, then
    HNSW while the graph fits, then IVF-PQ."""
    if index_type not in INDEX_TYPES:
        raise DiffgapError(f"index type {index_type!r} is unknown; choose one of {', '.join(INDEX_TYPES)}")
    if index_type == "auto":
        flat, hnsw = KINDS["flat"].plan(n, d, memory_budget), KINDS["hnsw"].plan(n, d, memory_budget)
        if n <= FLAT_MAX_ROWS and flat.bytes_estimate <= memory_budget:
            return flat
        index_type = "hnsw" if hnsw.bytes_estimate <= memory_budget else "ivfpq"
    plan = KINDS[index_type].plan(n, d, memory_budget)
    if plan.bytes_estimate > memory_budget:
        raise DiffgapError(
            f"a {index_type} index of {n} x {d} needs about {plan.bytes_estimate / 1e9:.2f} GB, over the "
            f"memory budget of {memory_budget / 1e9:.2f} GB; raise --memory-budget or use --index-type auto"
        )
    return plan


def tuning_queries(xb: np.ndarray, nq: int = TUNE_QUERIES, seed: int = 0) -> np.ndarray:
    """Queries near the data: database rows plus noise of norm ~0.5 (cosine ~0.9), unit rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(xb), size=min(nq, len(xb)), replace=False)
    xq = xb[np.sort(rows)] + 0.5 * rng.standard_normal((len(rows), xb.shape[1]), dtype=np.float32) / math.sqrt(xb.shape[1])
    faiss.normalize_L2(xq)
    return np.ascontiguousarray(xq, dtype=np.float32)


def tune_search(index: faiss.Index, index_type: str, xq: np.ndarray, I_true: np.ndarray, target: float) -> tuple[dict, float]:
    return KINDS[index_type].tune(index, xq, I_true, target)
