"""Prometheus metrics: what a dashboard of a running show needs, exposed by prometheus-client at `GET /metrics`.

Counters that the streams keep anyway (frames in, processed, dropped, skipped, out) are read at scrape time by a
collector, so nothing is counted twice; timings that need every observation (model seconds, latency) go into
histograms as frames finish. A stream's label sets are removed when it ends, so the series stay bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .stats import FrameTimes

# A 1-step 512-pixel frame on a GPU is a few ms; the tiny model at 512 on a CPU about 500 ms.
MODEL_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
# A stage other than the model takes a few ms when nothing waits (decoding or encoding 256 px: 1-5 ms).
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
FRAME_STAGES = {
    "in": "frames_in",
    "processed": "frames_processed",
    "dropped": "dropped_in",
    "skipped": "skipped",
    "out": "frames_out",
}


class StreamMetrics:
    """One stream's histograms, observed from the engine thread and the feed (prometheus-client is thread-safe)."""

    def __init__(self, metrics: Metrics, stream: str) -> None:
        self._metrics = metrics
        self.stream = stream
        self.model_seconds = metrics.model_seconds.labels(stream)
        self.latency_seconds = metrics.latency_seconds.labels(stream)
        self._stages: dict[str, Histogram] = {}  # labelled on first use: the stages are the stats' (FrameTimes)

    def observe_stages(self, times: FrameTimes) -> None:
        for stage, seconds in times.stages().items():
            histogram = self._stages.get(stage)
            if histogram is None:
                histogram = self._stages[stage] = self._metrics.stage_seconds.labels(self.stream, stage)
            histogram.observe(seconds)

    def remove(self) -> None:
        self._metrics.model_seconds.remove(self.stream)
        self._metrics.latency_seconds.remove(self.stream)
        for stage in self._stages:
            self._metrics.stage_seconds.remove(self.stream, stage)


class Metrics:
    """The server's metrics in a registry of its own (several apps in one process keep theirs apart)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.registry = CollectorRegistry()
        self.model_seconds = Histogram(
            "lcmlive_model_seconds",
            "Seconds the model took per frame",
            ["stream"],
            buckets=MODEL_BUCKETS,
            registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "lcmlive_latency_seconds",
            "Seconds from a camera frame's arrival to its stylised frame leaving for the viewers",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "lcmlive_stage_seconds",
            "Seconds a frame spent in each stage between its arrival and its leaving (decode, wait, prepare, model, "
            "encode, hold, send): the stages add up to lcmlive_latency_seconds",
            ["stream", "stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.control_messages = Counter(
            "lcmlive_control_messages",
            "Params changes received, by front end and result (applied, rejected, coalesced)",
            ["front_end", "result"],
            registry=self.registry,
        )

    def read_streams(self, streams: Callable[[], Iterable]) -> None:
        """Where the scrape finds the streams (the registry, which itself needs these metrics to make streams)."""
        self.registry.register(_StreamCollector(streams, self.device))

    def for_stream(self, name: str) -> StreamMetrics:
        return StreamMetrics(self, name)

    def control_message(self, front_end: str, result: str, count: int = 1) -> None:
        """`result`: applied, rejected, or coalesced (an OSC value replaced by a newer one before it was applied)."""
        self.control_messages.labels(front_end, result).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StreamCollector(Collector):
    """Reads the streams' own counters and sizes at scrape time."""

    def __init__(self, streams: Callable[[], Iterable], device: torch.device) -> None:
        self._streams = streams
        self._device = torch.device(device)

    def collect(self) -> Iterable[Metric]:
        streams = list(self._streams())
        yield GaugeMetricFamily("lcmlive_streams", "Streams publishing", value=len(streams))
        viewers = sum(len(stream.viewers) for stream in streams)
        yield GaugeMetricFamily("lcmlive_viewers", "WHEP viewers of all streams", value=viewers)
        frames = CounterMetricFamily("lcmlive_frames", "Frames per stream and stage", labels=["stream", "stage"])
        side = GaugeMetricFamily(
            "lcmlive_processing_side_pixels", "Longest side of the processing size", labels=["stream"]
        )
        sound_delay = GaugeMetricFamily(
            "lcmlive_sound_delay_seconds",
            "Seconds a stream's sound leaves after it came in (following the picture's latency; held pictures leave "
            "just before it)",
            labels=["stream"],
        )
        recent_latency = GaugeMetricFamily(
            "lcmlive_recent_latency_seconds",
            "A stream's picture latency now (median of the last second's frames, held ones with their hold)",
            labels=["stream"],
        )
        sound = GaugeMetricFamily(
            "lcmlive_sound", "A stream's sound features, each 0-1 (beat: its phase)", labels=["stream", "feature"]
        )
        bpm = GaugeMetricFamily("lcmlive_sound_bpm", "A stream's tempo, once it is confident", labels=["stream"])
        recent_stages = GaugeMetricFamily(
            "lcmlive_recent_stage_seconds",
            "A stream's frames' median seconds in each stage over the last second (see lcmlive_stage_seconds)",
            labels=["stream", "stage"],
        )
        for stream in streams:
            stats = stream.stats
            latency = stats.recent_latency()
            if latency is not None:
                recent_latency.add_metric([stream.name], latency)
            for stage, seconds in (stats.recent_stages() or {}).items():
                recent_stages.add_metric([stream.name, stage], seconds)
            if stream.sound is not None:
                for feature, value in stream.sound.features.snapshot().items():
                    if value is None:
                        continue
                    if feature == "bpm":
                        bpm.add_metric([stream.name], value)
                    else:
                        sound.add_metric([stream.name, feature], value)
            for stage, field in FRAME_STAGES.items():
                frames.add_metric([stream.name, stage], getattr(stats, field))
            side.add_metric([stream.name], max(stats.width, stats.height))
            if stream.sound is not None and stream.sound.delay is not None:
                sound_delay.add_metric([stream.name], stream.sound.delay)
        yield frames
        yield side
        yield sound_delay
        yield recent_latency
        yield recent_stages
        yield sound
        yield bpm
        if self._device.type == "cuda":
            yield GaugeMetricFamily(
                "lcmlive_device_memory_bytes",
                "GPU memory held by tensors",
                value=torch.cuda.memory_allocated(self._device),
            )
