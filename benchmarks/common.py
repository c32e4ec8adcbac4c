"""What every benchmark prints and writes: the machine, the versions, timing helpers, tables."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from diffgap_search.machine import machine, machine_block, markdown_table  # noqa: F401  (re-exported to the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p99(xs: list[float]) -> float:
    return float(np.percentile(xs, 99))


NO_GPU = "GPU: not measured, no GPU lent to this task (device status can_start_another: false)."


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer measures it; nothing on a CPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def matmul_flops(device: str, n: int, runs: int) -> tuple[float, float]:
    """(FLOP/s, median seconds) of a fp32 n x n @ n x n torch.mm: the baseline every "of matmul" divides by."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n, generator=g).to(device)
    y = torch.randn(n, n, generator=g).to(device)

    def one():
        torch.mm(x, y)
        sync(device)

    seconds = p50(timings(one, runs, warmup=2))
    return 2.0 * n**3 / seconds, seconds


def write_results(out: Path, text: str, table: str) -> None:
    """Write a results file (making its folder), print its table and where it went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(table)
    print(f"wrote {out}")
