"""Video through a CLIP vision model from transformers: hf:openai/clip-vit-base-patch32
or hf:/path/to/folder (a CLIPModel or CLIPVisionModelWithProjection checkpoint).

A clip is F frames sampled uniformly (`video_io.decode_frames`, 8 by default). The frames
are prepared as CLIP's image processor does — shortest edge resized to the model's size
(bicubic, antialiased), centre crop, scaled to [0, 1], normalized by the processor's mean
and std — with torchvision transforms on uint8 tensors, so a batch of frames is prepared
in one call, on the model's device. Each frame is embedded (image_embeds, the projected
CLS token) and L2-normalized; the clip's embedding is the mean of its frames, L2-normalized
(every frame counts once, as in CLIP4Clip's mean pooling).
"""

from __future__ import annotations

import numpy as np
import torch

from diffgap_search.encoders.common import load_failure, local_or_hub, model_identity, quiet_transformers, unit
from diffgap_search.errors import DiffgapError
from diffgap_search.video_io import NUM_FRAMES

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _entry(value, key: str, default: int) -> int:
    """One size of an image processor: an int, a dict (transformers 4) or a SizeDict (5)."""
    if isinstance(value, (int, float)):
        return int(value)
    try:
        found = value[key]
    except (KeyError, TypeError):
        found = getattr(value, key, None)
    return default if found is None else int(found)


class HFClipVideoEncoder:
    modalities = frozenset({"video"})
    precomputed = False

    def __init__(self, name: str, *, device: str = "cpu", batch_size: int = 16, num_frames: int = NUM_FRAMES):
        from transformers import CLIPVisionModelWithProjection

        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size  # frames per forward pass
        self.num_frames = num_frames
        source, local = local_or_hub(name)
        try:
            with quiet_transformers():
                self.model = CLIPVisionModelWithProjection.from_pretrained(source, local_files_only=True).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise load_failure(name, local, exc, "CLIP model") from None
        size, crop, mean, std = self._preprocessing(source)
        self.resize_to, self.crop_to = size, crop
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.dim = int(self.model.config.projection_dim)
        self.space = f"clip:{model_identity(name, local)}"

    def _preprocessing(self, source: str) -> tuple[int, int, tuple, tuple]:
        """(resize shortest edge, crop size, mean, std) from the model's image processor config,
        or CLIP's own values at the model's image size when the folder has none."""
        from transformers import CLIPImageProcessor

        image_size = int(self.model.config.image_size)
        try:
            proc = CLIPImageProcessor.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            return image_size, image_size, OPENAI_MEAN, OPENAI_STD
        size = _entry(proc.size, "shortest_edge", image_size)
        crop = _entry(proc.crop_size, "height", image_size)
        return size, crop, tuple(proc.image_mean), tuple(proc.image_std)

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [n, H, W, 3] -> float [n, 3, crop, crop] normalized pixel values."""
        from torchvision.transforms.v2 import functional as F

        x = frames.permute(0, 3, 1, 2).to(self.device)
        x = F.resize(x, [self.resize_to], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
        x = F.center_crop(x, [self.crop_to, self.crop_to])
        x = x.float().div_(255.0)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W, 3] RGB frames -> unit [n, dim], one row per frame."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise DiffgapError(f"frames must be uint8 [n, height, width, 3] RGB, got {frames.dtype} {frames.shape}")
        out = []
        for lo in range(0, len(frames), self.batch_size):
            pixels = self.prepare(torch.from_numpy(np.ascontiguousarray(frames[lo : lo + self.batch_size])))
            out.append(self.model(pixel_values=pixels).image_embeds.float())
        return unit(torch.cat(out))

    def encode_video(self, clips: list[np.ndarray]) -> np.ndarray:
        """A list of uint8 [F_i, H_i, W_i, 3] frame stacks (one per clip) -> unit [len(clips), dim]:
        the mean of each clip's unit frame embeddings, L2-normalized."""
        if not clips:
            raise DiffgapError("no clips to encode")
        out = []
        for clip in clips:  # clips may differ in frame size; frames of one clip go through together
            per_frame = self.encode_frames(clip)
            out.append(per_frame.mean(axis=0, dtype=np.float64))
        return unit(torch.from_numpy(np.stack(out)))
