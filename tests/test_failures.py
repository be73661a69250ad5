"""Failure paths of a live stream, driven through the real worker and engine thread with a fault at the device side."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import torch
from av import VideoFrame

from pipelines import StreamPipeline
from pipelines.batch import stylise_batch
from pipelines.executor import SLOTS
from pipelines.synthetic import moving_pattern
from server.engine import Engine
from server.media.feed import Feed
from server.pacing import pacing_params_model
from server.stats import StreamStats
from server.worker import StreamWorker


class OutOfMemoryAbove:
    """A device side that runs out of memory at processing sizes above `limit` on the longest side, as a model too
    large for the card at full size does. The fault is raised where it would be: in the device side, after
    `launch_seconds` of launching work."""

    def __init__(self, limit: int, launch_seconds: float = 0.0) -> None:
        self.limit = limit
        self.launch_seconds = launch_seconds
        self.refused: list[tuple[int, int]] = []

    def __call__(self, requests, on_device):
        width, height = requests[0].width, requests[0].height  # a batch shares its size
        if max(width, height) > self.limit:
            time.sleep(self.launch_seconds)
            self.refused.append((width, height))
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (faked at {width}x{height})")
        return stylise_batch(requests, on_device)


async def run_camera(engine: Engine, components, target_fps: float) -> tuple[StreamWorker, StreamStats]:
    """A 256-pixel camera at 100 fps into one stream until three frames came out after the first one."""
    stats = StreamStats()
    pipeline = StreamPipeline(components)
    worker = StreamWorker(pipeline, Feed("faulty", stats), stats, engine.notify, pacing_params_model(256, 8.0))
    worker.update({"max_resolution": 256, "min_resolution": 64, "target_fps": target_fps})
    engine.start()
    engine.add(worker)
    deadline = time.monotonic() + 120
    first = None
    index = 0
    while time.monotonic() < deadline:
        worker.submit(VideoFrame.from_ndarray(moving_pattern(256, 256, index), format="rgb24"), time.monotonic(), 0)
        index += 1
        await asyncio.sleep(0.01)
        if first is None and stats.frames_processed:
            first = stats.frames_processed
        if first is not None and stats.frames_processed >= first + 3:
            break
    return worker, stats


@pytest.mark.slow
async def test_out_of_memory_at_one_size_steps_down_and_the_stream_goes_on(tiny, caplog):
    device_side = OutOfMemoryAbove(limit=128)
    engine = Engine(tiny.device, stylise=device_side)
    try:
        # A low target: only the faults, not the CPU's speed, may move the size.
        worker, stats = await run_camera(engine, tiny, target_fps=1.0)
        # Every size above the limit was tried once, ran out of memory, and was left for the next rung down.
        assert device_side.refused == [(256, 256), (192, 192)]
        assert worker.controller.side == 128 and worker.controller.switches == 2
        # Frames keep coming at the size that fits, and the stream's picture keeps its size.
        assert stats.frames_processed >= 4, stats
        assert (stats.width, stats.height) == (128, 128)
        assert (stats.output_width, stats.output_height) == (256, 256)
        assert await asyncio.wait_for(engine.call(lambda: "still here"), 10) == "still here"
    finally:
        engine.stop()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_out_of_memory_with_two_frames_in_flight_steps_down_one_rung(tiny):
    # The launch takes a while before the allocation fails, so the next frame is due and staged at the same size
    # before the first one's error is collected: as on CUDA, where the engine keeps two frames in flight.
    device_side = OutOfMemoryAbove(limit=192, launch_seconds=0.1)
    engine = Engine(tiny.device, stylise=device_side)
    engine.max_batches_in_flight = SLOTS
    try:
        worker, stats = await run_camera(engine, tiny, target_fps=60.0)
        assert device_side.refused == [(256, 256), (256, 256)]  # both frames in flight at 256
        assert worker.controller.side == 192, (worker.controller.side, stats)
    finally:
        engine.stop()
