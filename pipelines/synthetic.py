"""A moving synthetic camera picture, for benchmarks and tests that need frames without a camera."""

from __future__ import annotations

import numpy as np


def moving_pattern(width: int, height: int, index: int) -> np.ndarray:
    """Frame `index` of a smooth colour field with a bright square sweeping across it (uint8 H x W x 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = index * 0.15
    red = 128 + 100 * np.sin(x / max(width, 1) * 6.28 + phase)
    green = 128 + 100 * np.sin(y / max(height, 1) * 6.28 - phase)
    blue = np.full_like(x, 128 + 60 * np.sin(phase * 0.5))
    frame = np.stack([red, green, blue], axis=-1)
    side = max(4, min(width, height) // 5)
    left = int((index * 7) % max(1, width - side))
    top = int((index * 3) % max(1, height - side))
    frame[top : top + side, left : left + side] = (250, 250, 250)
    return frame.clip(0, 255).astype(np.uint8)
