"""Retrieval metrics against a brute-force reference; baselines against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from diffgap_search.baselines import MeanShift, Ridge, fit_ridge
from diffgap_search.errors import DiffgapError
from diffgap_search.metrics import recall_at, target_ranks


def brute_rank(q, g, t):
    """Position of the target when every item scoring >= it is placed ahead (ties against the query)."""
    scores = [float(np.dot(q, x)) for x in g]
    own = scores[t]
    return sum(1 for i, s in enumerate(scores) if i != t and s >= own)


def test_ranks_match_brute_force_including_ties():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((30, 8)).astype(np.float32)
    g[5] = g[3]  # an exact tie in the gallery
    q = rng.standard_normal((40, 8)).astype(np.float32)
    q[0] = g[3]
    t = rng.integers(0, 30, 40)
    t[0], t[1] = 3, 5
    q[1] = g[5]
    ranks = target_ranks(q, g, t, block=7)
    assert list(ranks) == [brute_rank(q[i], g, t[i]) for i in range(40)]
    assert ranks[0] >= 1 and ranks[1] >= 1  # the tied twin is counted against the query


def test_constant_output_never_ranks_first():
    g = np.eye(5, dtype=np.float32)
    q = np.full((5, 5), 0.3, dtype=np.float32)  # every item ties
    assert (target_ranks(q, g, np.arange(5)) == 4).all()


def test_recall_and_map_by_hand():
    m = recall_at(np.array([0, 1, 4, 12]))
    assert m["R@1"] == 0.25 and m["R@5"] == 0.75 and m["R@10"] == 0.75 and m["N"] == 4
    assert m["mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 0) / 4)


def test_ridge_with_no_penalty_is_least_squares():
    rng = np.random.default_rng(1)
    b = rng.standard_normal((200, 6))
    a = b @ rng.standard_normal((6, 9)) + 0.5
    model = Ridge(lam=0.0).fit(a, b)
    design = np.hstack([b, np.ones((200, 1))])
    coef, *_ = np.linalg.lstsq(design, a, rcond=None)
    expected = design @ coef
    np.testing.assert_allclose(model(b), expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


def test_fit_ridge_picks_the_lambda_that_retrieves_best():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 16))
    b = rng.standard_normal((300, 16))
    a = b @ w + 0.1 * rng.standard_normal((300, 16))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    model, lam = fit_ridge(a[:200], b[:200], a[200:], b[200:], np.arange(100), lambdas=(1e-3, 1e3))
    assert lam == 1e-3
    assert (target_ranks(model(b[200:]), a[200:].astype(np.float32), np.arange(100)) == 0).mean() > 0.9


def test_mean_shift_by_hand_and_dims():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    b = np.array([[-1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    shifted = MeanShift().fit(a, b)(np.array([[0.0, -1.0]], dtype=np.float32))
    np.testing.assert_allclose(shifted, [[1.0, 0.0]], atol=1e-6)  # (0,-1) + mean(a) - mean(b) = (0,-1) + (1,1)
    with pytest.raises(DiffgapError, match="one dim"):
        MeanShift().fit(a, np.ones((2, 3), np.float32))
