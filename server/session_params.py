"""Per-session parameters that belong to the server, not the model: pacing and the processing-size cap."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines import ParamSpec

# The tiny model on a CPU makes about 2 frames/s at 512 px and 6-8 at 256 px; a GPU holds 512 at 30 fps.
DEFAULT_MAX_RESOLUTION = {"cuda": 512, "cpu": 256}
DEFAULT_TARGET_FPS = {"cuda": 30.0, "cpu": 8.0}


def session_specs(default_max_resolution: int = 512, default_target_fps: float = 30.0) -> dict[str, ParamSpec]:
    specs = (
        ParamSpec(
            "target_fps",
            float,
            default_target_fps,
            "frames per second to hold: the processing size adapts to it",
            1.0,
            60.0,
        ),
        ParamSpec(
            "max_resolution",
            int,
            default_max_resolution,
            "largest processing size (longest side, multiple of 64); also the size of the video sent back",
            64,
            1024,
            multiple_of=64,
        ),
        ParamSpec(
            "min_resolution",
            int,
            128,
            "smallest processing size the adaptation may choose (set it to max_resolution to fix the size)",
            64,
            1024,
            multiple_of=64,
        ),
        ParamSpec(
            "similarity_skip",
            float,
            0.0,
            "reuse the last picture when the camera changed less than this (mean 0-255 difference); 0 = off",
            0.0,
            50.0,
        ),
    )
    return {spec.name: spec for spec in specs}


@dataclass(frozen=True)
class SessionParams:
    target_fps: float
    max_resolution: int
    min_resolution: int
    similarity_skip: float

    @classmethod
    def defaults(cls, specs: dict[str, ParamSpec]) -> SessionParams:
        return cls(**{name: spec.default for name, spec in specs.items()})

    def replace(self, changes: dict[str, Any], specs: dict[str, ParamSpec]) -> SessionParams:
        checked = {name: specs[name].check(value) for name, value in changes.items()}
        updated = dataclasses.replace(self, **checked)
        if updated.min_resolution > updated.max_resolution:
            raise ValueError(
                f"min_resolution ({updated.min_resolution}) must not exceed max_resolution ({updated.max_resolution})"
            )
        return updated
