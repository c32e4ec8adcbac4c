"""Noise schedules and samplers, from diffusers.

Training noises with `DDPMScheduler` (T = 1000 steps); translation samples with
`DDIMScheduler` over S of those steps, "trailing" spacing (the first step starts at
t = T-1, which matters when S is small) and eta configurable. Sample clipping is
off: normalized embeddings have unit variance per dimension, not values in [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class ScheduleConfig:
    train_timesteps: int = 1000
    beta_schedule: str = "linear"  # any diffusers beta_schedule: linear, scaled_linear, squaredcos_cap_v2
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "sample"  # chosen by measurement, see benchmarks/results/translation_quality.md

    def to_dict(self) -> dict:
        return asdict(self)


MAX_TRAIN_TIMESTEPS = 100_000  # a bound checked before the schedule's arrays are allocated (1,000 is usual)


def check_schedule(config: ScheduleConfig) -> None:
    """Raise ValueError naming the first unusable setting."""
    t = config.train_timesteps
    if not isinstance(t, int) or isinstance(t, bool) or not 2 <= t <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"schedule.train_timesteps = {t!r} is not an integer in 2..{MAX_TRAIN_TIMESTEPS}")
    if config.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"schedule.beta_schedule = {config.beta_schedule!r}; use one of {', '.join(BETA_SCHEDULES)}")
    if config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"schedule.prediction_type = {config.prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
    for name in ("beta_start", "beta_end"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
            raise ValueError(f"schedule.{name} = {value!r} is not a number in (0, 1)")


def training_scheduler(config: ScheduleConfig) -> DDPMScheduler:
    return DDPMScheduler(**_schedule_kwargs(config))


def _schedule_kwargs(config: ScheduleConfig) -> dict:
    """The noise schedule in diffusers' words, shared by the training and the sampling scheduler."""
    return dict(num_train_timesteps=config.train_timesteps, beta_schedule=config.beta_schedule, beta_start=config.beta_start,
                beta_end=config.beta_end, prediction_type=config.prediction_type, clip_sample=False)


def sampling_scheduler(config: ScheduleConfig, steps: int) -> DDIMScheduler:
    """A DDIM scheduler with its S timesteps set (descending, first = T-1)."""
    scheduler = DDIMScheduler(
        **_schedule_kwargs(config),
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(steps)
    return scheduler


def prediction_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output for x_t = add_noise(x0, noise, t)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)
