"""OSC against a live server: python-osc over UDP on 127.0.0.1 sets params, maps faders, recalls scenes, and
outlives datagrams that python-osc cannot parse."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import struct
import time
import urllib.request

import numpy as np
import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.udp_client import SimpleUDPClient

from pipelines import ParamsError
from pipelines.params import params_model_for
from server.bench.loopback import ControlClient, LoopbackClient, free_port
from server.frontends.osc import OncePerSender, OscControl
from server.media.ice import restrict_ice_to_loopback
from server.metrics import Metrics
from server.pacing import pacing_params_model, settings_model
from server.scenes import SceneBook

from conftest import LiveServer

pytestmark = pytest.mark.slow  # a live server with OSC: 13 s to start in a loaded run, 27 s the module

TIMEOUT = 60
SCENES = [
    {"name": "calm", "params": {"prompt": "a calm blue lake", "strength": 0.4}},
    {"name": "storm", "params": {"prompt": "a storm of fire", "strength": 0.8, "seed": 5}},
]


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


class OscServer(LiveServer):
    osc: SimpleUDPClient  # a client that sends to its OSC port


@pytest.fixture(scope="module")
def osc_server(tmp_path_factory):
    scenes = tmp_path_factory.mktemp("show") / "scenes.json"
    scenes.write_text(json.dumps(SCENES))
    port = free_port()  # a TCP probe; the UDP port of the same number is as free on loopback in practice
    server = OscServer("--osc-port", str(port), "--scenes", str(scenes))
    server.osc = SimpleUDPClient("127.0.0.1", port)
    yield server
    server.stop()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def osc_message(address: str, value) -> bytes:
    builder = OscMessageBuilder(address)
    builder.add_arg(value)
    return builder.build().dgram


def nested_bundles(size: int = 60_000) -> bytes:
    """Each bundle the only element of the one around it: python-osc parses them recursively (RecursionError)."""
    bundle = b""
    while len(bundle) + 20 <= size:  # "#bundle\0", a time tag, then the inner bundle's size and bytes
        element = struct.pack(">i", len(bundle)) + bundle if bundle else b""
        bundle = b"#bundle\0" + struct.pack(">Q", IMMEDIATELY) + element
    return bundle


def hostile_datagrams(stream: str) -> dict[str, bytes]:
    """Datagrams that stopped OSC or may: each must be refused and counted, and the next message still heard."""
    bundle = OscBundleBuilder(IMMEDIATELY)
    bundle.add_content(OscMessageBuilder(f"/lcmlive/{stream}/seed").build())
    noise = random.Random(20).randbytes(1000)
    # 65 000 bytes (UDP's payload over loopback is at most 65 507): a prompt 32 times the limit.
    address = f"/lcmlive/{stream}/prompt"
    huge = osc_message(address, "x" * (65_000 - len(osc_message(address, "")) + 3))  # "" is 4 bytes of padding
    assert len(huge) == 65_000
    return {
        "nested bundles": nested_bundles(),  # RecursionError inside python-osc
        "truncated bundle": bundle.build().dgram[:-3],  # ParseError
        "random bytes": noise,  # ParseError
        "an address of random bytes": b"/" + noise,  # UnicodeDecodeError inside python-osc
        "65 000 bytes": huge,  # parses; refused by the params check when applied
    }


def rejected_count(server: LiveServer) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('lcmlive_control_messages_total{front_end="osc",result="rejected"}'):
                return float(line.split()[-1])
    return 0.0


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
        # /norm maps onto the strengths that run at the stream's steps: at 2 steps, 0.04 (2 of 50 LCM timesteps) to 1.
        osc.send_message("/lcmlive/vj/strength/norm", 0.5)
        await control.wait_for_params(lambda p: p["strength"] == 0.52)
        osc.send_message("/lcmlive/vj/strength/norm", 0.0)
        await control.wait_for_params(lambda p: p["strength"] == 0.04)
        osc.send_message("/lcmlive/vj/strength/norm", 1.0)
        await control.wait_for_params(lambda p: p["strength"] == 1.0)
        osc.send_message("/lcmlive/vj/steps/norm", 1.0)  # whole-number params round: the model's maximum
        await control.wait_for_params(lambda p: p["steps"] == 4)
        osc.send_message("/lcmlive/vj/strength/norm", 0.0)  # the floor follows steps: 4 of 50 timesteps
        await control.wait_for_params(lambda p: p["strength"] == 0.08)

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


async def test_no_datagram_stops_osc(osc_server):
    osc = osc_server.osc
    target = (osc._address, osc._port)
    mark = len(osc_server.lines)
    async with LoopbackClient(osc_server.ws_url, 128, 128, stream="hostile") as page:
        start = await page.send_params()
        rejected = rejected_count(osc_server)

        async def seed_applies_after(*datagrams: bytes, seed: int) -> float:
            sent_at = time.monotonic()
            for data in datagrams:
                osc._sock.sendto(data, target)
            osc.send_message("/lcmlive/hostile/seed", seed)
            await page.wait_for_params(lambda p: p["seed"] == seed)
            return time.monotonic() - sent_at

        alone = await seed_applies_after(seed=20)
        datagrams = hostile_datagrams("hostile")
        after_bomb = await seed_applies_after(datagrams.pop("nested bundles"), seed=21)
        await seed_applies_after(*datagrams.values(), seed=22)
        # Applying survives too: a scene "number" of 5000 digits is past int()'s limit (ValueError).
        await seed_applies_after(osc_message("/lcmlive/hostile/scene", "9" * 5000), seed=23)
        now = await page.send_params()
    print(
        f"OSC: an ordinary message applied {alone * 1000:.0f} ms after it was sent; "
        f"{after_bomb * 1000:.0f} ms when it followed the nested-bundle bomb"
    )
    assert now["params"] == {**start["params"], "seed": 23}
    assert rejected_count(osc_server) >= rejected + 1 + 4 + 1
    printed = "".join(osc_server.lines[mark:])
    assert "Traceback" not in printed and "Exception in callback" not in printed, printed


def test_beyond_localhost_only_listed_senders_are_heard(tiny):
    from pipelines.params import params_model_for

    settings = settings_model(params_model_for(tiny), pacing_params_model())
    control = OscControl(
        None,  # pyright: ignore[reportArgumentType]  # no registry: these messages stop before any stream
        SceneBook(settings),
        settings,
        Metrics(tiny.device),
        frozenset({"10.0.0.7"}),
    )
    message = b"/lcmlive/x/seed\x00,i\x00\x00\x00\x00\x00\x07"
    control.datagram_received(message, ("10.0.0.8", 9000))
    assert control._pending == {}
    control.datagram_received(message, ("10.0.0.7", 9000))
    assert [(c.stream, c.param, c.value) for c in control._pending.values()] == [("x", "seed", 7)]


def test_norm_maps_onto_each_params_range(tiny):
    settings = settings_model(params_model_for(tiny), pacing_params_model())
    control = OscControl(
        None,  # pyright: ignore[reportArgumentType]  # no registry: these messages stop before any stream
        SceneBook(settings),
        settings,
        Metrics(tiny.device),
        None,
    )
    defaults = settings().as_dict()  # the toy's: 2 steps, img2img
    assert control._from_norm("guidance_scale", 0.5, defaults) == 10.0
    assert control._from_norm("max_resolution", 0.0, defaults) == 64
    assert control._from_norm("seed", 1.0, defaults) == 2**31 - 1
    assert [control._from_norm("steps", norm, defaults) for norm in (0.0, 0.5, 1.0)] == [1, 2, 4]

    # strength: 0 is the lowest strength that runs the stream's steps, 1 the highest; both apply.
    lowest, highest = (control._from_norm("strength", norm, defaults) for norm in (0.0, 1.0))
    print(f"strength/norm at the toy's defaults (steps={defaults['steps']}): 0 -> {lowest}, 1 -> {highest}")
    assert (lowest, highest) == (0.04, 1.0)
    for strength in (lowest, highest):
        settings.validated({**defaults, "strength": strength})
    with pytest.raises(ParamsError, match="fewer LCM timesteps"):
        settings.validated({**defaults, "strength": lowest - 0.0001})
    assert control._from_norm("strength", 0.0, {**defaults, "steps": 4}) == 0.08
    assert control._from_norm("strength", 0.0, {**defaults, "mode": "txt2img"}) == 0.01  # strength unused there


def test_what_python_osc_cannot_parse_is_counted_and_logged_once_a_minute_per_sender(tiny, caplog):
    settings = settings_model(params_model_for(tiny), pacing_params_model())
    metrics = Metrics(tiny.device)
    control = OscControl(
        None,  # pyright: ignore[reportArgumentType]  # no registry: these messages stop before any stream
        SceneBook(settings),
        settings,
        metrics,
        None,
    )
    datagrams = hostile_datagrams("x")
    started = time.perf_counter()
    with pytest.raises(RecursionError):
        OscPacket(datagrams["nested bundles"])
    parsing = time.perf_counter() - started
    started = time.perf_counter()
    control.datagram_received(datagrams["nested bundles"], ("127.0.0.1", 9000))
    handling = time.perf_counter() - started
    print(
        f"nested-bundle bomb ({len(datagrams['nested bundles'])} bytes): python-osc fails in {parsing * 1000:.1f} ms, "
        f"OscControl refuses it in {handling * 1000:.1f} ms"
    )
    for data in datagrams.values():
        control.datagram_received(data, ("127.0.0.1", 9000))
    control.datagram_received(datagrams["random bytes"], ("127.0.0.2", 9000))
    rejected = metrics.registry.get_sample_value(
        "lcmlive_control_messages_total", {"front_end": "osc", "result": "rejected"}
    )
    assert rejected == 1 + 4 + 1  # the 65 000 bytes parse: the params check refuses them when they apply
    logged = [r.getMessage() for r in caplog.records if r.name == "server.frontends.osc"]
    assert [line.split(":")[0] for line in logged] == ["OSC from 127.0.0.1", "OSC from 127.0.0.2"], logged
    assert "RecursionError" in logged[0]
    assert [c.param for c in control._pending.values()] == ["prompt"]


def test_a_sender_is_logged_once_a_minute_and_the_memory_of_senders_is_bounded():
    now = [0.0]
    once = OncePerSender(interval=60.0, capacity=2, clock=lambda: now[0])
    assert [once.allow("a"), once.allow("a"), once.allow("a"), once.allow("b")] == [0, None, None, 0]
    assert once.allow("c") is None  # two senders remembered: a third is not logged until one expires
    now[0] = 60.0
    assert once.allow("a") == 2  # a minute later: logged again, saying how many went unlogged
    assert once.allow("c") == 0  # b expired and was forgotten
    assert len(once._senders) == 2
