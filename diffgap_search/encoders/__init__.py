"""Encoders: media and text into unit-norm embeddings of a named space.

Every encoder is an `Encoder` (base.py): `space`, `dim`, `modalities` (what it embeds, of
audio / text / video) and `precomputed`, and has the method of each modality it embeds:
    encode_audio(windows [n, samples] at 48 kHz) -> float32 [n, dim]   (one row per 10 s window)
    encode_text(list of str)                   -> float32 [n, dim]
    encode_video(list of frame stacks)         -> float32 [n, dim]
all batched, deterministic, and returning unit rows; a precomputed encoder has `lookup(media file)`.
`require(encoder, "text")` is the one check that an encoder embeds a modality.

`load_encoder(spec)` builds one from its spec, `<prefix>:<name>`: the prefix picks an entry of
`ENCODERS` (hf:, laion-clap:, precomputed:). A new kind of encoder is one module with a
`from_spec(name, options)` function and one `register` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from diffgap_search.encoders.base import MODALITIES, Encoder, describe, require
from diffgap_search.errors import DiffgapError


@dataclass(frozen=True)
class EncoderOptions:
    """What `load_encoder` passes to every factory besides the name."""

    device: str = "cpu"
    batch_size: int = 16
    checkpoint: str | Path | None = None  # the weights file, for kinds that take one
    num_frames: int | None = None  # frames per clip of a video encoder (None: its default)


@dataclass(frozen=True)
class EncoderKind:
    prefix: str  # the spec's part before ':'
    factory: str  # "module:function" with function(name, EncoderOptions) -> Encoder, imported on first use
    help: str  # what it is, with an example spec
    takes_checkpoint: bool = False  # whether --checkpoint is its weights file

    def load(self, name: str, options: EncoderOptions) -> Encoder:
        module, _, function = self.factory.partition(":")
        make: Callable[[str, EncoderOptions], Encoder] = getattr(importlib.import_module(module), function)
        return make(name, options)


ENCODERS: dict[str, EncoderKind] = {}


def register(prefix: str, factory: str, help: str, *, takes_checkpoint: bool = False) -> None:
    """Make `load_encoder("<prefix>:<name>")` call `factory` ("module:function"), imported lazily."""
    if prefix in ENCODERS:
        raise ValueError(f"encoder prefix {prefix!r} is registered already ({ENCODERS[prefix].factory})")
    ENCODERS[prefix] = EncoderKind(prefix, factory, help, takes_checkpoint)


register("hf", "diffgap_search.encoders.hf:from_spec",
         "transformers CLAP for audio and text (hf:laion/clap-htsat-unfused) or CLIP for video frames "
         "(hf:openai/clip-vit-base-patch32), or hf:/path/to/folder")
register("laion-clap", "diffgap_search.encoders.laion:from_spec",
         "the laion_clap package with a checkpoint file: laion-clap:HTSAT-tiny, laion-clap:HTSAT-tiny+fusion "
         "or laion-clap:HTSAT-base, with --checkpoint 630k-audioset-best.pt", takes_checkpoint=True)
register("precomputed", "diffgap_search.encoders.precomputed:from_spec",
         "features computed elsewhere (e.g. CAVP), matched to media files by name: precomputed:feats.parquet "
         "or precomputed:feats.npy with its keys in feats.csv")


def known_specs() -> str:
    return "; ".join(f"{kind.prefix}: {kind.help}" for kind in ENCODERS.values())


def load_encoder(spec: str, *, device: str = "cpu", batch_size: int = 16, checkpoint=None,
                 num_frames: int | None = None) -> Encoder:
    """The encoder named by `spec`; `checkpoint` is the weights file of a laion-clap encoder,
    `num_frames` the frames per clip of a video encoder."""
    prefix, _, name = spec.partition(":")
    kind = ENCODERS.get(prefix)
    if kind is None or not name:
        raise DiffgapError(f"encoder {spec!r} is unknown; use one of: {known_specs()}")
    if checkpoint is not None and not kind.takes_checkpoint:
        takers = ", ".join(f"{k.prefix}:" for k in ENCODERS.values() if k.takes_checkpoint)
        raise DiffgapError(f"--checkpoint is for {takers} encoders; {spec} takes no weights file: drop --checkpoint")
    return kind.load(name, EncoderOptions(device, batch_size, checkpoint, num_frames))


__all__ = ["ENCODERS", "MODALITIES", "Encoder", "EncoderKind", "EncoderOptions", "describe", "known_specs",
           "load_encoder", "register", "require"]
