"""`lcmlive bench --streams 1,2,4`: frames per second of N streams through the engine, one at a time and batched.

Pipeline plus engine, no networking: each stream always has a new camera frame and asks for frames as fast as
they come, so the engine is never idle. The two ways run in alternating windows of one run, so that a shared
machine's drift slows both alike. Each window reports frames per wall second and frames per CPU second of the
model's threads (the engine thread and its helpers, see model_threads.py): on a machine shared with other work the
wall rate swung 1.3-8.1 fps between windows of one run, while the CPU rate is what the model itself costs, and
counting the helpers makes it the same measure on 2 cores (one model thread) as on 32 (31). `batch_gain` is
batched over one-at-a-time at the largest count, on the CPU rate where the device is the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, NamedTuple

from pipelines import ModelComponents, StreamPipeline, load_model
from pipelines.synthetic import moving_pattern

from ..engine import Engine, reserve_a_core_for_media
from ..worker import StreamFrame
from .model_threads import ModelThreads, helper_pool_sizes, native_thread_ids

WARMUP_SECONDS = 2.0
ROUNDS = 3  # windows per way and count, alternating


class SyntheticStream:
    """An engine client with a camera frame whenever it is asked (or none while `stalled`); counts what finished."""

    def __init__(self, components: ModelComponents, size: tuple[int, int], target_fps: float = 60.0, **params):
        self.pipeline = StreamPipeline(components)
        if params:
            self.pipeline.update(**params)
        self.size = size
        self.interval = 1.0 / target_fps
        self.stalled = False
        self.finished: list[float] = []
        self._frames = [moving_pattern(*size, index) for index in range(8)]
        self._last = float("-inf")

    def next_due(self, now: float) -> float | None:
        return None if self.stalled else self._last + self.interval

    def prepare(self) -> StreamFrame:
        self._last = time.monotonic()
        frame = self._frames[len(self.finished) % len(self._frames)]
        return StreamFrame(self.pipeline.prepare(frame, self.size, self.size), self._finish, self._fail)

    def _finish(self, result) -> None:
        self.finished.append(time.monotonic())

    @staticmethod
    def _fail(error: BaseException) -> None:
        raise error


class Window(NamedTuple):
    fps: float
    fps_per_cpu_second: float  # CPU seconds of the model's threads
    helper_cpu_share: float  # of those, the part spent in helper threads
    model_threads: str


def frames_per_second(
    components: ModelComponents,
    streams: list[SyntheticStream],
    max_batch: int,
    seconds: float,
    threads_before: set[int],
) -> Window:
    """`streams` through a fresh engine; helpers are the native threads started since `threads_before`."""
    engine = Engine(components.device, max_batch=max_batch)
    engine.start()
    try:
        for stream in streams:
            engine.add(stream)
        time.sleep(WARMUP_SECONDS)  # long enough for the engine's first frames to start its helper pools
        model = ModelThreads(engine.cpu_seconds, threads_before)
        before, start = sum(len(s.finished) for s in streams), time.monotonic()
        cpu_before, helper_before = model.cpu_seconds(), model.helper_cpu_seconds()
        time.sleep(seconds)
        done = sum(len(stream.finished) for stream in streams) - before
        cpu, helper = model.cpu_seconds() - cpu_before, model.helper_cpu_seconds() - helper_before
        cpu = max(cpu, 1e-9)
        return Window(done / (time.monotonic() - start), done / cpu, helper / cpu, model.described())
    finally:
        engine.stop()


def parse_counts(value: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise ValueError(f"--streams takes stream counts such as 1,2,4; got {value!r}")
    return counts


def main(args: argparse.Namespace) -> dict:
    counts = parse_counts(args.streams)
    threads_before = native_thread_ids()
    model = load_model(args.model, device=args.device)
    threads = reserve_a_core_for_media(model.device)  # as `lcmlive serve` does: one model thread on 2 cores
    size = (args.size, args.size)
    window = args.seconds / ROUNDS
    print(
        f"streams: model {args.model} on {model.device} ({threads} model thread(s)), {args.size}x{args.size}, "
        f"steps {args.steps}, strength {args.strength}, {ROUNDS} alternating windows of {window:.1f} s per way"
    )
    on_cpu = model.device.type == "cpu"
    counted: set[str] = set()
    runs = []
    for count in counts:
        # Different prompts and seeds per stream: what a batch must carry per sample.
        streams = [
            SyntheticStream(model, size, prompt=f"style {index}", seed=index, steps=args.steps, strength=args.strength)
            for index in range(count)
        ]
        windows: dict[str, list[Window]] = {"one_at_a_time": [], "batched": []}
        for _ in range(ROUNDS):
            windows["one_at_a_time"].append(frames_per_second(model, streams, 1, window, threads_before))
            windows["batched"].append(frames_per_second(model, streams, count, window, threads_before))
        run: dict[str, Any] = {"streams": count}
        for way, values in windows.items():
            run[f"{way}_fps"] = round(statistics.median(v.fps for v in values), 3)
            run[f"{way}_fps_per_cpu_second"] = round(statistics.median(v.fps_per_cpu_second for v in values), 3)
            run[f"{way}_helper_cpu_share"] = round(statistics.median(v.helper_cpu_share for v in values), 3)
            run[f"{way}_windows"] = [[round(v.fps, 2), round(v.fps_per_cpu_second, 2)] for v in values]
            counted.update(v.model_threads for v in values)
        rate = "_fps_per_cpu_second" if on_cpu else "_fps"
        run["gain"] = round(run["batched" + rate] / run["one_at_a_time" + rate], 3)
        runs.append(run)
        print(
            f"  {count} stream(s): one at a time {run['one_at_a_time_fps']:6.2f} fps "
            f"({run['one_at_a_time_fps_per_cpu_second']:6.2f} per CPU s), batched {run['batched_fps']:6.2f} fps "
            f"({run['batched_fps_per_cpu_second']:6.2f} per CPU s): {run['gain']:.3f}x; helpers' share of the CPU "
            f"{run['one_at_a_time_helper_cpu_share']:.2f} and {run['batched_helper_cpu_share']:.2f}"
        )
    gain = runs[-1]["gain"]
    model_cpu_counted = f"{' or '.join(sorted(counted))} ({helper_pool_sizes()})"
    print(f"  batch_gain at {counts[-1]} streams: {gain:.3f}; CPU seconds counted: {model_cpu_counted}")
    return {
        "mode": "streams",
        "model": args.model,
        "device": str(model.device),
        "size": args.size,
        "steps": args.steps,
        "strength": args.strength,
        "model_threads": threads,
        "seconds": args.seconds,
        "runs": runs,
        "batch_gain": gain,
        "gain_measured_on": "CPU time of the model's threads" if on_cpu else "wall time",
        "model_cpu_counted": model_cpu_counted,
    }
