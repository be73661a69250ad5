"""Encode once, send to many: a stream's output pictures, encoded once per codec in use, fanned out as packets.

The engine thread publishes finished pictures into a one-slot mailbox (the newest wins, a replaced one is counted
as dropped). One task per feed takes the newest, encodes it in a worker thread — once per codec that some viewer
negotiated — and offers the packet to every subscriber. A subscriber is the `MediaStreamTrack` of one viewer's
sender: aiortc's sender packetises packets it is given instead of encoding frames.

A subscriber that has not sent its last packet when the next one comes has lost a picture that the following
ones refer to: it skips to the next keyframe, which it asks the encoder for (as a viewer's PLI does).

While the stream's sound has listeners, each picture, once encoded, is held until it is as old as `hold_to` says:
the sound's delay less a few ms (sound.py, AIM_LATE_SECONDS), so that it leaves just before its own sound. The
sound's delay follows a high percentile of the pictures' latencies (stats.py, READY_PERCENTILE): most pictures are
held a little, few are late. Held pictures wait in order, each for its own time, and leave one at a time (a
viewer's sender takes one before the next is offered): the hold delays the stream, it neither slows nor thins it.

A picture is sent when the first subscriber's sender takes its packet: the stream's latency ends there.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from ..stats import FrameTimes, StreamStats
from .encoder import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, VideoEncoder
from .fanout import FanOut

# A longer hold would be a sound delay far off the picture's (a publisher's clock that restarted): such a picture
# is not held for it, only kept behind the pictures before it.
MAX_HOLD_SECONDS = 1.0
# Pictures due at the same moment (the hold ended, the sound's delay fell) leave at least this far apart.
RELEASE_GAP_SECONDS = 0.001


class Feed(FanOut["PacketTrack"]):
    """One output picture of a stream (the stylised video, or the control map) and the viewers that receive it."""

    task_prefix = "feed"

    def __init__(self, name: str, stats: StreamStats | None = None, bitrate_kbps: int = 2500) -> None:
        super().__init__(name)
        self._loop = asyncio.get_running_loop()
        self._stats = stats
        self._bitrate_kbps = bitrate_kbps
        self._pending: tuple[VideoFrame, FrameTimes] | None = None
        self._fresh = asyncio.Event()
        self._encoders: dict[str, VideoEncoder] = {}
        self._keyframes_wanted: set[str] = set()
        self._start: float | None = None
        self._last_pts = -1
        self.encodes = 0  # frames encoded, summed over codecs: one per frame per codec, whatever the viewers
        self.encode_seconds = 0.0
        # The latency each picture is held to before it leaves (the sound's delay less its aim), None for no hold.
        self.hold_to: Callable[[], float | None] | None = None
        # Encoded pictures waiting for their time, in order: (due, packets by codec, times). A picture is encoded
        # as soon as it is taken and waits here, so that one held does not hold up the next (at 30 fps a hold of
        # over 33 ms would otherwise have the one-slot mailbox drop pictures); bounded by MAX_HOLD_SECONDS.
        self._held: deque[tuple[float, dict[str, av.Packet | None], FrameTimes]] = deque()
        self._release_timer: asyncio.TimerHandle | None = None
        self._last_due = 0.0

    def publish(self, frame: VideoFrame, arrival: float, times: FrameTimes | None = None) -> None:
        """From the engine thread: a finished picture, the arrival time of the camera frame it came from, and the
        times of its stages so far (without them: all at its arrival)."""
        if times is None:
            times = FrameTimes(arrival, arrival, taken=arrival, done=arrival)
        with contextlib.suppress(RuntimeError):  # a closed event loop means the stream is gone
            self._loop.call_soon_threadsafe(self._deliver, frame, times)

    def subscribe(self) -> PacketTrack:
        """A track for one viewer's sender; it starts receiving once `PacketTrack.bind` names its codec."""
        self._check_open()
        self._start_task()
        return PacketTrack(self)

    def request_keyframe(self, codec: str) -> None:
        self._keyframes_wanted.add(codec)

    def _add(self, track: PacketTrack) -> None:
        super()._add(track)
        assert track.codec is not None  # added by bind, once it has one
        self.request_keyframe(track.codec)  # a new viewer can only start decoding at a keyframe

    def _remove(self, track: PacketTrack) -> None:
        super()._remove(track)
        if track.codec is not None and not any(t.codec == track.codec for t in self._subscribers):
            self._encoders.pop(track.codec, None)

    def _deliver(self, frame: VideoFrame, times: FrameTimes) -> None:
        if self._pending is not None and self._stats is not None:
            self._stats.add(dropped_out=1)
        self._pending = (frame, times)
        self._fresh.set()

    async def _run(self) -> None:
        while True:
            await self._fresh.wait()
            self._fresh.clear()
            if self._pending is None:
                continue
            (frame, times), self._pending = self._pending, None
            codecs = {track.codec for track in self._subscribers if track.codec is not None}
            if not codecs:
                continue  # nobody receives this feed now: nothing to encode
            due = self._due(times)
            self._stamp(frame, due)
            keyframes = codecs & self._keyframes_wanted
            self._keyframes_wanted -= keyframes
            encoders = {codec: self._encoder(codec) for codec in codecs}
            started = time.perf_counter()
            packets = await self._loop.run_in_executor(None, _encode_each, encoders, frame, keyframes)
            self.encode_seconds += time.perf_counter() - started
            self.encodes += len(encoders)
            times.encoded = time.monotonic()
            self._held.append((due, packets, times))
            self._release_due()

    def _due(self, times: FrameTimes) -> float:
        """When the picture is to leave: at once, or, while `hold_to` gives a latency, once it is that old; never
        before the one before it."""
        now = time.monotonic()
        latency = self.hold_to() if self.hold_to is not None else None
        due = times.arrival + latency if latency is not None else now
        if due - now > MAX_HOLD_SECONDS:
            due = now
        due = max(due, now, self._last_due + RELEASE_GAP_SECONDS)
        self._last_due = due
        return due

    def _release_due(self) -> None:
        """Offer the first held picture if its time has come, and wake up for the next one: on the next turn of the
        loop if it is due too, after the senders woken by this one have taken it (two offered at once, a sender
        would drop the first and skip to a keyframe, which comes only after the pictures held meanwhile)."""
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        now = time.monotonic()
        if self._held and self._held[0][0] <= now:
            _, packets, times = self._held.popleft()
            times.released = now
            for track in list(self._subscribers):
                packet = packets.get(track.codec) if track.codec is not None else None
                if packet is not None:
                    track.offer(packet, times)
        if self._held:
            wait = max(0.0, self._held[0][0] - now)
            self._release_timer = self._loop.call_later(wait, self._release_due)

    async def close(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        self._held.clear()
        await super().close()

    def _stamp(self, frame: VideoFrame, due: float) -> None:
        """Timestamps on a 90 kHz clock from the feed's first frame, of when each picture is due to leave (a held one
        later than it was made): viewers play at the real pace, and the hold is not jitter to them."""
        if self._start is None:
            self._start = due
        pts = max(int((due - self._start) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE

    def _sent(self, times: FrameTimes) -> None:
        """A sender took the picture's packet: the first one to do so ends the picture's latency."""
        if not math.isnan(times.sent):  # another viewer's sender took it first
            return
        times.sent = time.monotonic()
        if self._stats is not None:
            self._stats.sent(times)

    def _encoder(self, codec: str) -> VideoEncoder:
        encoder = self._encoders.get(codec)
        if encoder is None:
            encoder = self._encoders[codec] = VideoEncoder(codec, self._bitrate_kbps)
        return encoder


def _encode_each(
    encoders: dict[str, VideoEncoder], frame: VideoFrame, keyframes: set[str]
) -> dict[str, av.Packet | None]:
    return {codec: encoder.encode(frame, codec in keyframes) for codec, encoder in encoders.items()}


class PacketTrack(MediaStreamTrack):
    """One viewer's end of a feed: the newest encoded packet, pulled by aiortc's sender, which only packetises it.

    `dropped` counts packets the sender never took; `skipped` those passed over while waiting for a keyframe.
    """

    kind = "video"

    def __init__(self, feed: Feed) -> None:
        super().__init__()
        self._feed = feed
        self.codec: str | None = None
        self._pending: tuple[av.Packet, FrameTimes] | None = None
        self._fresh = asyncio.Event()
        self._awaiting_keyframe = True
        self.dropped = 0
        self.skipped = 0

    def bind(self, codec: str) -> None:
        """Start receiving `codec` packets (the codec the viewer's peer connection negotiated)."""
        self.codec = codec
        if self.readyState == "live":
            self._feed._add(self)

    def offer(self, packet: av.Packet, times: FrameTimes) -> None:
        if self._pending is not None:
            # The sender never took the last one; the pictures after it refer to it.
            self._pending = None
            self.dropped += 1
            self._feed.packets_dropped += 1
            self._awaiting_keyframe = True
            assert self.codec is not None  # offered to once bound
            self._feed.request_keyframe(self.codec)
        if self._awaiting_keyframe and not packet.is_keyframe:
            self.skipped += 1
            return
        self._awaiting_keyframe = False
        self._pending = (packet, times)
        self._fresh.set()

    def on_picture_loss(self) -> None:
        """The viewer reported a lost picture (PLI/FIR): the next picture it gets must be a keyframe."""
        if self.codec is not None:
            self._feed.request_keyframe(self.codec)

    async def recv(self) -> av.Packet:
        while self._pending is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._fresh.clear()
            await self._fresh.wait()
        if self.readyState != "live":
            raise MediaStreamError
        (packet, times), self._pending = self._pending, None
        self._feed._sent(times)
        return packet

    def stop(self) -> None:
        super().stop()
        self._feed._remove(self)
        self._fresh.set()  # wake a waiting recv so it raises MediaStreamError
