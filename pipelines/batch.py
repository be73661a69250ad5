"""The device side of frames as one batch: diffusers' arithmetic, with every per-stream value carried per sample.

Frames of several streams share one UNet call when they share what the call's shape and control flow depend on
(`batch_key`): the model, the processing size, the mode, the number of steps that run, which ControlNets run,
and classifier-free guidance on or off. Everything else rides along per sample: prompt embeddings (mid-transition
too), timesteps and LCM coefficients (strength), the guidance embedding and scale, the seed's noise, the
ControlNet images and scales. A single frame is a batch of one, through the same code.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from .components import ModelComponents
from .conditioning import PromptEmbeds, sdxl_time_ids
from .frame import FrameRequest
from .noise import SeededNoise
from .params import NO_STYLE
from .temporal import carry_into_inputs, carry_into_outputs


def batch_key(request: FrameRequest) -> Hashable:
    """Frames with equal keys can run as one batch."""
    plan = request.plan
    return (
        id(plan.components),
        request.width,
        request.height,
        plan.txt2img,
        len(plan.schedule.steps),
        tuple(plan.control_scales),
        plan.style,  # a style is a state of the shared UNet: one per call
        plan.classifier_free,
    )


@torch.inference_mode()
def stylise_batch(
    requests: Sequence[FrameRequest], on_device: Sequence[dict[str, torch.Tensor]] | None = None
) -> list[torch.Tensor]:
    """Each request's picture, uint8 H x W x 3 at its output size (or the processing size), on the device.

    `on_device`: each request's host tensors already on the device (the double-buffered executor uploads them);
    without it they are copied here.
    """
    if len({batch_key(request) for request in requests}) != 1:
        raise ValueError(
            "these frames cannot share a batch: model, size, mode, steps, ControlNets, style or CFG differ"
        )
    if on_device is None:
        device = requests[0].plan.components.device
        on_device = [{name: t.to(device) for name, t in r.host_tensors.items()} for r in requests]
    images = render_batch(requests, on_device)
    pictures = []
    for request, image in zip(requests, images, strict=True):
        image = image.unsqueeze(0)
        size = request.output_size
        if size is not None and image.shape[-2:] != (size[1], size[0]):
            image = F.interpolate(image, size=(size[1], size[0]), mode="bilinear", align_corners=False)
        # Rounded as diffusers' numpy_to_pil does.
        pictures.append((image[0] * 255).round().to(torch.uint8).permute(1, 2, 0))
    return pictures


def render_batch(requests: Sequence[FrameRequest], on_device: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The float pictures in [0, 1], B x 3 x H x W, before quantisation: the numbered steps of diffusers'
    pipelines."""
    plans = [request.plan for request in requests]
    first, c = plans[0], plans[0].components
    width, height = requests[0].width, requests[0].height
    guided = first.classifier_free  # the UNet sees [negative..., positive...]: twice the frames

    # 1. Text conditioning, each frame at its own point of its prompt transition.
    positives = [plan.prompt.at(request.prompt_progress) for plan, request in zip(plans, requests, strict=True)]
    embeds = PromptEmbeds.cat(([_required(plan.negative) for plan in plans] if guided else []) + positives)

    # 2. The seeds' noise, and the starting latents: noise (txt2img), or the camera encoded and noised to t0.
    temporal = [request.temporal for request in requests]  # temporal.py: None where smoothing is off
    smoothed = any(frame is not None for frame in temporal)
    if first.txt2img:
        noise = [plan.scaled(tensors["noise"].unbind()) for plan, tensors in zip(plans, on_device, strict=True)]
        latents = _cat([_required(n.first) for n in noise])
    else:
        noise = [plan.img2img_noise((height, width)) for plan in plans]
        images = _cat([_model_input(c, tensors["pixels"], width, height) for tensors in on_device])
        clean = _encode(c, images, noise)
        if smoothed:
            noise, clean = carry_into_inputs(temporal, on_device, noise, clean)
        sqrt_alpha = _per_sample([plan.schedule.noise_sqrt_alpha for plan in plans])
        latents = sqrt_alpha * clean + _cat([_required(n.start_term) for n in noise])

    # 3. ControlNets: each frame's control images and scales (a batch only holds frames that run the same kinds).
    controls = []
    for kind in first.control_scales:
        image = _cat([_control_input(c, tensors[f"control_{kind}"]) for tensors in on_device])
        scales = _per_sample([plan.control_scale_tensors[kind] for plan in plans])
        controls.append((c.controlnets[kind], _twice(image) if guided else image, _twice(scales) if guided else scales))

    # 4. Conditions the UNet takes besides the text: the LCM guidance embedding, SDXL's pooled text and size ids.
    timestep_cond = None
    if first.timestep_cond is not None:
        timestep_cond = _cat([_required(plan.timestep_cond) for plan in plans])
        timestep_cond = _twice(timestep_cond) if guided else timestep_cond
    added = None
    if c.is_sdxl:
        count = len(plans) * (2 if guided else 1)
        time_ids = first.time_ids.get((width, height, count))
        if time_ids is None:
            time_ids = first.time_ids[(width, height, count)] = sdxl_time_ids(width, height, count, c.device, c.dtype)
        added = {"text_embeds": embeds.pooled, "time_ids": time_ids}
    guidance = _per_sample([plan.guidance_tensor for plan in plans]) if guided else None
    if c.styles is not None:  # the batch's style on the shared UNet (a no-op when the last batch had it too)
        c.styles.activate(*(first.style or (NO_STYLE, 0.0)))

    # 5. The LCM steps, each with every frame's own timestep and boundary coefficients.
    denoised = latents
    for index, step in enumerate(first.schedule.steps):
        steps = [plan.schedule.steps[index] for plan in plans]
        timesteps = torch.stack([s.timestep.reshape(()) for s in steps])
        model_input = _twice(latents) if guided else latents
        timesteps = _twice(timesteps) if guided else timesteps
        prediction = _predict_noise(c, model_input, timesteps, embeds, added, timestep_cond, controls)
        if guidance is not None:  # guided
            uncond, cond = prediction.chunk(2)
            prediction = uncond + guidance * (cond - uncond)
        coefficient = {name: _per_sample([getattr(s, name) for s in steps]) for name in _COEFFICIENTS}
        predicted_original = (latents - coefficient["sqrt_beta"] * prediction) / coefficient["sqrt_alpha"]
        denoised = coefficient["c_out"] * predicted_original + coefficient["c_skip"] * latents
        if step.is_last:
            latents = denoised
        else:
            latents = coefficient["sqrt_alpha_prev"] * denoised + _cat([_required(n.step_terms[index]) for n in noise])

    if smoothed:
        denoised = carry_into_outputs(temporal, denoised)

    # 6. Decode.
    latents = denoised / c.vae.config["scaling_factor"]
    # diffusers annotates decode as taking a FloatTensor and returning its output or a tuple whatever return_dict is.
    decoded = _cat([c.vae.decode(chunk).sample for chunk in _vae_chunks(c, latents)])  # pyright: ignore[reportArgumentType, reportAttributeAccessIssue]
    return (decoded / 2 + 0.5).clamp(0, 1)


_COEFFICIENTS = ("sqrt_alpha", "sqrt_beta", "c_skip", "c_out", "sqrt_alpha_prev")


def _model_input(c: ModelComponents, pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """A camera frame (uint8 H x W x 3 on the device) as the VAE takes it: 1 x 3 x height x width in [-1, 1]."""
    # Channels-last, like the modules (see ModelComponents.to). Then the same float32 arithmetic as diffusers'
    # VaeImageProcessor: x / 255, then 2x - 1.
    image = pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
    if image.shape[-2:] != (height, width):
        image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    image = image.contiguous(memory_format=torch.channels_last)
    return (2.0 * image - 1.0).to(c.dtype)


def _control_input(c: ModelComponents, control: torch.Tensor) -> torch.Tensor:
    """A control image (uint8 on the device) in [0, 1], unnormalised, as diffusers' control image processor
    leaves it."""
    image = control.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
    return image.to(c.dtype).contiguous(memory_format=torch.channels_last)


def _vae_chunks(c, tensor: torch.Tensor) -> list[torch.Tensor]:
    """How the VAE takes a batch: whole on a GPU; a frame at a time on the CPU, where the VAE's large activations
    (256 px, batch 4) fall out of cache: measured on the 2-core CPU, one thread, 4 frames at 256 px, the batched
    decoder took 1.05 s against 0.91 s one frame at a time (and the encoder 0.43 against 0.38), while the UNet
    batched took 0.78 s against 0.98 s."""
    return [tensor] if c.device.type != "cpu" else list(tensor.split(1))


def _encode(c, images: torch.Tensor, noise: list[SeededNoise]) -> torch.Tensor:
    """The clean latents, scaled: the posterior sampled with each seed's draw, where the VAE has one."""
    encoded = [c.vae.encode(chunk) for chunk in _vae_chunks(c, images)]
    if c.vae_has_posterior:
        mean = _cat([e.latent_dist.mean for e in encoded])
        std = _cat([e.latent_dist.std for e in encoded])
        latents = mean + std * _cat([_required(n.first) for n in noise])
    else:
        latents = _cat([e.latents for e in encoded])
    return c.vae.config["scaling_factor"] * latents


def _predict_noise(c, model_input, timesteps, embeds: PromptEmbeds, added, timestep_cond, controls) -> torch.Tensor:
    """The UNet's noise prediction, with the running ControlNets' residuals added: summed in load order, as
    diffusers' MultiControlNetModel sums them."""
    residuals: dict[str, Any] = {}
    for index, (controlnet, image, scale) in enumerate(controls):
        down, mid = controlnet(
            model_input,
            timesteps,
            encoder_hidden_states=embeds.hidden,
            controlnet_cond=image,
            conditioning_scale=scale,  # per sample: the residuals are multiplied by it, as by a float
            guess_mode=False,
            added_cond_kwargs=added,
            return_dict=False,
        )
        if index > 0:
            down = [total + new for total, new in zip(residuals["down_block_additional_residuals"], down, strict=True)]
            mid = residuals["mid_block_additional_residual"] + mid
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return c.unet(
        model_input,
        timesteps,
        encoder_hidden_states=embeds.hidden,
        timestep_cond=timestep_cond,
        added_cond_kwargs=added,
        return_dict=False,
        **residuals,
    )[0]


def _per_sample(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """0-d values of each frame as B x 1 x 1 x 1, to scale each frame's tensors by its own."""
    return torch.stack([value.reshape(()) for value in values]).reshape(-1, 1, 1, 1)


def _cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Frames' tensors along the batch; one frame's as it is."""
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


T = TypeVar("T")


def _required(value: T | None) -> T:
    """A frame's value that its mode sets (noise terms, negative prompt, guidance embedding): the plan types it
    optional for the modes without it, and a batch holds one mode."""
    assert value is not None, "a frame lacks a value its mode sets"
    return value


def _twice(tensor: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance runs every frame twice: [negatives..., positives...], as diffusers batches it."""
    return torch.cat([tensor, tensor])
