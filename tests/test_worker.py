"""A stream's worker and the engine, without networking: sizes, the controller's memory, failures survived."""

from __future__ import annotations

import asyncio
import time

from av import VideoFrame

from pipelines import StreamPipeline
from pipelines.synthetic import moving_pattern
from server.engine import Engine
from server.media.feed import Feed
from server.pacing import pacing_params_model
from server.stats import StreamStats
from server.worker import StreamFrame, StreamWorker


def make_worker(components) -> StreamWorker:
    stats = StreamStats()
    return StreamWorker(
        StreamPipeline(components), Feed("test", stats), stats, lambda: None, pacing_params_model(512, 8.0)
    )


def camera_frame(width: int, height: int) -> VideoFrame:
    return VideoFrame.from_ndarray(moving_pattern(width, height, 0), format="rgb24")


async def test_the_ladder_never_goes_above_the_camera(tiny):
    worker = make_worker(tiny)
    worker.submit(camera_frame(320, 240), time.monotonic(), 0.0)
    prepared = worker.prepare()
    assert prepared is not None
    request = prepared.request
    assert worker.controller.ladder[0] == 320  # not 512: rungs above the camera would all give 320 x 256
    assert (request.width, request.height) == request.output_size == (320, 256)


async def test_txt2img_before_any_camera_frame_draws_a_square_picture(tiny):
    worker = make_worker(tiny)
    worker.update({"mode": "txt2img", "max_resolution": 256})
    prepared = worker.prepare()
    assert prepared is not None
    request = prepared.request
    assert set(request.host_tensors) == {"noise"}  # no camera frame
    assert (request.width, request.height) == request.output_size == (256, 256)


async def test_a_prompt_change_keeps_what_the_controller_measured(tiny):
    worker = make_worker(tiny)
    for seconds in (0.05, 0.05, 0.05, 0.05, 0.05):
        worker.controller.observe(seconds)
    measured = list(worker.controller._recent)
    worker.update({"prompt": "a new prompt"})
    assert list(worker.controller._recent) == measured
    worker.update({"target_fps": 12})
    assert list(worker.controller._recent) == []


class FailingClient:
    """Always has a frame; its pipeline refuses it."""

    def __init__(self, components) -> None:
        self.pipeline = StreamPipeline(components)
        self.failures: list[BaseException] = []

    def next_due(self, now: float) -> float:
        return now

    def prepare(self) -> StreamFrame:
        bad_frame = moving_pattern(64, 64, 0)[:, :, :2]  # two channels: the pipeline refuses it
        try:
            request = self.pipeline.prepare(bad_frame, (64, 64), (64, 64))
        except ValueError as error:
            self.failures.append(error)
            raise
        return StreamFrame(request, lambda result: None, self.failures.append)


async def test_the_engine_survives_a_failing_stream(tiny):
    engine = Engine(tiny.device)
    client = FailingClient(tiny)
    engine.start()
    try:
        engine.add(client)
        for _ in range(100):
            if len(client.failures) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(client.failures) >= 3 and all(isinstance(e, ValueError) for e in client.failures)
        assert await asyncio.wait_for(engine.call(lambda: "still here"), 5) == "still here"
    finally:
        engine.remove(client)
        engine.stop()


async def test_streams_share_the_device_budget(tiny):
    busy = [0.0]
    stats = StreamStats()
    worker = StreamWorker(
        StreamPipeline(tiny),
        Feed("test", stats),
        stats,
        lambda: None,
        pacing_params_model(512, 8.0),
        device_busy=lambda: busy[0],
    )
    busy[0] += 0.05
    assert worker._device_seconds_per_frame(0.05) == 0.05  # the first frame: its own time
    busy[0] += 0.05 + 0.05 + 0.05  # two other streams' frames, then this one's
    assert abs(worker._device_seconds_per_frame(0.05) - 0.15) < 1e-9


async def test_a_recording_starts_the_temporal_smoothing_afresh_and_hears_of_frames_from_then_on(tiny):
    # The render of a recording starts with no motion history; the live path starts afresh where it starts.
    worker = make_worker(tiny)
    worker.update({"temporal_smoothing": 0.5})
    told = []

    def prepared(index: int) -> dict:
        frame = VideoFrame.from_ndarray(moving_pattern(256, 192, index), format="rgb24")
        worker.submit(frame, time.monotonic(), 0.0)
        prepared = worker.prepare()
        assert prepared is not None
        return prepared.request.host_tensors

    assert "flow" not in prepared(0) and "flow" in prepared(1)  # the camera's motion from its second frame on
    worker.record(lambda arrival, size, modulated, sound: told.append(size))
    assert not told
    assert "flow" not in prepared(2) and len(told) == 1  # as after a cut: no motion carried into the recording
    assert "flow" in prepared(3) and len(told) == 2
    worker.record(None)
    assert "flow" in prepared(4) and len(told) == 2
