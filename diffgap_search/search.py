"""Searcher: the query chain of DESIGN.md, every stage batched over all queries.

    encode -> translate (S DDIM steps, K samples) -> FAISS top-N of the translated query
           (united with top-N of the raw query when it lives in the index's space)
           -> rerank (raw / translated / diffusion signals, z-scored per query, fused) -> top-k + metadata

The direction comes from the spaces: queries on the translator's query side (text,
video) over an index of its audio space go "to-audio"; audio queries over an index of
captions or videos (the translator's query side) go "from-audio", and the candidates are
scored by the other direction. Without a translator the Searcher is plain cosine search
over an index of the queries' own space.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffgap_search.diffusion.network import DIRECTIONS
from diffgap_search.errors import DiffgapError
from diffgap_search.index import EmbeddingIndex
from diffgap_search.rerank import FusionConfig, diffusion_scores, fuse

SCORE_BLOCK_FLOATS = 1 << 24  # candidate-vector floats gathered at once while scoring (64 MB)


# ---------------------------------------------------------------------------
# queries
# ---------------------------------------------------------------------------


@dataclass
class Queries:
    """Query vectors of one space, with what to call each query in output."""

    vectors: np.ndarray  # float32 [Q, d], unit rows
    space: str | None = None
    modality: str | None = None  # text | audio | video | None (unknown)
    labels: list[str] = field(default_factory=list)  # the text, the file, or a caption from metadata
    ids: np.ndarray | None = None  # int64 [Q]; default 0..Q-1

    def __post_init__(self) -> None:
        from diffgap_search.storage import check_vectors

        vectors = np.ascontiguousarray(np.atleast_2d(np.asarray(self.vectors, dtype=np.float32)))
        self.vectors, _ = check_vectors(vectors, "queries", inplace=False)
        if self.ids is None:
            self.ids = np.arange(len(self.vectors), dtype=np.int64)
        if not self.labels:
            self.labels = [""] * len(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def text_queries(encoder, texts: Sequence[str]) -> Queries:
    """Encode texts with a CLAP text tower."""
    if not hasattr(encoder, "encode_text"):
        raise DiffgapError(f"encoder {encoder.space!r} does not embed text; use a CLAP encoder (hf:laion/clap-htsat-unfused) for text queries")
    texts = list(texts)
    return Queries(encoder.encode_text(texts), encoder.space, "text", texts)


def audio_queries(encoder, paths: Sequence[str | Path]) -> Queries:
    """Decode each file to 48 kHz mono, cut its 10 s windows, encode all windows in one batch, pool per file."""
    from diffgap_search.audio_io import clip_windows, decode_audio, pool_windows

    if not hasattr(encoder, "encode_audio"):
        raise DiffgapError(f"encoder {encoder.space!r} does not embed audio; use a CLAP encoder for --audio queries")
    windows = [clip_windows(decode_audio(p, encoder.sample_rate), encoder.sample_rate,
                            window_s=encoder.window_samples / encoder.sample_rate).audio for p in paths]
    embedded = encoder.encode_audio(np.concatenate(windows))  # [all windows, d]
    return Queries(pool_windows(embedded, [len(w) for w in windows]), encoder.space, "audio", [str(p) for p in paths])


def video_queries(encoder, paths: Sequence[str | Path]) -> Queries:
    """Frames through a CLIP video encoder, or features looked up by a precomputed encoder."""
    from diffgap_search.video_io import decode_frames

    if hasattr(encoder, "lookup"):
        vectors = np.concatenate([encoder.lookup(Path(p)) for p in paths])
    elif hasattr(encoder, "encode_video"):
        vectors = encoder.encode_video([decode_frames(p, encoder.num_frames).rgb for p in paths])
    else:
        raise DiffgapError(f"encoder {encoder.space!r} does not embed video; give --video-encoder "
                           "hf:openai/clip-vit-base-patch32 or precomputed:FEATURES")
    return Queries(vectors, encoder.space, "video", [str(p) for p in paths])


# ---------------------------------------------------------------------------
# routing: which direction, and whether the raw query can search the index
# ---------------------------------------------------------------------------


def _fits(name: str | None, modality: str | None, dim: int, side) -> bool:
    """Do vectors (name, modality, dim) belong to a translator side? Unknown names/modalities do not refuse."""
    return (dim == side.dim and (name is None or side.name is None or name == side.name)
            and (modality is None or side.modality is None or modality == side.modality))


def _describe(name, modality, dim) -> str:
    return f"space {name!r} ({modality or 'modality unknown'}, dim {dim})"


@dataclass(frozen=True)
class Route:
    direction: int | None  # 0 to-audio, 1 from-audio, None: no translation
    raw: bool  # the raw query searches the index too (query and index share a space)


def plan_route(queries: Queries, index: EmbeddingIndex, translator=None) -> Route:
    """Choose the translation direction from the spaces, or fail naming both sides and the fix."""
    q = (queries.space, queries.modality, queries.dim)
    ix = (index.space, index.manifest.get("modality"), index.dim)
    same_space = q[2] == ix[2] and (q[0] == ix[0] if q[0] and ix[0] else True)
    if translator is None:
        index.check_queries(queries.vectors, space=queries.space)  # plain search: the index's own space and dim
        return Route(None, True)
    a, b = translator.config.space_a, translator.config.space_b
    for d, (source, target) in enumerate(((b, a), (a, b))):
        if _fits(*q, source) and _fits(*ix, target):
            return Route(d, same_space)
    if _fits(*q, b) or _fits(*q, a):
        side = a if _fits(*q, b) else b
        raise DiffgapError(f"the index {index.root} is in {_describe(*ix)}, the translator's other side is "
                           f"{_describe(side.name, side.modality, side.dim)}; build the index with that encoder "
                           "or use a translator trained on the index's space")
    raise DiffgapError(f"queries are in {_describe(*q)}, the translator's sides are {_describe(b.name, b.modality, b.dim)} "
                       f"and {_describe(a.name, a.modality, a.dim)}; encode the queries with the encoder the translator was trained on")


# ---------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------


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
class Ranking:
    """Top-k of each query: fused score, every signal's score, ids, positions and metadata."""

    positions: np.ndarray  # int64 [Q, k], -1 where no hit
    ids: np.ndarray  # int64 [Q, k], -1 where no hit
    scores: np.ndarray  # float [Q, k]: fused score (the raw cosine when there is no translator)
    signals: dict[str, np.ndarray]  # name -> float [Q, k] (cosines; diffusion = -mean error)
    queries: Queries
    index: EmbeddingIndex
    route: Route

    def rows(self, q: int) -> list[dict]:
        keep = self.positions[q] >= 0
        meta = self.index.metadata(self.positions[q][keep])
        signals = {name: s[q][keep] for name, s in self.signals.items()}
        return [{"rank": r, "score": float(self.scores[q][keep][r]), "id": int(self.ids[q][keep][r]),
                 **{name: float(s[r]) for name, s in signals.items()}, **m} for r, m in enumerate(meta)]


# ---------------------------------------------------------------------------
# the searcher
# ---------------------------------------------------------------------------


class Searcher:
    """An index, optionally a translator (and an encoder for media and text queries), and fusion settings.

    `config` defaults to the calibration stored in the translator, else `FusionConfig()`.
    """

    def __init__(self, index: EmbeddingIndex, translator=None, encoder=None, config: FusionConfig | None = None,
                 video_encoder=None):
        self.index = index
        self.translator = translator
        self.encoder = encoder
        self.video_encoder = video_encoder or encoder
        self.config = config or stored_config(translator) or FusionConfig()

    def query(self, texts: Sequence[str] = (), audio: Sequence[str | Path] = (), video: Sequence[str | Path] = (),
              *, k: int = 10, rerank: bool | None = None) -> list[Ranking]:
        """Encode texts and media files (one batch per kind), then search each batch."""
        if self.encoder is None and self.video_encoder is None:
            raise DiffgapError("text and media queries need an encoder; pass --encoder (or query with embeddings)")
        batches = [text_queries(self.encoder, texts)] if texts else []
        batches += [audio_queries(self.encoder, audio)] if audio else []
        batches += [video_queries(self.video_encoder, video)] if video else []
        if not batches:
            raise DiffgapError("no queries: give texts, --audio or --video files, or --queries-file")
        first = 0
        for batch in batches:  # number the queries of all batches 0, 1, 2, ... in the order given
            batch.ids = np.arange(first, first + len(batch), dtype=np.int64)
            first += len(batch)
        return [self.search(batch, k, rerank=rerank) for batch in batches]

    def search(self, queries: Queries, k: int = 10, *, rerank: bool | None = None) -> Ranking:
        """The chain: translate -> candidates -> score -> fuse -> top-k.

        `rerank`: None computes the diffusion signal when its weight is above 0; True computes it
        always (reported even at weight 0); False never (its weight counts as 0).
        """
        if k < 1:
            raise DiffgapError(f"k must be at least 1, got {k}")
        route = plan_route(queries, self.index, self.translator)
        translated = self.translate(queries, route)  # [Q, d_index] or None
        candidates = self.candidates(queries, translated, route, max(k, self.config.candidates))  # [Q, M]
        signals = self.score(queries, translated, candidates, route, rerank)  # name -> [Q, M]
        mask = candidates >= 0
        weights = self.effective_weights(signals)
        fused = fuse(signals, weights, mask) if route.direction is not None else np.where(mask, signals["raw"], -np.inf)
        return self.top_k(queries, candidates, fused, signals, route, k)

    # -- stages -------------------------------------------------------------------------

    def translate(self, queries: Queries, route: Route) -> np.ndarray | None:
        if route.direction is None:
            return None
        c = self.config
        return self.translator.translate(queries.vectors, route.direction, steps=c.steps, samples=c.samples,
                                         guidance=c.guidance, generator=torch.Generator().manual_seed(c.seed))

    def candidates(self, queries: Queries, translated, route: Route, n: int) -> np.ndarray:
        """Top-n of the translated query, united with top-n of the raw query when it shares the index's space."""
        n = min(n, len(self.index))
        sets = [] if translated is None else [self.index.search(translated, n).positions]
        if route.raw:
            sets.append(self.index.search(queries.vectors, n).positions)
        return unite(*sets)

    def score(self, queries: Queries, translated, candidates: np.ndarray, route: Route, rerank: bool | None) -> dict[str, np.ndarray]:
        """Every signal over every candidate: cosines, and the diffusion score when reranking.

        Queries go in blocks so that the gathered candidate vectors [block, M, d] stay near
        SCORE_BLOCK_FLOATS floats however many queries arrive at once.
        """
        wanted = self.config.diffusion > 0 if rerank is None else rerank
        diffusion = translated is not None and wanted and self.translator.config.bidirectional
        names = (["raw"] if route.raw else []) + (["translated"] if translated is not None else []) + (["diffusion"] if diffusion else [])
        signals = {name: np.empty(candidates.shape, dtype=np.float32) for name in names}
        block = max(1, SCORE_BLOCK_FLOATS // max(1, candidates.shape[1] * self.index.dim))
        for lo in range(0, len(candidates), block):
            rows = slice(lo, lo + block)
            vectors = self.index.vectors(positions=np.maximum(candidates[rows], 0))  # [b, M, d]; padding reads row 0, masked later
            if route.raw:
                signals["raw"][rows] = np.einsum("qd,qmd->qm", queries.vectors[rows], vectors)
            if translated is not None:
                signals["translated"][rows] = np.einsum("qd,qmd->qm", translated[rows], vectors)
            if diffusion:
                reverse = DIRECTIONS[1 - route.direction]  # query <- candidate
                signals["diffusion"][rows] = diffusion_scores(self.translator, queries.vectors[rows], vectors, self.config, reverse)
        return signals

    def effective_weights(self, signals: dict) -> dict[str, float]:
        """The configured weights of the signals present; translation alone if none of them has weight."""
        weights = {name: w for name, w in self.config.weights().items() if name in signals and w > 0}
        return weights or {"translated": 1.0}

    def top_k(self, queries, candidates, fused, signals, route, k) -> Ranking:
        order = np.argsort(-fused, axis=1, kind="stable")[:, :k]  # [Q, k]
        positions = np.take_along_axis(candidates, order, axis=1)
        found = np.take_along_axis(fused, order, axis=1) > -np.inf
        positions = np.where(found, positions, -1)
        ids = np.where(found, self.index.ids[np.maximum(positions, 0)], -1)
        picked = {name: np.take_along_axis(s, order, axis=1) for name, s in signals.items()}
        return Ranking(positions, ids, np.take_along_axis(fused, order, axis=1), picked, queries, self.index, route)


def stored_config(translator) -> FusionConfig | None:
    """The fusion settings calibration stored in the translator's config.json, if any."""
    fusion = getattr(getattr(translator, "config", None), "fusion", None)
    if not fusion:
        return None
    return FusionConfig.from_dict(fusion["settings"], "translator config.json fusion.settings")


def with_overrides(config: FusionConfig, **overrides) -> FusionConfig:
    """`config` with the given settings replaced (None = keep)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
