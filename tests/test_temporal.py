"""Temporal smoothing: off is today's pipeline, on changes the picture along the camera's motion, a scene cut leaves
no ghost, and streams keep their own history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import StreamPipeline
from pipelines.batch import stylise_batch
from pipelines.temporal import LatentHistory, MotionTracker
from server.bench.temporal_metrics import moving_clip, textured_picture

SIZE = (128, 128)
CLIP = moving_clip(*SIZE, (4, 2), 6)


def outputs(pipeline: StreamPipeline, frames) -> list[np.ndarray]:
    return [pipeline(np.ascontiguousarray(frame), SIZE) for frame in frames]


def pipeline_with(model, **changes) -> StreamPipeline:
    pipeline = StreamPipeline(model)
    pipeline.update(prompt="an oil painting", **changes)
    return pipeline


@pytest.mark.slow
def test_smoothing_is_on_by_default_and_off_after_on_is_todays_pipeline_bit_for_bit(tiny):
    assert StreamPipeline(tiny).params.temporal_smoothing == 0.5
    today = outputs(pipeline_with(tiny, temporal_smoothing=0.0), CLIP)
    switched = pipeline_with(tiny, temporal_smoothing=1.0)
    outputs(switched, CLIP[:3])
    switched.update(temporal_smoothing=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(today, outputs(switched, CLIP), strict=True))


@pytest.mark.slow
def test_smoothing_on_changes_the_picture_after_the_first_frame(tiny):
    today = outputs(pipeline_with(tiny, temporal_smoothing=0.0), CLIP)
    smoothed = outputs(pipeline_with(tiny, temporal_smoothing=1.0), CLIP)
    assert np.array_equal(today[0], smoothed[0])  # nothing to carry yet, and the noise is where it was drawn
    changed = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(today[1:], smoothed[1:], strict=True)]
    assert min(changed) > 0.5, changed


def test_a_scene_cut_leaves_no_ghost_of_the_last_scene(tiny):
    other_scene = textured_picture(*SIZE, seed=99)[::-1].copy()
    smoothed = pipeline_with(tiny, temporal_smoothing=1.0)
    outputs(smoothed, CLIP)
    cut = smoothed(other_scene, SIZE)
    assert smoothed.motion.cuts == 1
    assert np.array_equal(
        cut, pipeline_with(tiny, temporal_smoothing=0.0)(other_scene, SIZE)
    )  # as if the stream had just started


@pytest.mark.slow
def test_two_streams_in_one_batch_keep_their_own_history(tiny):
    other_clip = [np.ascontiguousarray(frame[::-1]) for frame in moving_clip(*SIZE, (-3, 1), 6, seed=3)]
    alone_a = outputs(pipeline_with(tiny, temporal_smoothing=1.0), CLIP)
    alone_b = outputs(pipeline_with(tiny, temporal_smoothing=1.0, seed=5), other_clip)
    a, b = pipeline_with(tiny, temporal_smoothing=1.0), pipeline_with(tiny, temporal_smoothing=1.0, seed=5)
    for index, (frame_a, frame_b) in enumerate(zip(CLIP, other_clip, strict=True)):
        requests = [a.prepare(np.ascontiguousarray(frame_a), SIZE), b.prepare(frame_b, SIZE)]
        batched = [picture.numpy() for picture in stylise_batch(requests)]
        assert np.abs(batched[0].astype(int) - alone_a[index]).max() <= 1
        assert np.abs(batched[1].astype(int) - alone_b[index]).max() <= 1


def test_the_tracker_finds_the_cameras_motion_in_latent_pixels():
    tracker = MotionTracker()
    clip = moving_clip(256, 256, (8, -4), 3)
    assert tracker.step(np.ascontiguousarray(clip[0]), (32, 32)) == {}  # the first frame has no motion
    motion = tracker.step(np.ascontiguousarray(clip[1]), (32, 32))
    # Content now at p was at p - (1, -0.5) latent pixels in the last frame.
    inner = motion["flow"][:, 8:-8, 8:-8]
    assert inner[0].mean().item() == pytest.approx(-1.0, abs=0.15)
    assert inner[1].mean().item() == pytest.approx(0.5, abs=0.15)
    assert motion["confidence"].mean().item() > 0.8


def test_moving_noise_follows_the_motion_and_keeps_unit_variance():
    history = LatentHistory()
    latents = torch.zeros(1, 4, 32, 32)
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    history.advance({}, latents)
    assert torch.equal(history.moving(noise), noise)  # a fresh start reads the noise where it was drawn
    whole_pixel = {"flow": torch.tensor([-1.0, 0.0]).reshape(2, 1, 1).expand(2, 32, 32), "confidence": latents[0, :1]}
    history.advance(whole_pixel, latents)
    assert torch.allclose(history.moving(noise), torch.roll(noise, shifts=1, dims=-1), atol=1e-5)
    half_pixel = {"flow": torch.tensor([-0.5, 0.0]).reshape(2, 1, 1).expand(2, 32, 32), "confidence": latents[0, :1]}
    history.advance(half_pixel, latents)
    moved = history.moving(torch.randn(1, 64, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert moved.std().item() == pytest.approx(1.0, abs=0.05)
