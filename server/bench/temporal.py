"""`lcmlive bench --temporal`: how steady the stylised video is, off and with each temporal-smoothing technique and
setting: warp error on a moving clip, flicker on a still one, the tracking guard, and the frame rate.

Pipeline only (no networking). Each setting runs the same clips through a fresh StreamPipeline: warm-up frames
first, then the measured ones. A second clip (another picture, another motion) is kept aside as a check of the
default on content the default was not chosen on.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import ModelComponents, StreamPipeline, load_model
from pipelines.params import StreamParams
from pipelines.temporal import Smoothing

from .temporal_metrics import moving_clip, static_flicker, still_clip, tracking_error, warp_error

SHIFT = (4, 2)  # pixels per frame (right, down) at 256x256
HELD_OUT_SHIFT = (-3, 3)
HELD_OUT_SEED = 7
WARM_UP = 5
MOVING_FRAMES = 40
STILL_FRAMES = 20
DEFAULT_LEVEL = StreamParams.model_fields["temporal_smoothing"].default
LEVELS = (0.25, 0.5, 0.75, 1.0)
PLOT = Path("artifacts/temporal.png")


@dataclass(frozen=True)
class Setting:
    """One measured way: a name, the knob's level, and the techniques it turns on (None: off)."""

    name: str
    level: float
    smoothing: Smoothing | None


def settings() -> list[Setting]:
    """Off, each technique alone at a few strengths, and the knob at each level (all its techniques together)."""
    ways = [Setting("off", 0.0, None)]
    ways.append(Setting("moving_noise", 1.0, Smoothing(moving_noise=True, feedback=0.0, output_blend=0.0)))
    for share in (0.3, 0.6):
        ways.append(Setting(f"output_blend_{share}", 1.0, Smoothing(False, feedback=0.0, output_blend=share)))
    for share in (0.2, 0.4):
        ways.append(Setting(f"feedback_{share}", 1.0, Smoothing(False, feedback=share, output_blend=0.0)))
    for level in LEVELS:
        ways.append(Setting(f"temporal_smoothing_{level}", level, Smoothing.at(level)))
    return ways


def pipeline_for(model: ModelComponents, setting: Setting, steps: int, strength: float) -> StreamPipeline:
    pipeline = StreamPipeline(model)
    pipeline.update(prompt="an oil painting", steps=steps, strength=strength, temporal_smoothing=setting.level)
    smoothing = setting.smoothing
    if smoothing is not None:
        pipeline.smoothing_at = lambda _level: smoothing
    return pipeline


def run(
    model: ModelComponents,
    setting: Setting,
    frames: list[np.ndarray],
    size: int,
    steps: int,
    strength: float,
) -> tuple[list[np.ndarray], float]:
    """The outputs of `frames` after WARM_UP frames of the same clip, and the frames per second of the measured
    part."""
    pipeline = pipeline_for(model, setting, steps, strength)
    for frame in frames[:WARM_UP]:
        pipeline(frame, (size, size))
    started = time.perf_counter()
    outputs = [pipeline(frame, (size, size)) for frame in frames[WARM_UP:]]
    return outputs, len(outputs) / (time.perf_counter() - started)


def interleaved_fps_ratio(model: ModelComponents, chosen: Setting, args: argparse.Namespace, strength: float) -> float:
    """Frame rate with `chosen` over off, the two taking turns frame by frame on the moving clip, so that load
    from elsewhere on the machine falls on both alike (each setting's own `fps` is measured alone, in turn)."""
    frames = moving_clip(args.size, args.size, SHIFT, WARM_UP + MOVING_FRAMES)
    ways = [pipeline_for(model, setting, args.steps, strength) for setting in (settings()[0], chosen)]
    seconds = [0.0, 0.0]
    for index, frame in enumerate(frames):
        for way, pipeline in enumerate(ways):
            started = time.perf_counter()
            pipeline(frame, (args.size, args.size))
            if index >= WARM_UP:
                seconds[way] += time.perf_counter() - started
    return seconds[0] / seconds[1]


def measure(model: ModelComponents, setting: Setting, args: argparse.Namespace, strength: float, held_out=False):
    shift, seed = (HELD_OUT_SHIFT, HELD_OUT_SEED) if held_out else (SHIFT, 0)
    moving = moving_clip(args.size, args.size, shift, WARM_UP + MOVING_FRAMES, seed=seed)
    still = still_clip(args.size, args.size, WARM_UP + STILL_FRAMES, seed=seed)
    moving_out, fps = run(model, setting, moving, args.size, args.steps, strength)
    still_out, _ = run(model, setting, still, args.size, args.steps, strength)
    return {
        "warp_error": round(warp_error(moving_out, shift), 6),
        "static_flicker": round(static_flicker(still_out), 3),
        "tracking_error_px": round(tracking_error(moving_out, shift), 3),
        "fps": round(fps, 2),
    }


def reductions(off: dict, chosen: dict, fps_ratio: float) -> dict:
    return {
        "warp_error_reduction": round(1 - chosen["warp_error"] / off["warp_error"], 3),
        "static_flicker_reduction": round(1 - chosen["static_flicker"] / max(off["static_flicker"], 1e-9), 3),
        "tracking_error_px": chosen["tracking_error_px"],
        "fps_ratio": round(fps_ratio, 3),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [0.0, *LEVELS]
    names = ["off", *(f"temporal_smoothing_{level}" for level in LEVELS)]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for axis, key, label in zip(
        axes,
        ("warp_error", "static_flicker", "tracking_error_px"),
        ("warp error (float, 0-1)", "static flicker (0-255)", "tracking error (px)"),
        strict=True,
    ):
        axis.plot(levels, [results[name][key] for name in names], marker="o")
        axis.set_xlabel("temporal_smoothing")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[2].axhline(1.0, color="red", linestyle="--", linewidth=1)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main(args: argparse.Namespace) -> dict:
    model = load_model(args.model, device=args.device)
    print(
        f"temporal: model {args.model} on {model.device}, {args.size}x{args.size}, steps {args.steps}, strength "
        f"{args.strength}; moving clip {SHIFT} px a frame, {MOVING_FRAMES} frames after {WARM_UP} of warm-up"
    )
    results: dict = {}
    for setting in settings():
        results[setting.name] = {"level": setting.level, **measure(model, setting, args, args.strength)}
        print(f"  {setting.name}: {results[setting.name]}")
    default = f"temporal_smoothing_{DEFAULT_LEVEL}"
    report = {
        "bench": "temporal",
        "model": args.model,
        "device": str(model.device),
        "size": args.size,
        "steps": args.steps,
        "strength": args.strength,
        "shift_px": list(SHIFT),
        "default_temporal_smoothing": DEFAULT_LEVEL,
        **results,
    }
    chosen = next(s for s in settings() if s.name == default)
    report.update(
        reductions(results["off"], results[default], interleaved_fps_ratio(model, chosen, args, args.strength))
    )
    off = settings()[0]
    report["by_strength"] = {}
    for strength in (0.3, 0.7):
        pair = {name: measure(model, s, args, strength) for name, s in (("off", off), ("default", chosen))}
        ratio = interleaved_fps_ratio(model, chosen, args, strength)
        report["by_strength"][str(strength)] = {**pair, **reductions(pair["off"], pair["default"], ratio)}
        print(f"  strength {strength}: {report['by_strength'][str(strength)]}")
    pair = {
        name: measure(model, s, args, args.strength, held_out=True) for name, s in (("off", off), ("default", chosen))
    }
    ratio = report["fps_ratio"]  # the same work per frame as the main clip's
    report["held_out_clip"] = {
        "shift_px": list(HELD_OUT_SHIFT),
        **pair,
        **reductions(pair["off"], pair["default"], ratio),
    }
    print(f"  held-out clip: {report['held_out_clip']}")
    try:
        plot(results, PLOT)
        report["plot"] = str(PLOT)
    except ImportError:
        print("  (no plot: matplotlib is in the bench extra: pip install 'lcmlive[bench]')")
    print(
        f"default temporal_smoothing {DEFAULT_LEVEL}: warp error reduction {report['warp_error_reduction']}, static "
        f"flicker reduction {report['static_flicker_reduction']}, tracking error {report['tracking_error_px']} px, "
        f"fps ratio {report['fps_ratio']}"
    )
    return report
