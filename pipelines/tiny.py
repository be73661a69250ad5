"""Models built in code with seeded random weights: `tiny-random` for parity tests, `*-arch` for GPU timing."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TINY_SEED = 0
TEXT_TOKENS = 77
# Random cross-attention barely moves a random UNet (about 2/255 mean change between prompts); scaling its
# output projection makes a prompt change visible, which is what a person trying the offline demo looks for.
TINY_TEXT_GAIN = 12.0


def offline_tokenizer(words: tuple[str, ...] | list[str] = ()) -> CLIPTokenizer:
    """A CLIP tokenizer that needs no vocabulary download: every printable ASCII character, plus one token for each
    of `words` (BPE merges that spell it out letter by letter), so that a model can learn those words whole."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.printable.strip():
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges: dict[tuple[str, str], None] = {}  # ordered and without repeats: words may share a beginning
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        spelled = pieces[0]
        for piece in pieces[1:]:
            merges[(spelled, piece)] = None
            spelled += piece
            vocab.setdefault(spelled, len(vocab))  # part-merged words ("neons" stops at "neon") need ids too
    # model_max_length is required: without it the pipelines' `encode_prompt` overflows.
    # Pairs, as the tokenizers library's BPE takes them (transformers' annotation says strings).
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=TEXT_TOKENS)  # pyright: ignore[reportArgumentType]


def lcm_scheduler() -> LCMScheduler:
    """The scheduler config the real LCM checkpoints ship (steps_offset=1 keeps img2img pipelines quiet)."""
    return LCMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        original_inference_steps=50,
        timestep_scaling=10.0,
        set_alpha_to_one=True,
    )


# The block layout shared by the tiny UNets and their ControlNets.
TINY_BLOCKS: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
TINY_SD15_EXTRA: dict[str, Any] = {"cross_attention_dim": 32}  # the text encoder's hidden size
# SDXL's extra conditioning: pooled text (projection_dim of text encoder 2) and six size/crop numbers.
TINY_SDXL_EXTRA: dict[str, Any] = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "use_linear_projection": True,
    "cross_attention_dim": 64,  # the two text encoders' hidden states side by side (32 + 32)
}


def tiny_unet(guidance_embedding: bool = True, seed: int = TINY_SEED, sdxl: bool = False) -> UNet2DConditionModel:
    """An SD1.5- or SDXL-shaped UNet (4 latent channels), with the LCM w-embedding unless told otherwise."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        time_cond_proj_dim=32 if guidance_embedding else None,
        **TINY_BLOCKS,
        **(TINY_SDXL_EXTRA if sdxl else TINY_SD15_EXTRA),
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".attn2.to_out.0.weight" in name:
                param.mul_(TINY_TEXT_GAIN)
    return unet


def tiny_controlnet(sdxl: bool = False, seed: int = TINY_SEED + 1) -> ControlNetModel:
    """A canny ControlNet for the tiny UNet of that family, with its zero convolutions drawn at random.

    Real ControlNets start with zero convolutions and learn them; left at zero, a tiny one would add nothing and
    a parity test through it would prove nothing.
    """
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        in_channels=4,
        conditioning_embedding_out_channels=(16, 16, 32, 32),  # four stages: the control image / 8, like latents
        **TINY_BLOCKS,
        **(TINY_SDXL_EXTRA if sdxl else TINY_SD15_EXTRA),
    )
    with torch.no_grad():
        for param in controlnet.parameters():
            if not param.any():
                param.normal_(0.0, 0.3)
    return controlnet


def tiny_vae(seed: int = TINY_SEED) -> AutoencoderKL:
    """A 4-block VAE: scale factor 8 like the real one, so latents stay small."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # diffusers annotates its block tuples as one-item tuples (tuple[str], tuple[int]); any length is taken.
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        block_out_channels=(8, 16, 32, 32),  # pyright: ignore[reportArgumentType]
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        force_upcast=False,  # fp16 is safe for it, as for the fp16-fix VAE the SDXL presets use
    )


def tiny_taesd(seed: int = TINY_SEED) -> AutoencoderTiny:
    """A small TAESD-shaped VAE (no posterior, scale factor 8), for the tiny models' `--tiny-vae`."""
    torch.manual_seed(seed)
    return AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )


def tiny_text_encoder(
    vocab_size: int, seed: int = TINY_SEED, with_projection: bool = False
) -> CLIPTextModel | CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,  # SDXL reads the penultimate layer: at least 2
        vocab_size=vocab_size,
        max_position_embeddings=TEXT_TOKENS,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def tiny_sd15_parts(guidance_embedding: bool = True, seed: int = TINY_SEED) -> dict:
    """UNet, VAE, text encoder, tokenizer and scheduler of the tiny SD1.5-shaped model, as diffusers names them."""
    tokenizer = offline_tokenizer()
    return {
        "unet": tiny_unet(guidance_embedding, seed),
        "vae": tiny_vae(seed),
        "text_encoder": tiny_text_encoder(len(tokenizer), seed),
        "tokenizer": tokenizer,
        "scheduler": lcm_scheduler(),
    }


def tiny_sdxl_parts(guidance_embedding: bool = True, seed: int = TINY_SEED) -> dict:
    """The tiny SDXL-shaped model: two text encoders (the second with projection, for pooled embeddings)."""
    tokenizer = offline_tokenizer()
    return {
        "unet": tiny_unet(guidance_embedding, seed, sdxl=True),
        "vae": tiny_vae(seed),
        "text_encoder": tiny_text_encoder(len(tokenizer), seed),
        "text_encoder_2": tiny_text_encoder(len(tokenizer), seed + 1, with_projection=True),
        "tokenizer": tokenizer,
        "tokenizer_2": offline_tokenizer(),
        "scheduler": lcm_scheduler(),
    }


def save_tiny_lora(
    directory: str | Path, seed: int = 1, rank: int = 4, sdxl: bool = False, unet: UNet2DConditionModel | None = None
) -> Path:
    """Write a random LoRA in the diffusers format that `load_lora_weights` reads, to
    `directory/pytorch_lora_weights.safetensors`: for the tiny base UNet, or for `unet` (left as it is: the LoRA is
    drawn on a copy)."""
    import copy

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_unet(guidance_embedding=False, sdxl=sdxl) if unet is None else copy.deepcopy(unet)
    torch.manual_seed(seed)
    # init_lora_weights=False draws both LoRA matrices at random, so the adapter really changes the output.
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    directory = Path(directory)
    pipeline = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipeline.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
    return directory


def tiny_lcm_lora_parts(seed: int = TINY_SEED, sdxl: bool = False) -> dict:
    """The tiny base model (no w-embedding) with the tiny LoRA loaded and fused, exactly as the real preset is."""
    from .lora import fuse_lora

    build = tiny_sdxl_parts if sdxl else tiny_sd15_parts
    parts = build(guidance_embedding=False, seed=seed)
    with tempfile.TemporaryDirectory(prefix="lcmlive-tiny-lora-") as lora_dir:
        save_tiny_lora(lora_dir, sdxl=sdxl)
        fuse_lora(parts, lora_dir, sdxl=sdxl)
    return parts


def sd15_arch_parts(device: torch.device, dtype: torch.dtype) -> dict:
    """The real SD1.5 LCM UNet / VAE / CLIP-L shapes with random weights, built straight on `device`."""
    tokenizer = offline_tokenizer()
    with torch.device(device):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            time_cond_proj_dim=256,
        )
        vae = _real_vae(sample_size=512)
        text_encoder = CLIPTextModel(_clip_config(768, 3072, 12, 12, "quick_gelu"))
    _cast((unet, vae, text_encoder), dtype)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": lcm_scheduler(),
    }


def sdxl_arch_parts(device: torch.device, dtype: torch.dtype) -> dict:
    """The real SDXL shapes (UNet 2.6B, CLIP-L + OpenCLIP-bigG) with random weights, built straight on `device`."""
    tokenizer = offline_tokenizer()
    with torch.device(device):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            # diffusers annotates these as int or a one-item tuple; a tuple per block is taken.
            transformer_layers_per_block=(1, 2, 10),  # pyright: ignore[reportArgumentType]
            attention_head_dim=(5, 10, 20),  # pyright: ignore[reportArgumentType]
            use_linear_projection=True,
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            time_cond_proj_dim=256,
        )
        vae = _real_vae(sample_size=1024, scaling_factor=0.13025, force_upcast=False)  # as the fp16-fix VAE
        text_encoder = CLIPTextModel(_clip_config(768, 3072, 12, 12, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_config(1280, 5120, 32, 20, "gelu", projection_dim=1280))
    _cast((unet, vae, text_encoder, text_encoder_2), dtype)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": offline_tokenizer(),
        "scheduler": lcm_scheduler(),
    }


def _cast(modules: tuple[torch.nn.Module, ...], dtype: torch.dtype) -> None:
    """Cast modules built in float32; only when needed, as diffusers warns even on a no-op cast."""
    if dtype != torch.float32:
        for module in modules:
            module.to(dtype=dtype)


def _real_vae(**config) -> AutoencoderKL:
    """The SD1.5 / SDXL VAE shape: four blocks of 128-512 channels, scale factor 8."""
    return AutoencoderKL(
        # diffusers annotates its block tuples as one-item tuples (tuple[str], tuple[int]); any length is taken.
        down_block_types=("DownEncoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D",) * 4,  # pyright: ignore[reportArgumentType]
        block_out_channels=(128, 256, 512, 512),  # pyright: ignore[reportArgumentType]
        layers_per_block=2,
        latent_channels=4,
        **config,
    )


def _clip_config(hidden: int, intermediate: int, layers: int, heads: int, act: str, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=TEXT_TOKENS,
        hidden_act=act,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **extra,
    )
