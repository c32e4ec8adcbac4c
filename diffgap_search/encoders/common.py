"""Helpers shared by the transformers-based encoders."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from diffgap_search.errors import DiffgapError


def unit(x: torch.Tensor) -> np.ndarray:
    """Rows L2-normalized, as float32 numpy on the CPU."""
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


def features(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output object (5)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "text_embeds", "audio_embeds", "image_embeds"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise DiffgapError(f"unexpected model output {type(output).__name__}")


def local_or_hub(name: str) -> tuple[str, Path | None]:
    """(what from_pretrained gets, the local folder or None for a hub id)."""
    local = Path(name).expanduser()
    return (str(local), local) if local.exists() else (name, None)


def model_identity(name: str, folder: Path | None) -> str:
    """The model's name for a space: the hub id, or a folder's name plus a hash of its weights
    (two different fine-tunes in folders of the same name are different spaces)."""
    if folder is None:
        return name
    digest = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f.read_bytes())
    return f"{folder.name}@{digest.hexdigest()[:12]}"


def load_failure(name: str, folder: Path | None, exc: Exception, what: str) -> DiffgapError:
    where = f"folder {folder}" if folder is not None else f"the Hugging Face cache (HF_HOME) under models--{name.replace('/', '--')}"
    fix = (f"check that {folder} holds the model's config.json and weights" if folder is not None
           else f"download it once where there is network (hf download {name}) or pass hf:/path/to/folder")
    return DiffgapError(f"cannot load {what} {name!r} from {where} ({str(exc).splitlines()[0][:160]}); {fix}")


def hf_model_type(name: str) -> str | None:
    """model_type of a transformers config in a folder or the local cache, None when there is none."""
    from transformers import AutoConfig

    source, _ = local_or_hub(name)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True).model_type
    except (OSError, ValueError, KeyError):
        return None


@contextmanager
def quiet_transformers():
    """transformers' load reports at error level only while a model loads (a CLIPModel
    checkpoint read as a vision tower lists every text weight as "unexpected")."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def check_texts(texts) -> None:
    """Texts a text tower can encode: a non-empty list of non-blank strings."""
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DiffgapError("texts to encode must be non-empty strings")
