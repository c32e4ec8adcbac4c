"""What every benchmark table states about where it ran: the machine and the versions."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def machine() -> dict:
    """Date, CPU model, cores, threads, GPUs and the versions of the libraries a result depends on."""
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
        facts["torch threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            facts["gpu (torch)"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return facts


def machine_block(extra: dict | None = None) -> str:
    """The machine facts (and `extra`) as a Markdown list."""
    facts = {**machine(), **(extra or {})}
    return "\n".join(f"- {k}: {v}" for k, v in facts.items())


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
