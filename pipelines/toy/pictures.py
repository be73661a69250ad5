"""Pictures for the toy model: synthetic ones made in code for training, and held-out photos that scikit-image ships."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 "
# Photos inside scikit-image's wheel (no download through its data fetcher); never used for training.
HELD_OUT_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "motorcycle_left.png")


# Luminance, red-green and yellow-blue, as rows over R, G, B: the trainer's colour read-out and bench --toy's check.
OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]], dtype=np.float32)


def synthetic_picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dead-leaves picture (uint8 size x size x 3): overlapping shapes of power-law sizes, filled flat, with
    gradients or textures, over a smooth background, some text, uneven light, defocus and sensor noise.

    Dead leaves have the edge and size statistics of natural photos, which is why a model trained on them
    generalises to photos it never saw.
    """
    image = _background(rng, size)
    shapes = int(rng.integers(3, 40))
    # Largest first, so small shapes land on top, as in the dead-leaves model.
    radii = np.sort(size * 0.02 * (25.0 ** rng.random(shapes)))[::-1]
    mask = np.zeros((size, size), np.uint8)
    for radius in radii:
        mask[:] = 0
        _draw_shape(rng, mask, float(radius), size)
        left, top, width, height = cv2.boundingRect(mask)
        if width == 0:
            continue
        box = (slice(top, top + height), slice(left, left + width))
        alpha = mask[box].astype(np.float32)[..., None] / 255.0
        image[box] = image[box] * (1 - alpha) + _fill(rng, height, width) * alpha
    if rng.random() < 0.5:
        image = _draw_text(rng, image, size)
    light = _smooth_field(rng, size, size, cells=2, low=0.55, high=1.15)
    image = image * light[..., None]
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 2.0)))
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.012), image.shape).astype(np.float32)
    return (image.clip(0, 1) * 255).round().astype(np.uint8)


def held_out_photos(size: int) -> dict[str, np.ndarray]:
    """scikit-image's sample photos as uint8 RGB, centre-cropped square and resized to `size`."""
    from skimage import data

    photos = {}
    for name in HELD_OUT_PHOTOS:
        path = Path(data.data_dir) / name
        image = cv2.imread(str(path))
        if image is None:  # OpenCV returns None for a file it cannot read
            raise FileNotFoundError(f"scikit-image's sample photo {path} cannot be read")
        photo = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        side = min(photo.shape[:2])
        top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
        square = np.ascontiguousarray(photo[top : top + side, left : left + side])
        photos[name] = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return photos


def textured_picture(size: int, seed: int = 0) -> np.ndarray:
    """A large picture of blobs and texture to pan a camera over: phase correlation has plenty to lock on."""
    rng = np.random.default_rng(seed)
    return synthetic_picture(rng, size)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly muted colours, as in photos, and now and then a saturated one."""
    grey = rng.random()
    chroma = rng.random() ** 2
    return np.clip(grey + chroma * (rng.random(3) - 0.5) * 1.6, 0, 1).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:
        return np.tile(_colour(rng), (size, size, 1))
    if kind == 1:
        return _gradient(rng, size, size)
    cells = int(rng.integers(2, 8))
    return np.stack([_smooth_field(rng, size, size, cells) for _ in range(3)], axis=-1)


def _two_colours(rng: np.random.Generator, pattern: np.ndarray) -> np.ndarray:
    """`pattern` in [0, 1] (H x W) painted from one random colour to another."""
    first, second = _colour(rng), _colour(rng)
    return first + (second - first) * pattern[..., None]


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    return _two_colours(rng, (x * np.cos(angle) + y * np.sin(angle) + 0.5).clip(0, 1))


def _smooth_field(
    rng: np.random.Generator, height: int, width: int, cells: int, low: float = 0.0, high: float = 1.0
) -> np.ndarray:
    coarse = rng.uniform(low, high, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(min(low, 0), max(high, 1))


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Stripes, checks or multi-octave noise in two colours."""
    kind = rng.integers(3)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    period = rng.uniform(3, 24)
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        pattern = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * (2 * np.pi / period))
    elif kind == 1:
        pattern = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    else:
        cells = max(height, width) / period
        pattern = np.sum(
            [_smooth_field(rng, height, width, int(cells / 2**octave) + 1) / 2**octave for octave in range(3)], axis=0
        )
        pattern = (pattern - pattern.min()) / (np.ptp(pattern) + 1e-6)
    return _two_colours(rng, pattern)


def _fill(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = rng.random()
    if kind < 0.6:
        return _colour(rng)
    if kind < 0.8:
        return _gradient(rng, height, width)
    return _texture(rng, height, width)


def _draw_shape(rng: np.random.Generator, mask: np.ndarray, radius: float, size: int) -> None:
    centre = (int(rng.integers(-size // 8, size + size // 8)), int(rng.integers(-size // 8, size + size // 8)))
    kind = rng.integers(3)
    if kind == 0:
        axes = (max(1, int(radius)), max(1, int(radius * rng.uniform(0.4, 1.0))))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        return
    corners = 4 if kind == 1 else int(rng.integers(3, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners)) if kind == 2 else np.arange(4) * np.pi / 2 + rng.uniform(0, 1)
    reach = radius * (rng.uniform(0.5, 1.0, corners) if kind == 2 else 1.0)
    points = np.stack([centre[0] + reach * np.cos(angles), centre[1] + reach * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [points.round().astype(np.int32)], 255, cv2.LINE_AA)


def _draw_text(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    for _ in range(int(rng.integers(1, 4))):
        text = "".join(rng.choice(list(LETTERS), int(rng.integers(3, 12))))
        scale = size / 256 * rng.uniform(0.4, 2.0)
        origin = (int(rng.integers(-size // 4, size)), int(rng.integers(size // 10, size)))
        mask = np.zeros((size, size), np.uint8)  # putText draws on 8-bit pictures only
        cv2.putText(mask, text, origin, int(rng.choice(FONTS)), scale, 255, int(rng.integers(1, 4)), cv2.LINE_AA)
        left, top, width, height = cv2.boundingRect(mask)
        box = (slice(top, top + height), slice(left, left + width))
        alpha = mask[box].astype(np.float32)[..., None] / 255.0
        image[box] = image[box] * (1 - alpha) + _colour(rng) * alpha
    return image
