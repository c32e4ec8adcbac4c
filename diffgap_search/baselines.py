"""Cheap translators to compare DiffGAP against: mean shift and ridge regression.

Each is fitted on training pairs (query side b -> audio side a) and maps query
vectors into the audio space as unit vectors, like `Translator.translate(..., "to-audio")`.
"""

from __future__ import annotations

import numpy as np

from diffgap_search.errors import DiffgapError

RIDGE_LAMBDAS = (1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0, 10.0, 100.0)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


class MeanShift:
    """b - mean(b) + mean(a): removes the constant offset between the two cones (same dim only)."""

    def fit(self, a: np.ndarray, b: np.ndarray) -> "MeanShift":
        if a.shape[1] != b.shape[1]:
            raise DiffgapError(f"mean shift needs one dim on both sides; got {a.shape[1]} and {b.shape[1]}")
        self.shift = (a.mean(0) - b.mean(0)).astype(np.float32)
        return self

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return _unit(b + self.shift)


class Ridge:
    """Least squares b -> a with an L2 penalty, on centred data: a ~ (b - mb) W + ma.

    lam is relative: the penalty is lam * trace(B'B) / d_b, so one grid fits any scale.
    """

    def __init__(self, lam: float = 1.0):
        self.lam = lam

    def fit(self, a: np.ndarray, b: np.ndarray) -> "Ridge":
        a, b = a.astype(np.float64), b.astype(np.float64)
        self.ma, self.mb = a.mean(0), b.mean(0)
        bc, ac = b - self.mb, a - self.ma
        gram = bc.T @ bc
        penalty = self.lam * np.trace(gram) / gram.shape[0]
        self.w = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), bc.T @ ac)
        return self

    def __call__(self, b: np.ndarray) -> np.ndarray:
        return _unit((b.astype(np.float64) - self.mb) @ self.w + self.ma)


def fit_ridge(a: np.ndarray, b: np.ndarray, val_a: np.ndarray, val_b: np.ndarray, val_target: np.ndarray,
              lambdas=RIDGE_LAMBDAS) -> tuple[Ridge, float]:
    """Ridge with lam chosen by validation R@1 (ties -> mean rank); refitted on train only."""
    from diffgap_search.metrics import target_ranks

    best = None
    for lam in lambdas:
        model = Ridge(lam).fit(a, b)
        ranks = target_ranks(model(val_b), val_a, val_target)
        key = ((ranks < 1).mean(), -ranks.mean())
        if best is None or key > best[0]:
            best = (key, model)
    return best[1], best[1].lam
