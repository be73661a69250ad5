"""Per-stream counters, written by the pump, the engine and the feed's encoder, read once a second."""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .metrics import StreamMetrics

RECENT_LATENCIES = 1000
# A picture held to the sound's delay leaves in step with it; one readier than the delay is held, one later leaves
# late (its sound early by the difference). Each frame's latency swings around its median (tiny at 2 fps on the
# 2-core CPU: the model's own time 290-400 ms, median 305 ms, slowed), so the delay follows a high percentile of the
# last seconds' ready latencies: most pictures are held a little, few are late. `lcmlive bench --av`, seven runs:
# the hold's median 0-16 ms, 9-30 ms slowed; the latency p50 about +20 ms, +60 ms slowed, against runs without it.
READY_PERCENTILE = 90
READY_WINDOW_SECONDS = 2.0
# The stages of a frame's way through the server (FrameTimes.stages): the decoder, the wait in the mailbox for
# the engine, the engine's own work around the model (conversion, preparation, collection), the model, the
# encoder (with the hop to the event loop and the feed's slot), the hold that keeps the picture in step with the
# stream's sound (none without listeners), and the wait for a viewer's sender.
STAGES = ("decode", "wait", "prepare", "model", "encode", "hold", "send")


@dataclass(slots=True)
class FrameTimes:
    """When one camera frame passed each point on its way through the server (time.monotonic(); nan: not yet).

    arrival: its last RTP packet came; decoded: aiortc's decoder handed it over; taken: the engine took it from the
    mailbox; done: the model's picture is back; encoded: the feed's encoder has its packet; released: the feed offered
    it to the senders (later than encoded while it was held for the sound); sent: a viewer's sender took it to send.
    `model_seconds`: the model's own time, within taken to done. A frame the engine made itself (txt2img) arrives
    when it is taken.
    """

    arrival: float
    decoded: float
    taken: float = math.nan
    done: float = math.nan
    encoded: float = math.nan
    released: float = math.nan
    sent: float = math.nan
    model_seconds: float = 0.0

    def stages(self) -> dict[str, float]:
        """Seconds spent in each of STAGES; they add up to `latency`."""
        return {
            "decode": self.decoded - self.arrival,
            "wait": self.taken - self.decoded,
            "prepare": self.done - self.taken - self.model_seconds,
            "model": self.model_seconds,
            "encode": self.encoded - self.done,
            "hold": self.released - self.encoded,
            "send": self.sent - self.released,
        }

    @property
    def latency(self) -> float:
        return self.sent - self.arrival

    @property
    def ready_latency(self) -> float:
        """Arrival to encoded: the latency the picture would have had without a hold."""
        return self.encoded - self.arrival


@dataclass
class StreamStats:
    """Monotonic counters and running sums; `snapshot` turns the last interval into rates, means and medians."""

    frames_in: int = 0
    frames_processed: int = 0
    frames_out: int = 0
    dropped_in: int = 0  # camera frames replaced before the engine took them
    dropped_out: int = 0  # results replaced before the encoder took them
    model_seconds: float = 0.0
    latency_seconds: float = 0.0
    queue_seconds: float = 0.0
    skipped: int = 0  # frames answered with the last picture by the similarity skip
    width: int = 0  # processing size
    height: int = 0
    output_width: int = 0  # the size the viewer gets, stable while the processing size adapts
    output_height: int = 0
    state: str = "starting"  # the resolution controller's
    switches: int = 0
    # (sent at, latency) of the last frames sent, for percentiles (bounded: a long session keeps no history).
    recent_latencies: deque = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES), repr=False)
    # The FrameTimes of the same frames, for the stages' medians.
    recent_times: deque = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES), repr=False)
    metrics: StreamMetrics | None = field(default=None, repr=False)  # histograms for /metrics
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last: tuple = field(default=(0, 0, 0, 0.0, 0.0), repr=False)
    _last_time: float = field(default_factory=time.monotonic, repr=False)

    def processed(self, model_seconds: float, queue_seconds: float) -> None:
        """A frame ran through the model (from the engine thread)."""
        self.add(frames_processed=1, model_seconds=model_seconds, queue_seconds=queue_seconds)
        if self.metrics is not None:
            self.metrics.model_seconds.observe(model_seconds)

    def sent(self, times: FrameTimes) -> None:
        """A stylised frame left for the viewers (on the event loop): its latency is arrival to sent."""
        latency_seconds = times.latency
        self.add(frames_out=1, latency_seconds=latency_seconds)
        self.recent_latencies.append((times.sent, latency_seconds))
        self.recent_times.append(times)
        if self.metrics is not None:
            self.metrics.latency_seconds.observe(latency_seconds)
            self.metrics.observe_stages(times)

    def recent_stages(self, seconds: float = 1.0) -> dict[str, float] | None:
        """The median seconds of each stage over the frames sent in the last `seconds` (None if none was)."""
        recent = self._recent_times(seconds)
        return stage_medians(recent) if recent else None

    def _recent_times(self, seconds: float) -> list[FrameTimes]:
        """The FrameTimes of the frames sent in the last `seconds`, newest first."""
        since = time.monotonic() - seconds
        return list(itertools.takewhile(lambda times: times.sent >= since, reversed(self.recent_times)))

    def recent_latency(self, seconds: float = 1.0) -> float | None:
        """The median latency of the frames sent in the last `seconds` (None if none was): the picture's current
        latency, steady against one frame's wobble. Read on the event loop, where `sent` is called."""
        since = time.monotonic() - seconds
        recent = list(itertools.takewhile(lambda entry: entry[0] >= since, reversed(self.recent_latencies)))
        return statistics.median(latency for _, latency in recent) if recent else None

    def recent_ready_latency(self, seconds: float = READY_WINDOW_SECONDS) -> float | None:
        """The READY_PERCENTILE of the ready latencies (arrival to encoded) of the frames sent in the last `seconds`
        (None if none was): what the stream's sound follows, and, through the sound's delay, what the picture is
        held to while the sound has listeners. The ready latency, not the sent one: a held picture's latency is the
        sound's delay, and following it would never let the delay fall."""
        recent = self._recent_times(seconds)
        if not recent:
            return None
        return float(np.percentile([times.ready_latency for times in recent], READY_PERCENTILE))

    def set(self, **values: object) -> None:
        """Set fields (sizes, state) from the engine thread while the loop may be taking a snapshot."""
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def add(self, **increments: float) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict:
        """Rates and medians over the interval since the previous snapshot, plus running totals (on the event
        loop, where `sent` is called)."""
        now = time.monotonic()
        with self._lock:
            current = (
                self.frames_in,
                self.frames_processed,
                self.frames_out,
                self.model_seconds,
                self.queue_seconds,
            )
            previous, since = self._last, self._last_time
            elapsed = max(now - since, 1e-6)
            self._last, self._last_time = current, now
            delta = [c - p for c, p in zip(current, previous, strict=True)]
            processed = max(delta[1], 1)
            latency = self.recent_latency(now - since)  # the median: one frame held up does not move it
            return {
                "fps_in": round(delta[0] / elapsed, 2),
                "fps_model": round(delta[1] / elapsed, 2),
                "fps_out": round(delta[2] / elapsed, 2),
                "model_ms": round(delta[3] / processed * 1000, 1),
                "latency_ms": round(latency * 1000, 1) if latency is not None else 0.0,
                "queue_ms": round(delta[4] / processed * 1000, 1),
                "width": self.width,
                "height": self.height,
                "output_width": self.output_width,
                "output_height": self.output_height,
                "state": self.state,
                "switches": self.switches,
                "skipped": self.skipped,
                "dropped": self.dropped_in + self.dropped_out,
                "dropped_in": self.dropped_in,
                "dropped_out": self.dropped_out,
                "frames_in": self.frames_in,
                "frames_processed": self.frames_processed,
                "frames_out": self.frames_out,
                "stages_ms": self.recent_stages_ms(now - since),
            }

    def recent_stages_ms(self, seconds: float) -> dict[str, float] | None:
        stages = self.recent_stages(seconds)
        return {stage: round(value * 1000, 1) for stage, value in stages.items()} if stages else None


def stage_medians(frames: list[FrameTimes]) -> dict[str, float]:
    """Each stage's median seconds over `frames` (the medians need not add up to the latency's median)."""
    each = [times.stages() for times in frames]
    return {stage: statistics.median(stages[stage] for stages in each) for stage in STAGES}
