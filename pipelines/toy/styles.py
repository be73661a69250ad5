"""The toy model's style words, each tied to a visible transform of the camera picture that the model learns."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Picture = np.ndarray  # float32 H x W x 3 in [0, 1]


def _luma(image: Picture) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _palette(*stops: tuple[float, float, float]) -> Callable[[Picture], Picture]:
    """Brightness mapped through a colour ramp (dark stop first): keeps the picture's shapes, changes its colours."""
    ramp = np.array(stops, np.float32)
    positions = np.linspace(0, 1, len(stops))

    def apply(image: Picture) -> Picture:
        luma = _luma(image)
        return np.stack([np.interp(luma, positions, ramp[:, c]) for c in range(3)], axis=-1).astype(np.float32)

    return apply


def _saturate(image: Picture, amount: float) -> Picture:
    luma = _luma(image)[..., None]
    return luma + amount * (image - luma)


def watercolor(image: Picture) -> Picture:
    """Soft, light and washed out, on warm paper."""
    soft = _blur(image, 2.5)
    return 0.35 * np.array([1.0, 0.97, 0.9], np.float32) + 0.65 * _saturate(soft, 0.8)


def neon(image: Picture) -> Picture:
    """Dark, with glowing outlines where the picture has edges: cyan on upright edges, magenta on level ones."""
    luma = _blur(_luma(image), 1.0)
    across, down = cv2.Sobel(luma, cv2.CV_32F, 1, 0), cv2.Sobel(luma, cv2.CV_32F, 0, 1)
    strength = _blur(np.clip(np.hypot(across, down) * 2.5, 0, 1), 1.0)[..., None]
    upright = (across**2 / (across**2 + down**2 + 1e-6))[..., None]
    glow = upright * np.array([0.1, 0.95, 1.0], np.float32) + (1 - upright) * np.array([1.0, 0.1, 0.9], np.float32)
    return np.clip(0.12 * image + 1.6 * strength * glow, 0, 1)


def night(image: Picture) -> Picture:
    """Dark blue, with the brightest parts glowing warm like lamps."""
    luma = _luma(image)[..., None]
    dark = luma**1.4 * np.array([0.22, 0.3, 0.55], np.float32)
    lamps = np.clip((luma - 0.7) / 0.3, 0, 1) * np.array([1.0, 0.85, 0.45], np.float32)
    return np.clip(dark + lamps, 0, 1)


def pencil(image: Picture) -> Picture:
    """Grey strokes on white paper: brightness divided by its blur (a dodge blend), as in pencil-sketch filters."""
    luma = _luma(image)
    sketch = np.clip(luma / (_blur(luma, 4.0) + 0.04), 0, 1) ** 3
    return np.repeat(sketch[..., None], 3, axis=2) * np.array([0.96, 0.95, 0.92], np.float32)


def pop(image: Picture) -> Picture:
    """Posterised: three saturated levels per channel."""
    return np.round(np.clip(_saturate(image, 1.5), 0, 1) * 2) / 2


def ink(image: Picture) -> Picture:
    """Black ink on white: brightness thresholded at its middle."""
    luma = _blur(_luma(image), 1.0)
    return np.repeat((luma > 0.5).astype(np.float32)[..., None], 3, axis=2)


def negative(image: Picture) -> Picture:
    return 1.0 - image


def grey(image: Picture) -> Picture:
    return np.repeat(_luma(image)[..., None], 3, axis=2)


def vivid(image: Picture) -> Picture:
    """Saturation and contrast up."""
    return np.clip(0.5 + 1.3 * (_saturate(image, 2.0) - 0.5), 0, 1)


def oil(image: Picture) -> Picture:
    """Smoothed into flat, rich patches with their edges kept (a bilateral filter), under a warm varnish."""
    smooth = cv2.bilateralFilter(image, 9, 0.15, 5)
    return np.clip(_saturate(smooth, 1.4) * np.array([1.05, 0.95, 0.75], np.float32), 0, 1) ** 1.1


# Each word and its transform. Aliases share one transform. Several words in one prompt: the mean of theirs.
STYLES: dict[str, Callable[[Picture], Picture]] = {
    "watercolor": watercolor,
    "neon": neon,
    "night": night,
    "pencil": pencil,
    "fire": _palette((0.05, 0.0, 0.0), (0.6, 0.05, 0.0), (0.95, 0.45, 0.0), (1.0, 0.85, 0.2), (1.0, 1.0, 0.85)),
    "ocean": _palette((0.0, 0.04, 0.15), (0.0, 0.25, 0.5), (0.0, 0.55, 0.65), (0.45, 0.85, 0.85), (0.95, 1.0, 1.0)),
    "forest": _palette((0.02, 0.08, 0.02), (0.1, 0.3, 0.08), (0.3, 0.55, 0.15), (0.7, 0.8, 0.35)),
    "sunset": _palette((0.15, 0.0, 0.25), (0.6, 0.1, 0.45), (0.95, 0.4, 0.25), (1.0, 0.8, 0.35)),
    "gold": _palette((0.1, 0.06, 0.0), (0.55, 0.38, 0.05), (0.9, 0.72, 0.2), (1.0, 0.95, 0.7)),
    "sepia": _palette((0.1, 0.06, 0.03), (0.45, 0.33, 0.2), (0.8, 0.68, 0.5), (1.0, 0.95, 0.85)),
    "pop": pop,
    "ink": ink,
    "negative": negative,
    "grey": grey,
    "gray": grey,
    "vivid": vivid,
    "oil": oil,
}


def style_words(prompt: str) -> list[str]:
    """The style words a prompt contains, in order, as the tokenizer splits words (lower case, no punctuation)."""
    words = "".join(c if c.isalnum() else " " for c in prompt.lower()).split()
    return [word for word in words if word in STYLES]


def style_weight(guidance_scale: float) -> float:
    """How much of the style the toy applies at a guidance scale: a quarter at 1 or less, all of it from 8 (the
    default) up, in a straight line between, so the guidance slider has a visible meaning."""
    return float(np.clip(0.25 + 0.75 * (guidance_scale - 1.0) / 7.0, 0.25, 1.0))


def restyle(image: np.ndarray, words: list[str], weight: float = 1.0) -> np.ndarray:
    """What the toy model is taught to make of a uint8 picture for these words: the mean of their transforms,
    blended with the picture by `weight`."""
    picture = image.astype(np.float32) / 255.0
    if words:
        styled = np.mean([STYLES[word](picture) for word in words], axis=0)
        picture = picture + weight * (styled - picture)
    return (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
