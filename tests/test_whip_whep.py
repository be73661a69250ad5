"""WHIP in, WHEP out, against a live `lcmlive serve`: aiortc as OBS, aiortc as viewers, every refusal."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from server.bench.loopback import ControlClient, LoopbackClient, SyntheticCamera, free_port
from server.bench.rtc_clients import WhepViewer, WhipPublisher, http, post_sdp
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

TOKEN = "studio-secret"
TIMEOUT = 60


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.fixture(scope="module")
def studio():
    server = LiveServer("--token", TOKEN, "--max-viewers", "4", "--max-sessions", "3")
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


def urls(server: LiveServer, stream: str) -> tuple[str, str]:
    return f"{server.url}/whip/{stream}", f"{server.url}/whep/{stream}"


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def wait_until(condition, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def offer_sdp(kind: str = "video", direction: str = "sendonly", codec: str | None = None) -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from server.bench.rtc_clients import prefer_codec

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(kind, direction=direction)
    if codec is not None:
        prefer_codec(transceiver, codec)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.mark.slow
async def test_obs_publishes_over_whip_and_a_whep_viewer_sees_the_stylised_stream(studio):
    whip, whep = urls(studio, "obs-main")
    camera = SyntheticCamera(256, 256, still=True)
    publisher = WhipPublisher(whip, token=TOKEN, camera=camera)
    async with publisher:
        assert publisher.reply.status == 201
        assert publisher.reply.headers["content-type"].startswith("application/sdp")
        assert publisher.reply.headers["location"].startswith("/whip/obs-main/")
        assert "m=audio" in publisher.reply.body  # the Opus m-line is accepted, not rejected
        async with ControlClient(studio.ws_url, "obs-main", token=TOKEN) as control:
            await wait_until(lambda: any(s["frames_in"] > 5 for s in control.record.stats), what="frames in")
            async with WhepViewer(whep, token=TOKEN, sample_every=1) as viewer:
                await viewer.wait_for_frames(8, timeout=TIMEOUT)
                # Stylised: far from anything the camera sent.
                picture = viewer.record.samples[-1][1]
                assert min(mean_abs_diff(picture, sent) for sent in camera.frames) > 10
                before = viewer.record.samples[-1][1]
                echo = await control.send_params(prompt="a forest of glass, neon light")
                assert echo["params"]["prompt"] == "a forest of glass, neon light"
                changed_at = time.monotonic()
                await asyncio.sleep(2)
                await viewer.wait_for_frames(len(viewer.record.arrivals) + 4, timeout=TIMEOUT)
                after = [p for t, p in viewer.record.samples if t > changed_at + 1.0]
                last_two = [p for t, p in viewer.record.samples if t < changed_at][-2:]
                same_prompt = mean_abs_diff(*last_two)
                assert mean_abs_diff(before, after[-1]) > 2 * same_prompt + 2, (same_prompt,)

                # DELETE of the publisher ends the stream: the viewer's connection closes, the controller is told.
                status = await publisher.close()
                assert status == 200
                await wait_until(lambda: viewer.pc.connectionState == "closed", what="the viewer to be closed")
                await wait_until(lambda: any(e["code"] == "publisher_left" for e in control.record.errors))
    health = await wait_until(
        lambda: (h := studio.health())["publishers"] == h["viewers"] == h["peer_connections"] == 0 and h,
        what="/health back to zero",
    )
    assert health["streams"] == health["engine_clients"] == 0, health


async def test_four_viewers_cost_one_encode_per_frame(studio):
    whip, whep = urls(studio, "fanout")
    async with WhipPublisher(whip, token=TOKEN), ControlClient(studio.ws_url, "fanout", token=TOKEN) as control:
        viewers = [WhepViewer(whep, token=TOKEN) for _ in range(4)]
        for viewer in viewers:
            await viewer.__aenter__()
        try:
            for viewer in viewers:
                await viewer.wait_for_frames(5, timeout=TIMEOUT)
            last = await wait_until(
                lambda: next((s for s in control.record.stats if s["viewers"] == 4 and s["frames_out"] > 10), None),
                what="stats with four viewers",
            )
            # All four viewers negotiated VP8 (aiortc's first choice): one encode per frame, not four.
            assert last["encodes"] <= last["frames_out"] + 1, last
            # Each viewer receives about every frame the stream put out since it joined.
            counts = [len(v.record.arrivals) for v in viewers]
            assert min(counts) > 0.5 * max(counts), counts
        finally:
            for viewer in viewers:
                assert await viewer.close() == 200


async def test_viewers_with_two_codecs_cost_two_encodes_per_frame(studio):
    whip, whep = urls(studio, "two-codecs")
    async with (
        WhipPublisher(whip, token=TOKEN),
        ControlClient(studio.ws_url, "two-codecs", token=TOKEN) as control,
        WhepViewer(whep, TOKEN, codec="video/VP8") as vp8,
        WhepViewer(whep, TOKEN, codec="video/H264") as h264,
    ):
        await vp8.wait_for_frames(5, timeout=TIMEOUT)
        await h264.wait_for_frames(5, timeout=TIMEOUT)
        await asyncio.sleep(2)
        last = control.record.stats[-1]
        assert last["frames_out"] + 2 < last["encodes"] <= 2 * last["frames_out"] + 2, last


async def test_whip_refusals(studio):
    whip, _ = urls(studio, "refusals")
    good = await offer_sdp(codec="video/H264")
    assert (await post_sdp(whip, good)).status == 401  # no token
    assert (await post_sdp(whip, good, token="wrong")).status == 401
    for bad, code in [
        ("v=0 garbage", "bad_sdp"),
        ("", "bad_sdp"),
        (await offer_sdp("audio"), "no_video"),
        (await offer_sdp(direction="recvonly"), "bad_direction"),
    ]:
        reply = await post_sdp(whip, bad, TOKEN)
        assert reply.status == 400 and code in reply.body, (reply.status, reply.body)
    unknown_codec = good.replace("H264", "H265")
    reply = await post_sdp(whip, unknown_codec, TOKEN)
    assert reply.status == 400 and "unsupported_codec" in reply.body, reply.body
    reply = await http("POST", whip, good, TOKEN, **{"Content-Type": "text/plain"})
    assert reply.status == 415
    reply = await post_sdp(f"{studio.url}/whip/bad%20name!", good, TOKEN)
    assert reply.status == 400 and "bad_stream_name" in reply.body
    assert (await http("GET", whip, token=TOKEN)).status == 405
    async with WhipPublisher(whip, token=TOKEN) as first:
        second = await post_sdp(whip, good, TOKEN)
        assert second.status == 409 and "stream_taken" in second.body
        assert first.location is not None
        assert (await http("PATCH", first.location, "a=candidate", TOKEN)).status == 405
        assert (await http("DELETE", first.location + "x", token=TOKEN)).status == 404
        options = await http("OPTIONS", whip, token=TOKEN)
        assert options.status == 204 and "POST" in options.headers["allow"]
    assert studio.health()["publishers"] == 0


async def test_whep_refusals(studio):
    whip, whep = urls(studio, "crowded")
    viewer_offer = await offer_sdp(direction="recvonly")
    assert (await post_sdp(f"{studio.url}/whep/nobody", viewer_offer, TOKEN)).status == 404
    assert (await post_sdp(whep, viewer_offer)).status == 401
    async with WhipPublisher(whip, token=TOKEN):
        reply = await post_sdp(whep, await offer_sdp(direction="sendonly"), TOKEN)
        assert reply.status == 400 and "bad_direction" in reply.body
        viewers = [WhepViewer(whep, TOKEN) for _ in range(4)]
        try:
            for viewer in viewers:
                await viewer.__aenter__()
            full = await post_sdp(whep, viewer_offer, TOKEN)
            assert full.status == 503 and "viewers_full" in full.body
            assert (await http("DELETE", f"{whep}/not-a-viewer", token=TOKEN)).status == 404
        finally:
            for viewer in viewers:
                await viewer.close()
        assert studio.health()["viewers"] == 0


async def test_a_page_publishes_under_its_name_and_a_second_page_gets_stream_taken(studio):
    async with LoopbackClient(studio.ws_url, token=TOKEN, stream="stage-left") as page:
        assert page.stream_name == "stage-left"
        with pytest.raises(RuntimeError, match="stream_taken"):
            async with LoopbackClient(studio.ws_url, token=TOKEN, stream="stage-left"):
                pass
        async with WhepViewer(f"{studio.url}/whep/stage-left", TOKEN) as viewer:
            await viewer.wait_for_frames(3, timeout=TIMEOUT)
        with pytest.raises(RuntimeError, match="no_such_stream"):
            async with ControlClient(studio.ws_url, "nobody-here", token=TOKEN):
                pass
    async with LoopbackClient(studio.ws_url, token=TOKEN) as unnamed:
        assert unnamed.stream_name is not None and unnamed.stream_name.startswith("cam-")


@pytest.mark.slow
async def test_server_full_counts_publishers_not_viewers():
    server = LiveServer("--max-sessions", "1")
    try:
        async with WhipPublisher(f"{server.url}/whip/only"):
            second = await post_sdp(f"{server.url}/whip/other", await offer_sdp(codec="video/H264"))
            assert second.status == 503 and "server_full" in second.body
            async with WhepViewer(f"{server.url}/whep/only") as viewer:
                await viewer.wait_for_frames(2, timeout=TIMEOUT)
    finally:
        output = server.stop()
    assert "Traceback" not in output


def test_free_port_is_loopback():
    assert free_port() > 0


async def test_a_simulcast_offer_is_answered_with_one_layer(studio):
    whip, _ = urls(studio, "simulcast")
    offer = await offer_sdp(codec="video/H264")
    video = offer.index("m=video")
    end = offer.find("m=", video + 1)
    layers = "a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n"
    offer = offer[: end if end > 0 else len(offer)] + layers + (offer[end:] if end > 0 else "")
    reply = await post_sdp(whip, offer, TOKEN)
    assert reply.status == 201, reply.body
    assert "a=simulcast" not in reply.body and "a=rid" not in reply.body  # the publisher falls back to one layer
    assert (await http("DELETE", f"{studio.url}{reply.headers['location']}", token=TOKEN)).status == 200
