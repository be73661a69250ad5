"""`lcmlive bench --toy`: does the toy model (`tiny`) show the camera, restyled by the prompt? Every number of the
toy-model issue at 256x256, strength 0.5, 2 steps, on pictures it never saw in training.

VAE alone: PSNR on scikit-image's photos and on held-out synthetic pictures. Through the stream pipeline: grey-level
correlation between input and output on the photos, black against white, a prompt change, the same prompt twice,
and the phase-correlation shift of a moving textured picture against the input's.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from pipelines import ModelComponents, StreamPipeline, load_model
from pipelines.toy.pictures import OPPONENT, held_out_photos, synthetic_picture

from .temporal_metrics import TRACKING_GAP, measured_shift, moving_clip

SIZE = 256
STRENGTH = 0.5
STEPS = 2
# The real presets' first prompt: two of the toy's mildest words, so it measures how much of the camera comes through.
FOLLOW_PROMPT = "an oil painting, vivid colors, thick brush strokes"
PROMPT_PAIR = ("a watercolor painting", "neon lights at night")
STYLE_PROMPTS = ("a watercolor painting", "neon lights at night", "a pencil sketch", "fire", "the ocean", "a photo")
# Far from the training seed (0) and its stage-2 seed (1): these pictures were never drawn in training.
HELD_OUT_SEED = 10_000
HELD_OUT_SYNTHETIC = 16
PAN_STEP = (3, 2)  # pixels per frame, right and down
PAN_FRAMES = 12
STYLE_SHEET = Path("artifacts/toy-styles.png")

# The bars: what `toy_report` checks and `tests/test_toy.py` asserts.
BARS = {
    "vae_psnr_photos_db": 20.0,
    "vae_psnr_synthetic_db": 24.0,
    "grey_correlation_photos": 0.8,
    "black_white_gap": 100.0,
    "prompt_change_mean_abs": 10.0,
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)


def grey_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(grey(a).ravel(), grey(b).ravel())[0, 1])


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@torch.inference_mode()
def reconstruct(model: ModelComponents, image: np.ndarray) -> np.ndarray:
    """The VAE alone: encode to the posterior mean, decode, back to uint8."""
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(model.device) / 127.5 - 1
    # The toy model's VAE is an AutoencoderKL; diffusers types encode's and decode's results as their output or a
    # tuple whatever return_dict is.
    latents = model.vae.encode(pixels.to(model.dtype)).latent_dist.mean  # pyright: ignore[reportAttributeAccessIssue]
    decoded = model.vae.decode(latents).sample.float()  # pyright: ignore[reportAttributeAccessIssue]
    return ((decoded[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def colour_axes(pictures: list[np.ndarray], reconstructions: list[np.ndarray]) -> dict[str, float]:
    """How well the VAE keeps each opponent colour axis: Pearson correlation, over every pixel, of red - green and of
    yellow - blue between pictures and their reconstructions (PSNR alone hid that the toy lost red-green)."""

    def axes(images: list[np.ndarray]) -> np.ndarray:
        rgb = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64)
        return OPPONENT[1:].astype(np.float64) @ rgb.T  # red-green and yellow-blue

    before, after = axes(pictures), axes(reconstructions)
    return {
        name: round(float(np.corrcoef(before[i], after[i])[0, 1]), 3)
        for i, name in enumerate(("red_green", "yellow_blue"))
    }


def stylise(model: ModelComponents, image: np.ndarray, prompt: str) -> np.ndarray:
    pipe = StreamPipeline(model)
    pipe.update(prompt=prompt, strength=STRENGTH, steps=STEPS)
    return pipe(image)


def held_out_synthetic() -> list[np.ndarray]:
    rng = np.random.default_rng(HELD_OUT_SEED)
    return [synthetic_picture(rng, SIZE) for _ in range(HELD_OUT_SYNTHETIC)]


def pan_error(model: ModelComponents) -> dict:
    """A textured picture moving PAN_STEP a frame: the shift between outputs TRACKING_GAP frames apart against the
    same between the inputs (each by phase correlation), worst case over the clip. Temporal smoothing off, as the
    issue asks: the model's own motion (with the default smoothing it measured 1.25 px at worst, off 1.57)."""
    pipe = StreamPipeline(model)
    pipe.update(prompt=FOLLOW_PROMPT, strength=STRENGTH, steps=STEPS, temporal_smoothing=0.0)
    frames = [np.ascontiguousarray(frame) for frame in moving_clip(SIZE, SIZE, PAN_STEP, PAN_FRAMES)]
    outputs = [pipe(frame) for frame in frames]
    pairs = range(PAN_FRAMES - TRACKING_GAP)
    expected = [measured_shift(frames[t], frames[t + TRACKING_GAP]) for t in pairs]
    measured = [measured_shift(outputs[t], outputs[t + TRACKING_GAP]) for t in pairs]
    errors = [
        max(abs(m - e) for m, e in zip(out, inp, strict=True)) for out, inp in zip(measured, expected, strict=True)
    ]
    return {
        "input_shift_px": [round(float(v), 2) for v in np.mean(expected, axis=0)],
        "output_shift_px": [round(float(v), 2) for v in np.mean(measured, axis=0)],
        "max_error_px": round(max(errors), 3),
    }


def toy_report(model: ModelComponents) -> dict:
    """Every measurement, per picture and in summary, with the bars and whether each is met."""
    photos = held_out_photos(SIZE)
    synthetic = held_out_synthetic()
    photo_back = {name: reconstruct(model, image) for name, image in photos.items()}
    synthetic_back = [reconstruct(model, image) for image in synthetic]
    photo_psnr = {name: psnr(image, photo_back[name]) for name, image in photos.items()}
    synthetic_psnr = [psnr(image, back) for image, back in zip(synthetic, synthetic_back, strict=True)]
    follow = {name: stylise(model, image, FOLLOW_PROMPT) for name, image in photos.items()}
    correlation = {name: grey_correlation(photos[name], out) for name, out in follow.items()}
    black = stylise(model, np.zeros((SIZE, SIZE, 3), np.uint8), FOLLOW_PROMPT)
    white = stylise(model, np.full((SIZE, SIZE, 3), 255, np.uint8), FOLLOW_PROMPT)
    before = {name: stylise(model, image, PROMPT_PAIR[0]) for name, image in photos.items()}
    after = {name: stylise(model, image, PROMPT_PAIR[1]) for name, image in photos.items()}
    again = {name: stylise(model, image, PROMPT_PAIR[0]) for name, image in photos.items()}
    pan = pan_error(model)
    numbers = {
        "vae_psnr_photos_db": float(np.mean(list(photo_psnr.values()))),
        "vae_psnr_synthetic_db": float(np.mean(synthetic_psnr)),
        "grey_correlation_photos": float(np.mean(list(correlation.values()))),
        "black_white_gap": float(white.mean() - black.mean()),
        "prompt_change_mean_abs": float(np.mean([mean_abs(before[n], after[n]) for n in photos])),
    }
    same_prompt = max(mean_abs(before[n], again[n]) for n in photos)
    return {
        "bench": "toy",
        "model": model.model_id,
        "size": SIZE,
        "strength": STRENGTH,
        "steps": STEPS,
        **{name: round(value, 3) for name, value in numbers.items()},
        "same_prompt_twice_mean_abs": same_prompt,
        "pan": pan,
        "vae_psnr_per_photo_db": {name: round(value, 2) for name, value in photo_psnr.items()},
        "vae_psnr_synthetic_min_db": round(min(synthetic_psnr), 2),
        "vae_colour_axes_synthetic": colour_axes(synthetic, synthetic_back),
        "vae_colour_axes_photos": colour_axes(list(photos.values()), list(photo_back.values())),
        "grey_correlation_per_photo": {name: round(value, 3) for name, value in correlation.items()},
        "black_white_means": [round(float(black.mean()), 1), round(float(white.mean()), 1)],
        "bars": BARS,
        "meets_bars": all(numbers[name] >= bar for name, bar in BARS.items())
        and same_prompt == 0
        and pan["max_error_px"] <= 1.0,
    }


def style_sheet(model: ModelComponents, path: Path) -> dict[str, float]:
    """A PNG to look at: each held-out photo, then what each of STYLE_PROMPTS makes of it. Returns each prompt's
    mean grey-level correlation with the photos."""
    photos = list(held_out_photos(SIZE).values())
    styled = [[stylise(model, image, prompt) for prompt in STYLE_PROMPTS] for image in photos]
    rows = [np.concatenate([image, *outputs], axis=1) for image, outputs in zip(photos, styled, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    pairs = list(zip(photos, styled, strict=True))
    return {
        prompt: round(float(np.mean([grey_correlation(image, outputs[i]) for image, outputs in pairs])), 3)
        for i, prompt in enumerate(STYLE_PROMPTS)
    }


def main(args: argparse.Namespace) -> dict:
    if importlib.util.find_spec("skimage") is None:
        raise SystemExit(
            "lcmlive bench --toy: the held-out photos come with scikit-image, in the `test` extra: "
            "pip install 'lcmlive[test]'"
        )
    started = time.perf_counter()
    model = load_model(args.model, device=args.device)
    load_seconds = time.perf_counter() - started
    report = {**toy_report(model), "load_seconds": round(load_seconds, 2)}
    report["grey_correlation_per_prompt"] = style_sheet(model, STYLE_SHEET)
    print(f"loaded in {load_seconds:.2f} s; pictures: {STYLE_SHEET} (columns: input, {', '.join(STYLE_PROMPTS)})")
    for name, bar in BARS.items():
        print(f"{name}: {report[name]} (bar {bar})")
    print(f"same prompt twice: mean abs difference {report['same_prompt_twice_mean_abs']}")
    print(
        f"VAE colour axes kept (correlation): synthetic {report['vae_colour_axes_synthetic']}, "
        f"photos {report['vae_colour_axes_photos']}"
    )
    pan = report["pan"]
    print(
        f"a picture moving {PAN_STEP} px a frame, outputs {TRACKING_GAP} frames apart: input shift "
        f"{pan['input_shift_px']}, output {pan['output_shift_px']}, worst error {pan['max_error_px']} px (bar 1)"
    )
    print("meets every bar" if report["meets_bars"] else "MISSES a bar")
    return report
