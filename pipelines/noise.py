"""The seeds' noise: one seed's draws in diffusers' order for one latent size, scaled by a schedule's coefficients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .components import ModelComponents
from .schedule import Schedule


@dataclass(frozen=True)
class SeededNoise:
    """One seed's draws in diffusers' order for one latent size.

    img2img: VAE posterior sample, add-noise, then one per non-final step. txt2img: the initial latents, then one
    per non-final step. Step terms are pre-multiplied by sqrt(1 - alpha_prev).
    """

    first: torch.Tensor | None  # img2img: the posterior sample (None for a tiny VAE); txt2img: the latents
    start_term: torch.Tensor | None  # img2img: sqrt(1 - alpha_t0) * noise, added to the scaled init latents
    step_terms: tuple[torch.Tensor | None, ...]


def latent_shape(components: ModelComponents, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """1 x C x h x w: the latents of a (height, width) picture."""
    factor = components.vae_scale_factor
    return (1, components.vae.config["latent_channels"], image_size[0] // factor, image_size[1] // factor)


def draw(
    components: ModelComponents, schedule: Schedule, txt2img: bool, image_size: tuple[int, int], seed: int
) -> list[torch.Tensor]:
    """The seed's draws on the host, in diffusers' order."""
    shape = latent_shape(components, image_size)
    # A CPU generator, as diffusers' randn_tensor uses for a CPU generator on any device: same seed, same numbers
    # on every machine.
    generator = torch.Generator("cpu").manual_seed(seed)
    # txt2img: initial latents; img2img: the VAE posterior sample (if it has one), then the add-noise.
    first = 1 if txt2img or components.vae_has_posterior else 0
    count = first + (0 if txt2img else 1) + sum(not step.is_last for step in schedule.steps)
    return [torch.randn(shape, generator=generator, dtype=components.dtype) for _ in range(count)]


def scaled(
    components: ModelComponents, schedule: Schedule, txt2img: bool, draws: Sequence[torch.Tensor]
) -> SeededNoise:
    """Draws (on the device) scaled by the schedule's coefficients."""
    on_device = iter(draws)
    first = next(on_device) if txt2img or components.vae_has_posterior else None
    # LCMScheduler.init_noise_sigma is 1: txt2img latents are the first draw itself.
    start_term = None if txt2img else schedule.noise_sqrt_beta * next(on_device)
    step_terms = tuple(None if step.is_last else step.sqrt_beta_prev * next(on_device) for step in schedule.steps)
    return SeededNoise(first, start_term, step_terms)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: keeps the norm of Gaussian noise, where a straight blend would shrink it."""
    a32, b32 = a.float(), b.float()
    cos = (a32 * b32).sum() / (a32.norm() * b32.norm())
    angle = torch.arccos(cos.clamp(-1.0, 1.0))
    if angle.abs() < 1e-4:
        return ((1 - t) * a32 + t * b32).to(a.dtype)
    sin = torch.sin(angle)
    return ((torch.sin((1 - t) * angle) / sin) * a32 + (torch.sin(t * angle) / sin) * b32).to(a.dtype)
