"""Per-session parameters that belong to the server, not the model: pacing and the processing-size cap."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines import ParamSpec

# The tiny model on a CPU makes about 2 frames/s at 512 px and 6-8 at 256 px; a GPU holds 512 easily.
DEFAULT_MAX_RESOLUTION = {"cuda": 512, "cpu": 256}


def session_specs(default_max_resolution: int = 512) -> dict[str, ParamSpec]:
    specs = (
        ParamSpec("target_fps", float, 30.0, "most frames per second to stylise for this viewer", 1.0, 60.0),
        ParamSpec(
            "max_resolution",
            int,
            default_max_resolution,
            "longest side of the processing size in pixels (multiples of 64)",
            64,
            1024,
        ),
    )
    return {spec.name: spec for spec in specs}


@dataclass(frozen=True)
class SessionParams:
    target_fps: float
    max_resolution: int

    @classmethod
    def defaults(cls, specs: dict[str, ParamSpec]) -> SessionParams:
        return cls(**{name: spec.default for name, spec in specs.items()})

    def replace(self, changes: dict[str, Any], specs: dict[str, ParamSpec]) -> SessionParams:
        checked = {name: specs[name].check(value) for name, value in changes.items()}
        if "max_resolution" in checked and checked["max_resolution"] % 64:
            raise ValueError(f"max_resolution must be a multiple of 64, got {checked['max_resolution']}")
        return dataclasses.replace(self, **checked)
