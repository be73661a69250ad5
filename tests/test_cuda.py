"""GPU checks: fp16 parity, the double-buffered executor's overlap, the bench's slowdown. Skipped without CUDA.

The executor's ordering and staging logic runs on every device in test_executor.py (its CUDA cases are marked
`cuda` too); what stays here is what only a GPU shows: fp16 against diffusers, real shapes, and timing.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, LatentConsistencyModelImg2ImgPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from pipelines import FrameExecutor, StreamPipeline, load_model
from pipelines.batch import stylise_batch
from pipelines.synthetic import moving_pattern

pytestmark = pytest.mark.cuda

FP16_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def sd15_arch():
    """The real SD1.5 shapes in fp16, random weights; shared: tests must not modify its modules."""
    return load_model("sd15-arch", device="cuda")


@pytest.fixture(scope="module")
def sd15_arch_canny():
    return load_model("sd15-arch", device="cuda", controlnet="canny")


STAGED_MODES = pytest.mark.parametrize(
    ("mode", "controlnet_scale"),
    [("txt2img", 0.0), ("txt2img", 0.5), ("img2img", 0.5)],
    ids=["txt2img", "txt2img-canny", "img2img-canny"],
)
BUSY_S = 1.0


def busy_cycles(seconds: float) -> int:
    """torch.cuda._sleep's cycle count for about `seconds` on this card (clock rates differ between cards)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return int(10_000_000 * seconds / (start.elapsed_time(end) / 1000))


class BusyFirst:
    """A device side whose batches first keep the stream they run on busy for `cycles`: a long frame N."""

    def __init__(self, cycles: int) -> None:
        self._cycles = cycles

    def __call__(self, requests, on_device):
        torch.cuda._sleep(self._cycles)
        return stylise_batch(requests, on_device)


@pytest.mark.parametrize("steps", [1, 4])
def test_fp16_cuda_parity_with_latent_consistency_img2img(steps):
    components = load_model("tiny", device="cuda")
    assert components.dtype == torch.float16
    frame = moving_pattern(128, 128, 2)
    pipe = StreamPipeline(components)
    params = pipe.update(steps=steps, strength=0.6, seed=11)
    assert isinstance(components.vae, AutoencoderKL)  # the reference pipeline takes no tiny VAE
    reference = LatentConsistencyModelImg2ImgPipeline(
        unet=components.unet,
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        scheduler=components.scheduler,
        # None is what diffusers documents for no checker; its annotations leave None out.
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    output = reference(
        params.prompt,
        image=PIL.Image.fromarray(frame),
        num_inference_steps=steps,
        strength=params.strength,
        guidance_scale=params.guidance_scale,
        generator=torch.Generator().manual_seed(11),
        output_type="np",
    )
    assert isinstance(output, StableDiffusionPipelineOutput)  # return_dict's default
    expected = output.images[0]
    actual = pipe.render(frame)[0].permute(1, 2, 0).float().cpu().numpy()
    assert np.abs(actual - expected).max() <= FP16_TOLERANCE


def test_sd15_arch_runs_a_512_frame_in_fp16(sd15_arch):
    pipe = StreamPipeline(sd15_arch)
    pipe.update(steps=1, strength=0.5)
    out = pipe(moving_pattern(512, 512, 0))
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8


def test_double_buffering_overlaps_copies_with_compute_and_matches_the_plain_path(sd15_arch):
    components = sd15_arch
    # Two pipelines with the same history (temporal smoothing is on by default): the staged one must match.
    plain, pipe = StreamPipeline(components), StreamPipeline(components)
    for pipeline in (plain, pipe):
        pipeline.update(steps=2, strength=0.5)
    frames = [moving_pattern(512, 512, i) for i in range(8)]
    expected = [plain(frame) for frame in frames]
    executor = FrameExecutor(components.device)
    results, tickets = [], []
    for frame in frames:
        if executor.in_flight == 2:
            results.append(executor.result(tickets[len(results)])[0].picture)
        tickets.append(executor.submit([pipe.prepare(frame)]))
    while len(results) < len(tickets):
        results.append(executor.result(tickets[len(results)])[0].picture)
    # Same numbers as one frame at a time (same kernels, same order per frame).
    for reference, picture in zip(expected, results, strict=True):
        assert np.abs(reference.astype(int) - picture).max() <= 1
    timeline = dict(executor.timeline)
    overlapped = 0
    for ticket in tickets[2:-1]:
        # Frame N+1's upload starts before frame N's compute ends: the copy stream ran during compute.
        if timeline[ticket + 1]["upload"][0] < timeline[ticket]["compute"][1]:
            overlapped += 1
    assert overlapped >= len(tickets[2:-1]) - 1, timeline


def test_the_adaptive_slowdown_shows_in_the_cuda_executors_device_time(sd15_arch):
    from server.bench.adaptive import SlowedStylise

    pipe = StreamPipeline(sd15_arch)
    pipe.update(steps=2, strength=0.5)
    executor = FrameExecutor(sd15_arch.device)
    slowed = SlowedStylise(stylise_batch, 2)
    frame = moving_pattern(512, 512, 0)
    executor.result(executor.submit([pipe.prepare(frame)]))[0]  # warm-up
    plain_seconds, slowed_seconds = [], []
    for _ in range(5):
        executor.stylise = stylise_batch
        plain_seconds.append(executor.result(executor.submit([pipe.prepare(frame)]))[0].model_seconds)
        executor.stylise = slowed
        slowed_seconds.append(executor.result(executor.submit([pipe.prepare(frame)]))[0].model_seconds)
    # Device time between the compute stream's events: a host sleep would leave it unchanged.
    ratio = statistics.median(slowed_seconds) / statistics.median(plain_seconds)
    assert 1.7 <= ratio <= 2.3, (plain_seconds, slowed_seconds)


@STAGED_MODES
def test_the_next_frame_is_launched_and_uploaded_while_the_device_computes(sd15_arch_canny, mode, controlnet_scale):
    pipe = StreamPipeline(sd15_arch_canny)
    pipe.update(mode=mode, controlnet_scale=controlnet_scale, steps=2, strength=0.5)
    executor = FrameExecutor(sd15_arch_canny.device)
    frame = moving_pattern(512, 512, 0)
    for _ in range(2):  # warm-up: buffers, kernels, the noise of this size
        executor.result(executor.submit([pipe.prepare(frame)]))[0]
    executor.stylise = BusyFirst(busy_cycles(BUSY_S))
    first = executor.submit([pipe.prepare(frame)])
    executor.stylise = stylise_batch
    start = time.perf_counter()
    second = executor.submit([pipe.prepare(frame)])
    launch_seconds = time.perf_counter() - start
    executor.result(first)[0]
    executor.result(second)[0]
    # A copy from pageable memory (noise, Canny map) would have waited for the first frame: at least BUSY_S.
    assert launch_seconds < BUSY_S / 2
    timeline = dict(executor.timeline)
    # The second frame's inputs were on the device before the first frame's compute ended.
    assert timeline[second]["upload"][1] < timeline[first]["compute"][1], timeline
