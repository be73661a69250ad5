"""ControlNet kinds in the stream pipeline equal diffusers' ControlNet pipelines given the same control images: depth
alone, and Canny with depth (MultiControlNetModel), for both families, in txt2img and img2img."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
)

from pipelines import StreamPipeline, load_model
from pipelines.control import Preprocessor
from pipelines.synthetic import moving_pattern
from pipelines.tiny import save_tiny_lora, tiny_sd15_parts, tiny_sdxl_parts

TOLERANCE = 1e-4
SEED = 5
PROMPT = "a dancer in a red room"
WIDTH, HEIGHT = 128, 64
SD15_EXTRA = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return moving_pattern(WIDTH, HEIGHT, 4)


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory) -> dict[str, str]:
    return {
        "sd15": str(save_tiny_lora(tmp_path_factory.mktemp("lora15"))),
        "sdxl": str(save_tiny_lora(tmp_path_factory.mktemp("loraxl"), sdxl=True)),
    }


def stream_and_reference(model: str, kinds: tuple[str, ...], reference_cls, parts: dict, lora: str | None = None):
    """The stream pipeline on `model` with `kinds` loaded, and diffusers' pipeline on fresh equal parts with the same
    (seeded) ControlNets: one, or a list (MultiControlNetModel) in load order."""
    components = load_model(model, device="cpu", controlnet=kinds)
    nets = list(load_model(model, device="cpu", controlnet=kinds).controlnets.values())
    extra = {} if "text_encoder_2" in parts else SD15_EXTRA
    reference = reference_cls(**parts, controlnet=nets[0] if len(nets) == 1 else nets, **extra)
    if lora:
        reference.load_lora_weights(lora)
    reference.set_progress_bar_config(disable=True)
    return StreamPipeline(components), reference


def control_images(stream: StreamPipeline, frame: np.ndarray, kinds: tuple[str, ...]) -> list[PIL.Image.Image]:
    """What each kind's preprocessor makes of the frame: the same control images for both pipelines."""
    preprocessors = stream.components.preprocessors
    return [PIL.Image.fromarray(preprocessors[kind](frame, stream.params)) for kind in kinds]


def run(stream: StreamPipeline, reference, frame, kinds, scales, mode: str, **params) -> tuple[np.ndarray, np.ndarray]:
    stream.update(
        prompt=PROMPT,
        seed=SEED,
        temporal_smoothing=0.0,
        mode=mode,
        **{f"controlnet_scale_{kind}": scale for kind, scale in zip(kinds, scales, strict=True)},
        **params,
    )
    actual = stream.render(frame, size=(WIDTH, HEIGHT))[0].permute(1, 2, 0).numpy()
    images = control_images(stream, frame, kinds)
    images = images[0] if len(images) == 1 else images
    kwargs = {
        "num_inference_steps": params["steps"],
        "guidance_scale": params["guidance_scale"],
        "controlnet_conditioning_scale": scales[0] if len(scales) == 1 else list(scales),
    }
    if mode == "img2img":
        kwargs.update(image=PIL.Image.fromarray(frame), control_image=images, strength=params["strength"])
    else:
        kwargs.update(image=images, width=WIDTH, height=HEIGHT)
    generator = torch.Generator().manual_seed(SEED)
    expected = reference(PROMPT, generator=generator, output_type="np", **kwargs).images[0]
    assert actual.shape == expected.shape == (HEIGHT, WIDTH, 3)
    return actual, expected


@pytest.mark.parametrize(("kinds", "scales"), [(("depth",), (0.8,)), (("canny", "depth"), (0.6, 0.9))])
@pytest.mark.slow
def test_sd15_controlnet_txt2img_parity_with_stable_diffusion_controlnet(frame, kinds, scales):
    stream, reference = stream_and_reference("tiny-random", kinds, StableDiffusionControlNetPipeline, tiny_sd15_parts())
    actual, expected = run(stream, reference, frame, kinds, scales, "txt2img", steps=2, guidance_scale=8.0)
    assert np.abs(actual - expected).max() <= TOLERANCE


# As in test_parity_guide: the ControlNet img2img pipelines pass no w-embedding, so img2img runs on LCM-LoRA models.
@pytest.mark.parametrize(("kinds", "scales"), [(("depth",), (0.8,)), (("canny", "depth"), (0.5, 1.2))])
@pytest.mark.parametrize("guidance", [1.0, 1.5])
@pytest.mark.slow
def test_sd15_controlnet_img2img_parity_with_controlnet_img2img(frame, lora_dirs, kinds, scales, guidance):
    parts = tiny_sd15_parts(guidance_embedding=False)
    stream, reference = stream_and_reference(
        "tiny-lcm-lora", kinds, StableDiffusionControlNetImg2ImgPipeline, parts, lora_dirs["sd15"]
    )
    actual, expected = run(
        stream, reference, frame, kinds, scales, "img2img", steps=4, strength=0.5, guidance_scale=guidance
    )
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize(("kinds", "scales"), [(("depth",), (0.7,)), (("canny", "depth"), (0.5, 0.5))])
@pytest.mark.slow
def test_sdxl_controlnet_txt2img_parity_with_sdxl_controlnet(frame, kinds, scales):
    stream, reference = stream_and_reference("tiny-sdxl", kinds, StableDiffusionXLControlNetPipeline, tiny_sdxl_parts())
    actual, expected = run(stream, reference, frame, kinds, scales, "txt2img", steps=2, guidance_scale=8.0)
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize(("kinds", "scales"), [(("depth",), (0.9,)), (("canny", "depth"), (0.4, 0.8))])
@pytest.mark.slow
def test_sdxl_controlnet_img2img_parity_with_sdxl_controlnet_img2img(frame, lora_dirs, kinds, scales):
    parts = tiny_sdxl_parts(guidance_embedding=False)
    stream, reference = stream_and_reference(
        "tiny-sdxl-lcm-lora", kinds, StableDiffusionXLControlNetImg2ImgPipeline, parts, lora_dirs["sdxl"]
    )
    actual, expected = run(
        stream, reference, frame, kinds, scales, "img2img", steps=4, strength=0.75, guidance_scale=0.0
    )
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.slow
def test_each_controlnet_moves_the_picture_and_a_zero_scale_skips_its_call(frame):
    """Guards the parity tests against passing vacuously: depth and Canny each change the picture; a kind at scale
    0 is not called at all."""
    components = load_model("tiny-random", device="cpu", controlnet="canny,depth")
    calls = {kind: 0 for kind in components.control_kinds}
    for kind, net in components.controlnets.items():
        net.register_forward_pre_hook(lambda *_, kind=kind: calls.__setitem__(kind, calls[kind] + 1))
    stream = StreamPipeline(components)

    def picture(canny: float, depth: float) -> np.ndarray:
        stream.update(mode="txt2img", seed=SEED, controlnet_scale_canny=canny, controlnet_scale_depth=depth)
        return stream.render(frame, size=(WIDTH, HEIGHT))[0].numpy()

    neither, canny, depth, both = picture(0, 0), picture(1, 0), picture(0, 1), picture(1, 1)
    for moved in (canny, depth, both):
        assert np.abs(moved - neither).max() > 100 * TOLERANCE
    assert np.abs(both - canny).max() > 100 * TOLERANCE and np.abs(both - depth).max() > 100 * TOLERANCE
    steps = stream.steps_per_frame
    assert calls == {"canny": 2 * steps, "depth": 2 * steps}


class Counted:
    """A preprocessor that records the shape of each frame it is given."""

    def __init__(self, inner: Preprocessor) -> None:
        self.inner, self.modules = inner, inner.modules
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, frame: np.ndarray, params: Any) -> np.ndarray:
        self.calls.append(frame.shape)
        return self.inner(frame, params)


def test_the_control_image_on_view_is_made_only_when_someone_watches(frame):
    """control_view names a kind that does not run: its preprocessor runs for the view alone, and not at all while
    nobody watches the control track."""
    components = load_model("tiny-random", device="cpu", controlnet="canny,depth")
    depth = components.preprocessors["depth"]
    counted = Counted(depth)
    calls = counted.calls
    components.preprocessors["depth"] = counted
    stream = StreamPipeline(components)
    stream.update(controlnet_scale_canny=0.5, controlnet_scale_depth=0.0, control_view="depth")
    shown = stream.prepare(frame, (WIDTH, HEIGHT))
    assert shown.control_image is not None
    assert calls == [(HEIGHT, WIDTH, 3)] and np.array_equal(shown.control_image, depth(frame, stream.params))
    assert set(shown.host_tensors) == {"pixels", "control_canny"}  # depth's ControlNet does not run
    stream.control_shown = False
    assert stream.prepare(frame, (WIDTH, HEIGHT)).control_image is None and len(calls) == 1
    stream.update(control_view="auto")  # auto: the running kind with the largest scale
    stream.control_shown = True
    shown = stream.prepare(frame, (WIDTH, HEIGHT)).control_image
    assert shown is not None and np.array_equal(shown, components.preprocessors["canny"](frame, stream.params))
