"""The double-buffered executor on the CPU: in order, nothing lost or duplicated, identical to the plain path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import FrameExecutor, StreamPipeline, load_model
from pipelines.batch import stylise_batch
from pipelines.control.canny import canny_map
from pipelines.synthetic import moving_pattern


@pytest.fixture
def executor(tiny):
    executor = FrameExecutor(tiny.device)
    yield executor
    executor.close()


def test_results_come_back_in_order_identical_to_the_unbuffered_path(tiny, executor):
    # Two pipelines with the same history (temporal smoothing is on by default): the staged one must match.
    unbuffered, pipe = StreamPipeline(tiny), StreamPipeline(tiny)
    frames = [moving_pattern(128, 64, i) for i in range(7)]
    expected = [unbuffered(frame) for frame in frames]
    results, tickets = [], []
    # Submit ahead: two in flight, collect the oldest, submit the next.
    for frame in frames:
        if executor.in_flight == 2:
            results.append(executor.result(tickets[len(results)])[0])
        tickets.append(executor.submit([pipe.prepare(frame)]))
    while len(results) < len(tickets):
        results.append(executor.result(tickets[len(results)])[0])
    assert tickets == list(range(7))
    assert len(results) == len(frames)
    for result, reference in zip(results, expected, strict=True):
        assert np.array_equal(result.picture, reference)
        assert result.model_seconds > 0


def test_two_viewers_pipelines_share_one_executor(tiny, executor):
    def viewer(**changes) -> StreamPipeline:
        pipeline = StreamPipeline(tiny)
        pipeline.update(**changes)
        return pipeline

    changes = {"prompt": "a different prompt", "seed": 9}
    first, second = viewer(), viewer(**changes)
    frame = moving_pattern(64, 64, 1)
    a = executor.submit([first.prepare(frame)])
    b = executor.submit([second.prepare(frame)])
    # References from pipelines of their own: a pipeline keeps a temporal history, so a second call is a next frame.
    assert np.array_equal(executor.result(a)[0].picture, viewer()(frame))
    assert np.array_equal(executor.result(b)[0].picture, viewer(**changes)(frame))


def test_output_size_and_txt2img_go_through_too(tiny, executor):
    pipe = StreamPipeline(tiny)
    pipe.update(mode="txt2img")
    ticket = executor.submit([pipe.prepare(None, size=(64, 64), output_size=(128, 128))])
    assert executor.result(ticket)[0].picture.shape == (128, 128, 3)


def test_out_of_order_collection_and_a_third_frame_in_flight_are_refused(tiny, executor):
    pipe = StreamPipeline(tiny)
    frame = moving_pattern(64, 64, 0)
    first = executor.submit([pipe.prepare(frame)])
    second = executor.submit([pipe.prepare(frame)])
    with pytest.raises(RuntimeError, match="in flight"):
        executor.submit([pipe.prepare(frame)])
    with pytest.raises(ValueError, match="in order"):
        executor.result(second)[0]
    executor.result(first)[0]
    executor.result(second)[0]
    with pytest.raises(ValueError):
        executor.result(second)[0]  # each result exactly once


class FailingFirst:
    """A device side whose first batch fails, as an allocation that does not fit would; the rest run."""

    def __init__(self) -> None:
        self.batches = 0

    def __call__(self, requests, on_device):
        self.batches += 1
        if self.batches == 1:
            raise RuntimeError("out of memory (a stand-in)")
        return stylise_batch(requests, on_device)


def test_an_error_in_one_batch_reaches_its_collector_and_the_next_batch_runs(tiny):
    frame = moving_pattern(64, 64, 0)
    executor = FrameExecutor(tiny.device, FailingFirst())
    try:
        bad = executor.submit([StreamPipeline(tiny).prepare(frame)])
        good = executor.submit([StreamPipeline(tiny).prepare(frame)])
        with pytest.raises(RuntimeError, match="out of memory"):
            executor.result(bad)
        assert executor.result(good)[0].picture.shape == (64, 64, 3)
    finally:
        executor.close()


def test_a_bad_frame_is_refused_when_it_is_prepared(tiny):
    with pytest.raises(ValueError, match="H x W x 3"):
        StreamPipeline(tiny).prepare(np.zeros((64, 64), np.uint8))


def test_cpu_executor_makes_no_cuda_call(tiny, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a CUDA call on the CPU path")

    for name in ("synchronize", "current_stream", "Stream", "Event", "stream"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    executor = FrameExecutor(tiny.device)
    try:
        ticket = executor.submit([StreamPipeline(tiny).prepare(moving_pattern(64, 64, 0))])
        assert executor.result(ticket)[0].picture.shape == (64, 64, 3)
    finally:
        executor.close()


@pytest.fixture(scope="module")
def tiny_canny():
    return load_model("tiny", device="cpu", controlnet="canny")


@pytest.mark.parametrize(
    ("mode", "controlnet_scale"),
    [("txt2img", 0.0), ("txt2img", 0.5), ("img2img", 0.5)],
    ids=["txt2img", "txt2img-canny", "img2img-canny"],
)
def test_staged_noise_and_canny_maps_give_the_direct_pictures_without_cuda_calls(
    tiny_canny, mode, controlnet_scale, monkeypatch
):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a CUDA call on the CPU path")

    for name in ("synchronize", "current_stream", "Stream", "Event", "stream"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    changes = {"mode": mode, "controlnet_scale": controlnet_scale, "steps": 2}
    direct, staged = StreamPipeline(tiny_canny), StreamPipeline(tiny_canny)
    direct.update(**changes)
    staged.update(**changes)
    executor = FrameExecutor(tiny_canny.device)
    try:
        # Three frames each: txt2img's noise glides from frame to frame, and each way must draw the same.
        for index in range(3):
            frame = moving_pattern(128, 64, index)
            result = executor.result(executor.submit([staged.prepare(frame, (128, 64), (128, 64))]))[0]
            assert np.array_equal(result.picture, direct(frame, (128, 64), (128, 64)))
            if controlnet_scale:
                assert np.array_equal(result.control_image, canny_map(frame, 100, 200))
            else:
                assert result.control_image is None
    finally:
        executor.close()
