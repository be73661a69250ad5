"""The media ends of a session: the pump that drains the camera track, and the stylised outbound track."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from .stats import SessionStats

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


async def pump_frames(track: MediaStreamTrack, submit: Callable[[VideoFrame, float, float], None]) -> None:
    """Receive every decoded camera frame as soon as aiortc has it and hand it on with its arrival time.

    aiortc's receive queue is unbounded: only a consumer that never stops keeps it empty. The engine keeps the
    newest frame; this loop does no conversion work.
    """
    offset: float | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        arrival = time.monotonic()
        media_time = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else arrival
        # Arrival minus media time is constant while nothing queues; its growth above the minimum is queueing.
        lag = arrival - media_time
        offset = lag if offset is None else min(offset, lag)
        submit(frame, arrival, lag - offset)


class StylisedTrack(MediaStreamTrack):
    """Outbound video: always the newest stylised frame, with monotonic timestamps from a 90 kHz clock."""

    kind = "video"

    def __init__(self, stats: SessionStats) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._stats = stats
        self._pending: tuple[VideoFrame, float] | None = None
        self._fresh = asyncio.Event()
        self._start: float | None = None
        self._last_pts = -1

    def publish(self, frame: VideoFrame, arrival: float) -> None:
        """Called from the engine thread with a finished frame and the arrival time of its camera frame."""
        with contextlib.suppress(RuntimeError):  # a closed event loop means the session is gone
            self._loop.call_soon_threadsafe(self._deliver, frame, arrival)

    def _deliver(self, frame: VideoFrame, arrival: float) -> None:
        if self._pending is not None:
            self._stats.add(dropped_out=1)
        self._pending = (frame, arrival)
        self._fresh.set()

    async def recv(self) -> VideoFrame:
        while self._pending is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._fresh.clear()
            await self._fresh.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame, arrival = self._pending
        self._pending = None
        now = time.monotonic()
        if self._start is None:
            self._start = now
        pts = max(int((now - self._start) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        self._stats.add(frames_out=1, latency_seconds=now - arrival)
        self._stats.recent_latencies.append((now, now - arrival))
        return frame

    def stop(self) -> None:
        super().stop()
        self._fresh.set()  # wake a waiting recv so it can raise MediaStreamError
