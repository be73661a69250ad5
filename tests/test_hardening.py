"""Slots freed by timeouts, foreign origins refused, a graceful shutdown, and failure paths that never ran."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import threading
import time

import pytest
import websockets
from aiortc import MediaStreamTrack
from av import VideoFrame
from websockets.typing import Origin

from server.bench.loopback import ControlClient, LoopbackClient
from server.bench.rtc_clients import WhepViewer, WhipPublisher, http
from server.media.ice import restrict_ice_to_loopback
from server.stats import StreamStats

from conftest import LiveServer

TIMEOUT = 60


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


async def messages_until_closed(ws, limit: float = TIMEOUT) -> list[dict]:
    """Every message until the server closes the socket."""
    received = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), limit)))
    return received


async def wait_for_health(server: LiveServer, condition, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = server.health()
        if condition(health):
            return health
        if time.monotonic() > deadline:
            pytest.fail(f"health never reached the expected state: {health}")
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_idle_sockets_give_their_slots_back_after_the_offer_timeout():
    server = LiveServer("--max-sessions", "2", "--offer-timeout", "1.5")
    try:
        async with websockets.connect(server.ws_url) as idle_1, websockets.connect(server.ws_url) as idle_2:
            async with websockets.connect(server.ws_url) as third:
                assert "server_full" in [m.get("code") for m in await messages_until_closed(third)]
            started = time.monotonic()
            for idle in (idle_1, idle_2):
                codes = [m.get("code") for m in await messages_until_closed(idle)]
                assert "offer_timeout" in codes, codes
                assert idle.close_code == 1008
            assert time.monotonic() - started < 10
        assert server.health()["publishers"] == 0
        async with LoopbackClient(server.ws_url, 128, 128) as client:  # a real viewer gets a slot again
            await client.wait_for_frames(2, timeout=TIMEOUT)
            # The offer came in time: the deadline passing later must not end the stream.
            await asyncio.sleep(3)
            assert server.health()["streams"] == 1
            await client.wait_for_frames(len(client.record.arrivals) + 3, timeout=30)
            assert not client.record.errors, client.record.errors
    finally:
        server.stop()


class SilentCamera(MediaStreamTrack):
    """A camera that stopped sending: the connection stays up, no frame comes."""

    kind = "video"

    async def recv(self) -> VideoFrame:
        return await asyncio.get_running_loop().create_future()  # never resolved: no frame comes


@pytest.mark.slow
async def test_a_publisher_that_never_connects_and_one_that_goes_quiet_are_dropped():
    server = LiveServer("--connect-timeout", "2", "--idle-timeout", "2")
    try:
        # Never connects: the offer is posted, the answer never applied.
        ghost = WhipPublisher(f"{server.url}/whip/ghost")
        await ghost.publish()
        assert ghost.reply.status == 201
        await ghost.pc.close()
        assert server.health()["streams"] == 1
        await wait_for_health(server, lambda h: h["streams"] == 0 and h["peer_connections"] == 0, timeout=15)

        # Goes quiet: connected and sending, then no more frames.
        async with WhipPublisher(f"{server.url}/whip/quiet") as quiet, ControlClient(server.ws_url, "quiet") as control:
            deadline = time.monotonic() + TIMEOUT
            while not any(s["frames_in"] > 3 for s in control.record.stats):
                assert time.monotonic() < deadline, "no camera frame reached the server"
                await asyncio.sleep(0.2)
            quiet.pc.getTransceivers()[0].sender.replaceTrack(SilentCamera())
            deadline = time.monotonic() + 15
            while not any(e["code"] == "source_idle" for e in control.record.errors):
                assert time.monotonic() < deadline, control.record.errors
                await asyncio.sleep(0.2)
        await wait_for_health(server, lambda h: h["streams"] == h["peer_connections"] == 0, timeout=15)
    finally:
        output = server.stop()
    assert "Traceback" not in output


@pytest.mark.slow
async def test_pages_from_other_origins_are_refused_unless_allowed():
    server = LiveServer("--allow-origin", "http://studio.example")
    same = f"http://127.0.0.1:{server.port}"
    try:
        async with websockets.connect(server.ws_url, origin=Origin("http://evil.example")) as ws:
            messages = await messages_until_closed(ws)
            assert messages[0]["code"] == "forbidden_origin" and "evil.example" in messages[0]["message"]
            assert ws.close_code == 1008
        for origin in (Origin(same), Origin("http://studio.example"), None):
            async with websockets.connect(server.ws_url, origin=origin) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "stream", origin
        whip = f"{server.url}/whip/cross"
        forbidden = await http(
            "POST", whip, "v=0", **{"Content-Type": "application/sdp", "Origin": "http://evil.example"}
        )
        assert forbidden.status == 403 and "forbidden_origin" in forbidden.body
        assert (await http("GET", f"{server.url}/health", Origin="http://evil.example")).status == 200
        preflight = {"Origin": "http://studio.example", "Access-Control-Request-Method": "POST"}
        allowed = await http("OPTIONS", whip, **preflight, **{"Access-Control-Request-Headers": "authorization"})
        assert allowed.status == 200, allowed
        assert allowed.headers["access-control-allow-origin"] == "http://studio.example"
        refused = await http("OPTIONS", whip, **{**preflight, "Origin": "http://evil.example"})
        assert refused.status == 400
        # OBS and other non-browser clients send no Origin.
        async with WhipPublisher(whip) as publisher:
            assert publisher.reply.status == 201
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.serial  # real-time checks: an exit within 5 s; a recording kept to within 1 s of a kill
async def test_sigterm_tells_every_client_and_exits_cleanly_within_five_seconds():
    server = LiveServer()
    async with (
        LoopbackClient(server.ws_url, 128, 128, stream="show") as page,
        ControlClient(server.ws_url, "show") as control,
        WhepViewer(f"{server.url}/whep/show") as viewer,
        websockets.connect(server.ws_url + "?stream=waiting") as waiting,  # never offers
    ):
        await viewer.wait_for_frames(2, timeout=TIMEOUT)
        assert json.loads(await waiting.recv())["type"] == "stream"
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            pytest.fail("the server did not stop within 10 s of SIGTERM")
        elapsed = time.monotonic() - started
        codes = [m.get("code") for m in await messages_until_closed(waiting, 5)]
        await asyncio.sleep(0.5)
    output = server.stop()  # it has exited: this only collects what it printed
    assert elapsed < 5, elapsed
    assert server.process.returncode == 0, output
    assert "Traceback" not in output, output
    assert "shutting_down" in codes
    assert any(e["code"] == "shutting_down" for e in page.record.errors)
    assert any(e["code"] == "shutting_down" for e in control.record.errors)
    assert viewer.pc.connectionState == "closed"


async def test_shutdown_never_blocks_the_event_loop(tiny):
    from server.app import create_app
    from server.config import ServerConfig

    app = create_app(tiny, ServerConfig())
    engine = app.state.engine
    engine.start()
    busy = asyncio.create_task(engine.call(lambda: time.sleep(1.5)))  # a long frame in progress
    await asyncio.sleep(0.1)
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await app.state.shutdown()
    ticker.cancel()
    await asyncio.gather(busy, ticker, return_exceptions=True)
    assert max(gaps) < 0.5, max(gaps)  # the engine's join ran off the loop


def test_stats_sizes_are_never_seen_half_written():
    stats = StreamStats()
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            for side in (64, 128):
                stats.set(width=side, height=side)

    writer = threading.Thread(target=write)
    switch = __import__("sys").getswitchinterval()
    __import__("sys").setswitchinterval(1e-6)
    writer.start()
    try:
        torn = sum(1 for _ in range(20000) if (s := stats.snapshot())["width"] != s["height"])
    finally:
        stop.set()
        writer.join()
        __import__("sys").setswitchinterval(switch)
    assert torn == 0


@pytest.mark.slow
async def test_a_camera_that_changes_resolution_keeps_streaming(live_server):
    async with LoopbackClient(live_server.ws_url, 256, 192, sample_every=1) as client:
        await client.wait_for_frames(4, timeout=TIMEOUT)
        client.camera.resize(192, 256)  # landscape to portrait
        switched = len(client.record.arrivals)
        await client.wait_for_frames(switched + 8, timeout=TIMEOUT)
    shapes = [picture.shape for _, picture in client.record.samples]
    assert shapes[1][:2] == (192, 256) and shapes[-1][:2] == (256, 192), shapes
    assert not client.record.errors


@pytest.mark.slow
async def test_two_live_publishers_get_fair_shares(live_server):
    async with (
        LoopbackClient(live_server.ws_url, 128, 128) as first,
        LoopbackClient(live_server.ws_url, 128, 128) as second,
    ):
        await first.wait_for_frames(3, timeout=TIMEOUT)
        await second.wait_for_frames(3, timeout=TIMEOUT)
        start = time.monotonic()
        await asyncio.sleep(8)
        end = time.monotonic()
    rates = [client.record.fps_between(start, end) for client in (first, second)]
    assert min(rates) > 0.7 * max(rates), rates
    latencies = [statistics.median(s["latency_ms"] for s in c.record.stats[-4:]) for c in (first, second)]
    assert max(latencies) < 3 * min(latencies) + 100, latencies
