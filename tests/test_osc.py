"""OSC against a live server: python-osc over UDP on 127.0.0.1 sets params, maps faders, recalls scenes."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient

from pipelines import PRESETS, params_model
from server.bench.loopback import ControlClient, LoopbackClient, free_port
from server.frontends.osc import OscControl
from server.media.ice import restrict_ice_to_loopback
from server.metrics import Metrics
from server.scenes import SceneBook
from server.session_params import session_params_model, settings_model

from conftest import LiveServer

TIMEOUT = 60
SCENES = [
    {"name": "calm", "params": {"prompt": "a calm blue lake", "strength": 0.4}},
    {"name": "storm", "params": {"prompt": "a storm of fire", "strength": 0.8, "seed": 5}},
]


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.fixture(scope="module")
def osc_server(tmp_path_factory):
    scenes = tmp_path_factory.mktemp("show") / "scenes.json"
    scenes.write_text(json.dumps(SCENES))
    port = free_port()  # a TCP probe; the UDP port of the same number is as free on loopback in practice
    server = LiveServer("--osc-port", str(port), "--scenes", str(scenes))
    server.osc = SimpleUDPClient("127.0.0.1", port)
    yield server
    server.output = server.stop()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def test_osc_sets_prompt_strength_and_scenes_and_the_frames_change(osc_server):
    osc = osc_server.osc
    async with (
        LoopbackClient(osc_server.ws_url, 128, 128, still=True, sample_every=1, stream="vj") as page,
        ControlClient(osc_server.ws_url, "vj") as control,
    ):
        await page.wait_for_frames(4, timeout=TIMEOUT)
        before = page.record.samples[-1][1]
        osc.send_message("/lcmlive/vj/prompt", "neon lights at night")
        echo = await control.wait_for_params(lambda p: p["prompt"] == "neon lights at night")
        changed_at = time.monotonic()
        await asyncio.sleep(1.5)
        await page.wait_for_frames(len(page.record.arrivals) + 3, timeout=TIMEOUT)
        after = [picture for t, picture in page.record.samples if t > changed_at + 1.0][-1]
        still = [picture for t, picture in page.record.samples if t < changed_at][-2:]
        assert mean_abs_diff(before, after) > 2 * mean_abs_diff(*still) + 2

        osc.send_message("/lcmlive/vj/strength", 0.7)
        await control.wait_for_params(lambda p: p["strength"] == 0.7)
        osc.send_message("/lcmlive/vj/strength/norm", 0.5)  # 0.01 + 0.5 x (1 - 0.01)
        await control.wait_for_params(lambda p: abs(p["strength"] - 0.505) < 1e-9)
        osc.send_message("/lcmlive/vj/steps/norm", 1.0)  # whole-number params round: the model's maximum
        await control.wait_for_params(lambda p: p["steps"] == 4)

        osc.send_message("/lcmlive/vj/scene", "storm")
        echo = await control.wait_for_params(lambda p: p["prompt"] == "a storm of fire")
        assert echo["params"]["seed"] == 5 and echo["params"]["strength"] == 0.8
        osc.send_message("/lcmlive/*/scene", 1)  # by position, on every stream
        await control.wait_for_params(lambda p: p["prompt"] == "a calm blue lake")


async def test_a_burst_of_1000_messages_keeps_the_frame_rate_and_leaves_the_last_values(osc_server):
    osc = osc_server.osc
    async with LoopbackClient(osc_server.ws_url, 128, 128, stream="fader") as page:
        await page.wait_for_frames(4, timeout=TIMEOUT)
        await asyncio.sleep(3)
        burst_at = time.monotonic()
        for value in range(1000):  # a fader pushed hard: seed and strength interleaved
            osc.send_message("/lcmlive/fader/seed", value)
            osc.send_message("/lcmlive/fader/strength/norm", value / 999)
        sent_in = time.monotonic() - burst_at
        await asyncio.sleep(3)
        final = await page.send_params()  # an empty change: the effective params now
        arrivals = page.record.arrivals
    assert final["params"]["seed"] == 999 and final["params"]["strength"] == 1.0
    before = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if burst_at - 3 <= a < burst_at]
    during = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if burst_at <= a < burst_at + 3]
    # Frame intervals, not wall-clock asserts: the video keeps its pace through the burst.
    print(
        f"OSC burst: 2000 messages sent in {sent_in * 1000:.0f} ms; median frame interval "
        f"{statistics.median(before) * 1000:.0f} ms in the 3 s before, {statistics.median(during) * 1000:.0f} ms after"
    )
    assert statistics.median(during) <= 1.5 * statistics.median(before) + 0.02, (before, during, sent_in)


async def test_bad_messages_change_nothing(osc_server):
    osc = osc_server.osc
    async with (
        ControlClient(osc_server.ws_url, "vj-bad")
        if False
        else LoopbackClient(osc_server.ws_url, 128, 128, stream="steady") as page
    ):
        start = await page.send_params()
        for address, value in [
            ("/lcmlive/steady/steps", 99),  # out of range
            ("/lcmlive/steady/strength", "lots"),  # wrong type
            ("/lcmlive/steady/colour", 1),  # unknown param
            ("/lcmlive/nobody/prompt", "x"),  # unknown stream
            ("/lcmlive/steady/prompt/norm", 0.5),  # /norm on a string
            ("/lcmlive/steady/strength/norm", 1.5),  # /norm out of 0..1
            ("/lcmlive/steady/scene", "no-such-scene"),
            ("/other/steady/prompt", "x"),  # not ours
        ]:
            osc.send_message(address, value)
        osc._sock.sendto(b"\x00garbage, not OSC", (osc._address, osc._port))
        osc.send_message("/lcmlive/steady/seed", 11)  # a good one after the bad: still applied
        for _ in range(100):
            if page.record.params[-1]["params"]["seed"] == 11:
                break
            await asyncio.sleep(0.1)
        now = await page.send_params()
    assert now["params"] == {**start["params"], "seed": 11}


def test_beyond_localhost_only_listed_senders_are_heard(tiny):
    from pipelines.params import params_model_for

    settings = settings_model(params_model_for(tiny), session_params_model())
    control = OscControl(None, SceneBook(settings), settings, Metrics(tiny.device), frozenset({"10.0.0.7"}))
    message = b"/lcmlive/x/seed\x00,i\x00\x00\x00\x00\x00\x07"
    control.datagram_received(message, ("10.0.0.8", 9000))
    assert control._pending == {}
    control.datagram_received(message, ("10.0.0.7", 9000))
    assert [(c.stream, c.param, c.value) for c in control._pending.values()] == [("x", "seed", 7)]


def test_norm_maps_onto_each_params_range():
    settings = settings_model(params_model(PRESETS["tiny"]), session_params_model())
    control = OscControl(None, SceneBook(settings), settings, Metrics("cpu"), None)
    assert control._from_norm("a", "guidance_scale", 0.5) == 10.0
    assert control._from_norm("a", "max_resolution", 0.0) == 64
    assert control._from_norm("a", "seed", 1.0) == 2**31 - 1
