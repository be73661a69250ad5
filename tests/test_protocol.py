"""The /ws protocol against a live `lcmlive serve`: every kind of bad input gets an error and changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from importlib.metadata import version

import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection

from server.serve import exposure_warning

from conftest import LiveServer

TIMEOUT = 30


async def make_offer(kind: str = "video") -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if kind == "video":
        pc.addTransceiver("video", direction="sendrecv")
    else:
        pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def next_message(ws, kind: str) -> dict:
    """The next message of `kind`, skipping stats and the stream's name; fails on anything else."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if message["type"] == kind:
            return message
        assert message["type"] in ("stats", "stream"), message


async def expect_error(ws, code: str) -> dict:
    error = await next_message(ws, "error")
    assert error["code"] == code, error
    assert error["message"]
    return error


async def start_session(ws) -> dict:
    await ws.send(json.dumps({"type": "offer", "sdp": await make_offer()}))
    answer = await next_message(ws, "answer")
    assert "m=video" in answer["sdp"]
    return await next_message(ws, "params")


async def set_params(ws, **params) -> dict:
    await ws.send(json.dumps({"type": "params", "params": params}))
    return (await next_message(ws, "params"))["params"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "malformed_json"),
        (b"\x00\x01binary", "binary_not_supported"),
        ('["offer"]', "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "params", "params": {"prompt": "early"}}', "no_session"),
        ('{"type": "offer", "sdp": "v=0 garbage"}', "bad_sdp"),
        ('{"type": "offer"}', "bad_sdp"),
        (json.dumps({"type": "params", "params": {"prompt": "x" * 70000}}), "message_too_large"),
    ],
)
async def test_bad_input_before_the_offer_is_an_error_and_the_session_goes_on(live_server, raw, code):
    async with websockets.connect(live_server.ws_url) as ws:
        await ws.send(raw)
        await expect_error(ws, code)
        await start_session(ws)  # the same socket still gets its stream


async def test_an_offer_without_video_is_refused(live_server):
    async with websockets.connect(live_server.ws_url) as ws:
        await ws.send(json.dumps({"type": "offer", "sdp": await make_offer("audio")}))
        await expect_error(ws, "no_video")
        await start_session(ws)


async def test_an_offer_read_but_not_answerable_is_refused_and_the_session_goes_on(live_server):
    """aiortc reads an audio section without a direction but cannot answer it (found by the fuzz tests): the offer
    is refused like any bad one, its stream goes, and the socket offers again under its name."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendrecv")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    video, audio = pc.localDescription.sdp.split("m=audio")
    await pc.close()
    async with websockets.connect(live_server.ws_url) as ws:
        await ws.send(json.dumps({"type": "offer", "sdp": video + "m=audio" + audio.replace("a=sendrecv\r\n", "")}))
        assert "could not answer" in (await expect_error(ws, "bad_sdp"))["message"]
        assert live_server.health()["publishers"] == 1  # the socket's name only: the refused stream is gone
        await start_session(ws)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"colour": "red"}, "unknown parameter"),
        ({"steps": 9}, "steps must be between"),
        ({"strength": "lots"}, "must be a number"),
        ({"guidance_scale": -1}, "guidance_scale must be between"),
        ({"max_resolution": 100}, "multiple of 64"),
        ({"target_fps": 0}, "target_fps must be between"),
        ({"prompt": "valid", "steps": 0}, "steps must be between"),
        ({"modulations": [{"param": "steps", "source": "level", "amount": 0.5}]}, "'steps' cannot be modulated"),
        ({"modulations": [{"param": "strength", "source": "level", "amount": 2}]}, "amount must be between -1 and 1"),
        ({"modulations": "[]"}, "modulations must be a list"),
    ],
)
async def test_bad_params_are_refused_and_change_nothing(live_server, params, fragment):
    async with websockets.connect(live_server.ws_url) as ws:
        before = (await start_session(ws))["params"]
        await ws.send(json.dumps({"type": "params", "params": params}))
        assert fragment in (await expect_error(ws, "bad_params"))["message"]
        assert await set_params(ws) == before


async def test_params_are_applied_and_echoed_with_notes(live_server):
    async with websockets.connect(live_server.ws_url) as ws:
        await start_session(ws)
        effective = await set_params(ws, prompt="a glass city", steps=3, strength=0.7, target_fps=12)
        assert effective["prompt"] == "a glass city" and effective["steps"] == 3 and effective["target_fps"] == 12
        await ws.send(json.dumps({"type": "params", "params": {"negative_prompt": "rain"}}))
        echo = await next_message(ws, "params")
        assert any("no effect" in note for note in echo["notes"])


async def test_second_offer_and_garbage_after_the_offer_leave_the_stream_up(live_server):
    async with websockets.connect(live_server.ws_url) as ws:
        await start_session(ws)
        await ws.send(json.dumps({"type": "offer", "sdp": await make_offer()}))
        await expect_error(ws, "already_offered")
        await ws.send("}{")
        await expect_error(ws, "malformed_json")
        await ws.send(b"\xff")
        await expect_error(ws, "binary_not_supported")
        assert (await set_params(ws, seed=42))["seed"] == 42


async def test_sessions_are_isolated(live_server):
    async with websockets.connect(live_server.ws_url) as first, websockets.connect(live_server.ws_url) as second:
        await start_session(first)
        defaults = (await start_session(second))["params"]
        await set_params(first, prompt="only mine", seed=7)
        assert await set_params(second) == defaults


async def test_closing_the_socket_releases_everything(live_server):
    async with websockets.connect(live_server.ws_url) as ws:
        await start_session(ws)
        health = live_server.health()
        assert health["streams"] >= 1 and health["engine_clients"] >= 1
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        health = live_server.health()
        if health["streams"] == health["publishers"] == health["engine_clients"] == health["peer_connections"] == 0:
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"session not released: {health}")


@pytest.mark.slow
async def test_server_full_gets_a_clear_error_and_a_clean_close():
    server = LiveServer("--max-sessions", "1")
    try:
        async with websockets.connect(server.ws_url) as first:
            await start_session(first)
            async with websockets.connect(server.ws_url) as second:
                await expect_error(second, "server_full")
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(second.recv(), TIMEOUT)
            assert (await set_params(first, seed=3))["seed"] == 3
    finally:
        output = server.stop()
    assert "Traceback" not in output


@pytest.mark.slow
async def test_token_is_required_before_any_peer_connection():
    server = LiveServer("--token", "s3cret")
    try:
        async with websockets.connect(server.ws_url) as ws:
            await expect_error(ws, "unauthorized")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        async with websockets.connect(server.ws_url + "?token=wrong") as ws:
            await expect_error(ws, "unauthorized")
        assert server.health()["peer_connections"] == 0
        async with websockets.connect(server.ws_url + "?token=s3cret") as ws:
            await start_session(ws)
        headers = {"Authorization": "Bearer s3cret"}
        async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
            await start_session(ws)
    finally:
        server.stop()


@pytest.mark.slow
async def test_ctrl_c_with_a_live_session_exits_cleanly():
    server = LiveServer()
    async with websockets.connect(server.ws_url) as ws:
        await start_session(ws)
        output = await asyncio.to_thread(server.stop)
    assert server.process.returncode == 0, output
    assert "Traceback" not in output


def test_listening_beyond_localhost_without_a_token_warns():
    assert exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "token") is None
    assert exposure_warning("127.0.0.1", None) is None


def test_health_and_schema_over_http(live_server):
    import urllib.request

    health = live_server.health()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["device"] == "cpu"
    assert health["version"] == version("lcmlive")
    with urllib.request.urlopen(f"{live_server.url}/params/schema", timeout=10) as response:
        schema = json.loads(response.read())
    assert {"prompt", "strength", "steps", "guidance_scale", "seed", "target_fps"} <= set(schema["properties"])
    with urllib.request.urlopen(f"{live_server.url}/", timeout=10) as response:
        assert b"<video" in response.read()
