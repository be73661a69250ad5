"""Style LoRAs: folder scanning, parity of `activate` with diffusers' `set_adapters`, fusing, and refusals."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from pipelines import ModelComponents, load_model
from pipelines.styles import StyleLibrary, make_random_lora
from pipelines.tiny import tiny_sd15_parts, tiny_sdxl_parts

MODELS = {"sd15": "tiny-random", "sdxl": "tiny-sdxl"}
# Not one-letter names: diffusers' missing-key warning matches the adapter name as a substring of the key, so an
# adapter called "b" draws a spurious warning ("blocks") when it is loaded.
STYLE_SEEDS = {"ink": 1, "neon": 2}


def fresh(family: str) -> ModelComponents:
    """Components of their own: a library adds adapters to the UNet, so the shared session fixtures are off limits."""
    return load_model(MODELS[family], device="cpu")


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory) -> dict[str, Path]:
    """For each family a folder with two random LoRAs, `a` and `b`."""
    folders = {}
    for family in MODELS:
        folder = tmp_path_factory.mktemp(f"loras-{family}")
        components = fresh(family)
        for name, seed in STYLE_SEEDS.items():
            make_random_lora(components, folder / f"{name}.safetensors", seed=seed)
        folders[family] = folder
    return folders


def unet_output(unet: UNet2DConditionModel) -> torch.Tensor:
    """One UNet call on fixed random inputs of its family's shapes."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, unet.config["cross_attention_dim"], generator=generator)
    guidance = torch.randn(1, unet.config["time_cond_proj_dim"], generator=generator)
    added = None
    if unet.config["addition_embed_type"] == "text_time":  # SDXL's pooled text and size conditioning
        pooled, sizes = torch.randn(1, 32, generator=generator), torch.randn(1, 6, generator=generator)
        added = {"text_embeds": pooled, "time_ids": sizes}
    with torch.inference_mode():
        return unet(latents, 500, text, timestep_cond=guidance, added_cond_kwargs=added).sample


def copy_lora(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def warnings_about(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# Scanning a folder


def test_each_lora_file_becomes_a_style_named_by_its_stem(lora_dirs):
    library = StyleLibrary.load(fresh("sd15"), lora_dirs["sd15"])
    assert library.names == ("ink", "neon")
    assert library.active is None


def test_a_file_named_none_is_renamed_with_a_warning(lora_dirs, tmp_path, caplog):
    copy_lora(lora_dirs["sd15"] / "ink.safetensors", tmp_path / "none.safetensors")
    with caplog.at_level(logging.WARNING, logger="pipelines.styles"):
        library = StyleLibrary.load(fresh("sd15"), tmp_path)
    assert library.names == ("none-2",)
    assert len(warnings_about(caplog, "none-2")) == 1


def test_two_files_with_one_stem_get_a_suffix_and_a_warning(lora_dirs, tmp_path, caplog):
    """The `.bin` twin also shows that pickled LoRAs are read."""
    source = lora_dirs["sd15"] / "ink.safetensors"
    torch.save(load_file(source), tmp_path / "ink.bin")
    copy_lora(source, tmp_path / "ink.safetensors")
    with caplog.at_level(logging.WARNING, logger="pipelines.styles"):
        library = StyleLibrary.load(fresh("sd15"), tmp_path)
    assert library.names == ("ink", "ink-2")
    assert len(warnings_about(caplog, "'ink-2'")) == 1


def test_unreadable_and_non_lora_files_are_skipped_with_one_warning_each(lora_dirs, tmp_path, caplog):
    (tmp_path / "bad.safetensors").write_bytes(os.urandom(512))
    save_file({"weight": torch.zeros(2, 2)}, tmp_path / "plain.safetensors")
    (tmp_path / "notes.txt").write_text("not a LoRA, not a LoRA suffix either")
    copy_lora(lora_dirs["sd15"] / "ink.safetensors", tmp_path / "good.safetensors")
    with caplog.at_level(logging.WARNING, logger="pipelines.styles"):
        library = StyleLibrary.load(fresh("sd15"), tmp_path)
    assert library.names == ("good",)
    assert len(warnings_about(caplog, "bad.safetensors")) == 1
    assert len(warnings_about(caplog, "plain.safetensors")) == 1
    assert len(warnings_about(caplog, "")) == 2


def test_a_missing_folder_is_one_warning_and_no_styles(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.styles"):
        library = StyleLibrary.load(fresh("sd15"), tmp_path / "nowhere")
    assert library.names == ()
    assert len(warnings_about(caplog, "nowhere")) == 1


def test_a_lora_of_another_model_is_skipped_and_leaves_the_unet_as_it_was(lora_dirs, tmp_path, caplog):
    copy_lora(lora_dirs["sdxl"] / "ink.safetensors", tmp_path / "xl.safetensors")
    components = fresh("sd15")
    before = unet_output(components.unet)
    with caplog.at_level(logging.WARNING, logger="pipelines.styles"):
        library = StyleLibrary.load(components, tmp_path)
    assert library.names == ()
    assert len(warnings_about(caplog, "xl.safetensors")) == 1
    assert torch.equal(unet_output(components.unet), before)


def test_a_text_encoder_part_is_left_out_with_a_warning_naming_the_style(lora_dirs, tmp_path, caplog):
    layers = load_file(lora_dirs["sd15"] / "ink.safetensors")
    projection = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    layers[f"{projection}.lora.down.weight"] = torch.randn(4, 32)
    layers[f"{projection}.lora.up.weight"] = torch.randn(32, 4)
    save_file(layers, tmp_path / "with_text.safetensors")
    components = fresh("sd15")
    with caplog.at_level(logging.WARNING, logger="pipelines.styles"):
        library = StyleLibrary.load(components, tmp_path)
    assert library.names == ("with_text",)
    [warning] = warnings_about(caplog, "'with_text'")
    assert "text_encoder" in warning.getMessage()
    assert not any("lora" in key for key in components.text_encoder.state_dict())


# Parity with diffusers


def reference_pipeline(family: str, folder: Path):
    """diffusers' own pipeline on fresh equal parts, with both styles loaded by `load_lora_weights`."""
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(**tiny_sdxl_parts())
    else:
        pipe = StableDiffusionPipeline(
            **tiny_sd15_parts(),
            # None is what diffusers documents for no checker; its annotations leave None out.
            safety_checker=None,  # pyright: ignore[reportArgumentType]
            feature_extractor=None,  # pyright: ignore[reportArgumentType]
            requires_safety_checker=False,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")  # two adapters: meant
        for name in STYLE_SEEDS:
            pipe.load_lora_weights(str(folder / f"{name}.safetensors"), adapter_name=name)
    return pipe


@pytest.mark.parametrize("family", MODELS)
def test_activate_matches_diffusers_load_lora_weights_and_set_adapters(family, lora_dirs):
    components = fresh(family)
    plain = unet_output(components.unet)
    library = StyleLibrary.load(components, lora_dirs[family])
    pipe = reference_pipeline(family, lora_dirs[family])
    outputs = {}
    for name in STYLE_SEEDS:
        for scale in (0.5, 1.0):
            library.activate(name, scale)
            pipe.set_adapters([name], adapter_weights=[scale])
            outputs[name, scale] = unet_output(components.unet)
            assert (outputs[name, scale] - unet_output(pipe.unet)).abs().max() <= 1e-4
    # Not vacuous: each style moves the output, and the two styles differently.
    assert (outputs["ink", 1.0] - plain).abs().max() > 1e-2
    assert (outputs["ink", 1.0] - outputs["neon", 1.0]).abs().max() > 1e-2


@pytest.mark.parametrize("family", MODELS)
def test_none_is_exactly_the_unet_before_loading_and_switching_back_repeats_a_style(family, lora_dirs):
    components = fresh(family)
    plain = unet_output(components.unet)
    library = StyleLibrary.load(components, lora_dirs[family])
    assert torch.equal(unet_output(components.unet), plain)
    library.activate("ink", 0.5)
    first_a = unet_output(components.unet)
    library.activate("neon", 0.5)
    assert not torch.equal(unet_output(components.unet), first_a)
    library.activate("ink", 0.5)
    assert torch.equal(unet_output(components.unet), first_a)
    for none in (("none", 1.0), ("ink", 0.0)):
        library.activate(*none)
        assert library.active is None
        assert torch.equal(unet_output(components.unet), plain)


def test_activate_touches_nothing_when_the_style_is_unchanged(lora_dirs, monkeypatch):
    components = fresh("sd15")
    library = StyleLibrary.load(components, lora_dirs["sd15"])
    calls = []
    set_adapters = components.unet.set_adapters
    monkeypatch.setattr(components.unet, "set_adapters", lambda *args: calls.append(args) or set_adapters(*args))
    for name, scale in [("ink", 0.5), ("ink", 0.5), ("none", 0.5), ("none", 1.0), ("neon", 0.0), ("ink", 0.5)]:
        library.activate(name, scale)
    assert calls == [(["ink"], [0.5]), ([],), (["ink"], [0.5])]


def test_a_kohya_lora_with_alphas_matches_its_diffusers_twin(lora_dirs, tmp_path):
    """kohya names (`lora_unet_..._to_q.lora_down.weight`) and an alpha of half the rank: the same layers at half
    the scale."""
    kohya = {}
    for key, value in load_file(lora_dirs["sd15"] / "ink.safetensors").items():
        module, kind = key.removeprefix("unet.").split(".lora.")
        prefix = "lora_unet_" + module.replace(".", "_")
        kohya[f"{prefix}.lora_{kind}"] = value
        kohya[f"{prefix}.alpha"] = torch.tensor(2.0)  # the random LoRAs have rank 4
    save_file(kohya, tmp_path / "ink.safetensors")
    diffusers_format, kohya_format = fresh("sd15"), fresh("sd15")
    StyleLibrary.load(diffusers_format, lora_dirs["sd15"]).activate("ink", 0.5)
    StyleLibrary.load(kohya_format, tmp_path).activate("ink", 1.0)
    difference = unet_output(kohya_format.unet) - unet_output(diffusers_format.unet)
    assert difference.abs().max() <= 1e-6


def test_an_unknown_style_is_refused_naming_the_known_ones(lora_dirs):
    library = StyleLibrary.load(fresh("sd15"), lora_dirs["sd15"])
    with pytest.raises(ValueError, match="'c'.*none, ink, neon"):
        library.activate("c", 1.0)


# Fusing for the benchmark


@pytest.mark.parametrize("family", MODELS)
def test_fused_style_matches_the_adapter_and_unfuse_restores_the_unet(family, lora_dirs):
    components = fresh(family)
    plain = unet_output(components.unet)
    library = StyleLibrary.load(components, lora_dirs[family])
    library.activate("ink", 0.5)
    adapter = unet_output(components.unet)
    library.activate("none", 1.0)

    library.fuse("ink", 0.5)
    assert (unet_output(components.unet) - adapter).abs().max() <= 1e-4
    library.activate("ink", 0.5)  # the fused style itself is fine
    for other in (("neon", 0.5), ("none", 1.0), ("ink", 1.0)):
        with pytest.raises(RuntimeError, match="fused"):
            library.activate(*other)

    library.unfuse()
    assert (unet_output(components.unet) - adapter).abs().max() <= 1e-5
    library.activate("none", 1.0)
    assert (unet_output(components.unet) - plain).abs().max() <= 1e-5


def test_random_loras_fit_any_model_and_leave_its_unet_as_it_was(tmp_path):
    components = load_model("tiny", device="cpu")  # the toy: 8 latent channels, its own layout
    before = {name: param.clone() for name, param in components.unet.state_dict().items()}
    make_random_lora(components, tmp_path / "toy.safetensors")
    after = components.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)
    assert StyleLibrary.load(components, tmp_path).names == ("toy",)
