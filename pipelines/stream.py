"""The stream pipeline: one camera frame in, one stylised frame out, with all per-parameter work done up front.

It runs the same arithmetic as diffusers' img2img pipelines (LatentConsistencyModelImg2ImgPipeline for an LCM
UNet, StableDiffusionImg2ImgPipeline with LCMScheduler for LCM-LoRA and Turbo), minus everything that does not
change between frames: prompt embeddings, timesteps, LCM boundary coefficients, the guidance embedding and the
seeded noise are computed when the parameters (or the processing size) change.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .components import ModelComponents
from .params import ParamSpec, StreamParams, default_params, param_specs
from .presets import GuidanceKind
from .prompt_cache import PromptCache
from .schedule import Schedule, build_schedule, guidance_embedding

SIZE_MULTIPLE = 64


def processing_size(width: int, height: int, max_side: int | None = None) -> tuple[int, int]:
    """The model's (width, height) for a frame: longest side at most `max_side`, both multiples of 64."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0

    def snap(side: float) -> int:
        # Half-up rounding, not Python's half-to-even: a 288-pixel side becomes 320, not 256.
        return max(SIZE_MULTIPLE, math.floor(side * scale / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)

    return snap(width), snap(height)


def check_frame(frame: Any) -> np.ndarray:
    """The frame if it is uint8 H x W x 3 with H, W >= 1; otherwise a ValueError that says what is wrong."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (0-255 RGB), got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must have shape H x W x 3 (RGB), got {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame is empty: shape {frame.shape}")
    return frame


@dataclass
class FramePlan:
    """What one set of parameters needs per frame; immutable apart from the per-size noise it fills lazily."""

    params: StreamParams
    schedule: Schedule
    prompt_embeds: torch.Tensor  # 1 x 77 x D, or 2 x 77 x D ([negative, positive]) under classifier-free guidance
    classifier_free: bool
    timestep_cond: torch.Tensor | None
    noise: dict[tuple[int, int], SeededNoise] = field(default_factory=dict)


@dataclass(frozen=True)
class SeededNoise:
    """The seed's draws in diffusers' order: VAE posterior sample, add-noise, then one per non-final step."""

    posterior: torch.Tensor
    start_term: torch.Tensor  # sqrt(1 - alpha_t0) * noise, added to the scaled init latents
    step_terms: tuple[torch.Tensor | None, ...]  # sqrt(1 - alpha_prev) * noise for every step but the last


class StreamPipeline:
    """Turns uint8 RGB frames into stylised uint8 frames with one model, at a processing size of multiples of 64.

    Several pipelines may share one `ModelComponents` and one `PromptCache` (one per viewer): each keeps its own
    parameters, schedule and noise. `update` may be called from another thread; a frame in flight finishes with
    the plan it started with.
    """

    def __init__(
        self,
        components: ModelComponents,
        prompt_cache: PromptCache | None = None,
        params: StreamParams | None = None,
    ) -> None:
        self.components = components
        self.prompt_cache = prompt_cache if prompt_cache is not None else PromptCache()
        self.specs: dict[str, ParamSpec] = param_specs(components.preset)
        self._update_lock = threading.Lock()
        self._plan = self._make_plan(params or default_params(components.preset))

    @property
    def params(self) -> StreamParams:
        return self._plan.params

    def update(self, **changes: Any) -> StreamParams:
        """Validate and apply parameter changes from the next frame on; a ValueError leaves everything as it was."""
        with self._update_lock:
            params = self._plan.params.replace(changes, self.specs)
            if params != self._plan.params:
                self._plan = self._make_plan(params)
            return params

    def notes(self) -> list[str]:
        """Things a person should know about the current parameters with this model."""
        params, guidance = self.params, self.components.preset.guidance
        notes = []
        if params.negative_prompt and not self._plan.classifier_free:
            if guidance is GuidanceKind.EMBEDDED:
                notes.append("negative_prompt has no effect with an LCM UNet: guidance is built into the model")
            else:
                notes.append("negative_prompt has an effect only when guidance_scale > 1")
        if guidance is GuidanceKind.NONE and params.guidance_scale not in (0.0, 1.0):
            notes.append("this model takes no guidance: guidance_scale is ignored")
        if len(self._plan.schedule.steps) != params.steps:
            notes.append(f"{len(self._plan.schedule.steps)} of {params.steps} steps run at this strength")
        return notes

    def __call__(self, frame: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Stylise one uint8 H x W x 3 frame; the result is uint8 at the processing `size` (width, height)."""
        return to_uint8(self.render(frame, size))

    @torch.inference_mode()
    def render(self, frame: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The float image in [0, 1] (1 x 3 x H x W, on the device) before quantisation to uint8."""
        frame = check_frame(frame)
        width, height = size or processing_size(frame.shape[1], frame.shape[0])
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width <= 0 or height <= 0:
            raise ValueError(f"processing size must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}")
        plan = self._plan
        image = self._to_model_input(frame, width, height)
        return self._denoise(plan, image)

    def _to_model_input(self, frame: np.ndarray, width: int, height: int) -> torch.Tensor:
        c = self.components
        pixels = torch.from_numpy(np.ascontiguousarray(frame)).to(c.device, non_blocking=True)
        # Channels-last, like the modules (see ModelComponents.to). Then the same float32 arithmetic as diffusers'
        # VaeImageProcessor: x / 255, then 2x - 1.
        image = pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        image = image.contiguous(memory_format=torch.channels_last)
        return (2.0 * image - 1.0).to(c.dtype)

    def _denoise(self, plan: FramePlan, image: torch.Tensor) -> torch.Tensor:
        c = self.components
        noise = self._noise_for(plan, image.shape[-2:])
        posterior = c.vae.encode(image).latent_dist
        latents = c.vae.config.scaling_factor * (posterior.mean + posterior.std * noise.posterior)
        latents = plan.schedule.noise_sqrt_alpha * latents + noise.start_term
        denoised = latents
        for step, step_noise in zip(plan.schedule.steps, noise.step_terms, strict=True):
            model_pred = self._predict_noise(plan, latents, step.timestep)
            predicted_original = (latents - step.sqrt_beta * model_pred) / step.sqrt_alpha
            denoised = step.c_out * predicted_original + step.c_skip * latents
            latents = denoised if step.is_last else step.sqrt_alpha_prev * denoised + step_noise
        decoded = c.vae.decode(denoised / c.vae.config.scaling_factor).sample
        return (decoded / 2 + 0.5).clamp(0, 1)

    def _predict_noise(self, plan: FramePlan, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        unet = self.components.unet
        if not plan.classifier_free:
            return unet(
                latents,
                timestep,
                encoder_hidden_states=plan.prompt_embeds,
                timestep_cond=plan.timestep_cond,
                return_dict=False,
            )[0]
        doubled = unet(
            torch.cat([latents, latents]),
            timestep,
            encoder_hidden_states=plan.prompt_embeds,
            return_dict=False,
        )[0]
        uncond, cond = doubled.chunk(2)
        return uncond + plan.params.guidance_scale * (cond - uncond)

    def _make_plan(self, params: StreamParams) -> FramePlan:
        c = self.components
        schedule = build_schedule(
            c.scheduler, c.preset.schedule, params.steps, params.strength, device=c.device, dtype=c.dtype
        )
        guidance = c.preset.guidance
        classifier_free = guidance is GuidanceKind.CLASSIFIER_FREE and params.guidance_scale > 1
        embeds = self.prompt_cache.get(c, params.prompt)
        if classifier_free:
            embeds = torch.cat([self.prompt_cache.get(c, params.negative_prompt), embeds])
        timestep_cond = None
        if c.has_guidance_embedding:
            dim = c.unet.config.time_cond_proj_dim
            timestep_cond = guidance_embedding(params.guidance_scale, dim, c.device, c.dtype)
        return FramePlan(params, schedule, embeds, classifier_free, timestep_cond)

    def _noise_for(self, plan: FramePlan, image_size: torch.Size) -> SeededNoise:
        """Draw the seed's noise for this latent size once; later frames at the same size reuse it."""
        key = tuple(image_size)
        noise = plan.noise.get(key)
        if noise is None:
            noise = self._draw_noise(plan, key)
            plan.noise[key] = noise
        return noise

    def _draw_noise(self, plan: FramePlan, image_size: tuple[int, int]) -> SeededNoise:
        c = self.components
        factor = c.vae_scale_factor
        shape = (1, c.vae.config.latent_channels, image_size[0] // factor, image_size[1] // factor)
        # A CPU generator, as diffusers' randn_tensor uses for a CPU generator on any device: same seed, same
        # numbers on every machine.
        generator = torch.Generator("cpu").manual_seed(plan.params.seed)

        def draw() -> torch.Tensor:
            return torch.randn(shape, generator=generator, dtype=c.dtype).to(c.device)

        posterior = draw()
        start_term = plan.schedule.noise_sqrt_beta * draw()
        step_terms = tuple(None if step.is_last else step.sqrt_beta_prev * draw() for step in plan.schedule.steps)
        return SeededNoise(posterior, start_term, step_terms)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W float in [0, 1] to H x W x 3 uint8 on the host, rounded as diffusers' numpy_to_pil does."""
    return (image[0] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
