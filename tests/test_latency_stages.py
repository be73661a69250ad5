"""Where a frame's latency goes: every frame sent is stamped at each stage, in order, and the stages add up to its
latency in the stats, the stats messages and `/metrics`."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import numpy as np
import pytest
from aiortc.rtp import RtpPacket
from prometheus_client.parser import text_string_to_metric_families

from server.bench.e2e import BenchServer
from server.bench.loopback import LoopbackClient
from server.bench.rtc_clients import http
from server.media.ice import restrict_ice_to_loopback
from server.media.jitter import PromptVideoBuffer
from server.stats import STAGES
from server.worker import FrameSchedule

SIZE = 128
# Decoding a 128-pixel VP8 frame and the hop from aiortc's decoder thread took 1.0-1.2 ms p50 here; from the pump's
# own clock read instead of the receive buffer's stamp to the worker's, 0.04 ms.
MIN_DECODE_SECONDS = 3e-4


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


async def test_every_frame_sent_is_stamped_at_each_stage_and_the_stages_add_up_to_its_latency(tiny):
    async with BenchServer(tiny) as server:
        async with LoopbackClient(f"ws://127.0.0.1:{server.port}/ws", SIZE, SIZE) as client:
            await client.wait_for_frames(3, timeout=60)
            await asyncio.sleep(3)
            stream = await server.first_stream()
            reply = await http("GET", f"http://127.0.0.1:{server.port}/metrics")
        frames = list(stream.stats.recent_times)
    assert reply.status == 200, reply
    assert len(frames) >= 5, len(frames)
    for times in frames:
        marks = (times.arrival, times.decoded, times.taken, times.done, times.encoded, times.released, times.sent)
        assert all(math.isfinite(mark) for mark in marks), times
        # Arrival is the last packet's, before the decoder handed the frame over (the receive buffer's stamp).
        assert (
            times.arrival < times.decoded <= times.taken <= times.done <= times.encoded <= times.released <= times.sent
        ), times
        assert 0 < times.model_seconds <= times.done - times.taken, times
        stages = times.stages()
        assert tuple(stages) == STAGES
        assert min(stages.values()) >= 0, stages
        assert math.isclose(sum(stages.values()), times.latency, abs_tol=1e-9), (stages, times.latency)
    assert [latency for _, latency in stream.stats.recent_latencies] == [times.latency for times in frames]
    assert statistics.median(times.decoded - times.arrival for times in frames) > MIN_DECODE_SECONDS

    # The page's stats: each stage's median over the last interval, once frames flow.
    shown = [message["stages_ms"] for message in client.record.stats if message.get("stages_ms")]
    assert shown, client.record.stats
    assert all(tuple(stages) == STAGES and min(stages.values()) >= 0 for stages in shown), shown
    assert any(stages["model"] > 0 for stages in shown), shown

    # /metrics: a histogram per stage over the same frames as the latency's, whose sums add up to the latency's.
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(reply.body):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("stage", ""))
            samples[key] = samples.get(key, 0.0) + sample.value
    latency_count = samples[("lcmlive_latency_seconds_count", "")]
    assert latency_count > 0
    for stage in STAGES:
        assert samples[("lcmlive_stage_seconds_count", stage)] == latency_count, stage
    stage_sum = sum(samples[("lcmlive_stage_seconds_sum", stage)] for stage in STAGES)
    assert math.isclose(stage_sum, samples[("lcmlive_latency_seconds_sum", "")], rel_tol=1e-6)
    assert {stage for name, stage in samples if name == "lcmlive_recent_stage_seconds"} == set(STAGES)


def packet(sequence: int, timestamp: int, marker: bool = False) -> RtpPacket:
    rtp = RtpPacket(payload_type=96, marker=int(marker), sequence_number=sequence, timestamp=timestamp)
    # The depayloaded bytes, as aiortc's receiver sets them: an attribute its RtpPacket does not declare.
    rtp._data = b"x"  # pyright: ignore[reportAttributeAccessIssue]
    return rtp


def test_the_video_buffer_tells_when_each_decoded_frame_was_complete():
    buffer = PromptVideoBuffer()
    completed = []
    for index, timestamp in enumerate((3000, 6000, 9000)):
        assert buffer.add(packet(2 * index, timestamp))[1] is None  # the frame's first packet: not complete
        before = time.monotonic()
        frame = buffer.add(packet(2 * index + 1, timestamp, marker=True))[1]
        assert frame is not None
        frame.timestamp -= 3000  # what aiortc's receiver does to it (TimestampMapper), giving the decoded pts
        completed.append((frame.timestamp, before, time.monotonic()))
    assert buffer.completed_at(12345) is None  # unknown: nothing forgotten
    pts, before, after = completed[1]
    assert before <= buffer.completed_at(pts) <= after
    assert buffer.completed_at(completed[0][0]) is None  # those before a frame asked for are gone with it
    pts, before, after = completed[2]
    assert before <= buffer.completed_at(pts) <= after


def paced(arrivals: list[float], fps: float, model_seconds: float) -> list[tuple[float, float]]:
    """(arrival, start) of each frame an engine with one mailbox slot runs under a FrameSchedule: a frame starts
    when it is due and the model is free, unless a newer one has replaced it by then."""
    schedule, free, runs = FrameSchedule(), 0.0, []
    for index, arrival in enumerate(arrivals):
        interval = statistics.median(np.diff(arrivals[max(0, index - 8) : index + 1])) if index else None
        start = max(arrival, free, schedule.due(fps, arrival, interval))
        if index + 1 < len(arrivals) and arrivals[index + 1] <= start:
            continue  # replaced in the mailbox
        schedule.started(start, fps)
        free = start + model_seconds
        runs.append((arrival, start))
    return runs


def test_a_camera_at_the_target_rate_never_waits_for_the_pacing_even_when_early():
    # 5 fps with 20 ms of arrival jitter and a camera clock 1% fast: each frame starts as it comes, and one in a
    # hundred is passed over (with the last start + one interval, the median frame waited 45 ms here).
    rng = np.random.default_rng(0)
    arrivals = [k * 0.2 / 1.01 + jitter for k, jitter in enumerate(rng.uniform(0, 0.02, 300))]
    runs = paced(arrivals, fps=5.0, model_seconds=0.08)
    waits = [start - arrival for arrival, start in runs]
    assert statistics.median(waits) == 0.0, statistics.median(waits)
    assert max(waits) == 0.0, max(waits)
    assert len(runs) >= 0.98 * len(arrivals)


def test_a_faster_camera_is_held_to_the_target_rate_on_average():
    arrivals = [k / 30 for k in range(900)]  # 30 s of a 30 fps camera against a target of 8 fps
    runs = paced(arrivals, fps=8.0, model_seconds=0.05)
    starts = [start for _, start in runs]
    # One interval of tolerance: at most one frame more than the rate allows, over any span.
    assert len(starts) <= 8.0 * (starts[-1] - starts[0]) + 2
    assert len(runs) >= 8.0 * 29  # and it does reach it
    assert statistics.median(start - arrival for arrival, start in runs) == 0.0
