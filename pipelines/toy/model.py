"""The toy model's shapes (SD1.5-family LCM parts, small) and loading of its trained weights, shipped in the package."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, safe_open, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from ..tiny import TEXT_TOKENS, lcm_scheduler, offline_tokenizer
from .styles import STYLES

WEIGHTS = Path(__file__).resolve().parent / "weights" / "toy.safetensors"
CHECKSUMS = WEIGHTS.with_name("SHA256SUMS")
SEED = 0
TEXT_WIDTH = 64
GUIDANCE_EMBEDDING_DIM = 32
# The full-resolution blocks cost the VAE most, so they stay narrow. With 8 channels there (and 12) the VAE kept
# luminance and only one axis of colour: trained 1000-3000 steps, the reconstructions' red-green and yellow-blue
# collapsed onto one direction (the shipped 3000-step VAE: red-green correlation 0.03, yellow-blue 0.98). With 16, the
# same 1000 steps kept both (0.97, 0.97) and reached 26.7 dB on held-out synthetic pictures against 21.2. Its price,
# measured on one core at 256x256: VAE encode + decode 121 ms against 76 ms.
VAE_CHANNELS = (16, 16, 32, 64)
# SD's VAE has 4 latent channels; the toy has 8. PCA of 8x8 RGB patches bounds what a linear code keeps: 22.7 dB on
# the held-out photos with 4 numbers a patch, 25.8 with 8. Trained 3000 steps with 4, the toy's VAE reached 19.9 dB
# (photos) and 22.6 (synthetic), short of the 20 and 24 asked; a UNet's cost hardly depends on the count.
LATENT_CHANNELS = 8
UNET_CHANNELS = (32, 64, 96)


def toy_vae(scaling_factor: float = 1.0, latent_channels: int = LATENT_CHANNELS) -> AutoencoderKL:
    """4 blocks and scale factor 8, as the SD VAE, with LATENT_CHANNELS; no attention in the middle block."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # diffusers annotates its block tuples as one-item tuples (tuple[str], tuple[int]); any length is taken.
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        block_out_channels=VAE_CHANNELS,  # pyright: ignore[reportArgumentType]
        layers_per_block=1,
        latent_channels=latent_channels,
        # Groups of 4 channels at the top, as SD's VAE has (128 / 32). With 8 groups over 8 channels the last
        # GroupNorm normalised each channel alone, removed every picture's own colour, and the VAE learnt grey.
        norm_num_groups=2,
        sample_size=256,
        scaling_factor=scaling_factor,
        force_upcast=False,
        # A 256-pixel frame has 1024 latent positions: attention over them would cost more than the rest.
        mid_block_add_attention=False,
    )


def toy_unet(latent_channels: int = LATENT_CHANNELS) -> UNet2DConditionModel:
    """An LCM UNet (guidance through the w-embedding, `time_cond_proj_dim`) with cross-attention at the two lower
    resolutions, where it is cheap; the top resolution gets the prompt through the up path."""
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=UNET_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=4,  # diffusers reads it as the number of heads
        norm_num_groups=8,
        cross_attention_dim=TEXT_WIDTH,
        time_cond_proj_dim=GUIDANCE_EMBEDDING_DIM,
    )


def toy_text_encoder(vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_WIDTH,
            intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TEXT_TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


def toy_controlnet(unet: UNet2DConditionModel, seed_offset: int = 0) -> ControlNetModel:
    """A ControlNet of the toy UNet's shape, for any control kind. Untrained: seeded random weights (`seed_offset`
    per kind), its zero convolutions drawn small so that it moves the picture without drowning it (the toy was never
    taught to follow edges or depth)."""
    torch.manual_seed(SEED + 1 + seed_offset)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 16, 32, 32), load_weights_from_unet=False
    )
    with torch.no_grad():
        for param in controlnet.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    return controlnet


def fresh_parts(
    words: list[str] | None = None, scaling_factor: float = 1.0, latent_channels: int = LATENT_CHANNELS
) -> dict:
    """Untrained toy parts, seeded, as diffusers names them: what the trainer starts from and the loader fills."""
    tokenizer = offline_tokenizer(words=sorted(STYLES) if words is None else words)
    torch.manual_seed(SEED)
    return {
        "unet": toy_unet(latent_channels),
        "vae": toy_vae(scaling_factor, latent_channels),
        "text_encoder": toy_text_encoder(len(tokenizer)),
        "tokenizer": tokenizer,
        "scheduler": lcm_scheduler(),
    }


def save_parts(parts: dict, words: list[str], path: Path) -> None:
    """One safetensors file: every module's weights under its part's name, in float16 (half the size; loading casts
    them back to the model's dtype), and the vocabulary and latent scale beside."""
    tensors = {
        f"{name}.{key}": value.detach().to(torch.float16).contiguous()
        for name in ("unet", "vae", "text_encoder")
        for key, value in parts[name].state_dict().items()
    }
    metadata = {
        "words": json.dumps(words),
        "scaling_factor": repr(parts["vae"].config.scaling_factor),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def toy_parts(path: Path = WEIGHTS) -> dict:
    """The trained toy model: the shapes above, filled from `path`; a missing or mismatched file fails loudly."""
    with safe_open(str(path), "pt") as weights:
        metadata = weights.metadata()
    tensors = load_file(str(path))
    latent_channels = tensors["vae.post_quant_conv.weight"].shape[0]  # the weights say their latent width
    parts = fresh_parts(json.loads(metadata["words"]), float(metadata["scaling_factor"]), latent_channels)
    for name in ("unet", "vae", "text_encoder"):
        prefix = f"{name}."
        state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        parts[name].load_state_dict(state, strict=True)
    return parts
