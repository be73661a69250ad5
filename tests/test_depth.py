"""The depth kind: the offline stand-in estimator, the preprocessor's map, and the real estimator's loading."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines.control import control_kind
from pipelines.control.depth import (
    DEPTH_REPO,
    KIND,
    DepthPreprocessor,
    input_size,
    load_depth_preprocessor,
    tiny_depth_estimator,
)
from pipelines.loading import ModelUnavailableError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def depth() -> DepthPreprocessor:
    return load_depth_preprocessor(True, CPU, torch.float32)


def random_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.slow
def test_tiny_estimator_is_small_seeded_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pixels = torch.randn(1, 3, 126, 182, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first, again, other = (tiny_depth_estimator(seed)(pixel_values=pixels).predicted_depth for seed in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (1, 126, 182)
    assert sum(p.numel() for p in tiny_depth_estimator().parameters()) < 1_000_000


@pytest.mark.parametrize(("height", "width"), [(256, 256), (192, 320), (320, 192), (512, 512), (7, 5)])
def test_map_is_grey_uint8_at_the_frame_size(depth, height, width):
    depth_map = depth(random_frame(height, width), None)
    assert depth_map.shape == (height, width, 3) and depth_map.dtype == np.uint8
    assert depth_map.flags.c_contiguous
    assert np.array_equal(depth_map[..., 0], depth_map[..., 1]) and np.array_equal(depth_map[..., 0], depth_map[..., 2])
    assert depth_map.min() == 0 and depth_map.max() == 255  # stretched per frame


def test_estimator_input_keeps_the_aspect_in_patches():
    assert input_size(512, 512) == (252, 252)
    assert input_size(192, 320) == (252, 420)
    assert input_size(576, 1024) == (252, 448)


def test_estimator_input_matches_the_checkpoints_image_processor(monkeypatch):
    """The oracle: transformers' own processor, set as Depth-Anything-V2-Small-hf's preprocessor_config.json sets it."""
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    processor = DPTImageProcessorPil(
        size={"height": 252, "width": 252},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    y, x = np.mgrid[0:504, 0:756]
    frame = np.stack([128 + 100 * np.sin(x / 40), 128 + 100 * np.cos(y / 30), (x + y) / 5 % 256], -1).astype(np.uint8)
    expected = processor(images=frame, return_tensors="pt")["pixel_values"]

    estimator = tiny_depth_estimator()
    seen = []

    def record(pixel_values):
        seen.append(pixel_values)
        return SimpleNamespace(predicted_depth=pixel_values[:, 0])

    monkeypatch.setattr(estimator, "forward", record)
    DepthPreprocessor(estimator)(frame, None)
    assert seen[0].shape == expected.shape == (1, 3, 252, 378)
    # A quarter of a grey level on average (PIL's and torch's bicubic differ a little); 0.5/0.5 would be off by 0.58.
    assert (seen[0] - expected).abs().mean() < 0.02


def test_map_follows_the_frame(depth):
    split = np.zeros((128, 192, 3), np.uint8)
    split[:, :96] = (230, 200, 40)
    split[:, 96:] = (20, 40, 120)
    split_map = depth(split, None)[..., 0].astype(int)
    assert abs(split_map[:, :96].mean() - split_map[:, 96:].mean()) > 5

    first, second = depth(random_frame(128, 192, seed=1), None), depth(random_frame(128, 192, seed=2), None)
    assert np.abs(first.astype(int) - second).mean() > 5
    assert np.abs(split_map - depth(split[:, ::-1].copy(), None)[..., 0]).mean() > 5


def test_near_is_bright_and_a_flat_depth_is_black(monkeypatch):
    estimator = tiny_depth_estimator().eval()
    preprocessor = DepthPreprocessor(estimator)

    def ramp(pixel_values):  # relative inverse depth that falls from left to right: the left is near
        width = pixel_values.shape[-1]
        falling = torch.linspace(1.0, 0.0, width).expand(pixel_values.shape[0], pixel_values.shape[2], width)
        return SimpleNamespace(predicted_depth=falling)

    monkeypatch.setattr(estimator, "forward", ramp)
    depth_map = preprocessor(random_frame(64, 96), None)[..., 0]
    assert depth_map[:, 0].min() > 250 and depth_map[:, -1].max() < 5
    assert (np.diff(depth_map.astype(int), axis=1) <= 0).all()

    flat = SimpleNamespace(predicted_depth=torch.ones(1, 252, 378))
    monkeypatch.setattr(estimator, "forward", lambda pixel_values: flat)
    assert not preprocessor(random_frame(64, 96), None).any()


def test_a_constant_frame_gives_a_map(depth):
    depth_map = depth(np.full((96, 64, 3), 128, np.uint8), None)
    assert depth_map.shape == (96, 64, 3) and depth_map.dtype == np.uint8


def test_float16_map_matches_float32(depth):
    half = load_depth_preprocessor(True, CPU, torch.float16)
    assert half.estimator.dtype == torch.float16
    frame = random_frame(128, 192)
    assert np.abs(half(frame, None).astype(int) - depth(frame, None)).mean() < 2


def test_loaded_estimator_is_frozen_on_its_device(depth):
    assert depth.modules == [depth.estimator]
    assert not depth.estimator.training
    assert not any(p.requires_grad for p in depth.estimator.parameters())


def test_real_estimator_loads_from_the_cache(monkeypatch, tmp_path):
    tiny_depth_estimator().save_pretrained(tmp_path)
    monkeypatch.setattr("pipelines.control.depth.DEPTH_REPO", str(tmp_path))
    preprocessor = load_depth_preprocessor(False, CPU, torch.float16)
    assert preprocessor.estimator.dtype == torch.float16 and not preprocessor.estimator.training
    assert preprocessor(random_frame(64, 96), None).shape == (64, 96, 3)


def test_missing_estimator_names_its_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as caught:
        load_depth_preprocessor(False, CPU, torch.float32)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in str(caught.value)
    assert f"hf download {DEPTH_REPO}" in str(caught.value)


def test_kind_names_both_families_weights():
    assert control_kind("depth") is KIND
    assert KIND.name == "depth" and KIND.scale_param == "controlnet_scale_depth"
    assert KIND.weights == {
        "sd15": "lllyasviel/control_v11f1p_sd15_depth",
        "sdxl": "diffusers/controlnet-depth-sdxl-1.0-small",
    }
    assert KIND.params is None and KIND.load_preprocessor is load_depth_preprocessor


@pytest.mark.cuda
def test_cuda_float16_map_matches_the_cpu(depth):
    on_gpu = load_depth_preprocessor(True, torch.device("cuda"), torch.float16)
    frame = random_frame(320, 192)
    assert np.abs(on_gpu(frame, None).astype(int) - depth(frame, None)).mean() < 3
