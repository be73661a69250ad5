"""Modulations: the sound moves params per frame — validated like every param, kept in the range valid at that
moment, smoothed over frame times, and seen in the picture; over OSC as one JSON string; carried by scenes."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request

import numpy as np
import pytest
from av import VideoFrame
from pythonosc.udp_client import SimpleUDPClient

from pipelines import PRESETS, ParamsError, StreamPipeline, params_model
from pipelines.batch import stylise_batch
from pipelines.modulation import GRID_STEPS, Modulator
from pipelines.params import MODULATION_SOURCES, lowest_strength, modulatable_params
from pipelines.synthetic import moving_pattern
from server.bench.loopback import ControlClient, LoopbackClient, free_port
from server.bench.rtc_clients import http
from server.media.delayline import SAMPLE_RATE
from server.media.feed import Feed
from server.media.ice import restrict_ice_to_loopback
from server.media.sound_features import SoundFeatures
from server.pacing import pacing_params_model
from server.stats import StreamStats
from server.worker import StreamWorker

from conftest import LiveServer

TINY = params_model(PRESETS["tiny"])  # LCM img2img, 50 original steps, at most 4 steps
STRENGTH_BY_LEVEL = {"param": "strength", "source": "level", "amount": 0.5, "smooth_ms": 0}


def entry(**changes) -> dict:
    return {**STRENGTH_BY_LEVEL, **changes}


# ---- validation ----


def test_the_modulatable_params_come_from_the_models_numbers_with_a_range():
    assert modulatable_params(TINY) == ("prompt_mix", "strength", "guidance_scale", "temporal_smoothing")
    with_more = params_model(PRESETS["tiny"], ("canny",), styles=("ink",))
    assert {"controlnet_scale_canny", "style_scale"} <= set(modulatable_params(with_more))
    # Whole numbers change plans, not shades; transition_s is read only when a prompt changes.
    for name in ("steps", "seed", "transition_s", "mode", "prompt"):
        assert name not in modulatable_params(with_more)
    schema = TINY.model_json_schema()["properties"]["modulations"]
    assert schema["maxItems"] == 8 and schema["items"]["properties"]["source"]["enum"] == list(MODULATION_SOURCES)


@pytest.mark.parametrize(
    ("modulations", "words"),
    [
        ("[]", "modulations must be a list of {param, source, amount, smooth_ms} objects, got a string"),
        ([3], "modulations[0] must be an object {param, source, amount, smooth_ms}, got 3"),
        ([entry(param="steps")], "modulations[0].param: 'steps' cannot be modulated; modulatable: prompt_mix, "),
        ([entry(param="colour")], "modulations[0].param: 'colour' cannot be modulated"),
        ([entry(), entry(source="bass")], "modulations[1].source must be one of level, low, mid, high, onset, beat"),
        ([entry(amount=1.5)], "modulations[0].amount must be between -1 and 1, got 1.5"),
        ([entry(amount="0.5")], "modulations[0].amount must be a number between -1 and 1, got a string"),
        ([entry(amount=True)], "modulations[0].amount must be a number between -1 and 1, got a boolean"),
        ([entry(smooth_ms=2001)], "modulations[0].smooth_ms must be between 0 and 2000, got 2001"),
        ([entry(depth=1)], "modulations[0]: unknown key depth; known: param, source, amount, smooth_ms"),
        ([{"param": "strength", "source": "level"}], "modulations[0].amount is missing"),
        ([entry()] * 9, "modulations has 9 entries; the limit is 8"),
    ],
)
def test_a_bad_modulation_is_refused_in_words_that_name_it(modulations, words):
    with pytest.raises(ParamsError) as refused:
        TINY().replace({"modulations": modulations})
    assert refused.value.errors[-1][0] == "modulations"
    assert words in refused.value.errors[-1][1], refused.value.errors


def test_every_problem_is_told_and_a_refused_change_changes_nothing(tiny):
    pipeline = StreamPipeline(tiny)
    pipeline.update(modulations=[entry()])
    before = pipeline.params
    with pytest.raises(ParamsError) as refused:
        pipeline.update(strength=7, modulations=[entry(amount=2)])
    assert [param for param, _ in refused.value.errors] == ["strength", "modulations"]
    assert pipeline.params is before


def test_entries_on_one_param_add_up_and_may_repeat_a_source():
    # Allowed: the same param and source twice, with two smooth_ms, is a fast hit on a slow swell.
    params = TINY(strength=0.3).replace(
        {"modulations": [entry(amount=0.2), entry(amount=0.2, smooth_ms=500), entry(source="low", amount=-0.1)]}
    )
    values = Modulator().values(params, {"level": 1.0, "low": 1.0}, now=0.0)
    # The first frame: smoothed sources start from 0, so the 500 ms entry adds nothing yet.
    span = 1.0 - 0.01
    assert values == {"strength": pytest.approx(0.3 + round(0.1 * span / (span / GRID_STEPS)) * span / GRID_STEPS)}


# ---- each frame's value: the clamp and the smoothing ----


def test_the_value_stays_in_the_range_valid_at_that_moment():
    modulator = Modulator()
    down = TINY(strength=0.3, steps=4).replace({"modulations": [entry(amount=-1.0)]})
    # At 4 steps a frame needs 4 of the 50 LCM timesteps: the floor is 0.08, not the schema's 0.01.
    floor = lowest_strength(PRESETS["tiny"].schedule, 4, 50)
    assert floor == 0.08
    assert modulator.values(down, {"level": 1.0}, now=0.0) == {"strength": floor}
    TINY.validated({**down.as_dict(), "strength": floor})  # a value the model accepts
    up = TINY(strength=0.9).replace({"modulations": [entry(amount=1.0)]})
    assert modulator.values(up, {"level": 1.0}, now=0.0) == {"strength": 1.0}


def test_no_sound_leaves_the_values_as_set():
    params = TINY(strength=0.37).replace({"modulations": [entry(amount=1.0, smooth_ms=100)]})
    modulator = Modulator()
    assert modulator.values(params, None, now=0.0) == {"strength": 0.37}
    assert modulator.values(params, {"level": None, "beat": None}, now=0.1) == {"strength": 0.37}
    assert Modulator().values(TINY(), {"level": 1.0}, now=0.0) == {}


def test_smoothing_is_a_one_pole_low_pass_over_frame_times():
    params = TINY(strength=0.05).replace({"modulations": [entry(amount=0.5, smooth_ms=100)]})
    step, full = 0.99 / GRID_STEPS, 0.5 * 0.99  # the grid, and the full source's offset

    def after(fraction: float) -> object:  # compares equal to the value within a step
        return pytest.approx(0.05 + full * fraction, abs=step)

    modulator = Modulator()
    seen = [modulator.values(params, {"level": 1.0}, now=frame / 100)["strength"] for frame in range(41)]
    assert seen[0] == 0.05  # a new modulation fades in from nothing
    # After one time constant (100 ms, 10 frames at 100 fps) 1 - 1/e of the way, after four 1 - 1/e^4.
    assert seen[10] == after(1 - math.exp(-1)) and seen[40] == after(1 - math.exp(-4))
    assert seen == sorted(seen)
    # At 30 fps the same time reaches the same value: the time constant is in time, not frames.
    other = Modulator()
    at_30 = [other.values(params, {"level": 1.0}, now=frame / 30)["strength"] for frame in range(4)]
    assert at_30[3] == after(1 - math.exp(-1))
    # And it falls back the same way when the sound stops.
    falling = [modulator.values(params, {"level": 0.0}, now=0.4 + frame / 100)["strength"] for frame in range(11)]
    assert falling[10] == after((1 - math.exp(-4)) * math.exp(-1))
    instant = TINY(strength=0.05).replace({"modulations": [entry(amount=0.5, smooth_ms=0)]})
    assert Modulator().values(instant, {"level": 1.0}, now=0.0) == {"strength": after(1.0)}


# ---- the picture pulses with the loudness ----


def worker_of(components) -> StreamWorker:
    stats = StreamStats()
    pipeline = StreamPipeline(components)
    return StreamWorker(pipeline, Feed("test", stats), stats, lambda: None, pacing_params_model(128, 30.0))


def tone(loud: bool, seconds: float = 0.2) -> np.ndarray:
    """`seconds` of a 440 Hz tone at 0.3 of full scale (-13.5 dBFS RMS), or of silence: stereo int16 at 48 kHz."""
    count = round(SAMPLE_RATE * seconds)
    wave = 0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(count) / SAMPLE_RATE) if loud else np.zeros(count)
    return np.repeat(wave.astype(np.int16)[:, None], 2, axis=1)


@pytest.mark.slow
async def test_a_tone_switched_on_and_off_pulses_the_strength_and_the_picture(tiny):
    worker = worker_of(tiny)
    features = SoundFeatures()  # the stream's sound, as its SoundFeed hands it over
    worker.sound_levels = features.snapshot
    worker.update({"strength": 0.3, "temporal_smoothing": 0.0, "modulations": [entry(amount=0.6)]})
    camera = VideoFrame.from_ndarray(moving_pattern(128, 128, 0), format="rgb24")
    strengths, levels, pictures = [], [], []
    encoder_calls = worker.pipeline.prompt_cache.encoder_calls
    for frame in range(8):
        features.write(tone(loud=frame % 4 >= 2), arrival=frame * 0.2)  # quiet, quiet, loud, loud, ...
        levels.append(features.snapshot()["level"])
        worker.submit(camera, time.monotonic(), 0.0)
        prepared = worker.prepare()
        assert prepared is not None
        strengths.append(prepared.request.plan.params.strength)
        assert worker.modulated == {"strength": strengths[-1]}
        pictures.append(stylise_batch([prepared.request])[0].numpy())
    # -13.5 dBFS on the -60..0 scale: level 0.83; silence 0. The strength's range is 0.01-1: 0.3 + 0.6 x 0.99 x 0.83.
    assert levels == [0.0] * 2 + [pytest.approx(0.826, abs=0.01)] * 2 + levels[:4], levels
    quiet_strength, loud_strength = 0.3, 0.3 + 0.6 * 0.99 * levels[2]
    assert strengths == [quiet_strength] * 2 + [pytest.approx(loud_strength, abs=0.005)] * 2 + strengths[:4]
    # The base is what was set: the params echo and the pipeline's params keep it.
    assert worker.effective()["params"]["strength"] == 0.3 and worker.pipeline.params.strength == 0.3
    assert worker.pipeline.prompt_cache.encoder_calls == encoder_calls  # no prompt is encoded per frame

    def differ(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())

    # One camera frame throughout: quiet frames are one picture, loud ones another, and they differ plainly.
    assert differ(pictures[0], pictures[1]) == differ(pictures[0], pictures[4]) == 0
    assert differ(pictures[2], pictures[3]) == differ(pictures[2], pictures[6]) == 0
    assert differ(pictures[0], pictures[2]) > 5, differ(pictures[0], pictures[2])


def test_the_frames_of_a_modulated_value_share_its_plan_and_the_base_keeps_its_own(tiny):
    pipeline = StreamPipeline(tiny)
    pipeline.update(modulations=[entry(param="prompt_mix", amount=1.0)], prompt_b="a glass forest")
    frame = moving_pattern(128, 128, 0)
    base = pipeline.prepare(frame, (128, 128), modulated={"prompt_mix": 0.0}).plan
    assert base is pipeline.prepare(frame, (128, 128)).plan  # the value as set is the base plan itself
    mixed = pipeline.prepare(frame, (128, 128), modulated={"prompt_mix": 0.5}).plan
    assert mixed is not base and mixed.params.prompt_mix == 0.5 and pipeline.params.prompt_mix == 0.0
    assert pipeline.prepare(frame, (128, 128), modulated={"prompt_mix": 0.5}).plan is mixed
    assert mixed.schedule is base.schedule and mixed.noise is base.noise  # strength unmoved: shared
    assert not mixed.prompt.target.hidden.equal(base.prompt.target.hidden)
    pipeline.update(seed=3)  # a new base: the modulated plans of the old one are dropped
    assert pipeline.prepare(frame, (128, 128), modulated={"prompt_mix": 0.5}).plan.params.seed == 3


def test_the_analysers_sources_are_the_ones_a_modulation_may_name():
    features = pytest.importorskip("server.media.sound_features")
    assert tuple(features.SOURCES) == MODULATION_SOURCES


# ---- OSC and scenes, against a live server ----


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


def rejected_over_osc(server: LiveServer) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('lcmlive_control_messages_total{front_end="osc",result="rejected"}'):
                return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
async def test_osc_sets_modulations_as_json_and_scenes_carry_them(tmp_path):
    scenes = tmp_path / "scenes.json"
    scenes.write_text("[]")
    port = free_port()
    server = LiveServer("--osc-port", str(port), "--scenes", str(scenes))
    osc = SimpleUDPClient("127.0.0.1", port)
    pulse = [entry(amount=0.4, smooth_ms=50), entry(param="prompt_mix", source="onset", amount=-0.25)]
    expected = [{**pulse[0], "smooth_ms": 50.0}, {**pulse[1], "smooth_ms": 0.0}]
    try:
        async with (
            LoopbackClient(server.ws_url, 128, 128, stream="vj") as page,
            ControlClient(server.ws_url, "vj") as control,
        ):
            await page.wait_for_frames(2, timeout=60)
            osc.send_message("/lcmlive/vj/modulations", json.dumps(pulse))
            echo = await control.wait_for_params(lambda p: p["modulations"] == expected)
            assert echo["params"]["strength"] == PRESETS["tiny"].default_strength  # the base is untouched

            rejected = rejected_over_osc(server)
            for bad in ["[{", json.dumps([entry(param="steps")]), json.dumps({"param": "strength"}), 3, "[" * 5000]:
                osc.send_message("/lcmlive/vj/modulations", bad)
            osc.send_message("/lcmlive/vj/seed", 4)  # a good message after the bad ones: still heard
            await control.wait_for_params(lambda p: p["seed"] == 4)
            for _ in range(50):  # the bad ones are counted by the time the good one is applied, give or take
                if rejected_over_osc(server) >= rejected + 5:
                    break
                await asyncio.sleep(0.1)
            assert rejected_over_osc(server) == rejected + 5
            now = await page.send_params()
            assert now["params"]["modulations"] == expected  # nothing bad got through

            saved = await http("PUT", f"{server.url}/scenes/pulse", json.dumps({"stream": "vj"}))
            assert saved.status == 200 and json.loads(saved.body)["params"]["modulations"] == expected
            await page.send_params(modulations=[])
            recalled = await http("POST", f"{server.url}/scenes/pulse/recall", json.dumps({"stream": "vj"}))
            assert recalled.status == 200
            await control.wait_for_params(lambda p: p["modulations"] == expected)
            assert json.loads(scenes.read_text())[0]["params"]["modulations"] == expected

            refused = await http("PATCH", f"{server.url}/streams/vj", json.dumps({"modulations": [entry(amount=9)]}))
            assert refused.status == 422 and "modulations[0].amount must be between -1 and 1" in refused.body
    finally:
        server.stop()
