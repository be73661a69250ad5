"""Models built in code with seeded random weights: `tiny` for tests and offline demos, `*-arch` for GPU timing."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_SEED = 0
TEXT_TOKENS = 77
# Random cross-attention barely moves a random UNet (about 2/255 mean change between prompts); scaling its
# output projection makes a prompt change visible, which is what a person trying the offline demo looks for.
TINY_TEXT_GAIN = 12.0


def offline_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer that needs no vocabulary download: every printable ASCII character."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.printable.strip():
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    # model_max_length is required: without it the pipelines' `encode_prompt` overflows.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_TOKENS)


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


def tiny_unet(guidance_embedding: bool = True, seed: int = TINY_SEED) -> UNet2DConditionModel:
    """An SD1.5-shaped UNet (4 latent channels, cross-attention to 32-wide text), with the LCM w-embedding."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        time_cond_proj_dim=32 if guidance_embedding else None,
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".attn2.to_out.0.weight" in name:
                param.mul_(TINY_TEXT_GAIN)
    return unet


def tiny_vae(seed: int = TINY_SEED) -> AutoencoderKL:
    """A 4-block VAE: scale factor 8 like the real one, so latents stay small."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_text_encoder(vocab_size: int, seed: int = TINY_SEED) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=vocab_size,
        max_position_embeddings=TEXT_TOKENS,
    )
    return CLIPTextModel(config)


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


def save_tiny_lora(directory: str | Path, seed: int = 1, rank: int = 4) -> Path:
    """Write a random LoRA for the tiny base UNet in the diffusers format that `load_lora_weights` reads."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_unet(guidance_embedding=False)
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
    StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
    return directory


def tiny_lcm_lora_parts(seed: int = TINY_SEED) -> dict:
    """The tiny base model (no w-embedding) with the tiny LoRA loaded and fused, exactly as the real preset is."""
    from .loading import fuse_lora

    parts = tiny_sd15_parts(guidance_embedding=False, seed=seed)
    with tempfile.TemporaryDirectory(prefix="lcmlive-tiny-lora-") as lora_dir:
        save_tiny_lora(lora_dir)
        fuse_lora(parts, lora_dir)
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
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=TEXT_TOKENS,
                hidden_act="quick_gelu",
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    for module in (unet, vae, text_encoder):
        module.to(dtype=dtype)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": lcm_scheduler(),
    }
