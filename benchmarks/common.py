"""What every benchmark prints and writes: the machine, the versions, timing helpers, tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import faiss
    import pyarrow

    import diffgap_search

    facts = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "faiss threads": faiss.omp_get_max_threads(),
        "gpus (faiss)": faiss.get_num_gpus(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "pyarrow": pyarrow.__version__,
        "diffgap-search": diffgap_search.__version__,
    }
    try:
        import torch

        facts["torch"] = torch.__version__
    except ImportError:
        pass
    return facts


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


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def machine_block(extra: dict | None = None) -> str:
    facts = {**machine(), **(extra or {})}
    return "\n".join(f"- {k}: {v}" for k, v in facts.items())


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
