"""The loaded parts of one model, on one device, in one dtype."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .presets import ModelPreset

if TYPE_CHECKING:
    from .compiled import CompiledModel
    from .control import Preprocessor
    from .styles import StyleLibrary


@dataclass
class ModelComponents:
    """UNet, VAE, text encoder(s), tokenizer(s), LCM scheduler and optional ControlNets, ready for inference.

    SDXL-family models have the second text encoder and tokenizer; SD1.5-family models leave them None.
    `controlnets` and `preprocessors` are keyed by control kind (pipelines/control), in the order they were asked
    for: the order MultiControlNet sums their residuals in.
    """

    preset: ModelPreset
    unet: UNet2DConditionModel
    vae: AutoencoderKL | AutoencoderTiny
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: LCMScheduler
    device: torch.device
    dtype: torch.dtype
    # Identifies the weights in prompt-cache keys: two models never share embeddings.
    model_id: str
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    controlnets: dict[str, ControlNetModel] = field(default_factory=dict)
    preprocessors: dict[str, Preprocessor] = field(default_factory=dict)
    styles: StyleLibrary | None = None  # style LoRAs, adapters on the UNet (pipelines/styles.py)
    compiled: CompiledModel | None = None  # the UNet and VAE decoder under torch.compile (pipelines/compiled.py)

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def control_kinds(self) -> tuple[str, ...]:
        """The loaded ControlNet kinds, in load order."""
        return tuple(self.controlnets)

    @property
    def style_names(self) -> tuple[str, ...]:
        """The loaded style LoRAs, without the plain model's `none`."""
        return () if self.styles is None else self.styles.names

    @property
    def modules(self) -> list[torch.nn.Module]:
        optional = [self.text_encoder_2, *self.controlnets.values()]
        optional += [module for preprocessor in self.preprocessors.values() for module in preprocessor.modules]
        return [self.unet, self.vae, self.text_encoder, *(m for m in optional if m is not None)]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    @property
    def vae_has_posterior(self) -> bool:
        """AutoencoderKL encodes to a distribution that is sampled; a tiny VAE (TAESD) to latents directly."""
        return isinstance(self.vae, AutoencoderKL)

    @property
    def has_guidance_embedding(self) -> bool:
        return self.unet.config["time_cond_proj_dim"] is not None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ModelComponents:
        """Move every module to `device`/`dtype` and put them in eval mode (returns self)."""
        self.device = torch.device(device)
        self.dtype = dtype
        for module in self.modules:
            # Moved and cast in one step, so an fp32 SDXL UNet never sits on the GPU; and cast only when needed:
            # diffusers warns on every dtype cast, even a no-op one.
            if next(module.parameters()).dtype != dtype:
                module.to(device=self.device, dtype=dtype)
            else:
                module.to(device=self.device)
            module.eval()
            module.requires_grad_(False)
        # Channels-last convolutions are faster on both backends: oneDNN on the CPU, tensor cores on CUDA.
        for module in (self.unet, self.vae, *self.controlnets.values()):
            # diffusers wraps `to` in functools.wraps, whose type leaves `self` unbound, and torch's overloads of
            # Module.to omit memory_format, which it takes.
            module.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
        return self
