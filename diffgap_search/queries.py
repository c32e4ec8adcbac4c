"""Queries: vectors of one space with their labels, and the encoders' front end (texts, audio, video, files).

    text_queries(encoder, ["a dog barks"])     CLAP text tower
    audio_queries(encoder, ["clip.wav"])       48 kHz mono, 10 s windows, pooled per file
    video_queries(encoder, ["clip.mp4"])       CLIP frames, or precomputed features by file name
    embedding_queries("q.parquet")             a shard or .npy as it is (ids, space, a label per row)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from diffgap_search.errors import DiffgapError
from diffgap_search.storage import check_vectors


@dataclass
class Queries:
    """Query vectors of one space, with what to call each query in output."""

    vectors: np.ndarray  # float32 [Q, d], unit rows
    space: str | None = None
    modality: str | None = None  # text | audio | video | None (unknown)
    labels: list[str] = field(default_factory=list)  # the text, the file, or a caption from metadata
    ids: np.ndarray | None = None  # int64 [Q]; default 0..Q-1

    def __post_init__(self) -> None:
        x = np.asarray(self.vectors)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise DiffgapError(f"queries must be numbers, got an array of {x.dtype}")
        vectors = np.ascontiguousarray(np.atleast_2d(x.astype(np.float32)))
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise DiffgapError(f"queries must be a non-empty matrix [Q, d], got shape {vectors.shape}")
        self.vectors, _ = check_vectors(vectors, "queries", inplace=False)
        self.ids = np.arange(len(self.vectors), dtype=np.int64) if self.ids is None else np.asarray(self.ids, np.int64)
        if not self.labels:
            self.labels = [""] * len(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def text_queries(encoder, texts: Sequence[str]) -> Queries:
    """Encode texts with a CLAP text tower."""
    from diffgap_search.encoders import require

    require(encoder, "text", "use a CLAP encoder (hf:laion/clap-htsat-unfused) for text queries")
    texts = [_clean_text(t) for t in texts]
    return Queries(encoder.encode_text(texts), encoder.space, "text", texts)


def _clean_text(text) -> str:
    if not isinstance(text, str):
        raise DiffgapError(f"text query {text!r} is not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DiffgapError(f"text query {text[:40]!r} is not valid UTF-8 (a lone surrogate); give plain text") from None
    if not text.strip():
        raise DiffgapError("a text query is empty; give some words to search for")
    return text


def audio_queries(encoder, paths: Sequence[str | Path]) -> Queries:
    """Decode each file to 48 kHz mono, cut its 10 s windows, encode all windows in one batch, pool per file."""
    from diffgap_search.audio_io import clip_windows, decode_audio, pool_windows
    from diffgap_search.encoders import require

    require(encoder, "audio", "use a CLAP encoder for audio queries")
    if encoder.precomputed:  # features made elsewhere, found by file name
        return Queries(np.concatenate([encoder.lookup(Path(p)) for p in paths]), encoder.space, "audio", [str(p) for p in paths])
    windows = [clip_windows(decode_audio(p, encoder.sample_rate), encoder.sample_rate,
                            window_s=encoder.window_samples / encoder.sample_rate).audio for p in paths]
    embedded = encoder.encode_audio(np.concatenate(windows))  # [all windows, d]
    return Queries(pool_windows(embedded, [len(w) for w in windows]), encoder.space, "audio", [str(p) for p in paths])


def video_queries(encoder, paths: Sequence[str | Path]) -> Queries:
    """Frames through a CLIP video encoder, or features looked up by a precomputed encoder."""
    from diffgap_search.encoders import require
    from diffgap_search.video_io import decode_frames

    require(encoder, "video", "video queries need a video encoder: give --encoder hf:openai/clip-vit-base-patch32 or precomputed:FEATURES")
    if encoder.precomputed:
        vectors = np.concatenate([encoder.lookup(Path(p)) for p in paths])
    else:
        vectors = encoder.encode_video([decode_frames(p, encoder.num_frames).rgb for p in paths])
    return Queries(vectors, encoder.space, "video", [str(p) for p in paths])


def embedding_queries(path: str | Path) -> Queries:
    """Queries from a shard or .npy: ids, space and a label (caption, path or label column) per row."""
    from diffgap_search.storage import read_embeddings

    emb = read_embeddings(path)
    meta = emb.metadata.to_pylist() if emb.metadata.num_columns else [{}] * len(emb)
    labels = [next((str(m[c]) for c in ("caption", "path", "label") if m.get(c) is not None), "") for m in meta]
    return Queries(emb.vectors, emb.space, emb.modality, labels, emb.ids)
