"""An LCM-LoRA fused into a UNet through diffusers' own loader (LCM-LoRA presets and the tiny stand-in)."""

from __future__ import annotations

from pathlib import Path

PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")


def fuse_lora(parts: dict, lora: str | Path, sdxl: bool = False) -> None:
    """Load an LCM-LoRA through diffusers' `load_lora_weights` and fuse it into the UNet for speed."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if sdxl:
        pipe = StableDiffusionXLPipeline(**{k: parts[k] for k in PIPELINE_PARTS + SDXL_PARTS})
    else:
        pipe = StableDiffusionPipeline(
            **{k: parts[k] for k in PIPELINE_PARTS},
            # None is what diffusers documents for no checker; its annotations leave None out.
            safety_checker=None,  # pyright: ignore[reportArgumentType]
            feature_extractor=None,  # pyright: ignore[reportArgumentType]
            requires_safety_checker=False,
        )
    pipe.load_lora_weights(str(lora), adapter_name="lcm")
    pipe.fuse_lora()
    # Fused weights stay in the UNet; dropping the adapter removes the per-call LoRA branch.
    pipe.unload_lora_weights()
