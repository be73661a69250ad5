"""What a ControlNet kind is: its preprocessor (camera frame -> control image), its params and its weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
