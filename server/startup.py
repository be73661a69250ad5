"""What a serving process does before it serves (a lone server, each Ray Serve replica): WebRTC's process-wide
settings, and the model that the settings ask for, loaded on its device."""

from __future__ import annotations

import logging
import sys

from pipelines import ModelComponents, load_model, resolve_device
from pipelines.presets import DEFAULT_CUDA_PRESET, OFFLINE_PRESET

from .config import ServeSettings
from .media.ice import restrict_ice_to_loopback

log = logging.getLogger("lcmlive")

TINY_BANNER = f"""\
  no CUDA device: serving the built-in `{OFFLINE_PRESET}` model, a toy trained in this repository. It shows your
  camera restyled by the style words of the prompt (watercolor, neon, night, pencil, fire, ocean, sepia, ink,
  pop, negative, ...), softer than the camera; it draws nothing new. For a real picture, run on a CUDA machine
  with the weights in the Hugging Face cache, e.g. `hf download SimianLuo/LCM_Dreamshaper_v7` and then
  `lcmlive serve --model {DEFAULT_CUDA_PRESET}`."""


def prepare_media(settings: ServeSettings) -> None:
    """Process-wide WebRTC settings (each Ray Serve replica makes them in its own process)."""
    # aioice logs four lines per connection at INFO: a busy show would bury everything else.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    if settings.ice_loopback:
        restrict_ice_to_loopback()


def load_served_model(settings: ServeSettings) -> ModelComponents:
    """The model the settings ask for, on its device (a Ray Serve replica loads its own)."""
    device = resolve_device(settings.device)
    model_name = settings.model
    if model_name == "auto":
        model_name = DEFAULT_CUDA_PRESET if device.type == "cuda" else OFFLINE_PRESET
    if model_name == OFFLINE_PRESET and device.type != "cuda":
        print(TINY_BANNER, file=sys.stderr)
    log.info("loading model %s on %s ...", model_name, device)
    model = load_model(
        model_name,
        device=device,
        controlnet=settings.controlnet,
        tiny_vae=settings.tiny_vae,
        lora_dir=settings.lora_dir,
    )
    with_controlnet = f" + {' + '.join(settings.controlnet)} ControlNet" if settings.controlnet else ""
    with_styles = f", styles: {', '.join(model.style_names)}" if model.style_names else ""
    dtype = str(model.dtype).removeprefix("torch.")
    log.info("model ready: %s%s (%s)%s", model_name, with_controlnet, dtype, with_styles)
    return model
