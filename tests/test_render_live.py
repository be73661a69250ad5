"""`lcmlive render` on a real recording: a WHIP stream with sound recorded by the server, with a prompt fade and
a modulation, at a camera rate the CPU keeps up with (no frame dropped), renders on the live model and settings to
the pictures the viewers got."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import VideoStreamTrack

from pipelines.synthetic import moving_pattern
from server.bench.rtc_clients import WhipPublisher, http
from server.media.ice import restrict_ice_to_loopback
from server.render import read_recording, render

from conftest import LiveServer

pytestmark = pytest.mark.slow  # a live recording rendered: 21 s (CI, under load)

CAMERA_FPS = 3  # slow enough that the tiny model on a busy 2-core CPU runs every frame
SIDE = 128
LIVE_BOUND = 5.0  # mean absolute difference (0-255) of a live picture and the master's, at most


class SlowCamera(VideoStreamTrack):
    """The moving pattern at `fps`, a new picture every frame, from when `rolling` is set."""

    def __init__(self, fps: float) -> None:
        super().__init__()
        self.fps = fps
        self.sent = 0
        self.rolling = asyncio.Event()
        self._rolled: float | None = None  # when it began to roll (not VideoStreamTrack's own _start)

    async def recv(self) -> av.VideoFrame:
        if self._rolled is None:
            await self.rolling.wait()
            self._rolled = time.monotonic()
        await asyncio.sleep(max(0.0, self._rolled + self.sent / self.fps - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(moving_pattern(SIDE, SIDE, 5 * self.sent), format="rgb24")
        frame.pts, frame.time_base = round(self.sent * 90_000 / self.fps), fractions.Fraction(1, 90_000)
        self.sent += 1
        return frame


async def call(server: LiveServer, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    reply = await http(method, f"{server.url}{path}", json.dumps(body) if body is not None else None)
    return reply.status, json.loads(reply.body) if reply.body else {}


async def record(server: LiveServer) -> Path:
    """3.5 seconds of a stream at a fixed size, a prompt fade half-way, strength moved by the sound's level;
    recorded from the camera's first frame (temporal smoothing carries the frames before a recording into it)."""
    restrict_ice_to_loopback()
    camera = SlowCamera(CAMERA_FPS)
    async with WhipPublisher(f"{server.url}/whip/show", camera=camera, tone_hz=440.0):
        settings = {"max_resolution": SIDE, "min_resolution": SIDE, "target_fps": 30.0, "prompt": "watercolor"}
        modulation = {"param": "strength", "source": "level", "amount": 0.3, "smooth_ms": 200.0}
        status, body = await call(server, "PATCH", "/streams/show", {**settings, "modulations": [modulation]})
        assert status == 200, body
        status, started = await call(server, "POST", "/streams/show/recording")
        assert status == 201, started
        camera.rolling.set()
        await asyncio.sleep(1.5)
        status, body = await call(server, "PATCH", "/streams/show", {"prompt": "neon night", "transition_s": 1.0})
        assert status == 200, body
        await asyncio.sleep(2.0)
        status, summary = await call(server, "DELETE", "/streams/show/recording")
        assert status == 200, summary
    return Path(summary["dir"])


def pictures(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def differences(live: list[np.ndarray], rendered: list[np.ndarray], shift: int) -> list[float]:
    """Mean absolute difference of each live picture and the rendered one `shift` frames on."""
    pairs = [(a, rendered[i + shift]) for i, a in enumerate(live) if 0 <= i + shift < len(rendered)]
    return [float(np.abs(a.astype(int) - b).mean()) for a, b in pairs]


def best_shift(live: list[np.ndarray], rendered: list[np.ndarray]) -> int:
    """output.mkv starts at the first key frame after the start and may end on frames in flight: the shift that
    lines its pictures up with the render's."""
    return min(range(-4, 5), key=lambda shift: float(np.mean(differences(live, rendered, shift))))


async def test_a_recording_with_no_frame_dropped_renders_to_the_live_pictures(tiny, tmp_path):
    server = LiveServer("--record-dir", str(tmp_path), "--record-min-free", "0")
    try:
        folder = await record(server)
    finally:
        output = server.stop()
    assert "Traceback" not in output, output
    recording = read_recording(folder)
    assert recording.notes == []
    assert len(recording.changes) == 1 and recording.changes[0].params["prompt"] == "neon night"
    # No frame dropped: the model ran every input frame, so the render's history is the live one's.
    assert len(recording.frames) == recording.video.packets >= 8, (len(recording.frames), recording.video.packets)
    assert {frame.size for frame in recording.frames} == {(SIDE, SIDE)}
    assert any(frame.modulated["strength"] != 0.5 for frame in recording.frames)

    summary = render(recording, folder / "master.mp4", tiny)
    assert summary.frames == summary.live_frames == recording.video.packets and summary.sound
    live, rendered = pictures(folder / "output.mkv"), pictures(folder / "master.mp4")
    shift = best_shift(live, rendered)
    difference = differences(live, rendered, shift)
    neighbours = differences(live, rendered, shift + 1)
    assert abs(shift) <= 1 and len(difference) >= len(rendered) - 2, (shift, len(live), len(rendered))
    # The same pictures but for the encodings: the camera's H.264 over WebRTC and again into input.mkv (crf 16),
    # the live picture's real-time H.264 (1.2-1.4 alone) and the master's crf 17 (1.3-1.5 alone), and the fade's
    # clock (live: when the frame was prepared; the render: when it arrived). Measured 0.95-3.4 a frame over runs.
    assert max(difference) < LIVE_BOUND, (shift, difference)
    # A frame apart, the moving camera's pictures differ by far more (measured 11-58): the bound tells them apart.
    assert np.mean(neighbours) > 3 * LIVE_BOUND, neighbours
