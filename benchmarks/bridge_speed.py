"""Generation-bridge throughput: audio-space conditions/s at batch 1 and 1,024, against the machine's matmul FLOP/s.

With the default-size translator (`NetworkConfig()`, 512/512 dims, ~1.4 M parameters,
untrained: speed does not depend on the weights) and synthetic query-side vectors
(`make_pairs`, default GapConfig):

1. Baseline: fp32 `torch.mm` of two `--matmul-n` x `--matmul-n` matrices, median of
   `--matmul-runs` runs, FLOP = 2 n^3 (`common.matmul_flops`), in the same run.
2. bridge: `diffgap_search.bridge.bridge` (space check, `Translator.translate` to-audio
   with S DDIM steps, K samples, guidance w, the Conditions with ids and captions), in
   memory. Batch 1: `--singles` separate calls (p50/p99); batch 1,024: median of
   `--repeats` calls. Settings: S=5 K=1 w=1 (the default), S=5 K=1 w=3 (classifier-free
   guidance: two network passes a step), S=20 K=4 w=1.
3. bridge + write: the same plus `write_conditions` to a file in each layout (npy + JSON
   sidecar, parquet, pt), atomic (temporary file, fsync, rename), at batch 1,024 and 1.

FLOP counted per condition: S x K x (2 with guidance != 1 else 1) x forward, with forward
= 2 x the Linear weights one to-audio pass uses (`translator_speed.direction_linear_weights`);
biases, activations, LayerNorm, the scheduler and the file writing are not counted, so
GFLOP/s is a lower bound of the work. "of matmul" = achieved FLOP/s / torch.mm FLOP/s.

    python benchmarks/bridge_speed.py                  # about a minute on 2 CPU cores
    python benchmarks/bridge_speed.py --quick --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_block, markdown_table, matmul_flops, p50, p99, sync, timings, write_results  # noqa: E402
from translator_speed import direction_linear_weights  # noqa: E402

from diffgap_search.bridge import FORMATS, bridge, write_conditions  # noqa: E402
from diffgap_search.diffusion.network import Denoiser, NetworkConfig, count_parameters  # noqa: E402
from diffgap_search.diffusion.normalize import SpaceNorm  # noqa: E402
from diffgap_search.diffusion.translator import Space, Translator, TranslatorConfig  # noqa: E402
from diffgap_search.queries import Queries  # noqa: E402
from diffgap_search.synthetic import GapConfig, make_pairs  # noqa: E402

SETTINGS = [(5, 1, 1.0), (5, 1, 3.0), (20, 4, 1.0)]  # (S, K, w)


def default_translator(device: str) -> Translator:
    config = NetworkConfig()
    tc = TranslatorConfig(Space("clap-audio", config.dim_a, "audio"), Space("clap-text", config.dim_b, "text"), config)
    torch.manual_seed(0)
    return Translator(tc, Denoiser(config), SpaceNorm(config.dim_a), SpaceNorm(config.dim_b), device)


def queries_of(x: np.ndarray) -> Queries:
    return Queries(x, "clap-text", "text", [f"caption {i}" for i in range(len(x))], np.arange(len(x), dtype=np.int64))


def bench(fn_for_rows, x: np.ndarray, batch: int, repeats: int, singles: int, device: str) -> dict:
    """Seconds per call of fn(rows): batch 1 over `singles` different rows, else `repeats` calls of one batch."""
    def timed(rows):
        t0 = time.perf_counter()
        fn_for_rows(rows)
        sync(device)
        return time.perf_counter() - t0

    if batch == 1:
        for i in range(10):  # warm-up
            fn_for_rows(x[i : i + 1])
        lat = [timed(x[i % len(x) : i % len(x) + 1]) for i in range(singles)]
    else:
        rows = x[:batch]
        lat = timings(lambda: (fn_for_rows(rows), sync(device)), repeats, warmup=1)
    return {"c/s": batch / p50(lat), "p50 ms": p50(lat) * 1e3, "p99 ms": p99(lat) * 1e3, "calls": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,1024")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls at batch > 1 (the median is reported)")
    ap.add_argument("--singles", type=int, default=200, help="timed calls at batch 1")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-runs", type=int, default=7)
    ap.add_argument("--note", default="", help="a line about the machine's load during the run, written to the results")
    ap.add_argument("--quick", action="store_true", help="few iterations (for checking the script, not for results)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bridge_speed.md")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.singles, args.matmul_runs = 2, 10, 2
    batches = [int(s) for s in args.batches.split(",") if s]
    dev = args.device

    translator = default_translator(dev)
    params = count_parameters(translator.network)
    fwd = 2 * direction_linear_weights(translator.network, 0)  # FLOP of one to-audio forward pass of one row
    x = make_pairs(max(max(batches), args.singles), GapConfig()).b  # [n, 512] query-side unit rows
    print(f"translator {params:,} parameters; forward ~{fwd / 1e6:.2f} MFLOP per row; torch threads {torch.get_num_threads()}", flush=True)

    columns = ["what", "S", "K", "w", "batch", "conditions/s", "p50 ms", "p99 ms", "GFLOP/s", "of matmul"]
    mm, mm_s = matmul_flops(dev, args.matmul_n, args.matmul_runs)
    rows = [{"what": f"torch.mm fp32 {args.matmul_n}^2 (baseline)", "S": "-", "K": "-", "w": "-", "batch": "-",
             "conditions/s": "-", "p50 ms": f"{mm_s * 1e3:.2f}", "p99 ms": "-", "GFLOP/s": f"{mm / 1e9:.1f}", "of matmul": "1.000"}]
    print(" | ".join(str(rows[-1][c]) for c in columns), flush=True)

    def add(what, s, k, w, batch, r):
        achieved = s * k * (1 if w == 1.0 else 2) * fwd * r["c/s"]
        rows.append({"what": what, "S": s, "K": k, "w": f"{w:g}", "batch": batch, "conditions/s": f"{r['c/s']:,.1f}",
                     "p50 ms": f"{r['p50 ms']:.2f}", "p99 ms": f"{r['p99 ms']:.2f}", "GFLOP/s": f"{achieved / 1e9:.1f}",
                     "of matmul": f"{achieved / mm:.3f}"})
        print(" | ".join(str(rows[-1][c]) for c in columns), flush=True)

    for s, k, w in SETTINGS:
        for batch in batches:
            r = bench(lambda rows_: bridge(translator, queries_of(rows_), steps=s, samples=k, guidance=w, seed=0),
                      x, batch, args.repeats, args.singles if (s, k) == (5, 1) else max(args.singles // 8, 5), dev)
            add("bridge (in memory)", s, k, w, batch, r)
    with tempfile.TemporaryDirectory() as tmp:  # files go to the temporary folder (TMPDIR), on its file system
        for fmt in FORMATS:
            for batch in sorted(batches, reverse=True):
                out = Path(tmp) / f"conditions.{fmt}"
                r = bench(lambda rows_: write_conditions(bridge(translator, queries_of(rows_), steps=5, samples=1, guidance=1.0), out),
                          x, batch, args.repeats, max(args.singles // 4, 5), dev)
                add(f"bridge + write .{fmt}", 5, 1, 1.0, batch, r)

    gpu_line = f"GPU: measured on {torch.cuda.get_device_name(0)}." if dev.startswith("cuda") else (
        "GPU: not measured (run with --device cuda)." if torch.cuda.is_available() else
        "GPU: none on this machine; the run on a lent GPU is in bridge_speed_cuda.md.")
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    table = markdown_table(rows, columns)
    extra = {
        "command": f"`{command}`",
        "device": dev,
        "N (conditions per call)": ", ".join(map(str, batches)),
        "calls timed": f"{args.singles} at batch 1 (S=5 K=1; fewer for slower settings and writes), {args.repeats} at larger batches; median reported",
        "torch threads": torch.get_num_threads(),
        "translator": f"NetworkConfig() 512/512, {params:,} parameters, untrained",
        "forward FLOP per row": f"{fwd:,}",
        f"matmul baseline {dev}": f"{mm / 1e9:.1f} GFLOP/s",
    }
    if args.note:
        extra["load during the run"] = args.note
    text = f"""# Bridge speed

`{command}`{" (--quick: iteration counts too small for results)" if args.quick else ""}

Throughput of the generation bridge (`diffgap_search.bridge.bridge`: query-side vectors -> audio-space
conditions with ids and captions) with the default-size translator ({params:,} parameters, 512/512),
beside the fp32 `torch.mm` FLOP/s of the same device measured in the same run.

- **bridge (in memory)**: the space check, `Translator.translate` to-audio (S DDIM steps, K samples
  averaged, guidance w: two network passes a step when w != 1) and the Conditions; no encoder (the
  inputs are embeddings), no file. Batch 1: separate calls, p50/p99 latency; batch 1,024: median of
  {args.repeats} calls.
- **bridge + write .FMT**: the same at S=5 K=1 w=1 plus `write_conditions` (atomic: temporary file,
  fsync, rename; .npy also writes and fsyncs its JSON sidecar with a sha256 of the matrix).
- **GFLOP/s**: S x K x (2 if w != 1) x {fwd:,} FLOP per condition (2 x the Linear weights of one to-audio
  pass); biases, activations, LayerNorm, scheduler and I/O are not counted (a lower bound).
  "of matmul" divides by the torch.mm row.

{gpu_line}

{machine_block(extra)}

{table}
"""
    write_results(args.out, text, table)


if __name__ == "__main__":
    main()
