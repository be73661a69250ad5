"""Style LoRAs in the stream pipeline: a style equals diffusers' pipeline after `load_lora_weights` + `set_adapters`
at the same scale, `none` equals the model without styles, and streams of different styles share one UNet without
touching each other's pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    LatentConsistencyModelImg2ImgPipeline,
    LatentConsistencyModelPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from pipelines import ParamsError, StreamPipeline, load_model
from pipelines.styles import make_random_lora
from pipelines.synthetic import moving_pattern
from pipelines.tiny import tiny_lcm_lora_parts, tiny_sd15_parts, tiny_sdxl_parts

TOLERANCE = 1e-4
SEED = 11
PROMPT = "a harbour at dawn"
WIDTH, HEIGHT = 128, 64
STYLES = {"ink": 1, "neon": 2}  # name: the random LoRA's seed


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for model in ("tiny-random", "tiny-sdxl", "tiny-lcm-lora"):
        folder = tmp_path_factory.mktemp(model)
        components = load_model(model, device="cpu")
        for name, seed in STYLES.items():
            make_random_lora(components, folder / f"{name}.safetensors", seed=seed)
        folders[model] = folder
    return folders


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return moving_pattern(WIDTH, HEIGHT, 2)


def stream_picture(pipe: StreamPipeline, frame: np.ndarray | None, **params) -> np.ndarray:
    pipe.update(prompt=PROMPT, seed=SEED, temporal_smoothing=0.0, **params)
    return pipe.render(frame, size=(WIDTH, HEIGHT))[0].permute(1, 2, 0).numpy()


def reference_picture(cls, parts: dict, folder: Path, style: str, scale: float, **kwargs) -> np.ndarray:
    extra = {} if "text_encoder_2" in parts else {"safety_checker": None, "feature_extractor": None}
    pipe = cls(**parts, **extra)
    pipe.load_lora_weights(str(folder), weight_name=f"{style}.safetensors", adapter_name=style)
    pipe.set_adapters([style], adapter_weights=[scale])
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(SEED)
    return pipe(PROMPT, generator=generator, output_type="np", **kwargs).images[0]


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
def test_sd15_style_img2img_parity_with_load_lora_weights_and_set_adapters(lora_dirs, frame, scale):
    folder = lora_dirs["tiny-random"]
    pipe = StreamPipeline(load_model("tiny-random", device="cpu", lora_dir=folder))
    actual = stream_picture(pipe, frame, style="neon", style_scale=scale, steps=2, strength=0.6)
    kwargs = {"image": PIL.Image.fromarray(frame), "strength": 0.6, "num_inference_steps": 2, "guidance_scale": 8.0}
    expected = reference_picture(
        LatentConsistencyModelImg2ImgPipeline, tiny_sd15_parts(), folder, "neon", scale, **kwargs
    )
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize(
    ("model", "reference", "parts", "scale"),
    [
        ("tiny-random", LatentConsistencyModelPipeline, tiny_sd15_parts, 0.8),
        ("tiny-sdxl", StableDiffusionXLPipeline, tiny_sdxl_parts, 0.7),
    ],
)
def test_style_txt2img_parity_with_load_lora_weights_and_set_adapters(lora_dirs, model, reference, parts, scale):
    folder = lora_dirs[model]
    pipe = StreamPipeline(load_model(model, device="cpu", lora_dir=folder))
    actual = stream_picture(pipe, None, mode="txt2img", style="ink", style_scale=scale, steps=2)
    kwargs = {"num_inference_steps": 2, "guidance_scale": 8.0, "width": WIDTH, "height": HEIGHT}
    expected = reference_picture(reference, parts(), folder, "ink", scale, **kwargs)
    assert np.abs(actual - expected).max() <= TOLERANCE


def test_lcm_lora_stays_fused_under_a_style_parity(lora_dirs, frame):
    """An LCM-LoRA preset keeps its LCM-LoRA fused (as diffusers' load_lora_weights + fuse_lora leave it) and the
    style comes on top as an adapter."""
    folder = lora_dirs["tiny-lcm-lora"]
    pipe = StreamPipeline(load_model("tiny-lcm-lora", device="cpu", lora_dir=folder))
    actual = stream_picture(pipe, frame, style="ink", style_scale=1.2, steps=4, strength=0.5, guidance_scale=1.0)
    kwargs = {"image": PIL.Image.fromarray(frame), "strength": 0.5, "num_inference_steps": 4, "guidance_scale": 1.0}
    expected = reference_picture(StableDiffusionImg2ImgPipeline, tiny_lcm_lora_parts(), folder, "ink", 1.2, **kwargs)
    assert np.abs(actual - expected).max() <= TOLERANCE


def test_style_none_is_the_model_without_styles_and_each_style_moves_the_picture(lora_dirs, frame):
    plain = stream_picture(StreamPipeline(load_model("tiny-random", device="cpu")), frame)
    pipe = StreamPipeline(load_model("tiny-random", device="cpu", lora_dir=lora_dirs["tiny-random"]))
    assert np.array_equal(stream_picture(pipe, frame, style="none"), plain)
    assert np.array_equal(stream_picture(pipe, frame, style="ink", style_scale=0.0), plain)
    ink = stream_picture(pipe, frame, style="ink", style_scale=1.0)
    neon = stream_picture(pipe, frame, style="neon", style_scale=1.0)
    assert np.abs(ink - plain).max() > 100 * TOLERANCE and np.abs(neon - ink).max() > 100 * TOLERANCE


def test_streams_of_different_styles_share_the_unet_frame_by_frame(lora_dirs, frame):
    """Each frame runs with its own stream's style: interleaved, the pictures equal each stream's pictures alone."""
    components = load_model("tiny-random", device="cpu", lora_dir=lora_dirs["tiny-random"])
    styles = ["ink", "none", "neon"]
    pipes = [StreamPipeline(components) for _ in styles]
    alone = [stream_picture(pipe, frame, style=style) for pipe, style in zip(pipes, styles, strict=True)]
    for _ in range(2):  # switching back and forth, frame after frame
        for pipe, expected in zip(pipes, alone, strict=True):
            assert np.array_equal(pipe.render(frame, size=(WIDTH, HEIGHT))[0].permute(1, 2, 0).numpy(), expected)


def test_the_schema_lists_the_styles_loaded_and_refuses_others(lora_dirs):
    pipe = StreamPipeline(load_model("tiny-random", device="cpu", lora_dir=lora_dirs["tiny-random"]))
    schema = pipe.params_model.model_json_schema()["properties"]
    assert schema["style"]["enum"] == ["none", "ink", "neon"] and schema["style"]["default"] == "none"
    assert (schema["style_scale"]["minimum"], schema["style_scale"]["maximum"]) == (0.0, 1.5)
    with pytest.raises(ParamsError, match="style"):
        pipe.update(style="watercolour")
    assert pipe.params.as_dict()["style"] == "none"
    assert "style" not in StreamPipeline(load_model("tiny-random", device="cpu")).params_model.model_fields
