"""The Engine: THE query chain (DESIGN.md), used by `query`, `calibrate`, `benchmark` and every front door.

    encode -> route -> translate (S DDIM steps, K samples) -> candidates (one FAISS call: top-N of the
    translated query, with top-N of the raw query when it shares the index's space) -> signals (signals.py)
    -> fusion (per-query z-scores, weighted) -> top-k + metadata

    engine = Engine.open("indexes/clips", model="models/audiocaps", encoder="hf:laion/clap-htsat-unfused")
    results = engine.search(texts=["a dog barks"], k=10)
    results.ids, results.scores, results.signals["diffusion"], results.rows(0), results.to_arrow()

The direction comes from the spaces: queries on the translator's query side (text,
video) over an index of its audio space go to-audio; audio queries over an index of
captions or videos go from-audio, and the candidates are scored by the other
direction. Without a translator the engine is plain cosine search over an index of
the queries' own space. Settings per direction come from the translator's calibration
(calibration.json, written by `calibrate`), else from its training-time validation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from diffgap_search.errors import DiffgapError
from diffgap_search.index import Index
from diffgap_search.queries import Queries, audio_queries, embedding_queries, text_queries, video_queries
from diffgap_search.signals import SIGNALS, Batch, FusionConfig, fuse
from diffgap_search.types import Direction, Space

SCORE_BLOCK_FLOATS = 1 << 24  # candidate-vector floats gathered at once while scoring (64 MB)


@dataclass(frozen=True)
class Route:
    direction: Direction | None  # None: no translation
    raw: bool  # the raw query searches the index too (query and index share a space)


def plan_route(queries: Queries, index: Index, translator=None) -> Route:
    """Choose the translation direction from the spaces, or fail naming both sides and the fix."""
    q = Space(queries.space, queries.dim, queries.modality)
    ix = Space(index.space, index.dim, index.modality)
    same_space = q.dim == ix.dim and (q.name == ix.name if q.name and ix.name else True)
    if translator is None:
        index.check_queries(queries.vectors, space=queries.space)  # plain search: the index's own space and dim
        return Route(None, True)
    a, b = _space(translator.config.space_a), _space(translator.config.space_b)
    for direction, source, target in ((Direction.TO_AUDIO, b, a), (Direction.FROM_AUDIO, a, b)):
        if source.admits(q) and target.admits(ix):
            return Route(direction, same_space)
    if b.admits(q) or a.admits(q):
        other = a if b.admits(q) else b
        raise DiffgapError(f"the index {index.name} is in {ix.describe()}, but queries in {q.describe()} are translated "
                           f"into {other.describe()}; search an index of that space, or use a translator trained on the "
                           "index's space")
    raise DiffgapError(f"queries are in {q.describe()}, the translator's sides are {b.describe()} and {a.describe()}; "
                       "encode the queries with the encoder the translator was trained on")


def _space(side) -> Space:
    return side if isinstance(side, Space) else Space(side.name, side.dim, getattr(side, "modality", None))


def unite(*position_sets: np.ndarray) -> np.ndarray:
    """Row-wise union of candidate positions [Q, n_i] (-1 = none) -> [Q, M], first occurrence order, -1 padded."""
    both = np.concatenate(position_sets, axis=1)  # [Q, sum n_i]
    order = np.argsort(both, axis=1, kind="stable")
    ranked = np.take_along_axis(both, order, axis=1)
    repeat = np.zeros(ranked.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]  # a later copy of the same position (stable sort: first stays)
    keep = np.empty_like(repeat)
    np.put_along_axis(keep, order, ~repeat & (ranked >= 0), axis=1)
    front = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, in their original order
    united = np.take_along_axis(np.where(keep, both, -1), front, axis=1)
    return united[:, : max(int(keep.sum(axis=1).max()), 1)]


# ---------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------


@dataclass
class Results:
    """Top-k of each query: fused score, every signal's score, ids, positions, and metadata on demand."""

    ids: np.ndarray  # int64 [Q, k], -1 where no hit
    scores: np.ndarray  # float [Q, k]: fused score (the raw cosine without a translator); -inf where no hit
    signals: dict[str, np.ndarray]  # name -> float [Q, k] (cosines; diffusion = -mean error)
    positions: np.ndarray  # int64 [Q, k] row positions in the index, -1 where no hit
    queries: Queries
    index: Index
    route: Route
    translated: np.ndarray | None = None  # [Q, d_index] the translated queries

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, q: int) -> list[dict]:
        """Hits of query q, best first: rank (1-based), score, id, each signal's score, metadata."""
        keep = self.positions[q] >= 0
        meta = self.index.metadata(self.positions[q][keep])
        signals = {name: s[q][keep] for name, s in self.signals.items()}
        return [{"rank": r + 1, "score": float(self.scores[q][keep][r]), "id": int(self.ids[q][keep][r]),
                 **{name: float(s[r]) for name, s in signals.items()}, **m} for r, m in enumerate(meta)]

    def to_arrow(self):
        """One row per hit: query, query_label, rank, id, score, each signal, metadata columns."""
        import pyarrow as pa

        rows = [{"query": int(self.queries.ids[q]), "query_label": self.queries.labels[q], **row}
                for q in range(len(self)) for row in self.rows(q)]
        return pa.Table.from_pylist(rows)


# ---------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------


class Engine:
    """An index, optionally a translator and an encoder, and the fusion settings of each direction.

    `configs` defaults to the translator's calibration (calibrate.load_calibration), else to
    `FusionConfig()` with the translator's validated sampling (S, K, w).
    """

    def __init__(self, index: Index, translator=None, encoder=None, *, configs: dict | None = None,
                 video_encoder=None, warn=None):
        from diffgap_search.calibrate import default_configs

        self.index = index
        self.translator = translator
        self.encoder = encoder
        self.video_encoder = video_encoder or encoder
        self.configs: dict[Direction, FusionConfig] = configs if configs is not None else default_configs(translator)
        self.warn = warn or (lambda line: print(f"warning: {line}", file=sys.stderr))
        self._warned: set[Direction] = set()

    @classmethod
    def open(cls, index_dir: str | Path, model: str | Path | None = None, encoder=None, *, device: str = "auto",
             checkpoint: str | Path | None = None, video_encoder=None, warn=None) -> "Engine":
        """Load an index folder, a translator folder and encoders (specs like hf:laion/clap-htsat-unfused)."""
        from diffgap_search.devices import torch_device

        index = Index.open(index_dir, device=device)
        translator = None
        if model is not None:
            from diffgap_search.diffusion.translator import Translator

            translator = Translator.load(model, torch_device(device))

        def load(spec):
            from diffgap_search.encoders import load_encoder

            return load_encoder(spec, device=torch_device(device), checkpoint=checkpoint) if isinstance(spec, str) else spec

        return cls(index, translator, load(encoder), video_encoder=load(video_encoder), warn=warn)

    def config(self, direction: Direction | None) -> FusionConfig:
        """The stored settings of a direction (defaults when it has none, or without a translator)."""
        return self.configs.get(direction) or FusionConfig()

    # -- the front: queries of every kind --------------------------------------------

    def search(self, texts: Sequence[str] | None = None, audio: Sequence[str | Path] | None = None,
               video: Sequence[str | Path] | None = None, embeddings=None, k: int = 10, *,
               rerank: bool | None = None, **overrides) -> Results:
        """Search with texts, audio or video files, or embeddings (an array, a Queries, or a shard/.npy path).

        Give one kind of query per call. `overrides` replace fusion settings for this call
        (candidates, steps, samples, guidance, weights); `rerank` as in `search_queries`.
        """
        given = [name for name, v in (("texts", texts), ("audio", audio), ("video", video), ("embeddings", embeddings))
                 if v is not None and (len(v) if isinstance(v, (list, tuple)) else True)]
        if len(given) != 1:
            raise DiffgapError("give one kind of query per search: texts, audio files, video files or embeddings"
                               + (f" (got {' and '.join(given)})" if given else ""))
        if embeddings is not None:
            queries = embeddings if isinstance(embeddings, Queries) else (
                embedding_queries(embeddings) if isinstance(embeddings, (str, Path)) else Queries(embeddings))
        elif texts is not None:
            queries = text_queries(self._encoder(self.encoder, "texts"), [texts] if isinstance(texts, str) else texts)
        elif audio is not None:
            queries = audio_queries(self._encoder(self.encoder, "audio files"), [audio] if isinstance(audio, (str, Path)) else audio)
        else:
            queries = video_queries(self._encoder(self.video_encoder, "video files"), [video] if isinstance(video, (str, Path)) else video)
        return self.search_queries(queries, k, rerank=rerank, **overrides)

    def _encoder(self, encoder, what: str):
        if encoder is None:
            raise DiffgapError(f"{what} as queries need an encoder: Engine.open(..., encoder=SPEC) or `--encoder SPEC`; "
                               "or search with embeddings")
        return encoder

    # -- the chain ---------------------------------------------------------------------

    def search_queries(self, queries: Queries, k: int = 10, *, rerank: bool | None = None, **overrides) -> Results:
        """translate -> candidates -> signals -> fuse -> top-k.

        `rerank`: None computes the diffusion signal when its weight is above 0; True computes it
        always (reported even at weight 0); False never (its weight counts as 0).
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise DiffgapError(f"k must be a whole number >= 1, got {k!r}")
        route = plan_route(queries, self.index, self.translator)
        config = self.settings(route, **overrides)
        return self.run(queries, route, config, k, None if rerank is None else [n for n in SIGNALS if n != "diffusion" or rerank])

    def run(self, queries: Queries, route: Route, config: FusionConfig, k: int, signals: Sequence[str] | None = None) -> Results:
        """The chain for a known route and settings (what calibrate and benchmark call on their galleries)."""
        translated = self.translate(queries, route, config)
        candidates = self.candidates(queries, translated, route, max(k, config.candidates))
        scores = self.score(queries, translated, candidates, route, config, signals)
        mask = candidates >= 0
        fused = fuse(scores, effective_weights(config, scores), mask) if route.direction else np.where(mask, scores["raw"], -np.inf)
        return self.top_k(queries, candidates, fused, scores, route, k, translated)

    def settings(self, route: Route, **overrides) -> FusionConfig:
        """The direction's settings with this call's overrides (None = keep), checked."""
        from diffgap_search.signals import check_fusion

        config = self.config(route.direction)
        weights = overrides.pop("weights", None)
        config = replace(config, **{key: v for key, v in overrides.items() if v is not None})
        if weights is not None:
            config = config.with_weights(**weights)
        try:
            check_fusion(config, "search settings")
        except ValueError as exc:
            raise DiffgapError(str(exc)) from None
        self.check_direction(route)
        return config

    def check_direction(self, route: Route) -> None:
        """Warn once per direction when the translator says the direction it needs is under-trained."""
        if route.direction is None:
            return
        bidirectional = self.translator.config.bidirectional  # one-way: no reverse score is computed, nothing to warn of
        for d in [route.direction] + ([route.direction.reverse] if bidirectional else []):
            if d in self._warned:
                continue
            reason = self.translator.undertrained(d.value)
            if reason:
                self._warned.add(d)
                self.warn(f"the translator's {d.value} direction is under-trained ({reason}); results through it are "
                          "unreliable: retrain with the default --interval")

    def translate(self, queries: Queries, route: Route, config: FusionConfig) -> np.ndarray | None:
        if route.direction is None:
            return None
        import torch

        return self.translator.translate(queries.vectors, route.direction.value, steps=config.steps, samples=config.samples,
                                         guidance=config.guidance, generator=torch.Generator().manual_seed(config.seed))

    def candidates(self, queries: Queries, translated: np.ndarray | None, route: Route, n: int) -> np.ndarray:
        """Top-n of the translated query united with top-n of the raw query (one FAISS call): [Q, M]."""
        n = min(n, len(self.index))
        sets = ([] if translated is None else [translated]) + ([queries.vectors] if route.raw else [])
        found = self.index.search(np.concatenate(sets) if len(sets) > 1 else sets[0], n).positions
        return unite(*np.split(found, len(sets))) if len(sets) > 1 else found

    def score(self, queries: Queries, translated, candidates: np.ndarray, route: Route, config: FusionConfig,
              names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every wanted signal over every candidate: name -> [Q, M].

        `names` defaults to the available signals of weight above 0 (raw and translated always).
        Queries go in blocks so that the gathered candidate vectors [block, M, d] stay near
        SCORE_BLOCK_FLOATS floats however many queries arrive at once.
        """
        probe = Batch(queries.vectors[:0], None if translated is None else translated[:0], np.zeros((0, 0, self.index.dim), np.float32),
                      route.direction, route.raw, self.translator, config)
        if names is None:
            names = [n for n, s in SIGNALS.items() if s.available(probe) and (n != "diffusion" or config.weight(n) > 0)]
        names = [n for n in names if SIGNALS[n].available(probe)]
        out = {name: np.empty(candidates.shape, dtype=np.float32) for name in names}
        block = max(1, SCORE_BLOCK_FLOATS // max(1, candidates.shape[1] * self.index.dim))
        for lo in range(0, len(candidates), block):
            rows = slice(lo, lo + block)
            vectors = self.index.vectors(positions=np.maximum(candidates[rows], 0))  # padding reads row 0, masked later
            batch = Batch(queries.vectors[rows], None if translated is None else translated[rows], vectors,
                          route.direction, route.raw, self.translator, config)
            for name in names:
                out[name][rows] = SIGNALS[name].score(batch)
        return out

    def top_k(self, queries, candidates, fused, signals, route, k, translated=None) -> Results:
        order = np.argsort(-fused, axis=1, kind="stable")[:, :k]  # [Q, k]
        positions = np.take_along_axis(candidates, order, axis=1)
        found = np.take_along_axis(fused, order, axis=1) > -np.inf
        positions = np.where(found, positions, -1)
        ids = np.where(found, self.index.ids[np.maximum(positions, 0)], -1)
        picked = {name: np.take_along_axis(s, order, axis=1) for name, s in signals.items()}
        return Results(ids, np.take_along_axis(fused, order, axis=1), picked, positions, queries, self.index, route, translated)


def effective_weights(config: FusionConfig, signals: dict) -> dict[str, float]:
    """The weights of the signals present; translation alone if none of them has weight."""
    weights = {name: w for name, w in config.weights.items() if name in signals and w > 0}
    return weights or {"translated": 1.0}
