"""Loading a model by preset name or local path, offline first, with one clear message when weights are missing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .components import ModelComponents
from .devices import default_dtype, resolve_device
from .presets import OFFLINE_PRESET, GuidanceKind, ModelPreset, ScheduleKind, get_preset

log = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """The weights a preset needs are neither cached nor downloadable; the message says how to get them."""


def load_model(
    model: str = OFFLINE_PRESET,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | None = None,
) -> ModelComponents:
    """Load a preset (`tiny`, `lcm-dreamshaper`, ...) or a local diffusers folder onto `device`."""
    resolved = resolve_device(device)
    dtype = dtype or default_dtype(resolved)
    if Path(model).is_dir():
        preset = _preset_for_local_folder(Path(model))
        parts = _from_pretrained(preset, Path(model))
    else:
        preset = get_preset(model)
        parts = _builtin_parts(preset, resolved, dtype) if preset.builtin else _download_parts(preset)
    components = ModelComponents(preset=preset, device=resolved, dtype=dtype, model_id=model, **parts)
    return components.to(resolved, dtype)


def fuse_lora(parts: dict, lora: str | Path) -> None:
    """Load an LCM-LoRA through diffusers' `load_lora_weights` and fuse it into the UNet for speed."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **{k: parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(str(lora), adapter_name="lcm")
    pipe.fuse_lora()
    # Fused weights stay in the UNet; dropping the adapter removes the per-call LoRA branch.
    pipe.unload_lora_weights()


def _builtin_parts(preset: ModelPreset, device: torch.device, dtype: torch.dtype) -> dict:
    from . import tiny

    if preset.builtin == "tiny":
        return tiny.tiny_sd15_parts()
    if preset.builtin == "tiny-lcm-lora":
        return tiny.tiny_lcm_lora_parts()
    if preset.builtin == "sd15-arch":
        return tiny.sd15_arch_parts(device, dtype)
    raise ValueError(f"preset {preset.name!r} names an unknown built-in model {preset.builtin!r}")


def _download_parts(preset: ModelPreset) -> dict:
    """Read the preset's repositories from the local cache, downloading them only if the hub is reachable."""
    try:
        return _from_pretrained(preset, preset.repo, local_files_only=True)
    except (OSError, ValueError) as cached_error:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise ModelUnavailableError(unavailable_message(preset, cached_error)) from None
    log.info("downloading %s (first run only)", ", ".join(preset.repositories))
    try:
        return _from_pretrained(preset, preset.repo, local_files_only=False)
    except Exception as download_error:  # any network, auth or format failure ends in the same advice
        raise ModelUnavailableError(unavailable_message(preset, download_error)) from None


def _from_pretrained(preset: ModelPreset, source: str | Path, local_files_only: bool = True) -> dict:
    from diffusers import DiffusionPipeline, LCMScheduler

    pipe = DiffusionPipeline.from_pretrained(
        str(source),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=local_files_only,
    )
    parts = {k: getattr(pipe, k) for k in ("unet", "vae", "text_encoder", "tokenizer")}
    parts["scheduler"] = LCMScheduler.from_config(pipe.scheduler.config)
    if preset.lora:
        fuse_lora(parts, preset.lora if local_files_only is False else _cached_repo(preset.lora))
    return parts


def _cached_repo(repo: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo, local_files_only=True)


def _preset_for_local_folder(folder: Path) -> ModelPreset:
    """A diffusers folder: an LCM UNet if it has the w-embedding, else a Turbo-like model with no guidance."""
    import json

    from .presets import ModelPreset

    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file():
        raise ModelUnavailableError(f"{folder} is not a diffusers model folder: {unet_config} is missing")
    embedded = json.loads(unet_config.read_text()).get("time_cond_proj_dim") is not None
    return ModelPreset(
        name=folder.name,
        family="sd15",
        guidance=GuidanceKind.EMBEDDED if embedded else GuidanceKind.NONE,
        schedule=ScheduleKind.LCM_IMG2IMG if embedded else ScheduleKind.SD_IMG2IMG,
        default_guidance=8.0 if embedded else 0.0,
        description=f"local folder {folder}",
    )


def unavailable_message(preset: ModelPreset, cause: BaseException) -> str:
    """What is missing, how to fetch it, and the offline alternative — no traceback."""
    repos = preset.repositories
    fetch = "\n".join(f"    hf download {repo}" for repo in repos)
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (
        f"model preset {preset.name!r} needs weights that are not on this machine: {', '.join(repos)}\n"
        f"  ({first_line})\n"
        f"  Fetch them once on a machine with network access (they land in the Hugging Face cache):\n{fetch}\n"
        f"  or pass a local diffusers folder with --model /path/to/folder.\n"
        f"  `--model {OFFLINE_PRESET}` runs offline with built-in random weights (noise-like output)."
    )
