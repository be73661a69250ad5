"""The LCM guide's four SDXL examples (and ControlNet img2img for both families) in the stream pipeline equal the
diffusers reference pipelines given the same components, seed and input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from pipelines import StreamPipeline, load_model
from pipelines.control.canny import canny_map
from pipelines.synthetic import moving_pattern
from pipelines.tiny import save_tiny_lora, tiny_controlnet, tiny_sd15_parts, tiny_sdxl_parts

TOLERANCE = 1e-4
SEED = 3
PROMPT = "a lighthouse in a storm"
WIDTH, HEIGHT = 128, 64


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return moving_pattern(WIDTH, HEIGHT, 9)


@pytest.fixture(scope="module")
def canny(frame) -> PIL.Image.Image:
    return PIL.Image.fromarray(canny_map(frame, 100, 200))


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory) -> dict[str, str]:
    return {
        "sd15": str(save_tiny_lora(tmp_path_factory.mktemp("lora15"))),
        "sdxl": str(save_tiny_lora(tmp_path_factory.mktemp("loraxl"), sdxl=True)),
    }


def reference(cls, parts: dict, lora: str | None = None, **extra):
    pipe = cls(**parts, **extra)
    if lora:
        pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(pipe, **kwargs) -> np.ndarray:
    return pipe(PROMPT, generator=torch.Generator().manual_seed(SEED), output_type="np", **kwargs).images[0]


def run_stream(model: str, frame: np.ndarray | None, controlnet: str | None = None, **params) -> np.ndarray:
    pipe = StreamPipeline(load_model(model, device="cpu", controlnet=controlnet))
    pipe.update(prompt=PROMPT, seed=SEED, temporal_smoothing=0.0, **params)
    return pipe.render(frame, size=(WIDTH, HEIGHT))[0].permute(1, 2, 0).numpy()


def assert_parity(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.slow
def test_sdxl_lcm_txt2img_parity_with_stable_diffusion_xl_pipeline(steps):
    pipe = reference(StableDiffusionXLPipeline, tiny_sdxl_parts())
    expected = run_reference(pipe, num_inference_steps=steps, guidance_scale=8.0, width=WIDTH, height=HEIGHT)
    actual = run_stream("tiny-sdxl", None, mode="txt2img", steps=steps, guidance_scale=8.0)
    assert_parity(actual, expected)


@pytest.mark.parametrize(("steps", "strength"), [(1, 1.0), (2, 0.5), (4, 0.5), (4, 0.8)])
@pytest.mark.slow
def test_sdxl_lcm_img2img_parity_with_stable_diffusion_xl_img2img(frame, steps, strength):
    pipe = reference(StableDiffusionXLImg2ImgPipeline, tiny_sdxl_parts())
    kwargs = {"image": PIL.Image.fromarray(frame), "strength": strength, "guidance_scale": 8.0}
    expected = run_reference(pipe, num_inference_steps=steps, **kwargs)
    actual = run_stream("tiny-sdxl", frame, steps=steps, strength=strength, guidance_scale=8.0)
    assert_parity(actual, expected)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.slow
def test_sdxl_controlnet_txt2img_parity_with_stable_diffusion_xl_controlnet(frame, canny, steps):
    pipe = reference(StableDiffusionXLControlNetPipeline, tiny_sdxl_parts(), controlnet=tiny_controlnet(sdxl=True))
    kwargs = {"image": canny, "controlnet_conditioning_scale": 0.5, "guidance_scale": 8.0}
    expected = run_reference(pipe, num_inference_steps=steps, **kwargs)
    actual = run_stream(
        "tiny-sdxl", frame, "canny", mode="txt2img", steps=steps, guidance_scale=8.0, controlnet_scale=0.5
    )
    assert_parity(actual, expected)


# The ControlNet img2img reference pipelines pass no w-embedding to the UNet, so an LCM UNet would run there
# without its guidance; LCM-LoRA models, the usual real-time ControlNet set-up, have none to pass.
@pytest.mark.parametrize("guidance", [1.0, 1.5])
@pytest.mark.slow
def test_sd15_controlnet_img2img_parity_with_controlnet_img2img_and_lora(frame, canny, lora_dirs, guidance):
    pipe = reference(
        StableDiffusionControlNetImg2ImgPipeline,
        tiny_sd15_parts(guidance_embedding=False),
        lora_dirs["sd15"],
        controlnet=tiny_controlnet(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    kwargs = {"image": PIL.Image.fromarray(frame), "control_image": canny, "strength": 0.5}
    expected = run_reference(
        pipe, num_inference_steps=4, guidance_scale=guidance, controlnet_conditioning_scale=0.8, **kwargs
    )
    actual = run_stream(
        "tiny-lcm-lora", frame, "canny", steps=4, strength=0.5, guidance_scale=guidance, controlnet_scale=0.8
    )
    assert_parity(actual, expected)


@pytest.mark.parametrize("guidance", [0.0, 1.5])
@pytest.mark.slow
def test_sdxl_controlnet_img2img_parity_with_sdxl_controlnet_img2img_and_lora(frame, canny, lora_dirs, guidance):
    pipe = reference(
        StableDiffusionXLControlNetImg2ImgPipeline,
        tiny_sdxl_parts(guidance_embedding=False),
        lora_dirs["sdxl"],
        controlnet=tiny_controlnet(sdxl=True),
    )
    kwargs = {"image": PIL.Image.fromarray(frame), "control_image": canny, "strength": 0.75}
    expected = run_reference(
        pipe, num_inference_steps=4, guidance_scale=guidance, controlnet_conditioning_scale=0.5, **kwargs
    )
    actual = run_stream(
        "tiny-sdxl-lcm-lora", frame, "canny", steps=4, strength=0.75, guidance_scale=guidance, controlnet_scale=0.5
    )
    assert_parity(actual, expected)


@pytest.mark.parametrize(("guidance", "negative"), [(0.0, ""), (1.5, ""), (1.5, "fog, blur")])
@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
@pytest.mark.slow
def test_sdxl_lcm_lora_parity_with_load_lora_weights(frame, lora_dirs, guidance, negative, mode):
    cls = StableDiffusionXLPipeline if mode == "txt2img" else StableDiffusionXLImg2ImgPipeline
    pipe = reference(cls, tiny_sdxl_parts(guidance_embedding=False), lora_dirs["sdxl"])
    # As in diffusers, no negative prompt under guidance means zero embeddings (force_zeros_for_empty_prompt).
    kwargs = {"guidance_scale": guidance, "negative_prompt": negative or None, "num_inference_steps": 4}
    if mode == "txt2img":
        kwargs.update(width=WIDTH, height=HEIGHT)
    else:
        kwargs.update(image=PIL.Image.fromarray(frame), strength=0.5)
    expected = run_reference(pipe, **kwargs)
    actual = run_stream(
        "tiny-sdxl-lcm-lora",
        frame if mode == "img2img" else None,
        mode=mode,
        steps=4,
        strength=0.5,
        guidance_scale=guidance,
        negative_prompt=negative,
    )
    assert_parity(actual, expected)


@pytest.mark.slow
def test_the_controlnet_and_the_sdxl_lora_really_move_the_picture(frame, canny, lora_dirs):
    """Guards the parity tests above against passing vacuously."""
    with_control = run_stream("tiny-sdxl", frame, "canny", mode="txt2img", controlnet_scale=1.0)
    without_control = run_stream("tiny-sdxl", frame, "canny", mode="txt2img", controlnet_scale=0.0)
    assert np.abs(with_control - without_control).max() > 100 * TOLERANCE
    plain = reference(StableDiffusionXLPipeline, tiny_sdxl_parts(guidance_embedding=False))
    adapted = reference(StableDiffusionXLPipeline, tiny_sdxl_parts(guidance_embedding=False), lora_dirs["sdxl"])
    kwargs = {"num_inference_steps": 2, "guidance_scale": 0.0, "width": WIDTH, "height": HEIGHT}
    assert np.abs(run_reference(plain, **kwargs) - run_reference(adapted, **kwargs)).max() > 100 * TOLERANCE
