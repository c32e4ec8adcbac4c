"""Per-space normalization: L2-normalize, subtract the space's training mean, divide
by its per-dimension standard deviation; the inverse multiplies, adds and
L2-normalizes again. Statistics come from the training pairs and are saved in the
checkpoint, so a translator always sees inputs distributed as in training.
"""

from __future__ import annotations

import torch

STD_FLOOR = 1e-6


class SpaceNorm(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "SpaceNorm":
        x = torch.nn.functional.normalize(x.double(), dim=-1)
        self.mean.copy_(x.mean(0).float())
        self.std.copy_(x.std(0).clamp_min(STD_FLOOR).float())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.normalize(x, dim=-1) - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(z * self.std + self.mean, dim=-1)
