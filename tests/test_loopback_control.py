"""Two ControlNet kinds and two style LoRAs on one server, streams side by side over aiortc loopback, tiny model."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines import ModelComponents
from pipelines.styles import make_random_lora
from server.bench.loopback import LoopbackClient
from server.bench.rtc_clients import http
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

pytestmark = pytest.mark.slow  # a live server with ControlNets and styles: 22 s to start in a loaded run

SIZE = 128
# Not one-letter names (see tests/test_styles.py: diffusers matches adapter names as substrings of module keys).
# A random LoRA sits on the attention projections, which the toy's picture hardly depends on. Measured on the
# toy's 3000-step weights without ControlNet, style scale 1.5, seeds 1-12: at the default strength 0.5 a style
# moved the picture by 0.8-2.3/255; at strength 1.0 by 1.7-11.6, mostly as a brightness shift. Seeds 4 (6.3 darker)
# and 5 (11.6 brighter) at strength 1.0 are clear.
STYLE_SEEDS = {"ink": 4, "neon": 5}
STYLE_STRENGTH = 1.0
SCALE = 1.5
# Fixed size, no temporal smoothing, a still camera: the picture of one set of params is (nearly) the same frame
# after frame, so what a change moves stands out against the frame-to-frame noise (VP8, float rounding).
STEADY = {
    "max_resolution": SIZE,
    "min_resolution": SIZE,
    "target_fps": 4,
    "temporal_smoothing": 0.0,
    "style_scale": SCALE,
}
NO_CONTROL = {"controlnet_scale_canny": 0.0, "controlnet_scale_depth": 0.0}
# Frames after a change before its picture counts: the one in flight and the one already encoded, with room.
SETTLE_FRAMES = 4
FRAME_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny: ModelComponents) -> Path:
    """Two random LoRAs for the served model (`tiny`); `make_random_lora` draws them on a copy of its UNet."""
    folder = tmp_path_factory.mktemp("styles")
    for name, seed in STYLE_SEEDS.items():
        # The retrained toy shrugs off PEFT's random draw (a switch moved the picture by 1.5/255 at strength 1,
        # frame noise 0.4; measured on its 1800-step stage 2): four times the up-projection makes a style that shows.
        make_random_lora(tiny, folder / f"{name}.safetensors", seed=seed, up_scale=4.0)
    return folder


@pytest.fixture(scope="module")
def server(lora_dir: Path):
    restrict_ice_to_loopback()
    live = LiveServer("--controlnet", "canny,depth", "--lora-dir", str(lora_dir))
    yield live
    output = live.stop()
    assert "Traceback" not in output, output


async def rest(server: LiveServer, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body)
    reply = await http(method, f"{server.url}{path}", data, **{"Content-Type": "application/json"})
    return reply.status, json.loads(reply.body)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def settled(client: LoopbackClient) -> tuple[np.ndarray, np.ndarray]:
    """The last two pictures once SETTLE_FRAMES more have arrived: what the stream's newest params draw."""
    await client.wait_for_frames(len(client.record.arrivals) + SETTLE_FRAMES, FRAME_TIMEOUT_S)
    return client.record.samples[-2][1], client.record.samples[-1][1]


async def settled_both(
    first: LoopbackClient, second: LoopbackClient
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return await asyncio.gather(settled(first), settled(second))


def latest_control(client: LoopbackClient, since: float) -> np.ndarray:
    """The newest control-track picture that arrived after `since`, as uint8 H x W x 3."""
    recent = [picture for arrived, picture in client.record.control_samples if arrived > since]
    assert recent, f"no control image arrived on the second track since the change ({client.stream_name})"
    return recent[-1]


def assert_canny_map(image: np.ndarray) -> None:
    """Canny: mostly dark, with bright edges (the pattern's square)."""
    grey = image.mean(axis=2)
    assert grey.shape == (SIZE, SIZE)
    assert (grey < 64).mean() > 0.9, f"not mostly dark: {(grey < 64).mean():.2f} below 64"
    assert (grey > 128).sum() >= 30, f"no edges: {(grey > 128).sum()} pixels above 128"


def channel_gap(image: np.ndarray) -> float:
    """How far apart R, G and B are, on average (0 for a grey picture; VP8's 4:2:0 chroma adds a level or two)."""
    channels = image.astype(np.int16)
    return float(np.abs(channels - channels.mean(axis=2, keepdims=True)).mean())


def assert_depth_map(image: np.ndarray) -> None:
    """Depth: grey (R = G = B) stretched over 0..255 per frame, so a spread of levels and not mostly black."""
    grey = image.mean(axis=2)
    assert grey.shape == (SIZE, SIZE)
    assert channel_gap(image) < 3, f"not grey: channels {channel_gap(image):.1f} apart on average"
    low, high = np.percentile(grey, [5, 95])
    assert high - low > 60, f"no spread of grey levels: 5th-95th percentile {low:.0f}..{high:.0f}"
    assert (grey < 48).mean() < 0.7, f"mostly black (a Canny map?): {(grey < 48).mean():.2f} below 48"


async def test_schema_and_health_list_kinds_and_styles_and_refusals_change_nothing(server):
    status, schema = await rest(server, "GET", "/params/schema")
    assert status == 200
    properties = schema["properties"]
    for name in ("controlnet_scale_canny", "controlnet_scale_depth", "style_scale"):
        assert properties[name]["type"] == "number", properties[name]
    assert properties["canny_low"]["type"] == properties["canny_high"]["type"] == "integer"
    assert properties["control_view"]["enum"] == ["auto", "canny", "depth"]
    assert properties["style"]["enum"] == ["none", *STYLE_SEEDS]
    assert (properties["style_scale"]["minimum"], properties["style_scale"]["maximum"]) == (0.0, 1.5)
    health = server.health()
    assert health["controlnet"] == ["canny", "depth"]
    assert health["styles"] == list(STYLE_SEEDS)

    async with LoopbackClient(server.ws_url, SIZE, SIZE, still=True, stream="refusals") as client:
        before = client.record.params[-1]["params"]
        # Over the socket: an error that names what is allowed, and the unchanged params echoed back.
        for name, value, allowed in (("style", "nope", "ink"), ("control_view", "segmentation", "depth")):
            changes: dict[str, Any] = {name: value}  # not a `timeout`, which a str could otherwise be read as
            echo = await client.send_params(**changes)
            assert echo["params"] == before, f"a refused {name} changed the params"
            error = client.record.errors[-1]
            assert error["code"] == "bad_params" and name in error["message"] and allowed in error["message"], error
        # Over REST: 422, one entry per refused param, and nothing applied (not even the valid seed beside them).
        status, refused = await rest(
            server, "PATCH", "/streams/refusals", {"style": "nope", "control_view": "segmentation", "seed": 5}
        )
        assert status == 422, refused
        assert {entry["param"] for entry in refused["errors"]} == {"style", "control_view"}
        assert (await rest(server, "GET", "/streams/refusals"))[1]["params"] == before


async def test_a_canny_stream_and_a_depth_stream_share_the_server_without_touching_each_other(server):
    async with (
        LoopbackClient(server.ws_url, SIZE, SIZE, still=True, sample_every=1, canny_view=True, stream="edges") as edges,
        LoopbackClient(server.ws_url, SIZE, SIZE, still=True, sample_every=1, canny_view=True, stream="depth") as depth,
    ):
        # 0. Both without ControlNet: the plain img2img picture of each.
        await asyncio.gather(edges.send_params(**STEADY, **NO_CONTROL), depth.send_params(**STEADY, **NO_CONTROL))
        await settled_both(edges, depth)  # the encoder's first, blurrier frames pass
        (_, edges_plain), (_, depth_plain) = await settled_both(edges, depth)

        # 1. Canny on the edges stream only: its picture moves, the depth stream's does not, nor do its params.
        depth_params = (await rest(server, "GET", "/streams/depth"))[1]["params"]
        depth_echoes = len(depth.record.params)
        await edges.send_params(controlnet_scale_canny=SCALE, canny_low=50, canny_high=150)
        canny_on = time.monotonic()
        (edges_steady, edges_canny), (_, depth_still_plain) = await settled_both(edges, depth)
        assert len(depth.record.params) == depth_echoes, "the depth stream got the edges stream's echo"
        assert (await rest(server, "GET", "/streams/depth"))[1]["params"] == depth_params

        # 2. Depth on the depth stream only: the same the other way round.
        edges_params = (await rest(server, "GET", "/streams/edges"))[1]["params"]
        edges_echoes = len(edges.record.params)
        await depth.send_params(controlnet_scale_depth=SCALE)
        depth_on = time.monotonic()
        (_, edges_still_canny), (depth_steady, depth_shaped) = await settled_both(edges, depth)
        assert len(edges.record.params) == edges_echoes, "the edges stream got the depth stream's echo"
        assert (await rest(server, "GET", "/streams/edges"))[1]["params"] == edges_params
        edges_map, depth_map = latest_control(edges, canny_on), latest_control(depth, depth_on)
    assert not edges.record.errors and not depth.record.errors

    edges_noise, depth_noise = mean_abs_diff(edges_canny, edges_steady), mean_abs_diff(depth_shaped, depth_steady)
    edges_moved, depth_moved = mean_abs_diff(edges_canny, edges_plain), mean_abs_diff(depth_shaped, depth_plain)
    assert edges_moved > 2 * edges_noise + 1, (edges_moved, edges_noise)
    assert depth_moved > 2 * depth_noise + 1, (depth_moved, depth_noise)
    # Each stream's picture stays put while the other's ControlNet comes on (they share batches, not params).
    assert mean_abs_diff(depth_still_plain, depth_plain) < depth_moved / 2, "canny on one stream moved the other"
    assert mean_abs_diff(edges_still_canny, edges_canny) < edges_moved / 2, "depth on one stream moved the other"
    # Each control track shows its own stream's kind.
    assert_canny_map(edges_map)
    assert_depth_map(depth_map)


async def test_a_style_switch_shows_at_once_and_never_stalls_another_stream(server):
    async with (
        LoopbackClient(server.ws_url, SIZE, SIZE, still=True, sample_every=1, stream="styled") as styled,
        LoopbackClient(server.ws_url, SIZE, SIZE, still=True, sample_every=1, stream="bystander") as bystander,
    ):
        strong = {**STEADY, **NO_CONTROL, "strength": STYLE_STRENGTH}
        await asyncio.gather(styled.send_params(**strong), bystander.send_params(**strong))
        await settled_both(styled, bystander)
        (plain_steady, plain), (_, bystander_before) = await settled_both(styled, bystander)
        pictures = {"none": (plain_steady, plain)}
        # From sending a style until the styled stream shows it; the bystander is not waited for in between.
        switches: list[tuple[float, float]] = []
        for style in STYLE_SEEDS:
            start = time.monotonic()
            echo = await styled.send_params(style=style)
            assert echo["params"]["style"] == style and echo["params"]["style_scale"] == SCALE
            pictures[style] = await settled(styled)
            switches.append((start, time.monotonic()))
        bystander_after = bystander.record.samples[-1][1]
    assert not styled.record.errors and not bystander.record.errors

    # Each switch moves the picture far more than consecutive frames under one style differ.
    for before, after in (("none", "ink"), ("ink", "neon")):
        noise = max(mean_abs_diff(*pictures[before]), mean_abs_diff(*pictures[after]))
        moved = mean_abs_diff(pictures[after][1], pictures[before][1])
        assert moved > 3 * noise + 1, f"{before} -> {after}: moved {moved:.1f}, frame to frame {noise:.1f}"
    # The bystander (style none) kept its picture, though the styles were switched on the UNet it shares ...
    bystander_drift = mean_abs_diff(bystander_after, bystander_before)
    style_change = mean_abs_diff(pictures["ink"][1], plain)
    assert bystander_drift < style_change / 4, (bystander_drift, style_change)
    # ... and kept receiving frames while they were switched (about as many as the styled stream's SETTLE_FRAMES;
    # 2-4 seen), without a gap far beyond its usual interval (largest 0.26-0.64 s against a median of 0.25-0.37).
    arrivals = np.array(bystander.record.arrivals)
    for start, end in switches:
        during = int(((arrivals >= start) & (arrivals <= end)).sum())
        assert during >= 2, f"{during} bystander frames during a {end - start:.1f} s switch"
    gaps = np.diff(arrivals[arrivals >= switches[0][0]])
    usual = float(np.median(gaps))
    assert gaps.max() < 4 * usual + 0.5, f"the bystander stalled {gaps.max():.2f} s (median gap {usual:.2f} s)"
