"""hf:NAME — a transformers model by hub id (from the local cache) or folder: a CLAP model
(audio and text, hf_clap.py) or a CLIP model (video frames, hf_clip.py), told apart by the
model_type of its config."""

from __future__ import annotations

from diffgap_search.encoders.common import hf_model_type, load_failure, local_or_hub
from diffgap_search.errors import DiffgapError


def from_spec(name: str, options):
    """The encoder of hf:`name` (`options`: an encoders.EncoderOptions)."""
    model_type = hf_model_type(name)
    if model_type is None:
        raise load_failure(name, local_or_hub(name)[1], FileNotFoundError("no config.json"), "model")
    if model_type not in ("clap", "clip", "clip_vision_model"):
        raise DiffgapError(f"hf:{name} is a {model_type!r} model; hf: encoders are CLAP (audio and text) or CLIP (video)")
    if model_type == "clap":
        from diffgap_search.encoders.hf_clap import HFClapEncoder

        return HFClapEncoder(name, device=options.device, batch_size=options.batch_size)
    from diffgap_search.encoders.hf_clip import HFClipVideoEncoder

    extra = {} if options.num_frames is None else {"num_frames": options.num_frames}
    return HFClipVideoEncoder(name, device=options.device, batch_size=options.batch_size, **extra)
