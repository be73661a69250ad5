"""`lcmlive bench --adaptive`: the loopback with the model made 2x slower half-way; does the output hold the target?

Writes a PNG plot of delivered fps and processing size over time, and reports how long the controller took to
bring the frame rate back within ±10% of the target.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from pipelines import ModelComponents, load_model
from pipelines.executor import Stylise
from pipelines.frame import FrameRequest

from ..engine import reserve_a_core_for_media
from ..media.ice import restrict_ice_to_loopback
from .e2e import BenchServer, fixed_size_params

SLOWDOWN = 2
SAMPLE_EVERY_S = 0.25
STAY_WITHIN_S = 2.0  # settled: the frame rate stays within the band this long
TOLERANCE = 0.10
FLOOR = 128
CALIBRATION_S = 4.0
# Without --target-fps, the target is set so the largest size just fits before the slowdown (85% of the budget):
# the slowdown then forces the controller down the ladder, and a smaller size can still hold it.
FIT_AT_MAX = 0.85
# Delivered fps at time t: 1 / the median interval between frames in the window before t. A frame count over a
# 1 s window moves in steps of 1 frame, which at 5 fps is already 20%: it could never read "within 10%".
FPS_WINDOW_S = 2.0


class SlowedStylise:
    """A device side made `factor` times heavier: each batch runs `factor` times (an integer).

    A stand-in for a heavier model or a busier device, given to the engine's executor half-way through the run. The
    extra work is the same kernels again, on the stream the executor runs the batch on: a CUDA executor times
    batches with events on its compute stream, which a host sleep never shows, and a fixed device sleep
    (torch.cuda._sleep) would need a cycle count calibrated per clock and per size, where the rerun keeps the
    model's own cost-versus-size scaling.
    """

    def __init__(self, stylise: Stylise, factor: int) -> None:
        self._stylise = stylise
        self._factor = factor

    def __call__(
        self, requests: Sequence[FrameRequest], on_device: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> list[torch.Tensor]:
        for _ in range(self._factor - 1):
            # The reruns work on copies of the streams' temporal history (their frame would otherwise count as the
            # last one, and the real run would blend with itself).
            self._stylise([_with_own_history(request) for request in requests], on_device)
        return self._stylise(requests, on_device)


def _with_own_history(request: FrameRequest) -> FrameRequest:
    if request.temporal is None:
        return request
    temporal = replace(request.temporal, history=copy.copy(request.temporal.history))
    return replace(request, temporal=temporal)


async def adaptive_run(model: ModelComponents, args: argparse.Namespace) -> dict:
    # Calibration: the largest size, fixed, unpaced, to learn what one frame costs in the server.
    async with BenchServer(model) as server:
        viewer = await server.start_viewer(args.size, fixed_size_params(args), 0.0, CALIBRATION_S + args.seconds + 2)
        stream = await server.first_stream()
        for _ in range(1200):  # the first frames, within a minute
            if stream.stats.frames_out >= 3:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("no stylised frame came back within a minute")
        worker, stats = stream.worker, stream.stats
        frames, seconds = stats.frames_processed, stats.model_seconds
        await asyncio.sleep(CALIBRATION_S)
        frame_seconds = (stats.model_seconds - seconds) / max(stats.frames_processed - frames, 1)
        target_fps = args.target_fps or round(FIT_AT_MAX / frame_seconds, 2)
        changes = {"min_resolution": min(FLOOR, args.size), "target_fps": target_fps}
        await server.app.state.engine.call(lambda: worker.update(changes))
        executor = server.app.state.engine.executor
        start = time.monotonic()
        slowed_at = start + args.seconds / 2
        sides: list[tuple[float, int]] = []
        while time.monotonic() < start + args.seconds:
            now = time.monotonic()
            if slowed_at <= now and not isinstance(executor.stylise, SlowedStylise):
                slowed = SlowedStylise(executor.stylise, SLOWDOWN)
                await server.app.state.engine.call(lambda slowed=slowed: setattr(executor, "stylise", slowed))
            sides.append((now, worker.controller.side))
            await asyncio.sleep(SAMPLE_EVERY_S)
        switches = worker.controller.switches
        measured = await server.viewer_result(viewer, CALIBRATION_S + args.seconds + 2)
    return {
        "arrivals": measured["arrivals"],
        "sides": sides,
        "start": start,
        "slowed_at": slowed_at,
        "switches": switches,
        "target_fps": target_fps,
        "calibrated_frame_ms": round(frame_seconds * 1000, 1),
    }


def analyse(run: dict, target_fps: float, seconds: float) -> dict:
    arrivals = run["arrivals"]
    start, slowed_at = run["start"], run["slowed_at"]
    times = [start + FPS_WINDOW_S + SAMPLE_EVERY_S * k for k in range(int((seconds - FPS_WINDOW_S) / SAMPLE_EVERY_S))]
    fps = [delivered_fps(arrivals, t) for t in times]

    def within(value: float) -> bool:
        return abs(value - target_fps) <= TOLERANCE * target_fps

    settle_s = None
    after = [(t, f) for t, f in zip(times, fps, strict=True) if t >= slowed_at]
    for index, (t, _) in enumerate(after):
        window = [f for u, f in after[index:] if u <= t + STAY_WITHIN_S]
        if t + STAY_WITHIN_S <= times[-1] and all(within(f) for f in window):
            settle_s = t - slowed_at
            break
    settled = [f for t, f in after if settle_s is not None and t >= slowed_at + settle_s]
    before = [f for t, f in zip(times, fps, strict=True) if start + seconds / 4 <= t < slowed_at]
    return {
        "times": [t - start for t in times],
        "fps": fps,
        "settle_s": None if settle_s is None else round(settle_s, 2),
        "fps_median_after_settle": round(statistics.median(settled), 2) if settled else None,
        "fps_median_before_slowdown": round(statistics.median(before), 2) if before else None,
        "fps_right_after_slowdown": round(min(f for _, f in after[: int(3 / SAMPLE_EVERY_S)]), 2) if after else None,
    }


def delivered_fps(arrivals: list[float], t: float) -> float:
    window = [a for a in arrivals if t - FPS_WINDOW_S < a <= t]
    if len(window) < 2:
        return 0.0
    return 1.0 / statistics.median(b - a for a, b in zip(window, window[1:], strict=False))


def plot(path: Path, run: dict, analysis: dict, target_fps: float, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = run["start"]
    figure, fps_axis = plt.subplots(figsize=(9, 4.5))
    fps_axis.plot(
        analysis["times"],
        analysis["fps"],
        color="tab:blue",
        label=f"delivered fps (median interval, {FPS_WINDOW_S:g} s)",
    )
    fps_axis.axhspan(target_fps * (1 - TOLERANCE), target_fps * (1 + TOLERANCE), color="tab:green", alpha=0.15)
    fps_axis.axhline(target_fps, color="tab:green", linestyle="--", label=f"target {target_fps:g} fps ±10%")
    fps_axis.axvline(run["slowed_at"] - start, color="tab:red", linestyle=":", label=f"model {SLOWDOWN:g}x slower")
    fps_axis.set_xlabel("seconds")
    fps_axis.set_ylabel("frames per second")
    fps_axis.set_ylim(bottom=0)
    size_axis = fps_axis.twinx()
    size_axis.step(
        [t - start for t, _ in run["sides"]], [side for _, side in run["sides"]], color="tab:orange", where="post"
    )
    size_axis.set_ylabel("processing size, longest side (px)", color="tab:orange")
    fps_axis.legend(loc="lower left", fontsize="small")
    settle = analysis["settle_s"]
    title = f"lcmlive bench --adaptive: {model}, settle {settle if settle is not None else 'never'} s"
    fps_axis.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(args: argparse.Namespace) -> dict:
    restrict_ice_to_loopback()
    model = load_model(args.model, device=args.device)
    reserve_a_core_for_media(model.device)  # as `lcmlive serve` does
    run = asyncio.run(adaptive_run(model, args))
    target_fps = run["target_fps"]
    analysis = analyse(run, target_fps, args.seconds)
    plot(Path(args.plot), run, analysis, target_fps, args.model)
    sides = [side for _, side in run["sides"]]
    result = {
        "mode": "adaptive",
        "model": args.model,
        "device": str(model.device),
        "max_resolution": args.size,
        "seconds": args.seconds,
        "slowdown": SLOWDOWN,
        "fps_target": target_fps,
        "frame_ms_at_max_resolution": run["calibrated_frame_ms"],
        "fps_median_before_slowdown": analysis["fps_median_before_slowdown"],
        "fps_lowest_after_slowdown": analysis["fps_right_after_slowdown"],
        "fps_median_after_settle": analysis["fps_median_after_settle"],
        "settle_s": analysis["settle_s"],
        "switches": run["switches"],
        "sizes_used": sorted(set(sides), reverse=True),
        "plot": str(args.plot),
    }
    print(
        f"adaptive loopback: model {args.model} on {model.device}, target {target_fps:g} fps, "
        f"max {args.size}px, model {SLOWDOWN:g}x slower after {args.seconds / 2:.0f} s"
    )
    print(f"  fps before the slowdown (median)   {result['fps_median_before_slowdown']}")
    print(f"  fps at its lowest after it         {result['fps_lowest_after_slowdown']}")
    print(f"  back within 10% and staying after  {result['settle_s']} s")
    print(f"  fps after settling (median)        {result['fps_median_after_settle']}")
    print(f"  size switches                      {result['switches']}  (sizes used: {result['sizes_used']})")
    print(f"  plot                               {args.plot}")
    return result
