"""Presets, the built-in models and the message a user gets when weights are missing."""

from __future__ import annotations

import time

import pytest
import torch

from pipelines import PRESETS, ModelUnavailableError, load_model, params_json_schema, params_model
from pipelines.tiny import sd15_arch_parts, sdxl_arch_parts


def test_tiny_builds_offline_fast_and_deterministically():
    start = time.perf_counter()
    first = load_model("tiny", device="cpu")
    assert time.perf_counter() - start < 2.0 * 3  # the issue asks < 2 s; slack for a loaded CI machine
    second = load_model("tiny", device="cpu")
    for a, b in zip(first.unet.parameters(), second.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert first.vae_scale_factor == 8
    assert first.unet.config["time_cond_proj_dim"] is not None
    assert first.tokenizer.model_max_length == 77
    assert first.dtype == torch.float32 and first.device.type == "cpu"


def test_sd15_arch_has_the_real_sd15_shapes():
    parts = sd15_arch_parts(torch.device("meta"), torch.float32)
    unet_params = sum(p.numel() for p in parts["unet"].parameters())
    assert 855e6 < unet_params < 865e6  # SD1.5 UNet: 859.5M, plus the LCM w-embedding projection
    assert parts["unet"].config.cross_attention_dim == 768
    assert parts["unet"].config.time_cond_proj_dim == 256
    assert parts["text_encoder"].config.hidden_size == 768
    assert 83e6 < sum(p.numel() for p in parts["vae"].parameters()) < 84e6


def test_sdxl_arch_has_the_real_sdxl_shapes():
    parts = sdxl_arch_parts(torch.device("meta"), torch.float32)
    assert 2566e6 < sum(p.numel() for p in parts["unet"].parameters()) < 2569e6  # SDXL UNet: 2567M
    assert 694e6 < sum(p.numel() for p in parts["text_encoder_2"].parameters()) < 696e6  # OpenCLIP bigG text
    assert parts["unet"].config.cross_attention_dim == 2048
    assert parts["unet"].config.addition_embed_type == "text_time"


def test_tiny_sdxl_and_controlnets_build_offline():
    components = load_model("tiny-sdxl", device="cpu", controlnet="canny,depth")
    assert components.is_sdxl and components.control_kinds == ("canny", "depth")
    canny, depth = components.controlnets.values()
    first_layers = [net.controlnet_cond_embedding.conv_in.weight for net in (canny, depth)]
    assert not torch.equal(*first_layers)  # each kind's stand-in seeded on its own
    assert components.text_encoder_2 is not None and components.text_encoder_2.config.projection_dim == 32
    assert components.unet.config["projection_class_embeddings_input_dim"] == 6 * 8 + 32
    with pytest.raises(ValueError, match="unknown ControlNet kind 'segmentation'; known: canny, depth"):
        load_model("tiny", device="cpu", controlnet="segmentation")


def test_missing_weights_give_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError) as caught:
        load_model("lcm-lora-sd15", device="cpu")
    message = str(caught.value)
    assert "lcm-lora-sd15" in message and "needs weights" in message
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "latent-consistency/lcm-lora-sdv1-5" in message
    assert "hf download" in message
    assert "--model tiny" in message


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="known presets: .*lcm-dreamshaper"):
        load_model("no-such-model", device="cpu")


def test_asking_for_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        load_model("tiny", device="cuda")


def test_presets_cover_the_design_table():
    assert {"lcm-dreamshaper", "lcm-lora-sd15", "sd-turbo", "tiny", "sd15-arch"} <= set(PRESETS)
    assert PRESETS["lcm-dreamshaper"].repositories == ["SimianLuo/LCM_Dreamshaper_v7"]


def test_params_schema_describes_every_parameter_with_its_range():
    schema = params_json_schema(params_model(PRESETS["tiny"]))
    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    assert properties["steps"] == {**properties["steps"], "type": "integer", "minimum": 1, "maximum": 4}
    assert properties["strength"]["type"] == "number" and properties["strength"]["maximum"] == 1.0
    assert properties["prompt"]["type"] == "string"
    assert properties["guidance_scale"]["default"] == 8.0
