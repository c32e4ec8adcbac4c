"""Encoders: media and text into unit-norm embeddings of a named space.

Every encoder has
    space   a name for its embedding space (text and audio of one CLAP model share it)
    dim     the embedding dimension
and some of
    encode_audio(windows [n, samples] at 48 kHz) -> float32 [n, dim]   (one row per 10 s window)
    encode_text(list of str)                   -> float32 [n, dim]
    encode_video(list of frame stacks)         -> float32 [n, dim]
all batched, deterministic, and returning unit rows.

`load_encoder("hf:<model id or folder>")` or
`load_encoder("laion-clap:HTSAT-tiny", checkpoint="630k-audioset-best.pt")` builds one
from its spec; see `SPECS`.
"""

from __future__ import annotations

from diffgap_search.errors import DiffgapError

SPECS = {
    "hf": "transformers CLAP (ClapModel/ClapProcessor): hf:laion/clap-htsat-unfused or hf:/path/to/folder",
    "laion-clap": "the laion_clap package with a checkpoint file: laion-clap:HTSAT-tiny, laion-clap:HTSAT-tiny+fusion "
                  "or laion-clap:HTSAT-base, with --checkpoint 630k-audioset-best.pt",
}


def load_encoder(spec: str, *, device: str = "cpu", batch_size: int = 16, checkpoint=None):
    """The encoder named by `spec`; `checkpoint` is the weights file of a laion-clap encoder."""
    kind, _, name = spec.partition(":")
    if kind == "hf" and name:
        if checkpoint is not None:
            raise DiffgapError(f"--checkpoint is for laion-clap encoders; {spec} loads its weights from the model "
                               "folder or the Hugging Face cache")
        from diffgap_search.encoders.hf_clap import HFClapEncoder

        return HFClapEncoder(name, device=device, batch_size=batch_size)
    if kind == "laion-clap" and name:
        from diffgap_search.encoders.laion import LaionClapEncoder, parse_spec

        amodel, fusion = parse_spec(name)
        return LaionClapEncoder(amodel, fusion=fusion, checkpoint=checkpoint, device=device, batch_size=batch_size)
    raise DiffgapError(
        f"encoder {spec!r} is unknown; use one of: " + "; ".join(f"{k}: {v}" for k, v in SPECS.items())
    )
