"""Loading a model by preset name or local path, offline first, with one clear message when weights are missing."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .components import ModelComponents
from .devices import default_dtype, resolve_device
from .hub import ModelUnavailableError, fetch_weights
from .lora import PIPELINE_PARTS, SDXL_PARTS, fuse_lora
from .presets import OFFLINE_PRESET, TINY_VAES, GuidanceKind, ModelPreset, ScheduleKind, get_preset

if TYPE_CHECKING:
    from .control import ControlKind


def load_model(
    model: str = OFFLINE_PRESET,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | None = None,
    controlnet: str | Sequence[str] | None = None,
    tiny_vae: bool = False,
    lora_dir: str | Path | None = None,
) -> ModelComponents:
    """Load a preset (`tiny`, `lcm-dreamshaper`, ...) or a local diffusers folder onto `device`.

    `controlnet` names ControlNet kinds (pipelines/control): `"canny"`, `"canny,depth"` or a list; each adds its
    ControlNet of the model's family and its preprocessor (tiny offline ones for the built-in models).
    `tiny_vae` swaps the VAE for TAESD / TAESDXL (random weights of that shape for the built-in models).
    `lora_dir`: every LoRA file in it becomes a style (pipelines/styles.py), switched per frame.
    """
    from .control import control_kind, parse_kinds

    resolved = resolve_device(device)
    dtype = dtype or default_dtype(resolved)
    kinds = parse_kinds(controlnet)
    if Path(model).is_dir():
        preset = _preset_for_local_folder(Path(model))
        parts = _pipeline_parts(preset, Path(model), {"local_files_only": True})
    else:
        preset = get_preset(model)
        if preset.builtin:
            parts = _builtin_parts(preset, resolved, dtype)
        else:
            # Read in the target dtype: half the host memory and time for fp16 on CUDA.
            fetch_args = {"dtype": dtype}
            repo = preset.repo
            assert repo is not None, f"{preset.name}: a preset is built in or names its repository"
            parts = fetch_weights(
                preset.name,
                preset.repositories,
                lambda local: _pipeline_parts(preset, repo, {**local, **fetch_args}),
            )
    parts["controlnets"] = {kind: _controlnet(control_kind(kind), preset, parts) for kind in kinds}
    builtin = preset.builtin is not None
    parts["preprocessors"] = {kind: control_kind(kind).load_preprocessor(builtin, resolved, dtype) for kind in kinds}
    if tiny_vae:
        parts["vae"] = _tiny_vae(preset, dtype)
    components = ModelComponents(preset=preset, device=resolved, dtype=dtype, model_id=model, **parts)
    components.to(resolved, dtype)
    if lora_dir is not None:
        from .styles import StyleLibrary

        # After the move: the adapters take the device and dtype of the layers they attach to.
        components.styles = StyleLibrary.load(components, lora_dir)
    return components


def _builtin_parts(preset: ModelPreset, device: torch.device, dtype: torch.dtype) -> dict:
    from . import tiny
    from .toy.model import toy_parts

    builders: dict[str, Callable[[], dict]] = {
        "tiny": toy_parts,
        "tiny-random": tiny.tiny_sd15_parts,
        "tiny-lcm-lora": tiny.tiny_lcm_lora_parts,
        "tiny-sdxl": tiny.tiny_sdxl_parts,
        "tiny-sdxl-lcm-lora": lambda: tiny.tiny_lcm_lora_parts(sdxl=True),
        "sd15-arch": lambda: tiny.sd15_arch_parts(device, dtype),
        "sdxl-arch": lambda: tiny.sdxl_arch_parts(device, dtype),
    }
    if preset.builtin not in builders:
        raise ValueError(f"preset {preset.name!r} names an unknown built-in model {preset.builtin!r}")
    return builders[preset.builtin]()


def _controlnet(kind: ControlKind, preset: ModelPreset, parts: dict):
    """The ControlNet of `kind` for this model's family: built in code for built-in models (seeded per kind, so two
    kinds' stand-ins differ), else fetched."""
    from diffusers import ControlNetModel

    from . import tiny

    sdxl = preset.family == "sdxl"
    if preset.builtin == "tiny":
        from .toy.model import toy_controlnet

        return toy_controlnet(parts["unet"], seed_offset=kind.stand_in_seed)
    if preset.builtin and preset.builtin.startswith("tiny"):
        return tiny.tiny_controlnet(sdxl=sdxl, seed=tiny.TINY_SEED + 1 + kind.stand_in_seed)
    if preset.builtin:  # *-arch: the real shapes, from the UNet's config, random weights
        unet = parts["unet"]
        torch.manual_seed(tiny.TINY_SEED + 1 + kind.stand_in_seed)
        with torch.device(unet.device):
            controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        # diffusers wraps `to` in functools.wraps, whose type leaves `self` unbound.
        return controlnet.to(dtype=unet.dtype)  # pyright: ignore[reportCallIssue]
    repo = kind.weights[preset.family]
    dtype = parts["unet"].dtype
    return fetch_weights(
        f"{kind.name} ControlNet", [repo], lambda local: ControlNetModel.from_pretrained(repo, dtype=dtype, **local)
    )


def _tiny_vae(preset: ModelPreset, dtype: torch.dtype):
    from diffusers import AutoencoderTiny

    from . import tiny

    if preset.builtin and preset.builtin.startswith("tiny"):
        return tiny.tiny_taesd()
    if preset.builtin:  # *-arch: TAESD's real shape
        torch.manual_seed(tiny.TINY_SEED)
        return AutoencoderTiny()
    repo = TINY_VAES[preset.family]
    return fetch_weights("tiny VAE", [repo], lambda local: AutoencoderTiny.from_pretrained(repo, dtype=dtype, **local))


def _pipeline_parts(preset: ModelPreset, source: str | Path, hub_args: dict[str, Any]) -> dict:
    """The parts of a diffusers pipeline folder or repository, with the preset's UNet, VAE and LoRA applied."""
    from diffusers import AutoencoderKL, DiffusionPipeline, LCMScheduler, UNet2DConditionModel

    replacements: dict[str, Any] = {}
    if preset.unet:
        replacements["unet"] = UNet2DConditionModel.from_pretrained(preset.unet, **hub_args)
    if preset.vae:
        replacements["vae"] = AutoencoderKL.from_pretrained(preset.vae, **hub_args)
    if preset.family == "sd15":
        replacements.update(safety_checker=None, requires_safety_checker=False)
    pipe = DiffusionPipeline.from_pretrained(str(source), **hub_args, **replacements)
    names = PIPELINE_PARTS[:-1] + (SDXL_PARTS if preset.family == "sdxl" else ())
    parts = {name: getattr(pipe, name) for name in names}
    parts["scheduler"] = LCMScheduler.from_config(pipe.scheduler.config)
    if preset.lora:
        lora = preset.lora
        if hub_args.get("local_files_only"):
            from huggingface_hub import snapshot_download

            lora = snapshot_download(preset.lora, local_files_only=True)
        fuse_lora(parts, lora, sdxl=preset.family == "sdxl")
    return parts


def _preset_for_local_folder(folder: Path) -> ModelPreset:
    """A diffusers folder: an LCM UNet if it has the w-embedding, else a Turbo-like model with no guidance."""
    unet_config = folder / "unet" / "config.json"
    index = folder / "model_index.json"
    if not unet_config.is_file() or not index.is_file():
        raise ModelUnavailableError(f"{folder} is not a diffusers folder: model_index.json or unet/config.json missing")
    sdxl = "XL" in json.loads(index.read_text()).get("_class_name", "")
    embedded = json.loads(unet_config.read_text()).get("time_cond_proj_dim") is not None
    lcm_img2img = embedded and not sdxl
    return ModelPreset(
        name=folder.name,
        family="sdxl" if sdxl else "sd15",
        guidance=GuidanceKind.EMBEDDED if embedded else GuidanceKind.NONE,
        schedule=ScheduleKind.LCM_IMG2IMG if lcm_img2img else ScheduleKind.SD_IMG2IMG,
        default_guidance=8.0 if embedded else 0.0,
        description=f"local folder {folder}",
    )
