"""The inbound end of a stream: the pumps that drain a publisher's camera and sound tracks, and a drain for tracks
unused."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from . import jitter


async def pump_frames(track: MediaStreamTrack, submit: Callable[[VideoFrame, float, float], None]) -> None:
    """Receive every decoded camera frame as soon as aiortc has it and hand it on with its arrival time: when its
    last packet came (jitter.completed_at), else now.

    aiortc's receive queue is unbounded: only a consumer that never stops keeps it empty. The engine keeps the
    newest frame; this loop does no conversion work.
    """
    offset: float | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, VideoFrame)  # a remote video track's recv() decodes to pictures
        decoded = time.monotonic()
        arrival = min(jitter.completed_at(track, frame.pts) or decoded, decoded)
        media_time = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else arrival
        # Arrival minus media time is constant while nothing queues; its growth above the minimum is queueing.
        lag = arrival - media_time
        offset = lag if offset is None else min(offset, lag)
        submit(frame, arrival, lag - offset)


async def pump_sound(track: MediaStreamTrack, submit: Callable[[AudioFrame, float], None]) -> None:
    """Receive every decoded frame of the publisher's sound (aiortc decodes Opus to 20 ms of 48 kHz stereo) and
    hand it on with its arrival time: all of it, in order, for the delay line."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, AudioFrame)  # a remote audio track's recv() decodes to sound
        submit(frame, time.monotonic())


async def drain(track: MediaStreamTrack) -> None:
    """Receive and forget: a publisher's second audio track is accepted but not used (a stream has one sound),
    and an unread aiortc track would queue its frames without bound."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
