"""REST control against a live server: list, read, change (echoed to the sockets), refuse, end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.bench.loopback import ControlClient, LoopbackClient
from server.bench.rtc_clients import WhipPublisher, http
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

TOKEN = "rest-token"


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.fixture(scope="module")
def server():
    live = LiveServer("--token", TOKEN)
    yield live
    assert "Traceback" not in live.stop()


async def rest(server: LiveServer, method: str, path: str, body=None, token: str | None = TOKEN) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    reply = await http(method, f"{server.url}{path}", data, token, **{"Content-Type": "application/json"})
    return reply.status, (json.loads(reply.body) if reply.body else None)


async def test_streams_are_listed_read_changed_and_ended(server):
    async with (
        LoopbackClient(server.ws_url, 128, 128, token=TOKEN, stream="stage") as page,
        ControlClient(server.ws_url, "stage", token=TOKEN) as control,
    ):
        await page.wait_for_frames(3, timeout=60)
        await asyncio.sleep(1.2)  # one stats interval: the list shows a rate
        status, listing = await rest(server, "GET", "/streams")
        assert status == 200
        (entry,) = [s for s in listing["streams"] if s["name"] == "stage"]
        assert entry["source"] == "page" and entry["viewers"] == 0 and entry["controllers"] == 1
        assert entry["fps"] > 0 and entry["processing_size"] == [128, 128]

        status, one = await rest(server, "GET", "/streams/stage")
        assert status == 200 and one["params"]["prompt"] and isinstance(one["notes"], list)

        status, changed = await rest(server, "PATCH", "/streams/stage", {"prompt": "a paper city", "seed": 7})
        assert status == 200 and changed["params"]["prompt"] == "a paper city" and "notes" in changed
        for client in (page, control):  # echoed to every socket on the stream
            echo = await client.wait_for_params(lambda p: p["prompt"] == "a paper city")
            assert echo["params"]["seed"] == 7

        before = (await rest(server, "GET", "/streams/stage"))[1]["params"]
        status, refused = await rest(server, "PATCH", "/streams/stage", {"steps": 9, "strength": "x", "seed": 1})
        assert status == 422
        assert {e["param"] for e in refused["errors"]} == {"steps", "strength"}
        assert all(e["message"] for e in refused["errors"])
        assert (await rest(server, "GET", "/streams/stage"))[1]["params"] == before  # nothing changed

        assert (await rest(server, "PATCH", "/streams/stage", "{not json"))[0] == 400
        assert (await rest(server, "PATCH", "/streams/stage", [1, 2]))[0] == 422
        assert (await rest(server, "GET", "/streams/nobody"))[0] == 404
        assert (await rest(server, "GET", "/streams", token=None))[0] == 401
        assert (await rest(server, "PATCH", "/streams/stage", {"seed": 2}, token="wrong"))[0] == 401

        status, ended = await rest(server, "DELETE", "/streams/stage")
        assert status == 200 and ended == {"ended": "stage"}
        for _ in range(100):  # both sockets hear it, each in its own time
            if all(any(e["code"] == "stopped" for e in c.record.errors) for c in (page, control)):
                break
            await asyncio.sleep(0.1)
        assert any(e["code"] == "stopped" for e in control.record.errors)
        assert any(e["code"] == "stopped" for e in page.record.errors)
    assert (await rest(server, "GET", "/streams/stage"))[0] == 404


async def test_a_whip_stream_is_steered_over_rest(server):
    async with WhipPublisher(f"{server.url}/whip/obs", token=TOKEN):
        status, listing = await rest(server, "GET", "/streams")
        assert [s["source"] for s in listing["streams"] if s["name"] == "obs"] == ["whip"]
        status, changed = await rest(server, "PATCH", "/streams/obs", {"strength": 0.7})
        assert status == 200 and changed["params"]["strength"] == 0.7
