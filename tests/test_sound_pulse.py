"""The picture follows the sound, end to end: a `modulations` entry (strength by onset) makes a still camera's
stylised picture pulse with a publisher's 120 BPM kick drum, as a WHEP viewer sees it; without it the picture holds."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from server.bench.clicks import ClickTrack
from server.bench.rtc_clients import WhepViewer, WhipPublisher, http
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

# 34 s (CI, under load)
# serial: its checks hold a real-time pace (scripts/test.sh runs it alone)
pytestmark = [pytest.mark.slow, pytest.mark.serial]

TIMEOUT = 60
BPM = 120.0
PULSE = {"param": "strength", "source": "onset", "amount": 0.8, "smooth_ms": 0}


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


def distances(samples: list[tuple[float, np.ndarray]], since: float) -> tuple[np.ndarray, np.ndarray]:
    """Each received picture's mean absolute difference (0-255) from the median picture, with its arrival time."""
    kept = [(t, picture.astype(np.float32)) for t, picture in samples if t >= since]
    times = np.array([t for t, _ in kept])
    pictures = np.stack([picture for _, picture in kept])
    median = np.median(pictures, axis=0)
    return times, np.abs(pictures - median).mean(axis=(1, 2, 3))


def power_at(times: np.ndarray, values: np.ndarray, hz: float) -> float:
    """The periodogram of unevenly spaced samples at `hz` (the pictures arrive when the model is done)."""
    centred = values - values.mean()
    return float(np.abs(np.sum(centred * np.exp(-2j * np.pi * hz * times))) ** 2 / len(values))


async def record(viewer: WhepViewer, seconds: float) -> float:
    start = time.monotonic()
    await asyncio.sleep(seconds)
    return start


async def test_a_modulation_makes_the_picture_pulse_with_the_kick_drum():
    server = LiveServer()
    try:
        async with (
            WhipPublisher(f"{server.url}/whip/club", still=True, sound=ClickTrack(BPM)),
            WhepViewer(f"{server.url}/whep/club", sample_every=1) as viewer,
        ):
            await viewer.wait_for_frames(10, timeout=TIMEOUT)
            # The processing size fixed: a step of the adaptive ladder changes the picture of a still camera (one
            # CI run saw the "still" pictures step by 3/255 half-way).
            fixed = {"strength": 0.3, "min_resolution": 256, "max_resolution": 256}
            base = await http("PATCH", f"{server.url}/streams/club", json.dumps(fixed))
            assert base.status == 200, base.body
            await asyncio.sleep(2)
            held_from = await record(viewer, 4)
            still_times, still = distances(viewer.record.samples, held_from)
            still_stats = json.loads((await http("GET", f"{server.url}/streams/club")).body)["stats"]

            pulse = await http("PATCH", f"{server.url}/streams/club", json.dumps({"modulations": [PULSE]}))
            assert pulse.status == 200, pulse.body
            assert json.loads(pulse.body)["params"]["strength"] == 0.3  # the base stays as set
            await asyncio.sleep(2)
            pulsing_from = await record(viewer, 8)
            times, moving = distances(viewer.record.samples, pulsing_from)
            stats = (await http("GET", f"{server.url}/streams/club")).body
    finally:
        log = server.stop()
    assert "Traceback" not in log, log

    print(f"without: {len(still)} pictures, distance p95 {np.percentile(still, 95):.2f}")
    print(f"with: {len(moving)} pictures, distance p50 {np.median(moving):.2f}, p95 {np.percentile(moving, 95):.2f}")
    # A still camera at a fixed strength: one picture, held.
    ladder = {key: still_stats.get(key) for key in ("switches", "width", "height", "state", "skipped")}
    assert len(still) >= 10 and np.percentile(still, 95) < 2.0, (still, still_times, ladder)
    # With the kicks: pictures far from the usual one, coming and going ...
    assert len(moving) >= 20 and np.percentile(moving, 95) > 10 * max(np.percentile(still, 95), 0.5), moving
    # ... at the drum's 2 Hz: the power there stands out against the other rates the pictures could show.
    beat_hz = BPM / 60
    others = [power_at(times, moving, hz) for hz in np.arange(0.3, 3.5, 0.05) if abs(hz - beat_hz) > 0.25]
    at_beat = max(power_at(times, moving, hz) for hz in (beat_hz - 0.05, beat_hz, beat_hz + 0.05))
    print(f"power at {beat_hz:g} Hz {at_beat:.1f}, elsewhere median {np.median(others):.1f} max {max(others):.1f}")
    assert at_beat > 4 * np.median(others), (at_beat, others)
    assert "strength" in json.loads(stats)["stats"]["modulated"], stats  # the value the last frame ran with
