"""The DiffGAP denoiser: a residual MLP over one embedding vector.

One network serves both directions of bidirectional split training:

    direction 0, "to-audio":   target = audio-space vector a, condition = query-side vector b
    direction 1, "from-audio": target = query-side vector b, condition = audio-space vector a

Each direction has its own input projection (target dim -> hidden), output
projection (hidden -> target dim) and condition projection (condition dim ->
embedding), so the two spaces may differ in dimension (CLIP video 768 <-> CLAP
audio 512). Everything between is shared: the timestep embedding, the residual
blocks, and a per-direction embedding added to the conditioning vector.

Conditioning is adaptive LayerNorm (FiLM, as in DiT's adaLN-Zero): each block
normalizes its input without affine parameters, then scales, shifts and gates it
with values computed from c = emb(t) + proj(condition) + emb(direction). The gates
and the output projection start at zero, so the untrained network predicts zero,
the mean of every prediction target in normalized space.

A learned null condition per direction (used where `keep` is False) gives the
unconditional prediction for classifier-free guidance. The network knows nothing
of betas: t is just an integer in [0, T).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

DIRECTIONS = ("to-audio", "from-audio")


@dataclass(frozen=True)
class NetworkConfig:
    dim_a: int = 512  # audio space (the index side)
    dim_b: int = 512  # query side (text or video)
    hidden: int = 176  # width of the residual stream
    emb: int = 144  # width of the conditioning vector c (176/144/3 blocks: 1.39 M parameters at 512/512)
    blocks: int = 3
    mlp_ratio: float = 2.0
    cond_input: bool = True  # also add a projection of the condition to the residual stream's input

    def to_dict(self) -> dict:
        return asdict(self)


def check_network(config: NetworkConfig) -> None:
    """Raise ValueError naming the first setting that is not a positive number of the right type."""
    for name in ("dim_a", "dim_b", "hidden", "emb", "blocks"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"network.{name} = {value!r} is not a positive integer")
    if not isinstance(config.cond_input, bool):
        raise ValueError(f"network.cond_input = {config.cond_input!r} is not true or false")
    if not isinstance(config.mlp_ratio, (int, float)) or isinstance(config.mlp_ratio, bool) or config.mlp_ratio <= 0:
        raise ValueError(f"network.mlp_ratio = {config.mlp_ratio!r} is not a positive number")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps [n] -> [n, dim] (as in DDPM/ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class Block(nn.Module):
    """x + gate(c) * MLP(LN(x) * (1 + scale(c)) + shift(c))."""

    def __init__(self, hidden: int, emb: int, mlp_ratio: float):
        super().__init__()
        inner = int(round(hidden * mlp_ratio))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.SiLU(), nn.Linear(inner, hidden))
        self.modulation = nn.Linear(emb, 3 * hidden)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """Predicts the configured target (epsilon, x0 or v) from (x_t, t, condition, direction)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        dims = {0: (config.dim_a, config.dim_b), 1: (config.dim_b, config.dim_a)}  # (target, condition)
        h, e = config.hidden, config.emb
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.direction_emb = nn.Embedding(2, e)
        self.null_condition = nn.Parameter(torch.zeros(2, e))
        self.cond_proj = nn.ModuleList([nn.Linear(dims[d][1], e) for d in (0, 1)])
        self.in_proj = nn.ModuleList([nn.Linear(dims[d][0], h) for d in (0, 1)])
        # a direct path from the condition into the residual stream: at high noise x_t carries
        # nothing and the output must come from the condition alone (measured: see
        # benchmarks/results/translator_study.md)
        self.cond_in = nn.ModuleList([nn.Linear(dims[d][1], h) for d in (0, 1)]) if config.cond_input else None
        self.blocks = nn.ModuleList([Block(h, e, config.mlp_ratio) for _ in range(config.blocks)])
        self.final_norm = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(e, 2 * h)
        self.out_proj = nn.ModuleList([nn.Linear(h, dims[d][0]) for d in (0, 1)])
        nn.init.normal_(self.null_condition, std=0.02)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        for proj in self.out_proj:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def target_dim(self, direction: int) -> int:
        return self.config.dim_a if direction == 0 else self.config.dim_b

    def condition_dim(self, direction: int) -> int:
        return self.config.dim_b if direction == 0 else self.config.dim_a

    def conditioning(self, t: torch.Tensor, cond: torch.Tensor | None, direction: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        """c for each row: emb(t) + proj(cond) (or the null condition where keep is False) + emb(direction).

        cond None means "all null" (the unconditional branch of guidance).
        """
        c = self.time_mlp(timestep_embedding(t, self.config.emb)) + self.direction_emb.weight[direction]
        null = self.null_condition[direction]
        if cond is None:
            return c + null
        projected = self.cond_proj[direction](cond)
        if keep is not None:
            projected = torch.where(keep[:, None], projected, null)
        return c + projected

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None,
        direction: int,
        keep: torch.Tensor | None = None,
        c: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t [n, target dim], t [n] int, cond [n, condition dim] or None -> prediction [n, target dim].

        `c` may be passed precomputed (see `conditioning`) when many x_t share it.
        """
        if direction not in (0, 1):
            raise ValueError(f"direction must be 0 (to-audio) or 1 (from-audio), got {direction}")
        if c is None:
            c = self.conditioning(t, cond, direction, keep)
        x = self.in_proj[direction](x_t)
        if self.cond_in is not None and cond is not None:
            direct = self.cond_in[direction](cond)
            if keep is not None:
                direct = direct * keep[:, None]
            x = x + direct
        c = torch.nn.functional.silu(c)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.out_proj[direction](self.final_norm(x) * (1 + scale) + shift)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
