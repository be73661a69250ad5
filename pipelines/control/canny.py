"""The Canny kind: the camera's edges, found on the host by OpenCV, as the LCM guide prepares them."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from ..validation import Params, WholeNumber
from .kind import ControlKind


class CannyParams(Params):
    """The edge detector's thresholds."""

    canny_low: WholeNumber = Field(default=100, ge=0, le=500, description="Canny edge detector: lower threshold")
    canny_high: WholeNumber = Field(default=200, ge=0, le=500, description="Canny edge detector: upper threshold")

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> CannyParams:
        if self.canny_low > self.canny_high:
            raise PydanticCustomError(
                "canny_order",
                "canny_low ({low}) must not exceed canny_high ({high})",
                {"low": self.canny_low, "high": self.canny_high},
            )
        return self


def canny_map(frame: np.ndarray, low: int, high: int) -> np.ndarray:
    """The Canny edges of an RGB uint8 frame as a 3-channel uint8 image, as the LCM guide prepares it."""
    import cv2

    edges = cv2.Canny(frame, low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


class CannyPreprocessor:
    """Edges on the host: no model, a few hundred microseconds at 512 px."""

    modules: list[torch.nn.Module] = []

    def __call__(self, frame: np.ndarray, params: CannyParams) -> np.ndarray:
        return canny_map(frame, params.canny_low, params.canny_high)


KIND = ControlKind(
    name="canny",
    reads="the camera's edges",
    weights={"sd15": "lllyasviel/control_v11p_sd15_canny", "sdxl": "diffusers/controlnet-canny-sdxl-1.0"},
    load_preprocessor=lambda builtin, device, dtype: CannyPreprocessor(),
    params=CannyParams,
)
