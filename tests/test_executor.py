"""The double-buffered executor on every device at hand: in order, nothing lost or duplicated, the pictures of the
plain path, a failure kept to its own batch. On the CPU its streams run their work at once (device_streams.py), so
these tests drive the same slots, tickets, staging and ordering as a GPU; each also runs on CUDA where there is one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipelines import FrameExecutor, ModelComponents, StreamPipeline, load_model
from pipelines.batch import stylise_batch
from pipelines.control.canny import canny_map
from pipelines.device_streams import CpuEvent
from pipelines.synthetic import moving_pattern

# The CUDA cases carry the `cuda` marker: skipped without a GPU (conftest.py), run by `pytest -m cuda` with one.
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(scope="module", params=DEVICES)
def components(request, tiny) -> ModelComponents:
    """The toy model on each device: the session's CPU one, or loaded on CUDA (fp16) for this module."""
    return tiny if request.param == "cpu" else load_model("tiny", device=request.param)


@pytest.fixture
def executor(components):
    executor = FrameExecutor(components.device)
    yield executor
    executor.close()


def assert_same_picture(actual: np.ndarray, expected: np.ndarray, device: torch.device) -> None:
    """The staged path runs the same kernels in the same order as the plain one: the same bits on the CPU; on CUDA
    within one level (fp16), the tolerance the GPU tests have always allowed."""
    assert actual.shape == expected.shape
    if device.type == "cpu":
        assert np.array_equal(actual, expected)
    else:
        assert np.abs(actual.astype(int) - expected).max() <= 1


def refuse_cuda_calls(monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("a CUDA call on the CPU path")

    for name in ("synchronize", "current_stream", "Stream", "Event", "stream", "device"):
        monkeypatch.setattr(torch.cuda, name, refuse)


@pytest.mark.slow
def test_results_come_back_in_order_identical_to_the_unbuffered_path(components, executor):
    # Two pipelines with the same history (temporal smoothing is on by default): the staged one must match.
    unbuffered, pipe = StreamPipeline(components), StreamPipeline(components)
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
        assert_same_picture(result.picture, reference, components.device)
        assert result.model_seconds > 0
    # Each batch's spans follow the events' order: its compute waited for its upload, its download for its compute.
    timeline = dict(executor.timeline)
    assert sorted(timeline) == tickets
    for spans in timeline.values():
        assert spans["upload"][0] <= spans["upload"][1] <= spans["compute"][0] <= spans["compute"][1]
        assert spans["compute"][1] <= spans["download"][0] <= spans["download"][1]


@pytest.mark.slow
def test_two_streams_pipelines_share_one_executor(components, executor):
    def viewer(**changes) -> StreamPipeline:
        pipeline = StreamPipeline(components)
        pipeline.update(**changes)
        return pipeline

    changes = {"prompt": "a different prompt", "seed": 9}
    first, second = viewer(), viewer(**changes)
    frame = moving_pattern(64, 64, 1)
    a = executor.submit([first.prepare(frame)])
    b = executor.submit([second.prepare(frame)])
    # References from pipelines of their own: a pipeline keeps a temporal history, so a second call is a next frame.
    assert_same_picture(executor.result(a)[0].picture, viewer()(frame), components.device)
    assert_same_picture(executor.result(b)[0].picture, viewer(**changes)(frame), components.device)


def test_output_size_and_txt2img_go_through_too(components, executor):
    pipe = StreamPipeline(components)
    pipe.update(mode="txt2img")
    ticket = executor.submit([pipe.prepare(None, size=(64, 64), output_size=(128, 128))])
    assert executor.result(ticket)[0].picture.shape == (128, 128, 3)


def test_out_of_order_collection_and_a_third_frame_in_flight_are_refused(components, executor):
    pipe = StreamPipeline(components)
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
    with pytest.raises(ValueError, match="at least one frame"):
        executor.submit([])
    executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit([pipe.prepare(frame)])


class FailingFirst:
    """A device side whose first batch fails, as an allocation that does not fit would; the rest run."""

    def __init__(self) -> None:
        self.batches = 0

    def __call__(self, requests, on_device):
        self.batches += 1
        if self.batches == 1:
            raise RuntimeError("out of memory (a stand-in)")
        return stylise_batch(requests, on_device)


@pytest.mark.slow
def test_an_error_in_one_slot_reaches_its_collector_and_both_slots_run_on(components):
    frames = [moving_pattern(64, 64, index) for index in range(4)]
    staged, direct = StreamPipeline(components), StreamPipeline(components)
    executor = FrameExecutor(components.device, FailingFirst())
    try:
        bad = executor.submit([StreamPipeline(components).prepare(frames[0])])  # slot 0 fails
        tickets = [executor.submit([staged.prepare(frames[1])])]  # slot 1
        with pytest.raises(RuntimeError, match="out of memory"):
            executor.result(bad)
        tickets.append(executor.submit([staged.prepare(frames[2])]))  # slot 0 again, after its failure
        pictures = [executor.result(tickets[0])[0].picture]
        tickets.append(executor.submit([staged.prepare(frames[3])]))
        pictures += [executor.result(ticket)[0].picture for ticket in tickets[1:]]
        for frame, picture in zip(frames[1:], pictures, strict=True):
            assert_same_picture(picture, direct(frame), components.device)
    finally:
        executor.close()


def drops_the_last_picture(requests, on_device):
    """A device side that fails only once its results are fetched, as a CUDA kernel's error surfaces when the host
    waits on the event behind it: one picture short of its batch."""
    return stylise_batch(requests, on_device)[:-1]


def test_an_error_when_a_batch_is_collected_reaches_its_collector_and_the_next_batch_runs(components):
    frame = moving_pattern(64, 64, 0)
    executor = FrameExecutor(components.device, drops_the_last_picture)
    try:
        pair = [StreamPipeline(components).prepare(frame) for _ in range(2)]
        bad = executor.submit(pair)
        executor.stylise = stylise_batch
        good = executor.submit([StreamPipeline(components).prepare(frame)])
        with pytest.raises(ValueError, match="shorter"):
            executor.result(bad)
        assert executor.result(good)[0].picture.shape == (64, 64, 3)
    finally:
        executor.close()


def test_a_cpu_event_is_complete_once_recorded_and_times_only_recorded_events():
    start, end, never = CpuEvent(), CpuEvent(), CpuEvent()
    start.record()
    time.sleep(0.01)
    end.record()
    end.synchronize()  # returns at once: done when recorded
    assert 10 <= start.elapsed_time(end) < 1000
    with pytest.raises(RuntimeError, match="recorded"):
        start.elapsed_time(never)


def test_a_bad_frame_is_refused_when_it_is_prepared(tiny):
    with pytest.raises(ValueError, match="H x W x 3"):
        StreamPipeline(tiny).prepare(np.zeros((64, 64), np.uint8))


def test_cpu_executor_makes_no_cuda_call(tiny, monkeypatch):
    refuse_cuda_calls(monkeypatch)
    executor = FrameExecutor(tiny.device)
    try:
        with executor.device_context():
            ticket = executor.submit([StreamPipeline(tiny).prepare(moving_pattern(64, 64, 0))])
        assert executor.result(ticket)[0].picture.shape == (64, 64, 3)
    finally:
        executor.close()


@pytest.fixture(scope="module", params=DEVICES)
def tiny_canny(request) -> ModelComponents:
    return load_model("tiny", device=request.param, controlnet="canny")


@pytest.mark.parametrize(
    ("mode", "controlnet_scale"),
    [("txt2img", 0.0), ("txt2img", 0.5), ("img2img", 0.5)],
    ids=["txt2img", "txt2img-canny", "img2img-canny"],
)
@pytest.mark.slow
def test_staged_noise_and_canny_maps_give_the_direct_pictures(tiny_canny, mode, controlnet_scale, monkeypatch):
    if tiny_canny.device.type == "cpu":
        refuse_cuda_calls(monkeypatch)
    changes = {"mode": mode, "controlnet_scale": controlnet_scale, "steps": 2}
    direct, staged = StreamPipeline(tiny_canny), StreamPipeline(tiny_canny)
    direct.update(**changes)
    staged.update(**changes)
    executor = FrameExecutor(tiny_canny.device)
    frames = [moving_pattern(128, 64, index) for index in range(4)]
    results, tickets = [], []
    try:
        # Four frames, two in flight: txt2img's noise glides from frame to frame, and each way must draw the same.
        for frame in frames:
            if executor.in_flight == 2:
                results.append(executor.result(tickets[len(results)])[0])
            tickets.append(executor.submit([staged.prepare(frame, (128, 64), (128, 64))]))
        while len(results) < len(tickets):
            results.append(executor.result(tickets[len(results)])[0])
    finally:
        executor.close()
    for frame, result in zip(frames, results, strict=True):
        assert_same_picture(result.picture, direct(frame, (128, 64), (128, 64)), tiny_canny.device)
        if controlnet_scale:
            assert np.array_equal(result.control_image, canny_map(frame, 100, 200))
        else:
            assert result.control_image is None
