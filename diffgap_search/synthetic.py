"""Seeded paired embeddings with a modality gap, for tests and scale runs.

The generator stands in for (audio embedding, text embedding) pairs from a
contrastive model such as CLAP: two unit-norm spaces `a` (the index side) and `b`
(the query side) that describe the same latent content through different
nonlinear maps, each squeezed into its own cone (the modality gap).

Model, for pair i (all vectors are rows; L = latent_dim, H = hidden_dim):

1. Latent content. Cluster k_i ~ Uniform{0..K-1}; with centres c_k ~ N(0, I_L / L)
   (|c_k| ~ 1) and v ~ N(0, I_L / L),
       z_i = c_{k_i} + within_cluster * v_i                             # [L]
2. Views. Each side sees its own view of the content (what a caption leaves
   out, what a recording adds):
       z_a = z_i + view_noise * v_a,   z_b = z_i + view_noise * v_b      # [L]
3. Two different random two-layer maps without biases (odd maps, so their mean
   over the symmetric latent distribution is zero):
       s_a = normalize(tanh(z_a W1_a) W2_a)                              # [dim_a]
       s_b = normalize(tanh(z_b W1_b) W2_b)                              # [dim_b]
   W1_a, W1_own ~ N(0, gain^2) entrywise [L, H] (z has per-dim variance ~ 1/L, so
   the pre-activations have std ~ gain), W2_a ~ N(0, 1) [H, dim_a], and the b map
   shares part of the a map:
       W1_b = shared * W1_a + sqrt(1 - shared^2) * W1_own   (entrywise correlation
                                                             `shared` with W1_a)
       W2_b = W2_a        when dim_a == dim_b (same output coordinates, so raw
                          cosine a.b is meaningful),
       W2_b = W2_a Q      otherwise, Q [dim_a, dim_b] a fixed random partial isometry.
   Raw cosine sees s_a.s_b ~ corr(tanh(z W1_a), tanh(z W1_b)), which `shared` keeps
   well below 1; a learned b->a mapper can undo the W1_own mixing (z is nearly
   linearly recoverable from the hidden layer, L < H) and so beats raw cosine.
4. Modality gap and noise. Fixed random unit directions u_a, u_b (independent,
   so nearly orthogonal for large dims) and e with i.i.d. zero-mean coordinates
   of variance 1/d (|e| ~ 1; uniform rather than Gaussian, for speed):
       a = normalize(s_a + offset_a * u_a + noise_a * e_a)
       b = normalize(s_b + offset_b * u_b + noise_b * e_b)
   so mean(a) ~ offset_a * u_a / sqrt(1 + offset_a^2 + noise_a^2) (0.63 by
   default), mean(b) likewise (0.50), and || mean(a) - mean(b) || ~
   sqrt(|mean a|^2 + |mean b|^2) (0.80).

The fixed weights (centres, W1, W2, u_a, u_b) come from SeedSequence(seed,
spawn_key=(0,)). Rows are generated in fixed blocks of `BLOCK_ROWS`, block j from
SeedSequence(seed, spawn_key=(1, j)), always computed whole and then sliced: the
output is identical whatever the chunk size (and every n is a prefix of a larger
n). Two worker threads compute the next blocks ahead; memory stays bounded by a
few blocks plus one chunk plus the weights.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from diffgap_search.errors import DiffgapError

# Rows per internal generation block. Part of the output definition: changing it
# changes every generated data set.
BLOCK_ROWS = 8192
# Worker threads and blocks computed ahead (speed only; the output never depends on them).
_WORKERS = 2
_PREFETCH = 2


@dataclass(frozen=True)
class GapConfig:
    """All generator settings (JSON-friendly: ints and floats only).

    The defaults give, on a 1,000-way b->a test, raw-cosine R@1 of about 0.3 and a
    distance of about 0.8 between the two modality means, with a ridge b->a
    mapper (10k training pairs) at about 0.7.
    """

    dim_a: int = 512  # audio / index side
    dim_b: int = 512  # text / query side
    latent_dim: int = 48  # L, dimension of the shared content z
    n_clusters: int = 256  # K, latent cluster centres
    within_cluster: float = 0.4  # std of z around its centre, relative to |c_k| ~ 1
    view_noise: float = 0.48  # std of each side's private latent perturbation
    hidden_dim: int = 128  # width of the tanh layer of each map
    gain: float = 1.5  # pre-activation std of the tanh layer (nonlinearity strength)
    shared: float = 0.52  # correlation of the b map's first layer with the a map's, in [0, 1]
    offset_a: float = 0.85  # norm of the constant cone offset added to a
    offset_b: float = 0.65  # norm of the constant cone offset added to b
    noise_a: float = 0.3  # norm of the isotropic noise added to a
    noise_b: float = 0.5  # norm of the isotropic noise added to b

    def __post_init__(self) -> None:
        # Type checks, then coercion to plain int / float (JSON-friendly asdict).
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise DiffgapError(
                        f"GapConfig.{f.name}={value!r} is not an integer; pass an int."
                    )
                object.__setattr__(self, f.name, int(value))
            else:
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float, np.integer, np.floating))
                    or not math.isfinite(value)
                ):
                    raise DiffgapError(
                        f"GapConfig.{f.name}={value!r} is not a finite number; pass a float."
                    )
                object.__setattr__(self, f.name, float(value))
        for name in ("dim_a", "dim_b"):
            if getattr(self, name) < 2:
                raise DiffgapError(
                    f"GapConfig.{name}={getattr(self, name)} is too small; "
                    "embedding dims must be >= 2."
                )
        for name in ("latent_dim", "n_clusters", "hidden_dim"):
            if getattr(self, name) < 1:
                raise DiffgapError(
                    f"GapConfig.{name}={getattr(self, name)} must be >= 1."
                )
        if not 0.0 <= self.shared <= 1.0:
            raise DiffgapError(
                f"GapConfig.shared={self.shared} is outside [0, 1]; it is the "
                "correlation of the b map with the a map, pick a value in [0, 1]."
            )
        nonnegative = (
            "within_cluster", "view_noise", "gain", "offset_a", "offset_b", "noise_a", "noise_b"
        )
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise DiffgapError(
                    f"GapConfig.{name}={getattr(self, name)} is negative; use a value >= 0."
                )


@dataclass(frozen=True)
class PairsChunk:
    """Rows start .. start+m-1 of a generated pairs set."""

    pair_id: np.ndarray  # int64 [m], global row index (start .. start+m-1)
    group_id: np.ndarray  # int64 [m], one pair per group: equals pair_id
    a: np.ndarray  # float32 [m, dim_a], unit rows, C-contiguous
    b: np.ndarray  # float32 [m, dim_b], unit rows, C-contiguous
    cluster_id: np.ndarray | None = None  # int64 [m], latent cluster of each pair


@dataclass(frozen=True)
class _Weights:
    centres: np.ndarray  # [K, L]
    w1_a: np.ndarray  # [L, H], gain folded in
    w2_a: np.ndarray  # [H, dim_a]
    w1_b: np.ndarray  # [L, H], gain folded in; correlation `shared` with w1_a
    w2_b: np.ndarray  # [H, dim_b]; w2_a itself, or w2_a Q when the dims differ
    u_a: np.ndarray  # [dim_a] unit
    u_b: np.ndarray  # [dim_b] unit


def _check_int(name: str, value: object, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DiffgapError(f"{name}={value!r} is not an integer; {fix}")
    if value < minimum:
        raise DiffgapError(f"{name}={value} is below {minimum}; {fix}")
    return int(value)


@lru_cache(maxsize=4)
def _weights(config: GapConfig, seed: int) -> _Weights:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,))))
    L, H, K = config.latent_dim, config.hidden_dim, config.n_clusters
    f32 = np.float32

    def normal(*shape: int, std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(f32)

    centres = normal(K, L, std=1.0 / math.sqrt(L))  # |c_k| ~ 1
    # z has per-dim variance ~ 1/L, so z W1 with W1 ~ N(0, gain^2) has variance ~ gain^2.
    w1_a = normal(L, H, std=config.gain)
    w1_own = normal(L, H, std=config.gain)
    # W1_b = shared * W1_a + sqrt(1 - shared^2) * W1_own: same entry variance,
    # entrywise correlation `shared` with W1_a.
    w1_b = (config.shared * w1_a + math.sqrt(1.0 - config.shared**2) * w1_own).astype(f32)
    w2_a = normal(H, config.dim_a, std=1.0)
    if config.dim_a == config.dim_b:
        w2_b = w2_a  # the same output coordinates: raw cosine a.b is meaningful
    else:
        # W2_b = W2_a Q, Q [dim_a, dim_b] a partial isometry from the QR of a
        # Gaussian [max, min] matrix (orthonormal columns).
        big, small = max(config.dim_a, config.dim_b), min(config.dim_a, config.dim_b)
        basis, _ = np.linalg.qr(rng.standard_normal((big, small)))
        q = basis if config.dim_a > config.dim_b else basis.T  # [dim_a, dim_b]
        w2_b = (w2_a @ q).astype(f32)
    u_a = rng.standard_normal(config.dim_a)
    u_b = rng.standard_normal(config.dim_b)
    u_a = (u_a / np.linalg.norm(u_a)).astype(f32)
    u_b = (u_b / np.linalg.norm(u_b)).astype(f32)
    return _Weights(centres, w1_a, w2_a, w1_b, w2_b, u_a, u_b)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    """In-place L2 normalization of the rows of a float [m, d] array."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    np.maximum(norms, np.float32(1e-12), out=norms)
    x /= norms[:, None]
    return x


def _random_map(z: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """normalize(tanh(z W1) W2): [m, L] -> [m, d] unit rows (gain is inside W1)."""
    h = z @ w1  # [m, H]
    np.tanh(h, out=h)
    return _normalize_rows(h @ w2)  # [m, d]


def _block(
    config: GapConfig, weights: _Weights, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows index*BLOCK_ROWS .. (index+1)*BLOCK_ROWS - 1: (cluster_id, a, b)."""
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1, index)))
    )
    m, L = BLOCK_ROWS, config.latent_dim
    f32 = np.float32
    # 1. latent content z = c_k + within_cluster * v, v ~ N(0, I/L)       [m, L]
    cluster = rng.integers(0, config.n_clusters, size=m, dtype=np.int64)
    z = rng.standard_normal((m, L), dtype=f32)
    z *= f32(config.within_cluster / math.sqrt(L))
    z += weights.centres[cluster]
    # 2. views z_x = z + view_noise * v_x, v_x ~ N(0, I/L)                 [m, L]
    z_a = rng.standard_normal((m, L), dtype=f32)
    z_a *= f32(config.view_noise / math.sqrt(L))
    z_a += z
    z_b = rng.standard_normal((m, L), dtype=f32)
    z_b *= f32(config.view_noise / math.sqrt(L))
    z_b += z
    del z
    # 3. signals: s_a = normalize(tanh(z_a W1_a) W2_a), s_b = normalize(tanh(z_b W1_b) W2_b)
    a = _random_map(z_a, weights.w1_a, weights.w2_a)  # [m, dim_a]
    b = _random_map(z_b, weights.w1_b, weights.w2_b)  # [m, dim_b]
    del z_a, z_b
    # 4. cone offsets, isotropic noise e (variance 1/d per coordinate), then unit rows
    for x, offset, u, noise in (
        (a, config.offset_a, weights.u_a, config.noise_a),
        (b, config.offset_b, weights.u_b, config.noise_b),
    ):
        # e_j = sqrt(12 / d) * (U_j - 1/2), U_j ~ Uniform[0, 1): zero mean, variance
        # 1/d per coordinate like N(0, I/d), at a quarter of the cost of normals;
        # its inner product with any fixed unit vector is ~ Gaussian (CLT).
        e = rng.random(x.shape, dtype=f32)
        e -= f32(0.5)
        e *= f32(noise * math.sqrt(12.0 / x.shape[1]))
        x += e
        x += f32(offset) * u
        del e
        _normalize_rows(x)
    return cluster, a, b


def iter_pairs(
    n: int, config: GapConfig = GapConfig(), seed: int = 0, chunk_size: int = 65536
) -> Iterator[PairsChunk]:
    """Yield rows 0 .. n-1 in chunks of `chunk_size` (the last may be shorter).

    The concatenated output depends only on (n, config, seed), never on chunk_size.
    """
    n = _check_int("n", n, 1, "ask for at least one pair (n >= 1).")
    seed = _check_int("seed", seed, 0, "use a non-negative integer seed.")
    chunk_size = _check_int("chunk_size", chunk_size, 1, "use chunk_size >= 1.")
    if not isinstance(config, GapConfig):
        raise DiffgapError(f"config={config!r} is not a GapConfig; build one with GapConfig(...).")
    return _iter_pairs(n, config, seed, chunk_size)


def _blocks(
    config: GapConfig, weights: _Weights, seed: int, last: int
) -> Iterator[np.ndarray]:
    """Blocks 0 .. last in order, the next ones computed ahead on worker threads.

    numpy's random fills, tanh and BLAS release the GIL, so two blocks in flight
    use two cores. Each block has its own seed, so threading cannot change the
    output; memory holds at most `_PREFETCH` blocks ahead of the consumer.
    """
    if last == 0:
        yield _block(config, weights, seed, 0)
        return
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        pending: deque = deque()
        submitted = 0
        for _ in range(last + 1):
            while submitted <= last and len(pending) < _PREFETCH:
                pending.append(pool.submit(_block, config, weights, seed, submitted))
                submitted += 1
            yield pending.popleft().result()


def _iter_pairs(n: int, config: GapConfig, seed: int, chunk_size: int) -> Iterator[PairsChunk]:
    weights = _weights(config, seed)
    blocks = _blocks(config, weights, seed, last=(n - 1) // BLOCK_ROWS)
    block_index, block = -1, None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        m = stop - start
        cluster = np.empty(m, dtype=np.int64)
        a = np.empty((m, config.dim_a), dtype=np.float32)
        b = np.empty((m, config.dim_b), dtype=np.float32)
        # Copy the overlap of [start, stop) with each block it touches; chunks
        # advance monotonically, so blocks are consumed in order.
        row = start
        while row < stop:
            if row // BLOCK_ROWS != block_index:
                block = None  # drop the old block before taking the next
                block = next(blocks)
                block_index += 1
            assert row // BLOCK_ROWS == block_index
            lo = row - block_index * BLOCK_ROWS
            hi = min(stop - block_index * BLOCK_ROWS, BLOCK_ROWS)
            out = slice(row - start, row - start + hi - lo)
            cluster[out] = block[0][lo:hi]
            a[out] = block[1][lo:hi]
            b[out] = block[2][lo:hi]
            row += hi - lo
        pair_id = np.arange(start, stop, dtype=np.int64)
        yield PairsChunk(pair_id=pair_id, group_id=pair_id.copy(), a=a, b=b, cluster_id=cluster)
    blocks.close()


def make_pairs(n: int, config: GapConfig = GapConfig(), seed: int = 0) -> PairsChunk:
    """All n pairs in memory: rows 0 .. n-1, the same as concatenating iter_pairs."""
    (chunk,) = iter_pairs(n, config, seed, chunk_size=n)
    return chunk


def _unit_mean(x: np.ndarray, rows: int = 65536) -> np.ndarray:
    """Mean of the L2-normalized rows of x [n, d], in float64, rows at a time."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, x.shape[0], rows):
        total += _normalize_rows(x[start : start + rows].astype(np.float64)).sum(axis=0)
    return total / x.shape[0]


def gap_stats(a: np.ndarray, b: np.ndarray, n_way: int = 1000) -> dict:
    """Modality-gap statistics of paired rows (row i of a matches row i of b).

    Returns a dict:
      "mean_distance": || mean(a) - mean(b) || over all rows of the L2-normalized
          vectors (None when the dims differ: the two means live in different spaces),
      "raw_r1": share of the first min(n_way, n) b rows whose own a row scores
          strictly highest by inner product among those a rows (None when the
          dims differ),
      "mean_norm_a", "mean_norm_b": || mean || of each side's unit rows (how
          narrow each cone is; defined for any dims),
      "n": rows used for the means, "n_way": rows ranked for raw_r1.
    """
    n_way = _check_int("n_way", n_way, 1, "use n_way >= 1 (the size of the R@1 test).")
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise DiffgapError(
            f"gap_stats needs 2-D arrays [n, d]; got shapes {a.shape} and {b.shape}. "
            "Pass one embedding per row."
        )
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise DiffgapError(
            f"gap_stats needs the same non-zero number of rows in a and b; got "
            f"{a.shape[0]} and {b.shape[0]}. Pass paired rows."
        )
    mean_a, mean_b = _unit_mean(a), _unit_mean(b)  # [dim_a], [dim_b]
    k = min(n_way, a.shape[0])
    mean_distance, raw_r1 = None, None
    if a.shape[1] == b.shape[1]:
        mean_distance = float(np.linalg.norm(mean_a - mean_b))
        xb = _normalize_rows(a[:k].astype(np.float64))  # copies: the caller's arrays stay
        xq = _normalize_rows(b[:k].astype(np.float64))
        scores = xq @ xb.T  # [k queries, k candidates]
        own = np.diagonal(scores)
        # rank of the own row = number of candidates scoring strictly higher
        rank = (scores > own[:, None]).sum(axis=1)
        raw_r1 = float((rank == 0).mean())
    return {
        "mean_distance": mean_distance,
        "raw_r1": raw_r1,
        "mean_norm_a": float(np.linalg.norm(mean_a)),
        "mean_norm_b": float(np.linalg.norm(mean_b)),
        "n": int(a.shape[0]),
        "n_way": k,
    }


# ---------------------------------------------------------------------------
# files: a corpus to index, queries to search it with, and the pairs to train on
# ---------------------------------------------------------------------------

SPACE = "synthetic-gap"


def split_of(pair_id: np.ndarray) -> np.ndarray:
    """Fixed split by pair id: 80% train, 10% val (id % 10 == 8), 10% test (id % 10 == 9)."""
    return np.where(pair_id % 10 == 9, "test", np.where(pair_id % 10 == 8, "val", "train"))


def write_synthetic(
    out: str | Path,
    n: int,
    config: GapConfig = GapConfig(),
    *,
    seed: int = 0,
    n_queries: int = 5,
    pairs: bool = True,
    chunk_size: int = 65536,
    progress: bool = True,
) -> dict:
    """Write `n` synthetic pairs as files the rest of the tool reads.

    - `corpus.parquet`: an embedding shard of the `a` side (modality audio), ids =
      pair ids, a `path` column naming each fake clip;
    - `queries.parquet`: `n_queries` rows of the `b` side (modality text), ids = the
      pair ids they were made from, with `target_id` (the corpus id that answers them)
      and a `caption` column;
    - `pairs.parquet` (unless `pairs=False`): the pairs file (DESIGN.md) with
      `pair_id`, `group_id`, `a`, `b`, `split` (see `split_of`), `cluster_id`.

    Both sides are in the space "synthetic-gap" when their dims are equal (raw cosine
    between them is then meaningful), else "synthetic-gap-a" / "synthetic-gap-b".
    Streams in chunks, so 1,000,000 pairs of 512 dims need about 6 GB of disk, not of
    memory. Every file is written atomically. Returns {"corpus": path, ...,
    "stats": gap_stats of the first chunk}.
    """
    from tqdm import tqdm

    from diffgap_search.storage import AtomicParquetWriter, embeddings_table, fixed_size_vectors, write_shard

    n = _check_int("n", n, 1, "ask for at least one pair (--n >= 1).")
    n_queries = _check_int("n_queries", n_queries, 0, "ask for zero or more queries.")
    out = Path(out)
    same = config.dim_a == config.dim_b
    space_a = SPACE if same else f"{SPACE}-a"
    space_b = SPACE if same else f"{SPACE}-b"
    query_ids = np.unique(np.linspace(0, n - 1, min(n_queries, n)).round().astype(np.int64))
    query_rows = np.empty((len(query_ids), config.dim_b), dtype=np.float32)

    corpus_schema = embeddings_table(
        np.zeros(0, np.int64), np.zeros((0, config.dim_a), np.float32),
        pa.table({"path": pa.array([], pa.string())}), space=space_a, modality="audio",
    ).schema
    pairs_schema = pa.schema(
        [
            ("pair_id", pa.int64()),
            ("group_id", pa.int64()),
            ("a", pa.list_(pa.float32(), config.dim_a)),
            ("b", pa.list_(pa.float32(), config.dim_b)),
            ("split", pa.string()),
            ("cluster_id", pa.int64()),
        ],
        metadata={b"diffgap.space_a": space_a.encode(), b"diffgap.space_b": space_b.encode(),
                  b"diffgap.modality_a": b"audio", b"diffgap.modality_b": b"text"},
    )
    files = {"corpus": out / "corpus.parquet", "queries": out / "queries.parquet"}
    if pairs:
        files["pairs"] = out / "pairs.parquet"
    stats = None
    with contextlib.ExitStack() as stack:
        corpus = stack.enter_context(AtomicParquetWriter(files["corpus"], corpus_schema))
        pairs_out = stack.enter_context(AtomicParquetWriter(files["pairs"], pairs_schema)) if pairs else None
        bar = stack.enter_context(tqdm(total=n, unit="pair", desc="synthetic", disable=not progress))
        for chunk in iter_pairs(n, config, seed, chunk_size):
            if stats is None:
                stats = gap_stats(chunk.a, chunk.b, n_way=1000)
            names = pa.array([f"synthetic/clip-{i:07d}.wav" for i in chunk.pair_id])
            corpus.write(embeddings_table(chunk.pair_id, chunk.a, pa.table({"path": names})))
            if pairs_out is not None:
                pairs_out.write(
                    pa.table(
                        {
                            "pair_id": chunk.pair_id,
                            "group_id": chunk.group_id,
                            "a": fixed_size_vectors(chunk.a),
                            "b": fixed_size_vectors(chunk.b),
                            "split": split_of(chunk.pair_id),
                            "cluster_id": chunk.cluster_id,
                        }
                    )
                )
            lo, hi = np.searchsorted(query_ids, [chunk.pair_id[0], chunk.pair_id[-1] + 1])
            query_rows[lo:hi] = chunk.b[query_ids[lo:hi] - chunk.pair_id[0]]
            bar.update(len(chunk.pair_id))
    captions = [f"synthetic query for clip {i}" for i in query_ids]
    write_shard(
        files["queries"], query_ids, query_rows,
        pa.table({"target_id": pa.array(query_ids), "caption": pa.array(captions, pa.string())}),
        space=space_b, modality="text",
    )
    return {**files, "stats": stats}
