"""Which torch device a run uses: `auto`, `cpu` or `cuda`, as `--device` names them."""

from __future__ import annotations

from diffgap_search.errors import DiffgapError

DEVICES = ("auto", "cpu", "cuda")


def torch_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is refused."""
    import torch

    device = getattr(device, "value", device)  # an Enum of the CLI
    if device not in DEVICES:
        raise DiffgapError(f"device {device!r} is unknown; use one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DiffgapError("--device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    return device
