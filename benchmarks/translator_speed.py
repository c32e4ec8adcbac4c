"""DiffGAP denoiser speed: training iterations/s and translation queries/s, against the machine's matmul FLOP/s.

For each device (CPU, and CUDA when torch sees a GPU), with the default network
(`NetworkConfig()`, 512/512 dims, ~1.4 M parameters) and synthetic pairs from
`diffgap_search.synthetic.make_pairs` (`--n` pairs, default GapConfig):

1. Baseline: fp32 `torch.mm` of two `--matmul-n` x `--matmul-n` matrices (2048 by
   default), median of `--matmul-runs` runs; FLOP = 2 n^3. This is what the
   machine can do with torch on this device and thread count, measured in the
   same run as everything else.
2. Training: the real step, `diffgap_search.diffusion.train.TrainingRun.train_step`
   (noising, forward, MSE loss, backward, gradient clipping, Adam, EMA update) on
   normalized batches of 64 and 1,024 pairs. After warm-up steps, `--repeats`
   windows of `--window` steps are timed; it/s = window / median window time.
3. Translation: `Translator.translate` (S = 5 DDIM steps, K = 1 sample, guidance
   w = 1) of an untrained translator built in memory from that `TrainingRun`, at batch 1
   (`--singles` separate calls, p50/p99 latency) and batch 4,096 (`--repeats`
   calls). q/s = batch / median call time.

FLOP counts (an approximation, printed with the results): the forward pass of one
row costs 2 x (weights of the nn.Linear layers one direction uses: the time MLP,
that direction's condition / input / output projections, the blocks' MLPs and
modulations, the final modulation; the other direction's projections are not
counted). Biases, activations, LayerNorm, the sinusoidal embedding, the
scheduler's arithmetic, the optimizer and the EMA are left out, so the FLOP/s
given are a lower bound of the work done. Training counts 3 x forward per row
(forward + backward ~ 2 x forward); translation S x K x forward per query.
Efficiency = achieved FLOP/s / the matmul FLOP/s of the same device.

    python benchmarks/translator_speed.py                     # a few minutes on 2 CPU cores
    python benchmarks/translator_speed.py --quick --out /tmp/t.md --train-batches 64 --translate-batches 1,256
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NO_GPU, RESULTS, machine_block, markdown_table, matmul_flops, p50, p99, sync, timings, write_results  # noqa: E402

from diffgap_search.diffusion.network import Denoiser, NetworkConfig, count_parameters  # noqa: E402
from diffgap_search.diffusion.train import TrainConfig, TrainingRun, translator_config  # noqa: E402
from diffgap_search.diffusion.translator import Translator  # noqa: E402
from diffgap_search.pairs import Pairs  # noqa: E402
from diffgap_search.synthetic import GapConfig, make_pairs  # noqa: E402

STEPS = 5  # S
SAMPLES = 1  # K
GUIDANCE = 1.0  # w


def direction_linear_weights(net: Denoiser, direction: int) -> int:
    """Weights of the nn.Linear layers a forward pass in `direction` uses (not the other direction's projections)."""
    per_direction = [net.cond_proj, net.in_proj, net.out_proj] + ([net.cond_in] if net.cond_in is not None else [])
    unused = {id(m) for lst in per_direction for m in lst[1 - direction].modules()}
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Linear) and id(m) not in unused)


def make_train_pairs(n: int) -> Pairs:
    chunk = make_pairs(n, GapConfig())
    return Pairs(
        a=chunk.a, b=chunk.b, pair_id=chunk.pair_id, group=np.arange(n, dtype=np.int64), group_id=chunk.group_id,
        split=None, metadata=pa.table({"x": np.zeros(n)}).drop(["x"]), source="synthetic",
    )


def bench_training(pairs: Pairs, device: str, batch: int, window: int, repeats: int, warmup: int) -> dict:
    run = TrainingRun(TrainConfig(batch_size=batch), pairs, torch.device(device))
    a = run.norm_a(torch.from_numpy(np.array(pairs.a)).to(device))
    b = run.norm_b(torch.from_numpy(np.array(pairs.b)).to(device))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).to(device)
    batches = [order[i : i + batch] for i in range(0, len(pairs) - batch + 1, batch)] or [order]
    state = {"i": 0}

    def step():
        idx = batches[state["i"] % len(batches)]
        state["i"] += 1
        run.train_step(a[idx], b[idx], 0)  # direction 0 (to-audio); at 512/512 both directions cost the same

    for _ in range(warmup):
        step()
    sync(device)

    def window_fn():
        for _ in range(window):
            step()
        sync(device)

    seconds = p50(timings(window_fn, repeats, warmup=0))
    return {"it/s": window / seconds, "rows/s": window * batch / seconds, "step ms": seconds / window * 1e3, "run": run}


def bench_translation(translator: Translator, pairs: Pairs, device: str, batch: int, repeats: int, singles: int) -> dict:
    x = np.ascontiguousarray(pairs.b[: batch if batch > 1 else max(singles, 1)])

    def call(rows):
        translator.translate(rows, "to-audio", steps=STEPS, samples=SAMPLES, guidance=GUIDANCE, batch_size=max(batch, 1))

    if batch == 1:
        for i in range(min(10, len(x))):  # warm-up
            call(x[i : i + 1])
        lat = []
        for i in range(singles):
            q = x[i % len(x) : i % len(x) + 1]
            t0 = time.perf_counter()
            call(q)
            lat.append(time.perf_counter() - t0)
    else:
        if len(x) < batch:
            x = np.resize(x, (batch, x.shape[1]))
        lat = timings(lambda: call(x), repeats, warmup=1)
    return {"q/s": batch / p50(lat), "p50 ms": p50(lat) * 1e3, "p99 ms": p99(lat) * 1e3, "calls": len(lat)}


def gflops(x: float) -> str:
    return f"{x / 1e9:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device-list", default=None, help="comma-separated torch devices (default: cpu, plus cuda when available)")
    ap.add_argument("--n", type=int, default=4096, help="synthetic pairs (512/512 dims) the batches are drawn from")
    ap.add_argument("--repeats", type=int, default=5, help="timed training windows and timed large-batch translation calls")
    ap.add_argument("--window", type=int, default=20, help="training steps per timed window")
    ap.add_argument("--singles", type=int, default=200, help="timed single-query translation calls")
    ap.add_argument("--train-batches", default="64,1024")
    ap.add_argument("--translate-batches", default="1,4096")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="few iterations (for checking the script, not for results)")
    ap.add_argument("--out", type=Path, default=RESULTS / "translator_speed.md")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.window, args.singles, args.matmul_runs = min(args.repeats, 2), min(args.window, 3), min(args.singles, 10), min(args.matmul_runs, 2)
    warmup_steps = 2 if args.quick else 10

    cuda = torch.cuda.is_available()
    devices = args.device_list.split(",") if args.device_list else ["cpu"] + (["cuda"] if cuda else [])
    train_batches = [int(s) for s in args.train_batches.split(",") if s]
    translate_batches = [int(s) for s in args.translate_batches.split(",") if s]

    pairs = make_train_pairs(args.n)
    probe = Denoiser(NetworkConfig(dim_a=pairs.dim_a, dim_b=pairs.dim_b))
    params = count_parameters(probe)
    fwd = {d: 2 * direction_linear_weights(probe, d) for d in (0, 1)}
    fwd_row = fwd[0]  # FLOP of one row's forward pass, to-audio
    print(f"denoiser {params:,} parameters; forward ~{fwd_row / 1e6:.2f} MFLOP per row (to-audio), "
          f"{fwd[1] / 1e6:.2f} (from-audio); torch threads {torch.get_num_threads()}", flush=True)

    rows, baselines = [], {}
    columns = ["device", "what", "batch", "rate", "rows/s", "p50 ms", "p99 ms", "GFLOP/s", "of matmul"]
    for dev in devices:
        mm, mm_s = matmul_flops(dev, args.matmul_n, args.matmul_runs)
        baselines[dev] = mm
        rows.append({"device": dev, "what": f"torch.mm fp32 {args.matmul_n}^2", "batch": "-", "rate": f"{1 / mm_s:.2f} mm/s",
                     "rows/s": "-", "p50 ms": f"{mm_s * 1e3:.2f}", "p99 ms": "-", "GFLOP/s": gflops(mm), "of matmul": "1.000"})
        print(" | ".join(str(rows[-1][c]) for c in columns), flush=True)
        run = None
        for batch in train_batches:
            r = bench_training(pairs, dev, batch, args.window, args.repeats, warmup_steps)
            run = r.pop("run")
            achieved = 3 * fwd_row * r["rows/s"]
            rows.append({"device": dev, "what": "train step", "batch": batch, "rate": f"{r['it/s']:.1f} it/s",
                         "rows/s": f"{r['rows/s']:,.0f}", "p50 ms": f"{r['step ms']:.2f}", "p99 ms": "-",
                         "GFLOP/s": gflops(achieved), "of matmul": f"{achieved / mm:.3f}"})
            print(" | ".join(str(rows[-1][c]) for c in columns), flush=True)
        if run is None:
            run = TrainingRun(TrainConfig(), pairs, torch.device(dev))
        translator = Translator(translator_config(run, pairs, {}), run.ema, run.norm_a, run.norm_b, dev)
        for batch in translate_batches:
            r = bench_translation(translator, pairs, dev, batch, args.repeats, args.singles)
            achieved = STEPS * SAMPLES * fwd_row * r["q/s"]
            rows.append({"device": dev, "what": f"translate S={STEPS} K={SAMPLES} w={GUIDANCE:g}", "batch": batch,
                         "rate": f"{r['q/s']:,.1f} q/s", "rows/s": f"{r['q/s']:,.0f}", "p50 ms": f"{r['p50 ms']:.2f}",
                         "p99 ms": f"{r['p99 ms']:.2f}", "GFLOP/s": gflops(achieved), "of matmul": f"{achieved / mm:.3f}"})
            print(" | ".join(str(rows[-1][c]) for c in columns), flush=True)
        del run, translator

    if "cuda" in {d.split(":")[0] for d in devices}:
        gpu_line = f"GPU: measured on {torch.cuda.get_device_name(0)} (TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})."
    elif cuda:
        gpu_line = "GPU: not measured (not in --device-list)."
    else:
        gpu_line = NO_GPU
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    table = markdown_table(rows, columns)
    extra = {
        "command": f"`{command}`",
        "N (pairs)": args.n,
        "repeats": args.repeats,
        "training window (steps)": args.window,
        "single-query calls": args.singles,
        "torch threads": torch.get_num_threads(),
        "network": f"NetworkConfig() 512/512, {params:,} parameters",
        "forward FLOP per row": f"{fwd_row:,} (to-audio), {fwd[1]:,} (from-audio)",
        **{f"matmul baseline {d}": f"{gflops(v)} GFLOP/s" for d, v in baselines.items()},
    }
    if cuda:
        extra["gpu"] = torch.cuda.get_device_name(0)
    text = f"""# Translator speed

`{command}`{" (--quick: iteration counts too small for results)" if args.quick else ""}

The DiffGAP denoiser with the default network (`NetworkConfig()`: 512/512 dims, hidden {NetworkConfig.hidden},
emb {NetworkConfig.emb}, {NetworkConfig.blocks} blocks, {params:,} parameters), untrained (speed does not depend on the weights).

- **torch.mm**: fp32 {args.matmul_n} x {args.matmul_n} @ {args.matmul_n} x {args.matmul_n}, median of
  {args.matmul_runs} runs, FLOP = 2 n^3: the baseline every efficiency ("of matmul") divides by,
  measured in this run on the same device and thread count.
- **train step**: `TrainingRun.train_step` (draw t / noise / dropout, noise, forward, MSE loss,
  backward, gradient clipping, Adam, EMA update) on normalized batches of synthetic pairs
  ({args.n} pairs, `make_pairs`), direction to-audio; after {warmup_steps} warm-up steps,
  median of {args.repeats} windows of {args.window} steps. "p50 ms" is per step.
- **translate**: `Translator.translate(..., steps={STEPS}, samples={SAMPLES}, guidance={GUIDANCE:g})`,
  to-audio, the whole call (input checks, normalization, DDIM loop, output on CPU as numpy).
  Batch 1: {args.singles} single-query calls (p50/p99 latency); larger batches: median of {args.repeats} calls.
- **FLOP counted**: forward = 2 x {fwd_row // 2:,} Linear weights per row (time MLP, this direction's
  condition / input / output projections, block MLPs and modulations, final modulation; not the other
  direction's projections). Biases, activations, LayerNorm, timestep embedding, scheduler arithmetic,
  optimizer and EMA are not counted, so GFLOP/s is a lower bound of the work done. Training: 3 x forward
  per row (backward ~ 2 x forward); translation: S x K x forward per query.

{gpu_line}

{machine_block(extra)}

{table}
"""
    write_results(args.out, text, table)


if __name__ == "__main__":
    main()
