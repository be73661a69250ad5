"""The inbound end of a stream: the pump that drains a publisher's camera track, and a drain for tracks unused."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame


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


async def drain(track: MediaStreamTrack) -> None:
    """Receive and forget: a publisher's audio is accepted (OBS always sends it) but not used, and an unread
    aiortc track would queue its frames without bound."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
