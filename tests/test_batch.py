"""Batching streams: a batched frame equals the same frame run alone, and the engine batches fairly."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from pipelines import StreamPipeline, load_model
from pipelines.batch import batch_key, render_batch
from pipelines.synthetic import moving_pattern
from server import serve
from server.app import create_app
from server.bench.streams import SyntheticStream
from server.config import settings_from_arguments
from server.engine import Engine

SIZE = (128, 64)
# Everything that may differ between the streams of one batch.
MIXED = [
    {"prompt": "a watercolor fox", "strength": 0.5, "guidance_scale": 8.0, "seed": 0},
    {"prompt": "neon lights at night", "strength": 0.7, "guidance_scale": 3.0, "seed": 7},
    {"prompt": "pencil", "strength": 0.9, "guidance_scale": 12.0, "seed": 123},
]


def alone_and_batched(components, changes: list[dict], frames: Sequence[np.ndarray | None]) -> tuple[list, list]:
    """Each stream's float picture run alone, and the same frames as one batch."""
    pipelines = []
    for change in changes:
        pipeline = StreamPipeline(components)
        pipeline.update(**change)
        pipelines.append(pipeline)
    requests = [p.prepare(frame, SIZE) for p, frame in zip(pipelines, frames, strict=True)]
    assert len({batch_key(request) for request in requests}) == 1
    device = components.device
    on_device = [{k: t.to(device) for k, t in r.host_tensors.items()} for r in requests]
    batched = render_batch(requests, on_device)
    # Prepared again for the single runs: txt2img draws new noise per frame, so each way gets its own pipelines.
    alone = []
    for change, frame in zip(changes, frames, strict=True):
        pipeline = StreamPipeline(components)
        pipeline.update(**change)
        alone.append(pipeline.render(frame, SIZE)[0])
    return alone, list(batched)


def assert_same_pictures(alone: list[torch.Tensor], batched: list[torch.Tensor]) -> None:
    for one, other in zip(alone, batched, strict=True):
        assert float((one - other).abs().max()) <= 1e-4
    assert float((alone[0] - alone[1]).abs().max()) > 1e-3  # the streams differ: parity is not vacuous


@pytest.fixture(scope="module")
def tiny_canny():
    return load_model("tiny", device="cpu", controlnet="canny")


FRAMES = [moving_pattern(*SIZE, index) for index in (0, 5, 9)]


@pytest.mark.slow
def test_batch_of_mixed_prompts_strengths_guidance_and_seeds_equals_frames_run_alone(tiny_canny):
    alone, batched = alone_and_batched(tiny_canny, [{**c, "controlnet_scale": 0.0} for c in MIXED], FRAMES)
    assert_same_pictures(alone, batched)


@pytest.mark.slow
def test_batch_with_controlnet_images_and_scales_per_stream(tiny_canny):
    changes = [{**c, "controlnet_scale": scale} for c, scale in zip(MIXED, (0.3, 1.0, 1.7), strict=True)]
    alone, batched = alone_and_batched(tiny_canny, changes, FRAMES)
    assert_same_pictures(alone, batched)


def test_batch_in_txt2img(tiny_canny):
    changes = [{**c, "mode": "txt2img", "controlnet_scale": 0.0} for c in MIXED]
    alone, batched = alone_and_batched(tiny_canny, changes, [None, None, None])
    assert_same_pictures(alone, batched)


@pytest.mark.slow
def test_batch_with_classifier_free_guidance_and_negative_prompts():
    components = load_model("tiny-lcm-lora", device="cpu")
    # LCM-LoRA runs int(steps x strength) steps: 4 x 0.5 and 4 x 0.7 both run 2, so the two can share a call.
    changes = [
        {"prompt": "a fox", "negative_prompt": "blur", "guidance_scale": 1.5, "seed": 1},
        {"prompt": "a city", "negative_prompt": "", "guidance_scale": 2.0, "seed": 2, "strength": 0.7},
    ]
    alone, batched = alone_and_batched(components, changes, FRAMES[:2])
    assert_same_pictures(alone, batched)


@pytest.mark.slow
def test_batch_on_sdxl_with_pooled_embeddings():
    components = load_model("tiny-sdxl", device="cpu", controlnet="canny")
    # SDXL's img2img runs int(steps x strength) steps: 4 x 0.5, 0.6, 0.7 all run 2.
    changes = [
        {**c, "controlnet_scale": scale, "strength": strength}
        for c, scale, strength in zip(MIXED, (0.5, 0.0, 0.5), (0.5, 0.6, 0.7), strict=True)
    ]
    # A stream with its ControlNet off cannot share the call of streams with it on.
    with pytest.raises(AssertionError):
        alone_and_batched(components, changes, FRAMES)
    changes[1]["controlnet_scale"] = 1.2
    alone, batched = alone_and_batched(components, changes, FRAMES)
    assert_same_pictures(alone, batched)


def test_frames_that_cannot_share_a_call_get_different_keys(tiny_canny):
    pipeline = StreamPipeline(tiny_canny)
    frame = FRAMES[0]
    key = batch_key(pipeline.prepare(frame, SIZE))
    assert key == batch_key(pipeline.prepare(frame, SIZE))
    assert key != batch_key(pipeline.prepare(frame, (64, 64)))  # another size
    pipeline.update(steps=4, strength=0.8)
    assert key != batch_key(pipeline.prepare(frame, SIZE))  # another number of steps
    other = StreamPipeline(load_model("tiny-lcm-lora", device="cpu"))
    assert key != batch_key(other.prepare(frame, SIZE))  # another model


async def run_engine(engine: Engine, streams: list[SyntheticStream], seconds: float) -> None:
    engine.start()
    try:
        for stream in streams:
            engine.add(stream)
        await asyncio.sleep(seconds)
    finally:
        engine.stop()


def count_batches(engine: Engine) -> list[int]:
    """Wraps the executor's submit to record each batch's size."""
    sizes: list[int] = []
    submit = engine.executor.submit

    def recording(requests):
        sizes.append(len(requests))
        return submit(requests)

    engine.executor.submit = recording
    return sizes


async def test_a_stalled_stream_holds_nobody_back(tiny_canny):
    engine = Engine(tiny_canny.device)
    sizes = count_batches(engine)
    streams = [SyntheticStream(tiny_canny, (64, 64)) for _ in range(3)]
    streams[2].stalled = True
    await run_engine(engine, streams, 4.0)
    assert streams[2].finished == []
    assert len(streams[0].finished) >= 5 and abs(len(streams[0].finished) - len(streams[1].finished)) <= 2
    assert max(sizes) == 2  # the two live streams share their calls; the stalled one is never waited for


async def test_streams_of_two_sizes_run_as_two_batches(tiny_canny):
    engine = Engine(tiny_canny.device)
    sizes = count_batches(engine)
    streams = [SyntheticStream(tiny_canny, size) for size in [(64, 64), (64, 64), (128, 64), (128, 64)]]
    await run_engine(engine, streams, 4.0)
    assert all(len(stream.finished) >= 3 for stream in streams)
    assert max(sizes) == 2 and sizes.count(2) >= len(sizes) // 2  # pairs of equal sizes, not one batch of four
    counts = [len(stream.finished) for stream in streams]
    assert min(counts) >= 0.6 * max(counts), counts  # every stream gets its turn


async def test_max_batch_one_runs_each_frame_on_its_own(tiny_canny):
    engine = Engine(tiny_canny.device, max_batch=1)
    sizes = count_batches(engine)
    streams = [SyntheticStream(tiny_canny, (64, 64)) for _ in range(3)]
    await run_engine(engine, streams, 2.0)
    assert set(sizes) == {1} and all(stream.finished for stream in streams)


def test_serve_max_batch_reaches_the_engine_and_a_bad_value_is_refused(tiny):
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    app = create_app(tiny, settings_from_arguments(parser.parse_args(["--max-batch", "2"])).server_config())
    assert app.state.engine.max_batch == 2
    with pytest.raises(ValueError, match="--max-batch must be between 1 and 64, got 0"):
        settings_from_arguments(parser.parse_args(["--max-batch", "0"])).server_config()
