"""Stream parameters: one table of specs gives the defaults, the validation and the JSON schema."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .presets import GuidanceKind, ModelPreset


@dataclass(frozen=True)
class ParamSpec:
    """One user-settable parameter: its type, range and meaning."""

    name: str
    kind: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    choices: tuple[str, ...] | None = None
    multiple_of: int | None = None

    def check(self, value: Any) -> Any:
        """Return `value` in this parameter's type, or raise a ValueError that names the parameter."""
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a string, got {type(value).__name__}")
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueError(f"{self.name} is {len(value)} characters; the limit is {self.max_length}")
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        # bool is an int subclass in Python; `true` for a number is a client bug, not a value.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name} must be a number, got {type(value).__name__}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{self.name} must be a whole number, got {value}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{self.name} must be finite, got {value}")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise ValueError(f"{self.name} must be between {self.minimum} and {self.maximum}, got {value}")
        if self.multiple_of is not None and value % self.multiple_of:
            raise ValueError(f"{self.name} must be a multiple of {self.multiple_of}, got {value}")
        return value

    def json_schema(self) -> dict:
        schema: dict[str, Any] = {
            "type": {str: "string", int: "integer", float: "number"}[self.kind],
            "default": self.default,
            "description": self.description,
            "title": self.name.replace("_", " "),
        }
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.multiple_of is not None:
            schema["multipleOf"] = self.multiple_of
        return schema


@dataclass(frozen=True)
class StreamParams:
    """What the person controls. Immutable: a change makes a new object, so a frame never sees half an update."""

    prompt: str = "an oil painting, vivid colors, thick brush strokes"
    negative_prompt: str = ""
    strength: float = 0.5
    steps: int = 2
    guidance_scale: float = 8.0
    seed: int = 0
    mode: str = "img2img"
    controlnet_scale: float = 0.5
    canny_low: int = 100
    canny_high: int = 200

    def replace(self, changes: dict[str, Any], specs: dict[str, ParamSpec]) -> StreamParams:
        """A copy with `changes` applied; any unknown name or bad value raises ValueError and changes nothing."""
        unknown = sorted(set(changes) - set(specs))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(specs)}")
        checked = {name: specs[name].check(value) for name, value in changes.items()}
        return dataclasses.replace(self, **checked)

    def as_dict(self, specs: dict[str, ParamSpec]) -> dict[str, Any]:
        """The parameters a person can set with this model (ControlNet ones only when one is loaded)."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name in specs}


MODES = ("img2img", "txt2img")


def param_specs(preset: ModelPreset, controlnet: bool = False) -> dict[str, ParamSpec]:
    """The parameter table for one model: defaults and limits come from its preset and its ControlNet."""
    # LCM-LoRA: the guide recommends guidance in [1, 2]; 1 or less turns classifier-free guidance off.
    max_guidance = 2.0 if preset.guidance is GuidanceKind.CLASSIFIER_FREE else 20.0
    specs = (
        ParamSpec("prompt", str, StreamParams.prompt, "what the picture should become", max_length=2000),
        ParamSpec(
            "negative_prompt",
            str,
            "",
            "what to steer away from (used only with classifier-free guidance)",
            max_length=2000,
        ),
        ParamSpec(
            "strength",
            float,
            preset.default_strength,
            "how far to move from the camera frame: 0 keeps it, 1 ignores it",
            minimum=0.01,
            maximum=1.0,
        ),
        ParamSpec(
            "steps",
            int,
            preset.default_steps,
            "denoising steps per frame",
            minimum=1,
            maximum=preset.max_steps,
        ),
        ParamSpec(
            "guidance_scale",
            float,
            preset.default_guidance,
            "how strongly the prompt steers the picture",
            minimum=0.0,
            maximum=max_guidance,
        ),
        ParamSpec("seed", int, 0, "noise seed: the same seed and frame give the same picture", 0, 2**31 - 1),
        ParamSpec(
            "mode",
            str,
            "img2img",
            "img2img restyles the camera; txt2img ignores it and draws new pictures at the target rate",
            choices=MODES,
        ),
    )
    if controlnet:
        specs += (
            ParamSpec("controlnet_scale", float, 0.5, "how strongly the camera's edges shape the picture", 0.0, 2.0),
            ParamSpec("canny_low", int, 100, "Canny edge detector: lower threshold", 0, 500),
            ParamSpec("canny_high", int, 200, "Canny edge detector: upper threshold", 0, 500),
        )
    return {spec.name: spec for spec in specs}


def default_params(preset: ModelPreset, controlnet: bool = False) -> StreamParams:
    """The preset's recommended starting point."""
    return StreamParams(**{name: spec.default for name, spec in param_specs(preset, controlnet).items()})


def params_json_schema(specs: dict[str, ParamSpec]) -> dict[str, Any]:
    """JSON Schema of the params object, for clients that build their controls from it."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: spec.json_schema() for name, spec in specs.items()},
    }
