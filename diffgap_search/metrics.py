"""Retrieval metrics over ranks (laion_clap protocol, see DESIGN.md).

rank = how many gallery items score at least as high as the query's own target,
not counting the target itself (0 = first). Ties are counted against the query:
a translator that outputs one constant vector ranks every target last, never first.
"""

from __future__ import annotations

import numpy as np


def target_ranks(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray, block: int = 4096) -> np.ndarray:
    """queries [Q, d], gallery [G, d], targets [Q] (row of each query's answer) -> ranks [Q] int64."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.empty(len(queries), dtype=np.int64)
    for lo in range(0, len(queries), block):
        scores = queries[lo : lo + block] @ gallery.T  # [b, G]
        own = scores[np.arange(len(scores)), targets[lo : lo + block]]
        ranks[lo : lo + block] = (scores >= own[:, None]).sum(axis=1) - 1
    return ranks


def recall_at(ranks: np.ndarray, ks=(1, 5, 10)) -> dict:
    """{"R@1": share of ranks < 1, ...} plus mAP@10 = mean(1/(rank+1)) over ranks < 10, and N."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float((ranks < k).mean()) for k in ks}
    out["mAP@10"] = float(np.where(ranks < 10, 1.0 / (ranks + 1), 0.0).mean())
    out["median rank"] = float(np.median(ranks) + 1)
    out["N"] = int(len(ranks))
    return out
