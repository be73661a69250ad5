"""Temporal consistency of a stylised video with known motion: warp error, static flicker, and a tracking guard.

Warp error (Lai et al. 2018, as StreamV2V uses it): on float pictures in [0, 1], the mean over consecutive output
pairs of the squared difference between O_t(i) and O_{t+1}(i + d), where d is the camera's known shift, over the
pixels that stay in the picture. Static flicker: the mean absolute difference (0-255) between consecutive outputs
of a still camera with sensor noise. Tracking: the shift between outputs k frames apart, by phase correlation,
against k·d — a method that freezes or smears the picture scores a low warp error and fails here.
"""

from __future__ import annotations

import cv2
import numpy as np

TRACKING_GAP = 5  # frames between the outputs compared by the tracking guard


def textured_picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A picture with shapes at several scales and fine texture (a flat one would hide both flicker and motion)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    picture = np.stack(
        [
            0.5 + 0.25 * np.sin(x / 17.0 + rng.uniform(0, 6)) * np.cos(y / 23.0),
            0.5 + 0.25 * np.sin((x + y) / 29.0 + rng.uniform(0, 6)),
            0.5 + 0.25 * np.cos(x / 11.0 - y / 13.0),
        ],
        axis=-1,
    )
    for _ in range(12):  # shapes: discs and boxes of random colours
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, 40)
        colour = rng.uniform(0, 1, 3)
        if rng.uniform() < 0.5:
            mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        else:
            mask = (abs(x - cx) < r) & (abs(y - cy) < 0.6 * r)
        picture[mask] = colour
    picture += rng.normal(0, 0.06, picture.shape).astype(np.float32)  # fine texture
    return (np.clip(picture, 0, 1) * 255).astype(np.uint8)


def moving_clip(width: int, height: int, shift: tuple[int, int], frames: int, seed: int = 0) -> list[np.ndarray]:
    """`frames` views of a textured canvas, each `shift` (dx, dy) pixels further: what was at p is at p + shift."""
    dx, dy = shift
    margin_x, margin_y = abs(dx) * frames, abs(dy) * frames
    canvas = textured_picture(width + margin_x, height + margin_y, seed)
    # The window moves against the shift, so the content moves with it.
    x0, y0 = (margin_x if dx > 0 else 0), (margin_y if dy > 0 else 0)
    return [canvas[y0 - t * dy : y0 - t * dy + height, x0 - t * dx : x0 - t * dx + width] for t in range(frames)]


def still_clip(width: int, height: int, frames: int, sigma: float = 3.0, seed: int = 0) -> list[np.ndarray]:
    """One still picture with new Gaussian camera noise (sigma in 0-255) on every frame."""
    picture = textured_picture(width, height, seed).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    return [np.clip(picture + rng.normal(0, sigma, picture.shape), 0, 255).astype(np.uint8) for _ in range(frames)]


def warp_error(outputs: list[np.ndarray], shift: tuple[int, int]) -> float:
    """Mean over consecutive pairs of the masked squared difference O_t(i) - O_{t+1}(i + d), in float [0, 1]."""
    dx, dy = shift
    errors = []
    for before, after in zip(outputs, outputs[1:], strict=False):
        height, width = before.shape[:2]
        # Pixels i with i + d still inside: the mask drops what enters or leaves the picture.
        a = before[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)].astype(np.float64) / 255
        b = after[max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)].astype(np.float64) / 255
        errors.append(float(((a - b) ** 2).sum(axis=-1).mean()))
    return float(np.mean(errors))


def static_flicker(outputs: list[np.ndarray]) -> float:
    """Mean absolute difference between consecutive outputs, 0-255."""
    pairs = zip(outputs, outputs[1:], strict=False)
    return float(np.mean([np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() for a, b in pairs]))


def measured_shift(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """How far the content of `before` moved to be at its place in `after` (dx, dy), by phase correlation."""
    a = cv2.cvtColor(before, cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(after, cv2.COLOR_RGB2GRAY).astype(np.float64)
    window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
    return dx, dy


def tracking_error(outputs: list[np.ndarray], shift: tuple[int, int], gap: int = TRACKING_GAP) -> float:
    """Mean distance (px) between the measured shift of outputs `gap` frames apart and gap x shift."""
    expected = np.array(shift, dtype=np.float64) * gap
    errors = [
        float(np.linalg.norm(np.array(measured_shift(outputs[t], outputs[t + gap])) - expected))
        for t in range(len(outputs) - gap)
    ]
    return float(np.mean(errors))
