"""DNS rebinding: a Host that names the server must be a name it was told it is served as; IP literals pass."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import pytest
import websockets
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from websockets.typing import Origin

from server import serve
from server.access import AccessGate, host_allowed, host_name
from server.bench.loopback import socket_url
from server.bench.rtc_clients import WhipPublisher, http
from server.config import settings_from_arguments
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

TIMEOUT = 30
REBIND = "rebind.example"


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("LocalHost:8000", "localhost"),
        ("studio.lan.", "studio.lan"),
        ("rebind.example:8000", "rebind.example"),
    ],
)
def test_host_names_are_read_without_port_case_or_trailing_dot(host, name):
    assert host_name(host) == name


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("localhost", True),
        ("cam.localhost", True),
        ("studio.lan", True),
        ("stage.show.example", True),
        ("show.example", True),
        (REBIND, False),
        ("localhost.rebind.example", False),
        ("127.0.0.1.nip.io", False),
        ("evilshow.example", False),
        ("", False),
    ],
)
def test_which_hosts_pass(name, allowed):
    assert host_allowed(name, frozenset({"studio.lan", ".show.example"})) is allowed


def gated_app(**gate) -> TestClient:
    async def page(request):
        return PlainTextResponse("served")

    async def ws(websocket):
        await websocket.accept()
        await websocket.send_text("opened")
        await websocket.close()

    app = Starlette(routes=[Route("/", page, methods=["GET", "PATCH"]), WebSocketRoute("/ws", ws)])
    return TestClient(AccessGate(app, token=None, open_paths=("/",), **gate))


def test_the_gate_refuses_a_rebound_name_on_every_path_and_on_the_socket():
    client = gated_app(allow_origins=("https://studio.example",), allow_hosts=("studio.lan",))
    refused = client.get("/", headers={"Host": f"{REBIND}:8000"})
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden_host", refused.text
    assert "--allow-host rebind.example" in refused.json()["message"]
    assert client.patch("/", headers={"Host": REBIND, "Origin": f"http://{REBIND}"}).status_code == 403
    with client.websocket_connect("/ws", headers={"Host": REBIND, "Origin": f"http://{REBIND}"}) as ws:
        assert json.loads(ws.receive_text())["code"] == "forbidden_host"
        assert ws.receive()["code"] == 1008
    for host in ("studio.lan:8000", "studio.example", "127.0.0.1:8000", "[::1]:8000", "localhost"):
        assert client.get("/", headers={"Host": host}).text == "served", host
    # Same origin is judged against an allowed Host: studio.lan's own page may change things.
    assert client.patch("/", headers={"Host": "studio.lan", "Origin": "http://studio.lan"}).status_code == 200


def test_allow_host_star_turns_the_check_off_and_the_server_says_so():
    client = gated_app(allow_origins=(), allow_hosts=("*",))
    assert client.get("/", headers={"Host": REBIND}).text == "served"
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    config = settings_from_arguments(parser.parse_args(["--allow-host", "*"])).server_config()
    warning = serve.any_host_warning(config)
    assert warning is not None and "Host check is off" in warning
    assert serve.any_host_warning(settings_from_arguments(parser.parse_args([])).server_config()) is None


def test_allow_host_takes_names_and_the_listening_name_is_allowed():
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    config = settings_from_arguments(
        parser.parse_args(["--host", "box.lan", "--allow-host", "a.lan,.b.example"])
    ).server_config()
    assert set(config.allow_hosts) == {"a.lan", ".b.example", "box.lan"}
    assert settings_from_arguments(parser.parse_args(["--host", "0.0.0.0"])).server_config().allow_hosts == ()
    for bad in ("http://a.lan", "a.lan:8000", "a lan"):
        with pytest.raises(ValueError, match="--allow-host"):
            settings_from_arguments(parser.parse_args(["--allow-host", bad])).server_config()


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    return response


@pytest.mark.slow
async def test_a_rebinding_page_can_neither_read_change_nor_control_a_live_stream():
    server = LiveServer("--allow-host", "studio.lan")
    port = server.port
    rebound = {"Host": f"{REBIND}:{port}", "Origin": f"http://{REBIND}:{port}", "Content-Type": "application/json"}
    try:
        async with WhipPublisher(f"{server.url}/whip/show", width=64, height=64):
            before = (await http("GET", f"{server.url}/streams/show")).body
            for method, path, body in [
                ("GET", "/", None),
                ("GET", "/streams", None),
                ("PATCH", "/streams/show", json.dumps({"prompt": "rebound"})),
                ("DELETE", "/streams/show", None),
            ]:
                reply = await http(method, f"{server.url}{path}", body, **rebound)
                assert reply.status == 403 and json.loads(reply.body)["code"] == "forbidden_host", (path, reply)
            url = socket_url(f"ws://{REBIND}:{port}/ws", stream="show", role="control")
            sock = socket.create_connection(("127.0.0.1", port))
            async with websockets.connect(url, sock=sock, origin=Origin(rebound["Origin"])) as ws:
                refusal = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert refusal["code"] == "forbidden_host", refusal
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert ws.close_code == 1008
            after = json.loads((await http("GET", f"{server.url}/streams/show")).body)
            assert after["params"]["prompt"] == json.loads(before)["params"]["prompt"] != "rebound"
            assert server.health()["controllers"] == 0
            # What passes: IP literals (v4, v6, any address), localhost names, listed names, no Host at all.
            for host in ("127.0.0.1", "[::1]", "10.20.30.40", "localhost", "cam.localhost", "studio.lan"):
                reply = await http("GET", f"{server.url}/streams", Host=f"{host}:{port}")
                assert reply.status == 200, (host, reply)
            assert (await raw_request(port, b"GET /health HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200")
            same = f"http://localhost:{port}"
            url = socket_url(f"ws://localhost:{port}/ws", stream="show", role="control")
            async with websockets.connect(url, origin=Origin(same)) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "stream"
    finally:
        output = server.stop()
    assert "Traceback" not in output, output[-3000:]
