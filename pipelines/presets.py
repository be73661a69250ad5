"""Model presets: what each `--model` name loads, and how its guidance and schedule behave."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class GuidanceKind(str, Enum):
    """How a model family takes `guidance_scale`."""

    # LCM-distilled UNet: guidance enters through the w-embedding (`time_cond_proj_dim`); batch never doubled.
    EMBEDDED = "embedded"
    # LCM-LoRA on a base model: classifier-free guidance with the negative prompt, only when scale > 1.
    CLASSIFIER_FREE = "classifier_free"
    # Adversarially distilled (Turbo): no guidance at all.
    NONE = "none"


class ScheduleKind(str, Enum):
    """Which diffusers img2img pipeline the timestep schedule follows."""

    # LatentConsistencyModelImg2ImgPipeline: strength shortens the LCM origin schedule; `steps` steps always run.
    LCM_IMG2IMG = "lcm_img2img"
    # StableDiffusionImg2ImgPipeline: `steps` spaced over the full schedule, strength keeps the last int(steps*s).
    SD_IMG2IMG = "sd_img2img"


@dataclass(frozen=True)
class ModelPreset:
    """One `--model` name: the repositories it needs and its sampling defaults."""

    name: str
    family: str  # "sd15" or "sdxl"
    guidance: GuidanceKind
    schedule: ScheduleKind
    repo: str | None = None  # full diffusers pipeline repository (or the base model for a LoRA)
    lora: str | None = None  # LCM-LoRA repository fused into the base UNet
    unet: str | None = None  # a distilled UNet repository that replaces the base model's
    vae: str | None = None  # a VAE repository that replaces the base model's
    builtin: str | None = None  # name of a model built in code (no download)
    default_steps: int = 2
    default_guidance: float = 1.0
    default_strength: float = 0.5
    default_prompt: str | None = None  # None: StreamParams' own
    description: str = ""
    max_steps: int = 4

    @property
    def repositories(self) -> list[str]:
        """Hub repositories this preset reads, in load order."""
        return [r for r in (self.repo, self.unet, self.vae, self.lora) if r]


SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
# The SDXL VAE overflows in fp16; this fine-tune does not, so no fp32 upcast is needed per frame.
SDXL_FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="lcm-dreamshaper",
            family="sd15",
            guidance=GuidanceKind.EMBEDDED,
            schedule=ScheduleKind.LCM_IMG2IMG,
            repo="SimianLuo/LCM_Dreamshaper_v7",
            default_steps=2,
            default_guidance=8.0,
            description="SD1.5 LCM (Dreamshaper v7), guidance through the w-embedding; default on CUDA",
        ),
        ModelPreset(
            name="lcm-lora-sd15",
            family="sd15",
            guidance=GuidanceKind.CLASSIFIER_FREE,
            schedule=ScheduleKind.SD_IMG2IMG,
            repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            lora="latent-consistency/lcm-lora-sdv1-5",
            default_steps=4,
            default_guidance=1.0,
            description="SD1.5 base with the LCM-LoRA fused; classifier-free guidance only when guidance > 1",
        ),
        ModelPreset(
            name="sd-turbo",
            family="sd15",
            guidance=GuidanceKind.NONE,
            schedule=ScheduleKind.SD_IMG2IMG,
            repo="stabilityai/sd-turbo",
            default_steps=2,
            default_guidance=0.0,
            description="SD-Turbo: one effective step (steps x strength), no guidance",
        ),
        ModelPreset(
            name="tiny",
            family="sd15",
            guidance=GuidanceKind.EMBEDDED,
            schedule=ScheduleKind.LCM_IMG2IMG,
            builtin="tiny",
            default_steps=2,
            default_guidance=8.0,
            # What a newcomer sees first on a CPU. Measured through StreamPipeline on 12 frames of Chromium's fake
            # camera (a bright green pie on a darker green card) at 256x192, 2 steps: the real presets' "an oil
            # painting, vivid colors" holds two of the toy's mildest words and stays a soft green field (13/255
            # from the camera); "fire" maps brightness onto a red-to-yellow ramp, a style that keeps every shape
            # (79/255 from the camera, grey correlation 0.92). 0.6 is a trained strength and the nearest to the
            # style's own picture: 19/255 off it, against 30 at 0.5, 21 at 0.7, 35 and 39 at the untrained 0.55
            # and 0.65, and 29 at one step. The page's before/after: scripts/screenshots.py, docs/models.md.
            default_strength=0.6,
            default_prompt="a painting in fire colors",
            description="toy LCM trained in the repository, shipped in the package; offline, shows the camera "
            "restyled by style words (watercolor, neon, night, pencil, fire, ocean, ...)",
        ),
        ModelPreset(
            name="tiny-random",
            family="sd15",
            guidance=GuidanceKind.EMBEDDED,
            schedule=ScheduleKind.LCM_IMG2IMG,
            builtin="tiny-random",
            default_steps=2,
            default_guidance=8.0,
            description="built in code, seeded random weights, offline, for parity tests; output is noise-like",
        ),
        ModelPreset(
            name="tiny-lcm-lora",
            family="sd15",
            guidance=GuidanceKind.CLASSIFIER_FREE,
            schedule=ScheduleKind.SD_IMG2IMG,
            builtin="tiny-lcm-lora",
            default_steps=4,
            default_guidance=1.0,
            description="tiny base UNet with a tiny random LoRA fused through load_lora_weights; offline",
        ),
        ModelPreset(
            name="sd15-arch",
            family="sd15",
            guidance=GuidanceKind.EMBEDDED,
            schedule=ScheduleKind.LCM_IMG2IMG,
            builtin="sd15-arch",
            default_steps=1,
            default_guidance=8.0,
            description="real SD1.5 LCM shapes with random weights, for speed measurements; no download",
        ),
        ModelPreset(
            name="lcm-sdxl",
            family="sdxl",
            guidance=GuidanceKind.EMBEDDED,
            schedule=ScheduleKind.SD_IMG2IMG,
            repo=SDXL_BASE,
            unet="latent-consistency/lcm-sdxl",
            vae=SDXL_FP16_VAE,
            default_steps=4,
            default_guidance=8.0,
            description="SDXL with the LCM-distilled UNet, as in the LCM guide (4 steps, guidance 8)",
        ),
        ModelPreset(
            name="lcm-lora-sdxl",
            family="sdxl",
            guidance=GuidanceKind.CLASSIFIER_FREE,
            schedule=ScheduleKind.SD_IMG2IMG,
            repo=SDXL_BASE,
            lora="latent-consistency/lcm-lora-sdxl",
            vae=SDXL_FP16_VAE,
            default_steps=4,
            default_guidance=1.0,
            description="SDXL base with the LCM-LoRA fused; classifier-free guidance only when guidance > 1",
        ),
        ModelPreset(
            name="sdxl-turbo",
            family="sdxl",
            guidance=GuidanceKind.NONE,
            schedule=ScheduleKind.SD_IMG2IMG,
            repo="stabilityai/sdxl-turbo",
            vae=SDXL_FP16_VAE,
            default_steps=2,
            default_guidance=0.0,
            description="SDXL-Turbo: one effective step (steps x strength), no guidance",
        ),
        ModelPreset(
            name="tiny-sdxl",
            family="sdxl",
            guidance=GuidanceKind.EMBEDDED,
            schedule=ScheduleKind.SD_IMG2IMG,
            builtin="tiny-sdxl",
            default_steps=4,
            default_guidance=8.0,
            description="tiny SDXL-shaped LCM model built in code (two text encoders); offline, noise-like output",
        ),
        ModelPreset(
            name="tiny-sdxl-lcm-lora",
            family="sdxl",
            guidance=GuidanceKind.CLASSIFIER_FREE,
            schedule=ScheduleKind.SD_IMG2IMG,
            builtin="tiny-sdxl-lcm-lora",
            default_steps=4,
            default_guidance=1.0,
            description="tiny SDXL base with a tiny random LoRA fused through load_lora_weights; offline",
        ),
        ModelPreset(
            name="sdxl-arch",
            family="sdxl",
            guidance=GuidanceKind.EMBEDDED,
            schedule=ScheduleKind.SD_IMG2IMG,
            builtin="sdxl-arch",
            default_steps=2,
            default_guidance=8.0,
            description="real SDXL LCM shapes with random weights, for speed measurements; no download",
        ),
    )
}

# Distilled VAEs: encode and decode in a fraction of the full VAE's time, at some cost in detail.
TINY_VAES: dict[str, str] = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}

DEFAULT_CUDA_PRESET = "lcm-dreamshaper"
OFFLINE_PRESET = "tiny"


def get_preset(name: str) -> ModelPreset:
    """The preset called `name`, or a ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown model preset {name!r}; known presets: {known}") from None
