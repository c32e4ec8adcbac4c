"""Retrieval metrics over ranks (laion_clap protocol, see DESIGN.md).

rank = how many gallery items score at least as high as the query's own target,
not counting the target itself (0 = first). Ties are counted against the query:
a translator that outputs one constant vector ranks every target last, never first.
(laion_clap's argsort breaks ties by position instead; with continuous scores the two
agree, and ours cannot be flattered by a degenerate, constant score.)

The protocol (laion_clap `evaluate_clotho_audiocaps`):
- text->audio: every caption is a query; its answer is its clip (`text_to_audio_ranks`);
- audio->text: every clip is a query; its rank is the best rank among its captions
  (`audio_to_text_ranks`);
- R@k = share of queries whose rank < k; mAP@10 = mean of 1/(rank+1) over ranks < 10
  (0 otherwise); median rank (1-based, as laion_clap prints it); N = number of queries.
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


def positive_ranks(scores: np.ndarray, query: np.ndarray, item: np.ndarray, n_queries: int,
                   block: int = 1024) -> np.ndarray:
    """Rank of each query's best positive: scores [Q, G], positives (query[p], item[p]) -> ranks [Q].

    rank = how many of the query's non-positive items score at least as high as its best
    positive (ties against the query). Other positives of the same query never count
    against it (five captions that tie are not a miss), as in laion_clap, where the best
    caption's position in the argsort can only have non-positives ahead of it. A query
    with no positive gets rank G (a miss at every k).
    """
    scores = np.asarray(scores)
    query, item = np.asarray(query, np.int64), np.asarray(item, np.int64)
    own = scores[query, item]  # [P]
    best = np.full(n_queries, -np.inf, dtype=np.float64)
    np.maximum.at(best, query, own)  # [Q] the best positive's score
    tied = np.zeros(n_queries, dtype=np.int64)
    np.add.at(tied, query, own >= best[query])  # positives at that score (the best one included)
    out = np.empty(n_queries, dtype=np.int64)
    for lo in range(0, n_queries, block):
        rows = slice(lo, lo + block)
        out[rows] = (scores[rows] >= best[rows, None]).sum(axis=1) - tied[rows]
    return np.where(np.isfinite(best), out, scores.shape[1])


def text_to_audio_ranks(scores: np.ndarray, group: np.ndarray) -> np.ndarray:
    """laion_clap text->audio: every caption is a query; scores [Q captions, G clips], group [Q] -> ranks [Q]."""
    group = np.asarray(group, np.int64)
    return positive_ranks(scores, np.arange(len(group)), group, len(group))


def audio_to_text_ranks(scores: np.ndarray, group: np.ndarray) -> np.ndarray:
    """laion_clap audio->text: every clip is a query, its rank is the best of its captions' ranks.

    scores [G clips, Q captions], group [Q] (clip of each caption) -> ranks [G].
    """
    group = np.asarray(group, np.int64)
    return positive_ranks(scores, group, np.arange(len(group)), scores.shape[0])


def retrieval_metrics(scores: np.ndarray, group: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Both directions from one caption x clip score matrix [Q, G] (for mappers whose score is symmetric)."""
    return {"query->audio": recall_at(text_to_audio_ranks(scores, group), ks),
            "audio->query": recall_at(audio_to_text_ranks(np.ascontiguousarray(np.asarray(scores).T), group), ks)}
