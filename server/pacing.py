"""A stream's pacing params: those that belong to the server, not the model (target fps, processing sizes, skips)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from pipelines.params import Params, WholeNumber

# The device's defaults live with the settings: `--target-fps`'s help and range are declared there.
from .config import DEFAULT_MAX_RESOLUTION, DEFAULT_MIN_RESOLUTION, DEFAULT_TARGET_FPS, MAX_TARGET_FPS, MIN_TARGET_FPS

__all__ = [
    "DEFAULT_MAX_RESOLUTION",
    "DEFAULT_MIN_RESOLUTION",
    "DEFAULT_TARGET_FPS",
    "PacingParams",
    "pacing_params_model",
    "settings_model",
]

P = TypeVar("P", bound=Params)


class PacingParams(Params):
    """How a stream is paced and sized; `pacing_params_model` sets the device's defaults."""

    target_fps: float = Field(
        default=30.0,
        ge=MIN_TARGET_FPS,
        le=MAX_TARGET_FPS,
        description="frames per second to hold: the processing size adapts to it",
    )
    max_resolution: WholeNumber = Field(
        default=512,
        ge=64,
        le=1024,
        multiple_of=64,
        description="largest processing size (longest side, multiple of 64); also the size of the video sent back",
    )
    min_resolution: WholeNumber = Field(
        default=128,
        ge=64,
        le=1024,
        multiple_of=64,
        description="smallest processing size the adaptation may choose (set it to max_resolution to fix the size)",
    )
    similarity_skip: float = Field(
        default=0.0,
        ge=0.0,
        le=50.0,
        description="reuse the last picture when the camera changed less than this (mean 0-255 difference); 0 = off",
    )

    @model_validator(mode="after")
    def _sizes_in_order(self) -> PacingParams:
        if self.min_resolution > self.max_resolution:
            raise PydanticCustomError(
                "resolution_order",
                "min_resolution ({low}) must not exceed max_resolution ({high})",
                {"low": self.min_resolution, "high": self.max_resolution},
            )
        return self


def pacing_params_model(
    default_max_resolution: int = 512, default_target_fps: float = 30.0, default_min_resolution: int = 128
) -> type[PacingParams]:
    """PacingParams with a device's defaults (a CPU starts smaller and slower than a GPU, and stops higher)."""
    fields = PacingParams.model_fields
    return create_model(
        "PacingParams",
        __base__=PacingParams,
        target_fps=(
            float,
            Field(
                default=default_target_fps,
                ge=MIN_TARGET_FPS,
                le=MAX_TARGET_FPS,
                description=fields["target_fps"].description,
            ),
        ),
        max_resolution=(
            WholeNumber,
            Field(
                default=default_max_resolution,
                ge=64,
                le=1024,
                multiple_of=64,
                description=fields["max_resolution"].description,
            ),
        ),
        min_resolution=(
            WholeNumber,
            Field(
                default=default_min_resolution,
                ge=64,
                le=1024,
                multiple_of=64,
                description=fields["min_resolution"].description,
            ),
        ),
    )


def settings_model(params_model: type[P], pacing_model: type[PacingParams]) -> type[P]:
    """Every param of a stream, the pipeline's and the server's, in one model: a change is validated whole, rules
    across the two scopes included, before any of it is applied. A `params_model` (so the pipeline applies it as
    it is), with the pacing fields too."""
    model = create_model("StreamSettings", __base__=(params_model, pacing_model))
    assert issubclass(model, params_model)  # its first base
    return model
