"""`GET /metrics` against a live server: Prometheus text that prometheus-client parses, numbers that move."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.bench.loopback import LoopbackClient
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

TOKEN = "metrics-token"


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


def scrape(server: LiveServer, token: str | None = TOKEN) -> dict[str, list]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{server.url}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(families: dict, name: str, **labels: str) -> float:
    matching = [s.value for s in families.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert matching, f"no {name} sample with {labels}: {families.get(name)}"
    return sum(matching)


@pytest.mark.slow
async def test_metrics_move_when_frames_flow_and_need_the_token():
    server = LiveServer("--token", TOKEN)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(server, token=None)
        assert refused.value.code == 401
        async with LoopbackClient(server.ws_url, 128, 128, token=TOKEN, stream="dash") as client:
            await client.wait_for_frames(3, timeout=60)
            first = scrape(server)
            assert value(first, "lcmlive_streams") == 1
            await client.send_params(prompt="a neon city")
            await client._ws.send(json.dumps({"type": "params", "params": {"steps": 99}}))
            await client.wait_for_frames(len(client.record.arrivals) + 5, timeout=60)
            await asyncio.sleep(0.5)
            second = scrape(server)
        for stage in ("in", "processed", "out"):
            assert value(second, "lcmlive_frames_total", stream="dash", stage=stage) > value(
                first, "lcmlive_frames_total", stream="dash", stage=stage
            ), stage
        assert value(second, "lcmlive_model_seconds_count", stream="dash") > value(
            first, "lcmlive_model_seconds_count", stream="dash"
        )
        assert value(second, "lcmlive_latency_seconds_count", stream="dash") > 0
        assert value(second, "lcmlive_processing_side_pixels", stream="dash") == 128
        assert value(second, "lcmlive_control_messages_total", front_end="websocket", result="applied") >= 1
        assert value(second, "lcmlive_control_messages_total", front_end="websocket", result="rejected") >= 1
        assert value(second, "lcmlive_viewers") == 0
        # The stream has ended: its series are gone, so a long show keeps a bounded set of them.
        after = scrape(server)
        for _ in range(50):
            if value(after, "lcmlive_streams") == 0:
                break
            await asyncio.sleep(0.2)
            after = scrape(server)
        assert not [s for s in after.get("lcmlive_frames_total", []) if s.labels.get("stream") == "dash"]
        assert not [s for s in after.get("lcmlive_model_seconds_count", []) if s.labels.get("stream") == "dash"]
    finally:
        server.stop()


@pytest.mark.slow
def test_metrics_public_needs_no_token():
    server = LiveServer("--token", TOKEN, "--metrics-public")
    try:
        assert value(scrape(server, token=None), "lcmlive_streams") == 0
    finally:
        server.stop()
