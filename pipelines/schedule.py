"""The LCM timestep schedule and its per-step coefficients, computed once per (steps, strength) change."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import LCMScheduler

from .params import lowest_strength
from .presets import ScheduleKind


@dataclass(frozen=True)
class LcmStep:
    """Everything `LCMScheduler.step` derives from the timestep, as 0-d float32 tensors on the device."""

    timestep: torch.Tensor  # 0-d long, passed to the UNet as is
    sqrt_alpha: torch.Tensor
    sqrt_beta: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor
    sqrt_alpha_prev: torch.Tensor
    sqrt_beta_prev: torch.Tensor
    is_last: bool


@dataclass(frozen=True)
class Schedule:
    """The steps one frame runs, plus the add-noise coefficients of the first timestep."""

    steps: tuple[LcmStep, ...]
    # In the model dtype, as `LCMScheduler.add_noise` casts alphas to the sample dtype first.
    noise_sqrt_alpha: torch.Tensor
    noise_sqrt_beta: torch.Tensor


def build_schedule(
    shared: LCMScheduler,
    kind: ScheduleKind,
    steps: int,
    strength: float | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Schedule:
    """The schedule diffusers' pipeline of `kind` would run; ValueError when it would run no step.

    `strength=None` means text-to-image: every step of the full schedule, from pure noise.
    """
    scheduler = LCMScheduler.from_config(shared.config)  # set_timesteps mutates; keep the shared one clean
    assert isinstance(scheduler, LCMScheduler)  # a tuple only with return_unused_kwargs=True
    origin_steps = scheduler.config["original_inference_steps"]
    if strength is None:
        scheduler.set_timesteps(steps)
        first = 0
    elif kind is ScheduleKind.LCM_IMG2IMG:
        usable = int(origin_steps * strength)
        if steps > usable:
            raise ValueError(
                f"strength {strength} leaves {usable} LCM timestep(s), fewer than steps={steps}: "
                f"raise strength to at least {lowest_strength(kind, steps, origin_steps):g} or lower steps"
            )
        scheduler.set_timesteps(steps, strength=strength)
        first = 0
    else:
        effective = min(int(steps * strength), steps)
        if effective < 1:
            raise ValueError(
                f"steps={steps} at strength {strength} runs no denoising step (int(steps x strength) = 0): "
                f"raise strength to at least {lowest_strength(kind, steps, origin_steps):g} or raise steps"
            )
        scheduler.set_timesteps(steps)
        first = steps - effective
    full = scheduler.timesteps
    assert scheduler.num_inference_steps is not None  # set by set_timesteps
    last = scheduler.num_inference_steps - 1
    alphas = scheduler.alphas_cumprod
    lcm_steps = []
    for index in range(first, len(full)):
        timestep = full[index]
        prev = full[index + 1] if index + 1 < len(full) else timestep
        alpha = alphas[timestep]
        alpha_prev = alphas[prev] if prev >= 0 else scheduler.final_alpha_cumprod
        # The same tensor expressions as LCMScheduler.step, so float32 results match it bit for bit.
        # A tensor, as LCMScheduler.step passes it (the method's annotation says int).
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(timestep)  # pyright: ignore[reportArgumentType]
        lcm_steps.append(
            LcmStep(
                timestep=timestep.to(device),
                sqrt_alpha=alpha.sqrt().to(device),
                sqrt_beta=(1 - alpha).sqrt().to(device),
                c_skip=torch.as_tensor(c_skip).to(device),
                c_out=torch.as_tensor(c_out).to(device),
                sqrt_alpha_prev=alpha_prev.sqrt().to(device),
                sqrt_beta_prev=(1 - alpha_prev).sqrt().to(device),
                is_last=index == last,
            )
        )
    alpha_start = alphas.to(dtype=dtype)[full[first]]
    return Schedule(
        steps=tuple(lcm_steps),
        noise_sqrt_alpha=(alpha_start**0.5).to(device),
        noise_sqrt_beta=((1 - alpha_start) ** 0.5).to(device),
    )


def guidance_embedding(guidance_scale: float, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """LCM's w-embedding (VDM sinusoidal features of (w - 1) x 1000), shape 1 x dim."""
    w = torch.tensor(guidance_scale - 1).reshape(1) * 1000.0
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w.to(torch.float32)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.to(device=device, dtype=dtype)
