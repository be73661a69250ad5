"""A stream's sound out to its viewers in step with the picture: delayed by its latency, Opus-encoded once for all.

Encode once, send to many, as feed.py does for the picture: every viewer's sender gets the same packets.

Decoded and re-encoded, not passed through: aiortc decodes every packet it receives and gives no public way to
the packets themselves (passing them on would reach into `RTCRtpReceiver`'s internals), and packets could only
move the delay by whole 20 ms packets, each a gap or a repeat, where decoded samples follow it by stretching
(delayline.py: at most 1.25 ms per 20 ms packet, nothing skipped or repeated). The cost: one more lossy generation
at 96 kbps, and one libopus encode of 20 ms per stream, done on the event loop: 0.19 ms median, 0.44 ms p95 on
the 2-core dev CPU while busy (a delay-line read adds 0.06 ms), 1-2% of the loop at 50 packets a second.

A clock task reads a 20 ms packet from the delay line every 20 ms from the first sound in or viewer on, whether
anyone listens or not (the delay is in the stats either way), and encodes it while someone does. Each viewer's
track holds up to 200 ms of packets for its sender; older ones are dropped and counted.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from .delayline import CHANNELS, SAMPLE_RATE, DelayLine
from .fanout import FanOut
from .sound_features import SoundFeatures

OPUS = "audio/opus"
PACKET_SECONDS = 0.02
PACKET_SAMPLES = round(PACKET_SECONDS * SAMPLE_RATE)
OPUS_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
DEFAULT_SOUND_BITRATE_KBPS = 96  # what aiortc's own Opus encoder sends
TRACK_QUEUE_PACKETS = 10
# The loop may be late for a tick (a busy moment); packets up to this late are still made, in a burst the
# viewers' jitter buffers absorb; later ones are skipped (counted) and the sound goes on from now.
CATCH_UP_SECONDS = 0.2
# EBU R37 allows sound 40 ms early and 60 ms late. While the sound has listeners the picture is held until it is as
# old as the sound's delay less this aim (feed.py), so a held picture leaves exactly this much before its sound; it
# reaches the viewer AIM - 11 ms before it (its few ms more on the way). A picture slower than the hold leaves late,
# its sound early by the difference: seen up to 27 ms slowed; once, with an aim of 15 ms, 74 ms (tiny at
# 2 fps on the 2-core CPU, `lcmlive bench --av`). R37 is lopsided, and so is what is left: the aim sits late in the
# window (held pictures at about +24 ms at the viewer), which leaves 64 ms for a late picture before -40.
# Without the hold (the sound at the median latency + 15 ms): 13-14 of 14 flashes inside, -73..+49 ms; with it and
# this aim, 14 of 14 in seven runs, -2..+29 ms.
AIM_LATE_SECONDS = 0.035


class SoundFeed(FanOut["SoundTrack"]):
    """One stream's sound and the viewers that receive it."""

    task_prefix = "sound"

    def __init__(
        self,
        name: str,
        latency: Callable[[], float | None],
        bitrate_kbps: int = DEFAULT_SOUND_BITRATE_KBPS,
    ) -> None:
        """`latency`: the picture's latency to follow in seconds (a high percentile of its recent ready latencies,
        stats.py), None while no picture leaves (the delay stays)."""
        super().__init__(name)
        self.line = DelayLine()
        self.features = SoundFeatures()  # of the sound as it comes in: a frame made now goes with the sound of now
        self._latency = latency
        self._bitrate = bitrate_kbps * 1000
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        self._encoder: av.AudioCodecContext | None = None
        self._pts = 0  # of the next packet, on the 48 kHz clock from the clock's start
        self.encodes = 0
        self.packets_skipped = 0  # packets the clock was too late to make

    @property
    def delay(self) -> float | None:
        """Seconds the sound now leaves after it came in (None before the picture's first latency)."""
        return self.line.delay

    def picture_latency(self) -> float | None:
        """The latency to hold the picture to, so that it leaves just before its sound: the sound's delay less the
        aim (AIM_LATE_SECONDS); None while nobody receives the sound, or before it has a delay."""
        if not self._subscribers or self.line.delay is None:
            return None
        return self.line.delay - AIM_LATE_SECONDS

    def state(self) -> dict[str, Any]:
        """The sound now, for stats and REST: its delay, its features, and what was lost on the way out."""
        delay = self.line.delay
        return {
            "delay_ms": round(delay * 1000, 1) if delay is not None else None,
            **self.features.snapshot(),
            "packets_dropped": self.packets_dropped,
            "packets_skipped": self.packets_skipped,
            "underrun_ms": round(self.line.underruns / SAMPLE_RATE * 1000, 1),
        }

    def write(self, frame: AudioFrame, arrival: float) -> None:
        """From the pump: a decoded frame of the publisher's sound and when it arrived."""
        media_time = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
        for converted in self._resampler.resample(frame):
            samples = converted.to_ndarray().reshape(-1, CHANNELS)
            self.line.write(samples, arrival, media_time)
            self.features.write(samples, arrival, media_time)
            media_time = None  # a resampler's second frame goes on from its first
        self._start_task()

    def subscribe(self) -> SoundTrack:
        """A track for one viewer's sender; it starts receiving once `SoundTrack.bind` names its codec."""
        self._check_open()
        self._start_task()
        return SoundTrack(self)

    async def _run(self) -> None:
        tick = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            late = time.monotonic() - tick
            if late > CATCH_UP_SECONDS:
                skipped = int(late / PACKET_SECONDS)
                self.line.skip(skipped * PACKET_SAMPLES)
                self.packets_skipped += skipped
                self._pts += skipped * PACKET_SAMPLES
                tick += skipped * PACKET_SECONDS
            self._send(tick)
            self.features.advance(tick)  # no sound coming in (a publisher muted): the features fall to silence
            tick += PACKET_SECONDS

    def _send(self, now: float) -> None:
        latency = self._latency()
        target = latency + AIM_LATE_SECONDS if latency is not None else None
        samples = self.line.read(PACKET_SAMPLES, now, target)
        pts, self._pts = self._pts, self._pts + PACKET_SAMPLES
        if not self._subscribers:
            return  # nobody listens now: nothing to encode
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, OPUS_TIME_BASE
        for packet in self._encode(frame):
            # libopus stamps its packets 312 samples early (its look-ahead); the packet is this frame's.
            packet.pts, packet.time_base = pts, OPUS_TIME_BASE
            for track in list(self._subscribers):
                track.offer(packet)

    def _encode(self, frame: AudioFrame) -> list[av.Packet]:
        if self._encoder is None:
            encoder = av.CodecContext.create("libopus", "w")
            encoder.bit_rate = self._bitrate
            encoder.format, encoder.layout, encoder.sample_rate = "s16", "stereo", SAMPLE_RATE
            encoder.time_base = OPUS_TIME_BASE
            # "audio", not aiortc's "voip": a show's sound is music as often as speech.
            encoder.options = {"application": "audio", "frame_duration": "20"}
            self._encoder = encoder
        self.encodes += 1
        return list(self._encoder.encode(frame))


class SoundTrack(MediaStreamTrack):
    """One viewer's end of the sound: Opus packets in order, pulled by aiortc's sender, which only packetises them.

    `dropped` counts packets lost because the sender fell more than `TRACK_QUEUE_PACKETS` behind.
    """

    kind = "audio"

    def __init__(self, feed: SoundFeed) -> None:
        super().__init__()
        self._feed = feed
        self.codec: str | None = None
        self._queue: deque[av.Packet] = deque()
        self._fresh = asyncio.Event()
        self.dropped = 0

    def bind(self, codec: str) -> None:
        """Start receiving (the viewer's peer connection negotiated `codec`, which must be Opus)."""
        if codec != OPUS:
            raise ValueError(f"the sound is Opus, not {codec}")
        self.codec = codec
        if self.readyState == "live":
            self._feed._add(self)

    def offer(self, packet: av.Packet) -> None:
        if len(self._queue) >= TRACK_QUEUE_PACKETS:
            self._queue.popleft()
            self.dropped += 1
            self._feed.packets_dropped += 1
        self._queue.append(packet)
        self._fresh.set()

    async def recv(self) -> av.Packet:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._fresh.clear()
            await self._fresh.wait()
        if self.readyState != "live":
            raise MediaStreamError
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._feed._remove(self)
        self._fresh.set()  # wake a waiting recv so it raises MediaStreamError
