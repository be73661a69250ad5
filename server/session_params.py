"""Per-session parameters that belong to the server, not the model: pacing and the processing-size cap."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines import ParamSpec

SESSION_SPECS: dict[str, ParamSpec] = {
    spec.name: spec
    for spec in (
        ParamSpec("target_fps", float, 30.0, "most frames per second to stylise for this viewer", 1.0, 60.0),
        ParamSpec(
            "max_resolution",
            int,
            512,
            "longest side of the processing size in pixels (multiples of 64)",
            64,
            1024,
        ),
    )
}


@dataclass(frozen=True)
class SessionParams:
    target_fps: float = SESSION_SPECS["target_fps"].default
    max_resolution: int = SESSION_SPECS["max_resolution"].default

    def replace(self, changes: dict[str, Any]) -> SessionParams:
        checked = {name: SESSION_SPECS[name].check(value) for name, value in changes.items()}
        if "max_resolution" in checked and checked["max_resolution"] % 64:
            raise ValueError(f"max_resolution must be a multiple of 64, got {checked['max_resolution']}")
        return dataclasses.replace(self, **checked)
