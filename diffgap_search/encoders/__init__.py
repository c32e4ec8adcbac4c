"""Encoders: media and text into unit-norm embeddings of a named space.

Every encoder has
    space   a name for its embedding space (text and audio of one CLAP model share it)
    dim     the embedding dimension
and some of
    encode_audio(windows [n, samples] at 48 kHz) -> float32 [n, dim]   (one row per 10 s window)
    encode_text(list of str)                   -> float32 [n, dim]
    encode_video(list of frame stacks)         -> float32 [n, dim]
all batched, deterministic, and returning unit rows.

`load_encoder("hf:<model id or folder>")` (a CLAP model: audio and text; a CLIP model:
video), `load_encoder("laion-clap:HTSAT-tiny", checkpoint="630k-audioset-best.pt")` or
`load_encoder("precomputed:cavp.parquet")` builds one from its spec; see `SPECS`.
"""

from __future__ import annotations

from diffgap_search.errors import DiffgapError

SPECS = {
    "hf": "transformers CLAP for audio and text (hf:laion/clap-htsat-unfused) or CLIP for video frames "
          "(hf:openai/clip-vit-base-patch32), or hf:/path/to/folder",
    "laion-clap": "the laion_clap package with a checkpoint file: laion-clap:HTSAT-tiny, laion-clap:HTSAT-tiny+fusion "
                  "or laion-clap:HTSAT-base, with --checkpoint 630k-audioset-best.pt",
    "precomputed": "features computed elsewhere (e.g. CAVP), matched to media files by name: precomputed:feats.parquet "
                   "or precomputed:feats.npy with its keys in feats.csv",
}


def load_encoder(spec: str, *, device: str = "cpu", batch_size: int = 16, checkpoint=None, num_frames: int | None = None):
    """The encoder named by `spec`; `checkpoint` is the weights file of a laion-clap encoder,
    `num_frames` the frames per clip of a video encoder."""
    kind, _, name = spec.partition(":")
    if checkpoint is not None and kind != "laion-clap":
        raise DiffgapError(f"--checkpoint is for laion-clap encoders; {spec} loads its weights from "
                           + ("its file" if kind == "precomputed" else "the model folder or the Hugging Face cache"))
    if kind == "hf" and name:
        from diffgap_search.encoders.common import hf_model_type, load_failure, local_or_hub

        model_type = hf_model_type(name)
        if model_type is None:
            raise load_failure(name, local_or_hub(name)[1], FileNotFoundError("no config.json"), "model")
        if model_type not in ("clap", "clip", "clip_vision_model"):
            raise DiffgapError(f"hf:{name} is a {model_type!r} model; hf: encoders are CLAP (audio and text) or CLIP (video)")
        if model_type != "clap":
            from diffgap_search.encoders.hf_clip import HFClipVideoEncoder

            extra = {} if num_frames is None else {"num_frames": num_frames}
            return HFClipVideoEncoder(name, device=device, batch_size=batch_size, **extra)
        from diffgap_search.encoders.hf_clap import HFClapEncoder

        return HFClapEncoder(name, device=device, batch_size=batch_size)
    if kind == "precomputed" and name:
        from diffgap_search.encoders.precomputed import PrecomputedEncoder

        return PrecomputedEncoder(name)
    if kind == "laion-clap" and name:
        from diffgap_search.encoders.laion import LaionClapEncoder, parse_spec

        amodel, fusion = parse_spec(name)
        return LaionClapEncoder(amodel, fusion=fusion, checkpoint=checkpoint, device=device, batch_size=batch_size)
    raise DiffgapError(
        f"encoder {spec!r} is unknown; use one of: " + "; ".join(f"{k}: {v}" for k, v in SPECS.items())
    )
