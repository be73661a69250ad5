"""The params models: every rule, in words that name the parameter, and the schema the server serves."""

from __future__ import annotations

import json
import math
import urllib.request

import pytest
from pydantic import ValidationError

from pipelines import PRESETS, ParamsError, StreamParams, params_json_schema, params_model, params_model_for
from pipelines.params import steps_that_run
from pipelines.presets import ScheduleKind
from server.pacing import pacing_params_model

TINY = params_model(PRESETS["tiny"])  # SD1.5 LCM UNet: guidance through the w-embedding, steps up to 4
LORA = params_model(PRESETS["lcm-lora-sd15"])  # classifier-free guidance: up to 2; int(steps x strength) steps
CONTROLNET = params_model(PRESETS["tiny"], ("canny",))
CANNY_SCALE = "controlnet_scale_canny must be"
PACING = pacing_params_model(256, 8.0)


def refusal(model, changes: dict) -> list[tuple[str | None, str]]:
    with pytest.raises(ParamsError) as error:
        model().replace(changes)
    return error.value.errors


@pytest.mark.parametrize(
    ("model", "changes", "param", "words"),
    [
        (TINY, {"colour": "red"}, "colour", "unknown parameter colour; known: prompt"),
        (TINY, {"steps": 9}, "steps", "steps must be between 1 and 4, got 9"),
        (TINY, {"steps": 0}, "steps", "steps must be between 1 and 4"),
        (TINY, {"strength": 0}, "strength", "strength must be between 0.01 and 1.0"),
        (TINY, {"strength": 1.5}, "strength", "strength must be between 0.01 and 1.0"),
        (TINY, {"guidance_scale": 21}, "guidance_scale", "guidance_scale must be between 0.0 and 20.0"),
        (LORA, {"guidance_scale": 2.5}, "guidance_scale", "guidance_scale must be between 0.0 and 2.0"),
        (TINY, {"seed": -1}, "seed", "seed must be between 0 and 2147483647"),
        (TINY, {"seed": 2**31}, "seed", "seed must be between 0 and 2147483647"),
        (TINY, {"seed": 3.5}, "seed", "seed must be a whole number, got 3.5"),
        (TINY, {"seed": True}, "seed", "seed must be a number between 0 and 2147483647, got a boolean"),
        (TINY, {"strength": "0.5"}, "strength", "must be a number between 0.01 and 1.0, got a string"),
        (TINY, {"strength": None}, "strength", "got null"),
        (TINY, {"strength": math.nan}, "strength", "strength must be finite"),
        (TINY, {"strength": math.inf}, "strength", "strength must be finite"),
        (TINY, {"prompt": 7}, "prompt", "prompt must be a string"),
        (TINY, {"prompt": ["a"]}, "prompt", "prompt must be a string, got a list"),
        (TINY, {"prompt": "x" * 2001}, "prompt", "prompt is 2001 characters; the limit is 2000"),
        (TINY, {"mode": "video"}, "mode", "mode must be one of img2img, txt2img; got 'video'"),
        (TINY, {"controlnet_scale": 1}, "controlnet_scale", "unknown parameter"),  # no ControlNet loaded
        (CONTROLNET, {"controlnet_scale_canny": 2.5}, "controlnet_scale_canny", f"{CANNY_SCALE} between 0.0 and 2.0"),
        # With one kind loaded, the name from before kinds sets its scale (and is checked as it).
        (CONTROLNET, {"controlnet_scale": 2.5}, "controlnet_scale_canny", f"{CANNY_SCALE} between 0.0 and 2.0"),
        (CONTROLNET, {"canny_high": 501}, "canny_high", "canny_high must be between 0 and 500"),
        (CONTROLNET, {"canny_low": 300, "canny_high": 200}, None, "canny_low (300) must not exceed canny_high (200)"),
        (PACING, {"target_fps": 0}, "target_fps", "target_fps must be between 1.0 and 60.0"),
        (PACING, {"max_resolution": 100}, "max_resolution", "max_resolution must be a multiple of 64, got 100"),
        (PACING, {"max_resolution": 2048}, "max_resolution", "max_resolution must be between 64 and 1024"),
        (PACING, {"min_resolution": 512}, None, "min_resolution (512) must not exceed max_resolution (256)"),
        (PACING, {"similarity_skip": 51}, "similarity_skip", "similarity_skip must be between 0.0 and 50.0"),
        (LORA, {"steps": 2, "strength": 0.2}, None, "runs no denoising step"),
        (TINY, {"steps": 4, "strength": 0.06}, None, "leaves fewer LCM timesteps than steps=4"),
    ],
)
def test_each_rule_refuses_with_words_that_name_the_parameter(model, changes, param, words):
    errors = refusal(model, changes)
    assert any(p == param and words in message for p, message in errors), errors


def test_every_problem_of_a_change_is_reported_and_nothing_changes():
    params = TINY()
    errors = refusal(TINY, {"steps": 9, "strength": "x", "prompt": "fine"})
    assert {param for param, _ in errors} == {"steps", "strength"}
    assert params.prompt != "fine"  # frozen: the old object is untouched


def test_whole_floats_are_whole_numbers_and_defaults_come_from_the_preset():
    assert TINY().replace({"seed": 3.0, "steps": 4.0}).seed == 3
    assert TINY().guidance_scale == PRESETS["tiny"].default_guidance
    assert LORA().guidance_scale == PRESETS["lcm-lora-sd15"].default_guidance
    # The toy's first prompt names a style word it knows; a preset without its own keeps the base's.
    assert TINY().prompt == PRESETS["tiny"].default_prompt and "fire" in TINY().prompt
    assert TINY().strength == PRESETS["tiny"].default_strength
    assert LORA().prompt == StreamParams().prompt != TINY().prompt
    assert PACING().max_resolution == 256 and PACING().target_fps == 8.0
    with pytest.raises(ValidationError, match="frozen"):
        TINY().seed = 4


def test_txt2img_is_not_held_to_the_strength_rule():
    assert LORA().replace({"mode": "txt2img", "steps": 2, "strength": 0.2}).mode == "txt2img"


@pytest.mark.parametrize(
    ("kind", "steps", "strength", "runs"),
    [
        (ScheduleKind.LCM_IMG2IMG, 4, 0.5, 4),
        (ScheduleKind.LCM_IMG2IMG, 4, 0.06, 0),  # int(50 x 0.06) = 3 timesteps < 4 steps
        (ScheduleKind.SD_IMG2IMG, 4, 0.5, 2),
        (ScheduleKind.SD_IMG2IMG, 2, 0.2, 0),
        (ScheduleKind.SD_IMG2IMG, 3, None, 3),
    ],
)
def test_steps_that_run_follow_the_diffusers_pipelines(kind, steps, strength, runs):
    assert steps_that_run(kind, steps, strength, origin_steps=50) == runs


def test_the_schema_carries_every_limit_of_the_models():
    properties = params_json_schema(CONTROLNET, PACING)["properties"]
    assert properties["steps"]["maximum"] == 4 and properties["steps"]["type"] == "integer"
    assert properties["max_resolution"]["multipleOf"] == 64 and properties["max_resolution"]["default"] == 256
    assert properties["mode"]["enum"] == ["img2img", "txt2img"]
    assert properties["prompt"]["maxLength"] == 2000
    assert set(properties) == set(CONTROLNET.model_fields) | set(PACING.model_fields)
    assert all(spec.get("description") for spec in properties.values())


@pytest.mark.slow
def test_the_served_schema_is_the_models_schema(live_server, tiny):
    from server.pacing import DEFAULT_MAX_RESOLUTION, DEFAULT_MIN_RESOLUTION, DEFAULT_TARGET_FPS

    with urllib.request.urlopen(f"{live_server.url}/params/schema", timeout=10) as response:
        served = json.loads(response.read())
    pacing = pacing_params_model(
        DEFAULT_MAX_RESOLUTION["cpu"], DEFAULT_TARGET_FPS["cpu"], DEFAULT_MIN_RESOLUTION["cpu"]
    )
    assert served == json.loads(json.dumps(params_json_schema(params_model_for(tiny), pacing)))
