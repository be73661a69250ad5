"""The stream pipeline equals diffusers' reference img2img pipelines given the same components, seed and input.

The SD1.5 LCM tests use `tiny-random` (seeded random weights built in code, as `tiny_sd15_parts` builds them for
the reference); arithmetic parity holds whatever the weights, and the trained `tiny` toy would add nothing to it.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import LatentConsistencyModelImg2ImgPipeline, StableDiffusionImg2ImgPipeline

from pipelines import StreamPipeline, load_model
from pipelines.tiny import save_tiny_lora, tiny_sd15_parts

TOLERANCE = 1e-4  # max abs difference on the float image in [0, 1], before quantisation
SEED = 7
PROMPT = "a stained glass window"
TODAY = {"temporal_smoothing": 0.0}  # the pipeline without temporal smoothing: diffusers' arithmetic, frame by frame
NEGATIVE = "blurry, grey"


def reference_kwargs(frame: np.ndarray, steps: int, strength: float, guidance: float) -> dict:
    return {
        "image": PIL.Image.fromarray(frame),
        "num_inference_steps": steps,
        "strength": strength,
        "guidance_scale": guidance,
        "generator": torch.Generator().manual_seed(SEED),
        "output_type": "np",
    }


def stream_image(pipe: StreamPipeline, frame: np.ndarray) -> np.ndarray:
    return pipe.render(frame)[0].permute(1, 2, 0).numpy()


def reference(cls, parts: dict):
    """A diffusers SD1.5 pipeline on fresh tiny parts, quiet and without a safety checker."""
    pipe = cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lcm_reference() -> LatentConsistencyModelImg2ImgPipeline:
    return reference(LatentConsistencyModelImg2ImgPipeline, tiny_sd15_parts())


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory) -> StableDiffusionImg2ImgPipeline:
    """The tiny base model with the tiny LoRA loaded (not fused) the way the LCM-LoRA guide does it."""
    pipe = reference(StableDiffusionImg2ImgPipeline, tiny_sd15_parts(guidance_embedding=False))
    pipe.load_lora_weights(str(save_tiny_lora(tmp_path_factory.mktemp("lora"))))
    return pipe


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_lcm_unet_parity_with_latent_consistency_img2img(tiny_random, lcm_reference, frame, steps, strength):
    pipe = StreamPipeline(tiny_random)
    params = pipe.update(prompt=PROMPT, steps=steps, strength=strength, seed=SEED, guidance_scale=8.0, **TODAY)
    expected = lcm_reference(PROMPT, **reference_kwargs(frame, steps, strength, params.guidance_scale)).images[0]
    actual = stream_image(pipe, frame)
    assert actual.shape == expected.shape == (64, 128, 3)
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize("guidance", [1.0, 1.5])
@pytest.mark.parametrize(("steps", "strength"), [(1, 1.0), (2, 0.5), (4, 0.5), (4, 0.8)])
def test_lcm_lora_parity_with_sd_img2img_and_load_lora_weights(
    tiny_lora, lora_reference, frame, guidance, steps, strength
):
    pipe = StreamPipeline(tiny_lora)
    pipe.update(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        steps=steps,
        strength=strength,
        seed=SEED,
        guidance_scale=guidance,
        **TODAY,
    )
    kwargs = reference_kwargs(frame, steps, strength, guidance)
    expected = lora_reference(PROMPT, negative_prompt=NEGATIVE, **kwargs).images[0]
    assert np.abs(stream_image(pipe, frame) - expected).max() <= TOLERANCE


def test_lora_parity_is_not_vacuous_the_lora_changes_the_picture(lora_reference, frame):
    """Guards the LoRA parity test: the adapter must move the output far more than the tolerance."""
    without_lora = reference(StableDiffusionImg2ImgPipeline, tiny_sd15_parts(guidance_embedding=False))
    # diffusers types a pipeline's result as its output or a tuple, whatever return_dict is.
    plain = without_lora(PROMPT, **reference_kwargs(frame, 2, 0.5, 1.0)).images[0]  # pyright: ignore[reportAttributeAccessIssue]
    adapted = lora_reference(PROMPT, **reference_kwargs(frame, 2, 0.5, 1.0)).images[0]
    assert np.abs(plain - adapted).max() > 100 * TOLERANCE


@pytest.mark.parametrize("steps", [1, 4])
def test_tiny_vae_parity_with_latent_consistency_img2img(frame, steps):
    """TAESD has no posterior to sample: diffusers takes its latents as they are, and so must the stream."""
    from pipelines.tiny import tiny_taesd

    with_taesd = reference(LatentConsistencyModelImg2ImgPipeline, {**tiny_sd15_parts(), "vae": tiny_taesd()})
    pipe = StreamPipeline(load_model("tiny-random", device="cpu", tiny_vae=True))
    params = pipe.update(prompt=PROMPT, steps=steps, strength=0.6, seed=SEED, **TODAY)
    # diffusers types a pipeline's result as its output or a tuple, whatever return_dict is.
    expected = with_taesd(PROMPT, **reference_kwargs(frame, steps, 0.6, params.guidance_scale)).images[0]  # pyright: ignore[reportAttributeAccessIssue]
    assert np.abs(stream_image(pipe, frame) - expected).max() <= TOLERANCE
