"""Search speed: latency of each stage of the Engine's query chain, against the machine's matmul FLOP/s.

For each index size N (synthetic 512-d audio-side vectors from `diffgap_search.synthetic`,
written as shards and built with `Index.build`), each index type (`flat`, and
`auto`, which is measured only where it resolves to another index than the ones already
measured), each device (CPU, and CUDA when torch sees a GPU) and each batch size (1 query;
`--batch`, default 1,024, queries per call):

  translate     `plan_route` + `Engine.settings` + `Engine.translate`: S = 5 DDIM steps, K = 1, w = 1
                (`FusionConfig()`, an uncalibrated translator's settings, given as the Engine's configs)
  search        `Engine.candidates`: FAISS top-N (N = 100) of the translated queries and of the raw
                queries (same dim) in ONE FAISS call over both, then their row-wise union `unite`
  rerank        `Engine.score`: gather the M candidate vectors, raw and translated cosines, and the
                diffusion score (reverse direction, J = 8 shared (timestep, noise) draws, one batched
                forward over candidates x timesteps)
  fuse + top-k  per-query z-scores, weighted sum (`fuse` with `effective_weights`), `Engine.top_k`
  total         the sum of the four: exactly the body of `Engine.search_queries` (checked once against it)
  plain cosine  the baseline, measured in the same run: `Engine(index)` without a translator, the
                whole `search_queries` call (one FAISS search + the raw cosine + top-k)

Encoding (text / audio / video towers) is excluded: queries arrive as embeddings (the text side of
held-out synthetic pairs). The translator is UNTRAINED (the default `NetworkConfig()`, ~1.4 M
parameters, its normalization fitted on 4,096 synthetic pairs): speed does not depend on its weights,
except that an untrained network's diffusion scores are constant (fusion then costs the same).

Batch 1: p50/p99 over `--singles` calls, each with another query; batch B: p50/p99 over `--repeats`
calls of the same B queries (with 5 runs, p99 is about the slowest). One warm-up call precedes each.

FLOP counted as in translator_speed.py: forward = 2 x the nn.Linear weights one direction uses;
translate = S x K x forward per query (x 2 with guidance != 1); rerank = M x J x forward (from-audio)
+ 2 x M x d per cosine signal, per query, with M the padded candidate width actually computed; flat
search = 2 x N x d per query vector searched (translated and raw). Biases, activations, LayerNorm etc. are not counted:
GFLOP/s is a lower bound. "of matmul" divides by fp32 `torch.mm` of two `--matmul-n` square
matrices (median of `--matmul-runs`), measured in the same run on the same device and thread count.

    python benchmarks/search_speed.py                          # 100k and 1M, batch 1,024 (~20-30 min on 2 idle cores)
    python benchmarks/search_speed.py --sizes 100000 --types flat,hnsw
    python benchmarks/search_speed.py --quick --out /tmp/ss.md # a few minutes: checks the script, not results
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NO_GPU, RESULTS, machine_block, markdown_table, matmul_flops, p50, p99, write_results  # noqa: E402
from translator_speed import direction_linear_weights, gflops, make_train_pairs  # noqa: E402

from diffgap_search.diffusion.train import TrainConfig, TrainingRun, translator_config  # noqa: E402
from diffgap_search.diffusion.translator import Translator  # noqa: E402
from diffgap_search.engine import Engine, effective_weights, plan_route  # noqa: E402
from diffgap_search.index import Index, parse_bytes, plan_index  # noqa: E402
from diffgap_search.queries import Queries  # noqa: E402
from diffgap_search.signals import FusionConfig, fuse  # noqa: E402
from diffgap_search.types import Direction  # noqa: E402
from diffgap_search.storage import embeddings_table, write_table_atomic  # noqa: E402
from diffgap_search.synthetic import SPACE, GapConfig, iter_pairs  # noqa: E402

K = 10
STAGES = ("translate", "search", "rerank", "fuse + top-k")
COLUMNS = ["device", "N", "index", "batch", "stage", "p50 ms", "p99 ms", "ms/query", "GFLOP/s", "of matmul", "vs plain"]


def corpus(n: int, n_queries: int, dim: int, workdir: Path, seed: int) -> tuple[Path, np.ndarray]:
    """n audio-side vectors as shards (space synthetic-gap, modality audio); the text side of n_queries held-out pairs."""
    shard_dir = workdir / f"corpus-{n}"
    shard_dir.mkdir()
    queries, part = [], 0
    for chunk in iter_pairs(n + n_queries, GapConfig(dim_a=dim, dim_b=dim), seed=seed, chunk_size=131_072):
        keep = chunk.pair_id < n
        if keep.any():
            table = embeddings_table(chunk.pair_id[keep], chunk.a[keep], space=SPACE, modality="audio")
            write_table_atomic(table, shard_dir / f"part-{part:05d}.parquet")
            part += 1
        if (~keep).any():
            queries.append(chunk.b[~keep])
    return shard_dir, np.ascontiguousarray(np.concatenate(queries))


def untrained_translator(device: str) -> Translator:
    pairs = make_train_pairs(4096)
    run = TrainingRun(TrainConfig(), pairs, torch.device(device))
    return Translator(translator_config(run, pairs, {}), run.ema, run.norm_a, run.norm_b, device)


def staged(engine: Engine, queries: Queries, k: int = K) -> tuple[dict, object, int, bool]:
    """`Engine.search_queries`, stage by stage with a clock between: (seconds per stage, ranking, M, raw union)."""
    out = {}
    t0 = time.perf_counter()
    route = plan_route(queries, engine.index, engine.translator)
    config = engine.settings(route)
    translated = engine.translate(queries, route, config)
    t1 = time.perf_counter()
    candidates = engine.candidates(queries, translated, route, max(k, config.candidates))
    t2 = time.perf_counter()
    signals = engine.score(queries, translated, candidates, route, config)
    t3 = time.perf_counter()
    mask = candidates >= 0
    fused = fuse(signals, effective_weights(config, signals), mask) if route.direction else np.where(mask, signals["raw"], -np.inf)
    ranking = engine.top_k(queries, candidates, fused, signals, route, k, translated)
    t4 = time.perf_counter()
    out.update({"translate": t1 - t0, "search": t2 - t1, "rerank": t3 - t2, "fuse + top-k": t4 - t3, "total": t4 - t0})
    return out, ranking, int(candidates.shape[1]), route.raw


def measure(engine: Engine, plain: Engine, batches: list[Queries]) -> dict:
    """Per stage and for the plain baseline: seconds of each call (after one warm-up call of each)."""
    staged(engine, batches[0])
    plain.search_queries(batches[0], K)
    times = {s: [] for s in (*STAGES, "total", "plain")}
    widths, raw = [], True
    for q in batches:  # staged and plain alternate call by call, so that background load hits both alike
        seconds, _, m, raw = staged(engine, q)
        widths.append(m)
        for s, v in seconds.items():
            times[s].append(v)
        t = time.perf_counter()
        plain.search_queries(q, K)
        times["plain"].append(time.perf_counter() - t)
    return {"times": times, "M": int(np.median(widths)), "raw": raw}


def flop_per_query(stage: str, config: FusionConfig, fwd: dict, n: int, dim: int, index_type: str, m: int, raw: bool) -> float | None:
    if stage == "translate":
        return config.steps * config.samples * fwd[0] * (1 if config.guidance == 1.0 else 2)
    if stage == "rerank":
        return m * config.timesteps * fwd[1] + 2 * m * dim * (2 if raw else 1)
    if stage == "search" and index_type == "flat":
        return 2 * n * dim * (2 if raw else 1)
    if stage == "plain" and index_type == "flat":
        return 2 * n * dim
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--types", default="flat,auto", help="index types (flat, auto, hnsw, ivfpq); auto is measured only "
                                                         "where it resolves to an index type not measured already")
    ap.add_argument("--memory-budget", default="4GB", help="what `auto` plans with (build-index's default)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--singles", type=int, default=100, help="single-query calls timed")
    ap.add_argument("--repeats", type=int, default=5, help="calls of the large batch timed")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-runs", type=int, default=7)
    ap.add_argument("--device-list", default=None, help="comma-separated torch devices (default: cpu, plus cuda when available)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir; 1M needs ~5 GB)")
    ap.add_argument("--quick", action="store_true", help="N = 20,000, batch 128, few calls (checks the script, not results)")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_speed.md")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.batch = "20000", min(args.batch, 128)
        args.singles, args.repeats, args.matmul_runs = min(args.singles, 10), min(args.repeats, 2), min(args.matmul_runs, 2)

    cuda = torch.cuda.is_available()
    devices = args.device_list.split(",") if args.device_list else ["cpu"] + (["cuda"] if cuda else [])
    sizes = [int(s) for s in args.sizes.split(",") if s]
    budget = parse_bytes(args.memory_budget)
    config = FusionConfig()  # an uncalibrated translator's settings: N=100, S=5, K=1, w=1, J=8, weights raw 0 / translated 1 / diffusion 0.5
    translators = {dev: untrained_translator(dev) for dev in devices}
    net = translators[devices[0]].network
    fwd = {d: 2 * direction_linear_weights(net, d) for d in (0, 1)}
    baselines = {}
    for dev in devices:
        baselines[dev], _ = matmul_flops(dev, args.matmul_n, args.matmul_runs)
        print(f"{dev}: torch.mm fp32 {args.matmul_n}^2 {gflops(baselines[dev])} GFLOP/s", flush=True)

    rows, notes = [], []
    workdir = Path(tempfile.mkdtemp(prefix="search_speed-", dir=args.workdir))
    try:
        for n in sizes:
            shards, xq = corpus(n, max(args.batch, args.singles), args.dim, workdir, args.seed)
            singles = [Queries(xq[i : i + 1], modality="text") for i in range(args.singles)]
            batch = Queries(xq[: args.batch], modality="text")
            resolved: dict[str, list[str]] = {}  # index type built -> the --types names it stands for
            for t in filter(None, args.types.split(",")):
                real = plan_index(n, args.dim, t, budget).index_type if t == "auto" else t
                resolved.setdefault(real, []).append(t)
            for index_type, names in resolved.items():
                label = " = ".join(dict.fromkeys([index_type, *names]))
                t0 = time.perf_counter()
                Index.build([shards], workdir / f"ix-{n}-{index_type}", index_type=index_type, device="cpu",
                            memory_budget=budget)
                build_s = time.perf_counter() - t0
                for dev in devices:
                    index = Index.open(workdir / f"ix-{n}-{index_type}",
                                       device="cuda" if dev.startswith("cuda") and faiss.get_num_gpus() else "cpu")
                    engine = Engine(index, translators[dev], configs={d: config for d in Direction})
                    plain = Engine(index)
                    check = batch if args.batch <= 128 else Queries(xq[:64], modality="text")
                    _, staged_ranking, _, _ = staged(engine, check)
                    same = np.array_equal(staged_ranking.ids, engine.search_queries(check, K).ids)
                    if not same:
                        print(f"WARNING: the staged chain's top-{K} differs from Engine.search_queries's ({dev}, N={n})",
                              flush=True)
                    notes.append(f"N={n:,} {label} on {dev}: factory {index.manifest['factory']}, search params "
                                 f"{index.manifest['search_params'] or '-'}, tuned recall@10 {index.manifest['tuned_recall_at_10']}, "
                                 f"built in {build_s:.0f} s; FAISS on {index.device}; staged top-{K} "
                                 f"{'equals' if same else 'DIFFERS FROM'} Engine.search_queries's on {len(check)} queries")
                    for size, calls in ((1, singles), (args.batch, [batch] * args.repeats)):
                        r = measure(engine, plain, calls)
                        mm = baselines[dev]
                        plain_p50 = p50(r["times"]["plain"])
                        for stage in (*STAGES, "total", "plain"):
                            lat = r["times"][stage]
                            flop = flop_per_query(stage, config, fwd, n, args.dim, index_type, r["M"], r["raw"])
                            rate = flop * size / p50(lat) if flop else None
                            name = {"search": f"search ({'1 FAISS call, translated + raw, union' if r['raw'] else '1 FAISS call'}, "
                                              f"N={config.candidates})",
                                    "rerank": f"rerank (M={r['M']} x J={config.timesteps})",
                                    "translate": f"translate (S={config.steps}, K={config.samples})",
                                    "total": "total (sum of stages)",
                                    "plain": "plain cosine search (baseline)"}.get(stage, stage)
                            rows.append({"device": dev, "N": f"{n:,}", "index": label, "batch": size, "stage": name,
                                         "p50 ms": f"{p50(lat) * 1e3:.2f}", "p99 ms": f"{p99(lat) * 1e3:.2f}",
                                         "ms/query": f"{p50(lat) * 1e3 / size:.3f}",
                                         "GFLOP/s": gflops(rate) if rate else "-",
                                         "of matmul": f"{rate / mm:.3f}" if rate else "-",
                                         "vs plain": f"{p50(lat) / plain_p50:.1f}x" if stage == "total" else ""})
                            print(" | ".join(str(rows[-1][c]) for c in COLUMNS), flush=True)
                    del index, engine, plain
                shutil.rmtree(workdir / f"ix-{n}-{index_type}")
            shutil.rmtree(shards)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if "cuda" in {d.split(":")[0] for d in devices}:
        gpu_line = (f"GPU: measured on {torch.cuda.get_device_name(0)} (TF32 matmul "
                    f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}; FAISS GPUs: {faiss.get_num_gpus()}).")
    elif cuda:
        gpu_line = "GPU: not measured (not in --device-list)."
    else:
        gpu_line = NO_GPU
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    extra = {
        "command": f"`{command}`",
        "N": args.sizes,
        "dim": args.dim,
        "batch": args.batch,
        "single-query calls": args.singles,
        "batch calls": args.repeats,
        "torch threads": torch.get_num_threads(),
        "fusion settings": config.to_dict(),
        "translator": f"untrained NetworkConfig() {args.dim}/{args.dim}, {sum(p.numel() for p in net.parameters()):,} parameters",
        "forward FLOP per row": f"{fwd[0]:,} (to-audio), {fwd[1]:,} (from-audio)",
        **{f"matmul baseline {d}": f"{gflops(v)} GFLOP/s" for d, v in baselines.items()},
    }
    if cuda:
        extra["gpu"] = torch.cuda.get_device_name(0)
    table = markdown_table(rows, COLUMNS)
    text = f"""# Search speed: latency per stage of the query chain

`{command}`{" (--quick: sizes and call counts too small for results)" if args.quick else ""}

Queries arrive as embeddings (encoding excluded): the text side of {max(args.batch, args.singles):,} held-out synthetic
pairs; the index holds N synthetic {args.dim}-d audio-side vectors (`diffgap_search.synthetic`, seed {args.seed}).
Fusion settings: `FusionConfig()`, an uncalibrated translator's settings, given to the Engine as each direction's
config (N = {config.candidates} candidates, S = {config.steps} DDIM steps, K = {config.samples}, w = {config.guidance:g},
J = {config.timesteps} diffusion draws, weights translated {config.weight("translated"):g} / diffusion
{config.weight("diffusion"):g}). The translator is untrained (default network): speed does not depend on its weights.

- **translate**: `plan_route` + `Engine.settings` + `Engine.translate` (S x K forward passes per query, DDIM loop,
  output as numpy).
- **search**: `Engine.candidates`: FAISS top-N of the translated and of the raw queries (query and index have
  one dim, so both run) in one FAISS call over both, and their row-wise union `unite`.
- **rerank**: `Engine.score`: gather the M candidates' stored vectors, raw and translated cosines, and the
  diffusion score (one batched forward of the reverse direction over M x J rows per query). M is the padded
  width of the union (what is computed).
- **fuse + top-k**: `fuse` (per-query z-scores, weighted sum) and `Engine.top_k`.
- **total**: the sum of the four, the body of `Engine.search_queries` (the staged ranking is checked equal to
  `Engine.search_queries`'s). **vs plain** = total p50 / plain p50.
- **plain cosine search (baseline)**: `Engine(index).search_queries` without a translator, the whole call,
  alternated call by call with the staged chain so that background load hits both alike.
- batch 1: p50/p99 over {args.singles} calls, each with another query; batch {args.batch}: p50/p99 over {args.repeats} calls
  (p99 of so few is about the slowest). ms/query = p50 / batch.
- **GFLOP/s**: FLOP per query x batch / p50. translate: S x K x {fwd[0]:,}; rerank: M x J x {fwd[1]:,} + 2 x M x d per cosine
  signal; flat search: 2 x N x d per vector searched, translated and raw (not counted for graph / IVF indexes). Forward FLOP = 2 x the
  nn.Linear weights one direction uses, as in translator_speed.py (biases, activations, LayerNorm not counted: a
  lower bound). **of matmul** = GFLOP/s over fp32 `torch.mm` {args.matmul_n}^2 (median of {args.matmul_runs} runs),
  measured in this run on the same device and thread count.
- `auto` with a {args.memory_budget} budget is measured only where it resolves to another index than those listed
  before it; a label like "flat = auto" means auto chose that very index (up to 1,000,000 vectors auto is flat).

{gpu_line}

Indexes: {"; ".join(notes)}.

{machine_block(extra)}

{table}
"""
    write_results(args.out, text, table)


if __name__ == "__main__":
    main()
