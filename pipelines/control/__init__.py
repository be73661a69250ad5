"""ControlNet kinds: each one a preprocessor (camera frame -> control image), its params, its weights per family.

A kind is one module in this package with a `KIND` (a `ControlKind`) and one row in `CONTROL_KINDS` below. The
rest of the code — loading, the params schema, batching, MultiControlNet arithmetic, the page's control view —
reads the table and never names a kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel


class Preprocessor(Protocol):
    """Turns a camera frame (uint8 H x W x 3, at the processing size) into a control image of the same shape."""

    # The torch modules it runs (moved with the model to its device and dtype); empty for plain image processing.
    modules: list[torch.nn.Module]

    def __call__(self, frame: np.ndarray, params: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class ControlKind:
    """One kind of ControlNet: what it reads from the camera, how, and which weights go with it."""

    name: str
    # What the camera gives this ControlNet, in words: the description of its scale on the page.
    reads: str
    weights: Mapping[str, str]  # model family ("sd15", "sdxl") -> ControlNet repository on the hub
    # Loads the preprocessor: (built-in model?, device, dtype) -> Preprocessor. Built-in models get an offline one.
    load_preprocessor: Callable[[bool, torch.device, torch.dtype], Preprocessor]
    # This kind's own stream params (fields and their checks), mixed into the params model when it is loaded.
    params: type[BaseModel] | None = None
    # Offsets the seed of the tiny stand-in ControlNet, so that two kinds' random stand-ins differ.
    stand_in_seed: int = 0

    @property
    def scale_param(self) -> str:
        return f"controlnet_scale_{self.name}"


def _kinds() -> dict[str, ControlKind]:
    from . import canny, depth

    return {kind.name: kind for kind in (canny.KIND, depth.KIND)}


CONTROL_KINDS: dict[str, ControlKind] = _kinds()


def control_kind(name: str) -> ControlKind:
    """The kind called `name`, or a ValueError that lists the known ones."""
    if name not in CONTROL_KINDS:
        raise ValueError(f"unknown ControlNet kind {name!r}; known: {', '.join(CONTROL_KINDS)}")
    return CONTROL_KINDS[name]


def parse_kinds(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """`canny,depth` (as `--controlnet` takes it) or a list -> ("canny", "depth"): known kinds, without repeats, in
    the given order; ValueError for an unknown one."""
    if not names:
        return ()
    parts = names.split(",") if isinstance(names, str) else names
    names = tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))
    for name in names:
        control_kind(name)
    return names
