"""What every encoder is (`Encoder`), and `require`: the one check that an encoder embeds a modality.

An encoder declares what it embeds in `modalities` (a frozenset of MODALITIES) and has the
method of each: `encode_audio` for "audio", `encode_text` for "text", `encode_video` for
"video" (the typed protocols below). A precomputed encoder computes nothing: it looks the
features of a media file up by name (`lookup`), and its `modalities` say what they are of.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from diffgap_search.errors import DiffgapError

MODALITIES = ("audio", "text", "video")

# the fix `require` names when its caller gives none
DEFAULT_FIX = {
    "audio": "use a CLAP encoder (hf:laion/clap-htsat-unfused, or laion-clap:HTSAT-tiny with --checkpoint)",
    "text": "use a CLAP encoder (hf:laion/clap-htsat-unfused, or laion-clap:HTSAT-tiny with --checkpoint)",
    "video": "use a CLIP encoder (hf:openai/clip-vit-base-patch32) or precomputed:FEATURES (e.g. CAVP)",
}


@runtime_checkable
class Encoder(Protocol):
    space: str  # the name of its embedding space (text and audio of one CLAP model share it)
    dim: int
    modalities: frozenset[str]  # of MODALITIES: what it embeds
    precomputed: bool  # True: features of media files looked up by name (`lookup`), not computed


class AudioEncoder(Encoder, Protocol):
    sample_rate: int  # 48000 for CLAP
    window_samples: int  # samples per window (10 s)

    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        """float32 [n, window_samples] at sample_rate -> unit float32 [n, dim]."""


class TextEncoder(Encoder, Protocol):
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """n non-empty strings -> unit float32 [n, dim]."""


class VideoEncoder(Encoder, Protocol):
    num_frames: int  # frames sampled uniformly per clip

    def encode_video(self, clips: list[np.ndarray]) -> np.ndarray:
        """n uint8 frame stacks [F, H, W, 3] -> unit float32 [n, dim]."""


class PrecomputedFeatures(Encoder, Protocol):
    def lookup(self, media: str | Path) -> np.ndarray:
        """The unit feature row [1, dim] of a media file, or DiffgapError when it has none."""


def describe(encoder: Encoder) -> str:
    """What an encoder embeds, in words: 'audio and text', 'video (precomputed, by file name)'."""
    what = " and ".join(m for m in MODALITIES if m in encoder.modalities) or "nothing"
    return f"{what} (precomputed, by file name)" if encoder.precomputed else what


def require(encoder: Encoder, modality: str, hint: str = "") -> None:
    """Raise DiffgapError (one line: the encoder's space, what it embeds, the fix) unless `encoder`
    embeds `modality`; `hint` is the fix, else DEFAULT_FIX[modality]."""
    assert modality in MODALITIES, modality
    if not isinstance(encoder, Encoder):
        raise TypeError(f"{type(encoder).__name__} is not an Encoder: it needs space, dim, modalities and precomputed "
                        "(see diffgap_search.encoders.base)")
    if modality not in encoder.modalities:
        raise DiffgapError(f"encoder {encoder.space!r} does not embed {modality}; it embeds {describe(encoder)}: "
                           f"{hint or DEFAULT_FIX[modality]}")
