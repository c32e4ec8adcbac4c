"""Index build time, size, recall and query latency for flat / hnsw / ivfpq.

For each corpus size N (synthetic 512-d audio-side embeddings with clusters, from
`diffgap_search.synthetic`) and index type: build through `Index.build`
(read + validate shards, train, add, tune, write), then time `Index.search`
and a bare `faiss` `index.search` on the same index object with the same queries:
one query at a time (p50/p99 over many calls) and batches of 1,024 (p50/p99 over
repeated runs). The ratio ours/bare is our overhead. Recall@10 is measured against
exact search on held-out queries (pairs not in the index).

    python benchmarks/index_speed.py                      # 10k, 100k, 1M (long: ~1 h on 2 cores)
    python benchmarks/index_speed.py --sizes 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_block, markdown_table, p50, p99, write_results  # noqa: E402

from diffgap_search.index import Index, recall_at_k  # noqa: E402
from diffgap_search.storage import embeddings_table, read_embeddings, write_table_atomic  # noqa: E402
from diffgap_search.synthetic import GapConfig, iter_pairs  # noqa: E402

K = 10
BATCH = 1024


def corpus(n: int, n_queries: int, dim: int, workdir: Path, seed: int) -> tuple[Path, np.ndarray]:
    """Write n audio-side vectors as shards; return them and n_queries held-out audio-side queries."""
    shard_dir = workdir / f"corpus-{n}"
    shard_dir.mkdir()
    queries, part = [], 0
    for chunk in iter_pairs(n + n_queries, GapConfig(dim_a=dim, dim_b=dim), seed=seed, chunk_size=131_072):
        keep = chunk.pair_id < n
        if keep.any():
            table = embeddings_table(chunk.pair_id[keep], chunk.a[keep], space="synthetic-gap", modality="audio")
            write_table_atomic(table, shard_dir / f"part-{part:05d}.parquet")
            part += 1
        if (~keep).any():
            queries.append(chunk.a[~keep])
    return shard_dir, np.ascontiguousarray(np.concatenate(queries))


def bench_one(shards: Path, out: Path, index_type: str, xq: np.ndarray, gt: np.ndarray, repeats: int, singles: int) -> dict:
    t0 = time.perf_counter()
    index = Index.build([shards], out, index_type=index_type, device="cpu", memory_budget="16GB")
    build_s = time.perf_counter() - t0
    faiss_index = index.index
    one = [xq[i : i + 1] for i in range(singles)]
    batch = xq[:BATCH]

    # ours and bare FAISS alternate call by call, so that any background load hits both alike
    def alternating(fn_a, fn_b, calls) -> tuple[list[float], list[float]]:
        lat_a, lat_b = [], []
        for call in calls:
            for fn, lat in ((fn_a, lat_a), (fn_b, lat_b)):
                t = time.perf_counter()
                fn(call)
                lat.append(time.perf_counter() - t)
        return lat_a, lat_b

    alternating(lambda q: index.search(q, K), lambda q: faiss_index.search(q, K), one[:20])  # warm-up
    ours_1, bare_1 = alternating(lambda q: index.search(q, K), lambda q: faiss_index.search(q, K), one)
    ours_b, bare_b = alternating(lambda q: index.search(q, K), lambda q: faiss_index.search(q, K), [batch] * repeats)
    recall = recall_at_k(index.search(xq[:BATCH], K).positions, gt[:BATCH])
    files = [f for f in out.rglob("*") if f.is_file()]
    return {
        "N": len(index),
        "type": index_type,
        "factory": index.manifest["factory"],
        "params": index.manifest["search_params"] or "-",
        "build s": f"{build_s:.1f}",
        "index MB": f"{(out / 'index.faiss').stat().st_size / 1e6:.1f}",
        "folder MB": f"{sum(f.stat().st_size for f in files) / 1e6:.1f}",
        "recall@10": f"{recall:.3f}",
        "1q p50 ms": f"{p50(ours_1) * 1e3:.3f}",
        "1q p99 ms": f"{p99(ours_1) * 1e3:.3f}",
        "1q ours/faiss": f"{p50(ours_1) / p50(bare_1):.2f}",
        "1024q p50 ms": f"{p50(ours_b) * 1e3:.1f}",
        "1024q p99 ms": f"{p99(ours_b) * 1e3:.1f}",
        "1024q ours/faiss": f"{p50(ours_b) / p50(bare_b):.2f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--types", default="flat,hnsw,ivfpq")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5, help="runs of the 1,024-query batch")
    ap.add_argument("--singles", type=int, default=200, help="single-query calls timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=RESULTS / "index_speed.md")
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    types = args.types.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="index_speed-", dir=args.workdir))
    rows = []
    columns = ["N", "type", "factory", "params", "build s", "index MB", "folder MB", "recall@10",
               "1q p50 ms", "1q p99 ms", "1q ours/faiss", "1024q p50 ms", "1024q p99 ms", "1024q ours/faiss"]
    try:
        for n in sizes:
            shards, xq = corpus(n, BATCH, args.dim, workdir, args.seed)
            exact = faiss.IndexFlatIP(args.dim)
            for f in sorted(shards.glob("*.parquet")):
                exact.add(read_embeddings(f).vectors)
            _, gt = exact.search(xq, K)
            del exact
            for t in types:
                row = bench_one(shards, workdir / f"ix-{n}-{t}", t, xq, gt, args.repeats, args.singles)
                rows.append(row)
                print(" | ".join(f"{c}={row[c]}" for c in columns), flush=True)
                shutil.rmtree(workdir / f"ix-{n}-{t}")
            shutil.rmtree(shards)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = markdown_table(rows, columns)
    text = f"""# Index speed (CPU)

`python benchmarks/index_speed.py --sizes {args.sizes} --types {args.types} --repeats {args.repeats}`

Synthetic clustered {args.dim}-d unit vectors (`diffgap_search.synthetic`, seed {args.seed}); queries are
{BATCH} held-out vectors of the same distribution. k = {K}. "build s" is the whole
`build-index` (read and validate shards, train, add, tune search parameters to recall@10 >= 0.95,
write atomically). "1q" = one query per call, p50/p99 over {args.singles} calls; "1024q" = one batch of
{BATCH}, p50/p99 over {args.repeats} runs. "ours/faiss" = p50 of `Index.search` (validation,
normalization, id mapping) over p50 of a bare `faiss` `index.search` on the same index and queries.
recall@10 is against exact inner-product search on the same held-out queries.

GPU: not measured: no GPU machine was lent to this task (device status `can_start_another: false`).
On a machine where FAISS sees a GPU, flat and IVF-PQ indexes are moved to it at load time.

{machine_block({"N": args.sizes, "dim": args.dim})}

{table}
"""
    write_results(args.out, text, table)


if __name__ == "__main__":
    main()
