"""`lcmlive bench --styles`: what style LoRAs cost a stream: frames with no style, one style as an adapter, the same
style fused into the weights, and a style change per frame; plus the price of a switch, a fuse and an unfuse.

Pipeline only (no networking). The model loads once; two random LoRAs that fit its UNet (`make_random_lora`) become
its styles. The four ways take turns in short windows over several rounds, the order rotated each round, so that
load from elsewhere on a shared machine falls on all alike; rates come from the median per-frame time. Before a
window the library is put in that way's state unmeasured, so no window's first frame pays for the last one's style.

On a CPU the model gets one thread, as `lcmlive serve` gives it on 2 cores, and times are that thread's CPU time
(the wall time is reported too). With a training job on the other core (tiny-random, 256 px, one thread) the median
wall time of one way's 8-frame windows ranged 109-183 ms within a run, its CPU time 113-123 ms.

The pictures are checked as they are measured: the fused style equals the adapter (`fused_matches_unfused_max_abs`,
float pixels in [0, 1]), each style moves the picture away from none, and unfusing gives none's picture back.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peft.tuners.lora import LoraLayer

from pipelines import ModelComponents, StreamPipeline, load_model
from pipelines.params import NO_STYLE
from pipelines.styles import StyleLibrary, make_random_lora
from pipelines.synthetic import moving_pattern

from ..engine import reserve_a_core_for_media

STYLE_SEEDS = {"ink": 1, "neon": 2}  # style name: its random LoRA's seed (not one-letter names: see test_styles)
SCALE = 1.0
ROUNDS = 5  # windows per way, taking turns (20 frames: windows of 4, so the alternating ones are balanced)
SWITCHES_PER_ROUND = 20  # activations timed per round, alternating between the two styles
PROMPT = "an oil painting"
WAYS = ("none", "unfused", "fused", "alternating")


def lora_layers(components: ModelComponents) -> int:
    """The UNet's modules that carry a LoRA branch (each style adds its matrices to the same modules)."""
    return sum(isinstance(module, LoraLayer) for module in components.unet.modules())


def with_styles(components: ModelComponents) -> StyleLibrary:
    """Random LoRAs for every style of STYLE_SEEDS, written while the UNet has none, then loaded as its styles."""
    with tempfile.TemporaryDirectory(prefix="lcmlive-bench-styles-") as folder:
        for name, seed in STYLE_SEEDS.items():
            make_random_lora(components, Path(folder) / f"{name}.safetensors", seed=seed)
        components.styles = StyleLibrary.load(components, folder)
    if len(components.styles.names) != len(STYLE_SEEDS):
        raise RuntimeError(f"random LoRAs {list(STYLE_SEEDS)} loaded as {list(components.styles.names)}")
    return components.styles


def synchronized(device: torch.device) -> None:
    # Benchmark-only: fuse and unfuse launch kernels that run after the call returns on CUDA.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_for(device: torch.device) -> Callable[[], float]:
    """The model thread's CPU time on a CPU (the model's own cost, whatever else the machine runs), else the wall."""
    return time.thread_time if device.type == "cpu" else time.perf_counter


def timed_ms(call: Callable[[], object], device: torch.device) -> float:
    clock = clock_for(device)
    synchronized(device)
    started = clock()
    call()
    synchronized(device)
    return (clock() - started) * 1000


@torch.inference_mode()
def picture(pipeline: StreamPipeline, frame: np.ndarray, size: int) -> torch.Tensor:
    """The float picture in [0, 1] before quantisation: a fused and an adapter picture can differ by less than one
    uint8 step."""
    return pipeline.render(frame, (size, size)).float().cpu()


class StyleWays:
    """The pipelines and library states of the measured ways; `window` runs one way's frames, timed one by one."""

    def __init__(self, components: ModelComponents, library: StyleLibrary, args: argparse.Namespace) -> None:
        self.device = components.device
        self.library = library
        self.size = args.size
        self.first, self.second = library.names[:2]
        # Frames are independent (no temporal smoothing), so every way renders the same work per frame.
        params = {"prompt": PROMPT, "steps": args.steps, "strength": args.strength, "temporal_smoothing": 0.0}
        self.plain = self._pipeline(components, NO_STYLE, params)
        self.styled = self._pipeline(components, self.first, params)
        self.other = self._pipeline(components, self.second, params)
        self.frames = [moving_pattern(args.size, args.size, index) for index in range(8)]
        self.fuse_ms: list[float] = []
        self.unfuse_ms: list[float] = []
        self._count = 0

    @staticmethod
    def _pipeline(components: ModelComponents, style: str, params: dict) -> StreamPipeline:
        pipeline = StreamPipeline(components)
        pipeline.update(style=style, style_scale=SCALE, **params)
        return pipeline

    def window(self, way: str, frames: int) -> list[tuple[float, float]]:
        """(clock seconds, wall seconds) of each of `frames` frames the way `way` renders them."""
        if way == "fused":
            self.fuse_ms.append(timed_ms(lambda: self.library.fuse(self.first, SCALE), self.device))
            try:
                return self._frames([self.styled], frames)
            finally:
                self.unfuse_ms.append(timed_ms(self.library.unfuse, self.device))
        if way == "alternating":
            # Two streams of different styles taking turns: every frame switches the shared UNet's style, the
            # window's first one too.
            self.library.activate(self.second, SCALE)
            return self._frames([self.styled, self.other], frames)
        pipeline, style = (self.plain, NO_STYLE) if way == "none" else (self.styled, self.first)
        self.library.activate(style, SCALE)
        return self._frames([pipeline], frames)

    def _frames(self, pipelines: list[StreamPipeline], frames: int) -> list[tuple[float, float]]:
        clock, seconds = clock_for(self.device), []
        for index in range(frames):
            frame = self.frames[self._count % len(self.frames)]
            self._count += 1
            started, wall = clock(), time.perf_counter()
            pipelines[index % len(pipelines)](frame, (self.size, self.size))  # returns on the host: synchronised
            seconds.append((clock() - started, time.perf_counter() - wall))
        return seconds

    def switches(self, count: int) -> list[float]:
        """Milliseconds of each `activate` from one style to the other (`set_adapters`' walk of the UNet)."""
        names = (self.second, self.first) if self.library.active == (self.first, SCALE) else (self.first, self.second)
        return [timed_ms(lambda n=names[i % 2]: self.library.activate(n, SCALE), self.device) for i in range(count)]

    def checks(self) -> dict:
        """The pictures are right: fused equals the adapter, each style differs from none, unfusing restores."""
        frame = self.frames[0]
        none = picture(self.plain, frame, self.size)
        styled = picture(self.styled, frame, self.size)
        other = picture(self.other, frame, self.size)
        self.library.fuse(self.first, SCALE)
        try:
            fused = picture(self.styled, frame, self.size)
        finally:
            self.library.unfuse()
        after = picture(self.plain, frame, self.size)
        return {
            "fused_matches_unfused_max_abs": float((fused - styled).abs().max()),
            "style_vs_none_mean_abs": round(min(float((s - none).abs().mean()) for s in (styled, other)), 6),
            "unfuse_restores_max_abs": float((after - none).abs().max()),
        }


def milliseconds(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 3)


def interleaved(ways: StyleWays, rounds: int, window: int) -> tuple[dict[str, list[tuple[float, float]]], list[float]]:
    """Each way's frame times, the ways taking turns in windows of `window` frames (the order rotated each round),
    and the switch times measured between rounds."""
    seconds: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    switch_ms: list[float] = []
    for round_index in range(rounds):
        shift = round_index % len(WAYS)
        for way in WAYS[shift:] + WAYS[:shift]:
            seconds[way] += ways.window(way, window)
        switch_ms += ways.switches(SWITCHES_PER_ROUND)
    return seconds, switch_ms


def rates(ways: StyleWays, seconds: dict[str, list[tuple[float, float]]], switch_ms: list[float]) -> dict:
    """The medians, the rates and what they say: the adapter's cost, fusing's gain, a switch per frame's cost."""
    frame_ms = {way: milliseconds([clock for clock, _ in values]) for way, values in seconds.items()}
    fps = {way: 1000 / value for way, value in frame_ms.items()}
    fuse_ms, unfuse_ms = statistics.median(ways.fuse_ms), statistics.median(ways.unfuse_ms)
    saved_ms = frame_ms["unfused"] - frame_ms["fused"]
    return {
        "fps_none": round(fps["none"], 3),
        "fps_unfused": round(fps["unfused"], 3),
        "fps_fused": round(fps["fused"], 3),
        "alternating_fps": round(fps["alternating"], 3),
        "frame_ms": frame_ms,
        "frame_ms_wall": {way: milliseconds([wall for _, wall in values]) for way, values in seconds.items()},
        "measured_on": "model thread CPU time" if ways.device.type == "cpu" else "wall time",
        "switch_ms": round(statistics.median(switch_ms), 3),
        "fuse_ms": round(fuse_ms, 3),
        "unfuse_ms": round(unfuse_ms, 3),
        "unfused_cost": round(1 - fps["unfused"] / fps["none"], 4),
        "fused_gain": round(fps["fused"] / fps["unfused"], 4),
        "alternating_cost": round(1 - fps["alternating"] / fps["unfused"], 4),
        # Frames at the fused rate that pay back one fuse and its unfuse; None: fusing saves nothing per frame.
        "fuse_break_even_frames": round((fuse_ms + unfuse_ms) / saved_ms, 1) if saved_ms > 0 else None,
    }


def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    components = load_model(args.model, device=args.device)
    library = with_styles(components)
    load_seconds = time.perf_counter() - started
    rounds = min(ROUNDS, args.frames)
    window = math.ceil(args.frames / rounds)
    threads_before = torch.get_num_threads()
    threads = reserve_a_core_for_media(components.device)
    print(
        f"styles: model {args.model} on {components.device} ({threads} model thread(s)), {args.size}x{args.size}, "
        f"steps {args.steps}, strength {args.strength}; {len(library.names)} random LoRA styles on "
        f"{lora_layers(components)} layers, scale {SCALE}; {rounds} rounds of {window} frame(s) per way, taking turns"
    )
    try:
        ways = StyleWays(components, library, args)
        for way in WAYS:
            ways.window(way, args.warmup)
        checks = ways.checks()
        ways.fuse_ms.clear()
        ways.unfuse_ms.clear()
        measured = rates(ways, *interleaved(ways, rounds, window))
    finally:
        torch.set_num_threads(threads_before)  # run in-process (tests), the caller keeps its own threads
    report = {
        "bench": "styles",
        "model": args.model,
        "device": str(components.device),
        "size": args.size,
        "steps": args.steps,
        "strength": args.strength,
        "model_threads": threads,
        "styles": len(library.names),
        "lora_layers": lora_layers(components),
        "scale": SCALE,
        "rounds": rounds,
        "frames_per_way": rounds * window,
        "load_seconds": round(load_seconds, 2),
        **measured,
        **checks,
    }
    print_table(report)
    return report


def print_table(report: dict) -> None:
    print(f"  {'way':<12}{'ms/frame':>10}{'fps':>9}{'wall ms':>10}   ({report['measured_on']})")
    for way, fps_key in zip(WAYS, ("fps_none", "fps_unfused", "fps_fused", "alternating_fps"), strict=True):
        print(
            f"  {way:<12}{report['frame_ms'][way]:>10.2f}{report[fps_key]:>9.2f}{report['frame_ms_wall'][way]:>10.2f}"
        )
    print(
        f"  switch {report['switch_ms']:.2f} ms, fuse {report['fuse_ms']:.2f} ms, unfuse {report['unfuse_ms']:.2f} ms"
        f"; adapter costs {report['unfused_cost']:.1%} of none's rate, fused gains {report['fused_gain']:.3f}x over "
        f"the adapter (break-even {report['fuse_break_even_frames']} frames), a style change every frame costs "
        f"{report['alternating_cost']:.1%}"
    )
    print(
        f"  checks: fused vs adapter max abs {report['fused_matches_unfused_max_abs']:.2e}, style vs none mean abs "
        f"{report['style_vs_none_mean_abs']:.4f}, unfuse restores within {report['unfuse_restores_max_abs']:.2e}"
    )
