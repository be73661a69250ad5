"""The guide's modes through the server: txt2img, img2img + ControlNet, the Canny view, with tiny models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.bench.loopback import LoopbackClient
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

pytestmark = pytest.mark.slow  # live servers of other models: 18 s to start in a loaded run

SIZE = 128
# One processing size (on a CPU the ladder's floor, 192, is above it): txt2img draws at max_resolution.
AT_SIZE = {"max_resolution": SIZE, "min_resolution": SIZE}


@pytest.fixture(scope="module")
def controlnet_server():
    restrict_ice_to_loopback()
    server = LiveServer("--controlnet", "canny")
    yield server
    server.stop()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def test_txt2img_draws_new_pictures_from_a_still_camera(controlnet_server):
    async with LoopbackClient(controlnet_server.ws_url, SIZE, SIZE, still=True, sample_every=1) as client:
        echo = await client.send_params(mode="txt2img", controlnet_scale=0.0, **AT_SIZE, target_fps=10)
        assert echo["params"]["mode"] == "txt2img"
        assert any("txt2img" in note for note in echo["notes"])
        changed = len(client.record.samples)
        await client.wait_for_frames(len(client.record.arrivals) + 8, timeout=60)
    pictures = [picture for _, picture in client.record.samples[changed + 2 :]]
    assert len(pictures) >= 4
    # The camera never moves, yet every picture is new: the noise glides from seed to seed.
    assert all(mean_abs_diff(a, b) > 0.3 for a, b in zip(pictures, pictures[1:], strict=False))
    assert not client.record.errors


async def test_img2img_with_controlnet_follows_the_edges_and_shows_the_canny_map(controlnet_server):
    async with LoopbackClient(
        controlnet_server.ws_url, SIZE, SIZE, still=True, sample_every=1, canny_view=True
    ) as client:
        await client.send_params(controlnet_scale=0.0, **AT_SIZE)
        await client.wait_for_frames(len(client.record.arrivals) + 4, timeout=60)
        without = client.record.samples[-1][1]
        await client.send_params(controlnet_scale=1.5, canny_low=50, canny_high=150)
        await asyncio.sleep(2)
        await client.wait_for_frames(len(client.record.arrivals) + 3, timeout=60)
        with_control = client.record.samples[-1][1]
        steady = client.record.samples[-2][1]
        await asyncio.sleep(1)
    assert mean_abs_diff(with_control, without) > 2 * mean_abs_diff(with_control, steady) + 1
    # The second track carries the Canny map: dark, with the bright outline of the pattern's square.
    assert client.record.control_samples, "no Canny map frames arrived"
    canny = client.record.control_samples[-1][1].mean(axis=2)
    assert canny.shape == (SIZE, SIZE)
    assert (canny < 64).mean() > 0.9 and (canny > 128).sum() >= 30


async def test_txt2img_with_controlnet_keeps_drawing(controlnet_server):
    async with LoopbackClient(controlnet_server.ws_url, SIZE, SIZE, sample_every=1) as client:
        await client.send_params(mode="txt2img", controlnet_scale=1.0, **AT_SIZE)
        start = len(client.record.arrivals)
        await client.wait_for_frames(start + 6, timeout=60)
    assert not client.record.errors


async def test_sdxl_model_serves_img2img():
    server = LiveServer("--model", "tiny-sdxl")
    try:
        async with LoopbackClient(server.ws_url, SIZE, SIZE) as client:
            echo = await client.send_params(**AT_SIZE, steps=2, strength=0.5)
            assert echo["params"]["steps"] == 2
            await client.wait_for_frames(4, timeout=90)
        assert server.health()["model"] == "tiny-sdxl"
    finally:
        server.stop()
