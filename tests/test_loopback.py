"""aiortc loopback through `/ws`: a synthetic 30 fps camera in, stylised frames back, measured as a viewer would."""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np
import pytest

from server.bench.loopback import LoopbackClient
from server.media.ice import restrict_ice_to_loopback

# a live server (20 s to start in a loaded run) for tests of 6-39 s
# serial: its checks hold a real-time pace (scripts/test.sh runs it alone)
pytestmark = [pytest.mark.slow, pytest.mark.serial]

SIZE = 256
# What the toy model makes possible, with room to spare: measured through VP8 here, a grey correlation of 0.97
# with the camera frame and a prompt change of 57/255 against 0.2 between two frames under one prompt.
FOLLOWS_CAMERA = 0.8
PROMPT_CHANGE = 20.0


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()  # the client side too: no packet leaves 127.0.0.0/8


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def grey_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.mean(axis=-1).ravel(), b.mean(axis=-1).ravel())[0, 1])


async def test_moving_camera_streams_stylised_frames_without_building_latency(live_server):
    async with LoopbackClient(live_server.ws_url, SIZE, SIZE) as client:
        await client.wait_for_frames(3, timeout=60)
        await asyncio.sleep(10)
    record = client.record
    assert len(record.arrivals) >= 15, f"only {len(record.arrivals)} frames in 10 s"
    assert not record.errors

    # Stylised, not echoed: every sampled output is far from every frame the camera sent; and it shows the
    # camera: its grey picture follows one of them (the toy model; a random one scored about 0).
    for _, picture in record.samples[1:]:
        assert picture.shape == (SIZE, SIZE, 3)
        assert min(mean_abs_diff(picture, sent) for sent in client.camera.frames) > 10
        follows = max(grey_correlation(picture, sent) for sent in client.camera.frames)
        assert follows > FOLLOWS_CAMERA, follows

    stats = [s for s in record.stats if s["frames_out"] > 0]
    assert len(stats) >= 6
    assert stats[-1]["fps_in"] > 20  # the camera's 30 fps all reach the server: the pump keeps up
    # Latency stays bounded: the end of the run is no worse than the start (no queue grows).
    early = statistics.median(s["latency_ms"] for s in stats[1:4])
    late = statistics.median(s["latency_ms"] for s in stats[-3:])
    assert late <= early * 1.5 + 100, [s["latency_ms"] for s in stats]
    assert max(s["queue_ms"] for s in stats) < 500

    # Every camera frame is accounted for: processed, dropped as stale, or the one waiting.
    last = stats[-1]
    assert 0 <= last["frames_in"] - last["frames_processed"] - last["dropped_in"] <= 2
    assert 0 <= last["frames_processed"] - last["frames_out"] - last["dropped_out"] <= 2
    assert last["dropped_in"] > 0  # the tiny model on a CPU is slower than 30 fps: stale frames are dropped


async def test_a_prompt_change_changes_the_stylised_frames(live_server):
    async with LoopbackClient(live_server.ws_url, SIZE, SIZE, still=True, sample_every=1) as client:
        await client.wait_for_frames(6, timeout=60)
        await asyncio.sleep(1)
        await client.send_params(prompt="a forest of glass, neon light")
        changed_at = time.monotonic()
        await asyncio.sleep(3)  # the echo means "applied from the next frame": give the new prompt a few
        await client.wait_for_frames(len(client.record.arrivals) + 3, timeout=60)
    samples = client.record.samples
    # A still camera and a fixed seed: outputs under one prompt differ only by video coding noise.
    before = [p for t, p in samples[2:] if t < changed_at - 0.5]
    after = [p for t, p in samples if t > changed_at + 1.0]
    assert len(before) >= 2 and len(after) >= 2
    same_prompt = mean_abs_diff(before[-1], before[-2])
    new_prompt = mean_abs_diff(before[-1], after[-1])
    assert new_prompt > 3 * same_prompt + PROMPT_CHANGE, (same_prompt, new_prompt)


async def test_processing_size_adapts_while_the_picture_keeps_its_size(live_server):
    async with LoopbackClient(live_server.ws_url, SIZE, SIZE, sample_every=1) as client:
        # 60 fps is out of reach for the tiny model on a CPU: the controller must go down the ladder.
        await client.send_params(target_fps=60, max_resolution=256, min_resolution=128)
        await client.wait_for_frames(len(client.record.arrivals) + 12, timeout=90)
        await asyncio.sleep(1.5)
    last = client.record.stats[-1]
    assert last["width"] < 256 and last["switches"] >= 1, last
    assert last["state"] in {"down", "steady", "at floor", "headroom"}
    assert {picture.shape for _, picture in client.record.samples[2:]} == {(256, 256, 3)}


async def test_similarity_skip_reuses_the_last_picture_for_a_still_camera(live_server):
    async with LoopbackClient(live_server.ws_url, SIZE, SIZE, still=True) as client:
        await client.send_params(similarity_skip=2.0, target_fps=15)
        start = len(client.record.arrivals)
        await client.wait_for_frames(start + 8, timeout=60)
        await asyncio.sleep(1.5)
    last = client.record.stats[-1]
    assert last["skipped"] > 0 and last["frames_out"] > last["skipped"] // 2
    assert not client.record.errors
