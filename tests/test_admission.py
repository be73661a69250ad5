"""Limits hold under concurrent requests: 16 publishers, viewers, control sockets or offers at once against 2 slots."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection

from server.bench.loopback import SyntheticCamera, socket_url
from server.bench.rtc_clients import WhepViewer, WhipPublisher
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

pytestmark = pytest.mark.slow  # a live server and bursts of 16 connections: 16 s the module in a loaded run

BURST = 16
LIMIT = 2
TIMEOUT = 60
COUNTED = ("publishers", "streams", "viewers", "controllers")


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.fixture(scope="module")
def server():
    server = LiveServer(*(f"--max-{what}={LIMIT}" for what in ("sessions", "viewers", "controllers")))
    yield server
    output = server.stop()
    assert "Traceback" not in output, output[-3000:]


class HealthSampler:
    """Reads /health as fast as it answers, in a thread of its own, while a burst runs: the most of each count."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.most: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-sampler", daemon=True)

    def __enter__(self) -> HealthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not self._stop.is_set() and time.monotonic() < deadline:
            health = self.server.health()
            self.samples += 1
            for key in COUNTED:
                self.most[key] = max(self.most[key], health[key])
            time.sleep(0.01)


async def burst(clients, start) -> list:
    """`start(client)` for every client at once. Each client's HTTP request gets a thread of its own: the default
    pool (6 threads on 2 cores) would queue them, and the burst would reach the server a few at a time."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=BURST + 8))
    return await asyncio.wait_for(asyncio.gather(*(start(client) for client in clients)), TIMEOUT)


async def settled(server: LiveServer, **expected: int) -> dict:
    """/health once every count in `expected` is reached (they settle as connections close)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        health = server.health()
        if all(health[key] == value for key, value in expected.items()):
            return health
        if time.monotonic() > deadline:
            pytest.fail(f"/health never showed {expected}: {health}")
        await asyncio.sleep(0.2)


async def test_16_whip_publishers_at_once_get_2_streams_and_the_slots_come_back(server):
    publishers = [WhipPublisher(f"{server.url}/whip/burst-{index}", width=64, height=64) for index in range(BURST)]
    try:
        with HealthSampler(server) as sampler:
            replies = await burst(publishers, lambda publisher: publisher.publish())
        statuses = Counter(reply.status for reply in replies)
        assert statuses == {201: LIMIT, 503: BURST - LIMIT}, statuses
        assert {json.loads(r.body)["code"] for r in replies if r.status == 503} == {"server_full"}
        assert sampler.samples > 0 and sampler.most["publishers"] <= LIMIT, sampler.most
    finally:
        await asyncio.gather(*(publisher.close() for publisher in publishers))
    await settled(server, streams=0, publishers=0, peer_connections=0)


async def test_16_whep_viewers_at_once_get_2_and_the_slots_come_back(server):
    async with WhipPublisher(f"{server.url}/whip/watched", width=64, height=64):
        for round_ in range(2):  # the second round finds every slot of the first given back
            viewers = [WhepViewer(f"{server.url}/whep/watched") for _ in range(BURST)]
            try:
                with HealthSampler(server) as sampler:
                    replies = await burst(viewers, lambda viewer: viewer.view())
                statuses = Counter(reply.status for reply in replies)
                assert statuses == {201: LIMIT, 503: BURST - LIMIT}, (round_, statuses)
                assert {json.loads(r.body)["code"] for r in replies if r.status == 503} == {"viewers_full"}
                assert sampler.samples > 0 and sampler.most["viewers"] <= LIMIT, sampler.most
            finally:
                await asyncio.gather(*(viewer.close() for viewer in viewers))
            await settled(server, viewers=0, peer_connections=1)
    await settled(server, streams=0, publishers=0, peer_connections=0)


async def test_16_control_sockets_at_once_get_2_and_the_slots_come_back(server):
    async def attach(url: str) -> tuple[list[dict], object]:
        ws = await websockets.connect(url)
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        return [first], ws

    url = socket_url(server.ws_url, stream="steered", role="control")
    async with WhipPublisher(f"{server.url}/whip/steered", width=64, height=64):
        for round_ in range(2):
            with HealthSampler(server) as sampler:
                results = await burst([url] * BURST, attach)
            try:
                kinds = Counter(messages[0].get("code") or messages[0]["type"] for messages, _ in results)
                assert kinds == {"stream": LIMIT, "controllers_full": BURST - LIMIT}, (round_, kinds)
                assert sampler.most["controllers"] <= LIMIT, sampler.most
                await settled(server, controllers=LIMIT)
            finally:
                await asyncio.gather(*(ws.close() for _, ws in results))
            await settled(server, controllers=0, sockets=0)
    await settled(server, streams=0, publishers=0, peer_connections=0)


async def test_16_offers_at_once_on_one_socket_get_one_answer(server):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(SyntheticCamera(64, 64), direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    offer = json.dumps({"type": "offer", "sdp": pc.localDescription.sdp})
    try:
        async with websockets.connect(socket_url(server.ws_url, stream="offered")) as ws:
            await asyncio.gather(*(ws.send(offer) for _ in range(BURST)))
            replies: list[dict] = []
            with contextlib.suppress(TimeoutError):
                while len(replies) < BURST + 2:  # the stream message, one answer (+ its params), the refusals
                    replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            kinds = Counter(reply.get("code") or reply["type"] for reply in replies)
            assert kinds["answer"] == 1 and kinds["already_offered"] == BURST - 1, kinds
            assert (await settled(server, publishers=1))["streams"] == 1
    finally:
        await pc.close()
    await settled(server, streams=0, publishers=0, peer_connections=0)
