"""Stream parameters as pydantic models: one definition gives the defaults, the validation and the JSON schema.

A model's limits come from its preset (steps, guidance) and its ControlNet kinds, so each loaded model gets its own
params class from `params_model`. Every change is validated whole — unknown names forbidden, types strict (no
`true` for 1, no "3" for 3), ranges and cross-field rules checked — and refused with `ParamsError`, whose messages
name the parameter and the allowed range, before anything changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import Self

from .presets import GuidanceKind, ModelPreset, ScheduleKind
from .validation import MAX_PROMPT_LENGTH, Params, ParamsError, WholeNumber, field_bounds

if TYPE_CHECKING:
    from .components import ModelComponents

MODES = ("img2img", "txt2img")
NO_STYLE = "none"  # the `style` of the model alone (a LoRA file called none.* gets another name)
# What a modulation may follow: a stream's sound features (server/media/sound_features.py makes them), each 0-1.
MODULATION_SOURCES = ("level", "low", "mid", "high", "onset", "beat")
MAX_MODULATIONS = 8


class StreamParams(Params):
    """What the person controls in the picture. Frozen: a change makes a new object, so a frame never sees half
    an update. Limits here are the widest; `params_model` narrows them to the loaded model."""

    # The loaded model's rule that a frame runs at least one step, as (schedule kind, origin_steps); `params_model`
    # sets it, and `valid_range` reads it so that a fader's floor is the rule's own. None: no such rule.
    step_rule: ClassVar[tuple[ScheduleKind, int] | None] = None
    # Numbers with a range that a frame does not read as it runs, so a modulation of them would show nothing:
    # transition_s only times the next prompt change.
    not_modulated: ClassVar[frozenset[str]] = frozenset({"transition_s"})

    prompt: str = Field(
        default="an oil painting, vivid colors, thick brush strokes",
        max_length=MAX_PROMPT_LENGTH,
        description="what the picture should become",
    )
    negative_prompt: str = Field(
        default="",
        max_length=MAX_PROMPT_LENGTH,
        description="what to steer away from (used only with classifier-free guidance)",
    )
    prompt_b: str = Field(
        default="", max_length=MAX_PROMPT_LENGTH, description="a second prompt, blended with the first by prompt_mix"
    )
    prompt_mix: float = Field(
        default=0.0, ge=0.0, le=1.0, description="0 = prompt, 1 = prompt_b, between: a blend (a fader)"
    )
    transition_s: float = Field(
        default=0.0, ge=0.0, le=10.0, description="seconds a new prompt (or mix) takes to fade in; 0 cuts"
    )
    strength: float = Field(
        default=0.5, ge=0.01, le=1.0, description="how far to move from the camera frame: 0 keeps it, 1 ignores it"
    )
    steps: WholeNumber = Field(default=2, ge=1, le=8, description="denoising steps per frame")
    guidance_scale: float = Field(
        default=8.0, ge=0.0, le=20.0, description="how strongly the prompt steers the picture"
    )
    seed: WholeNumber = Field(
        default=0, ge=0, le=2**31 - 1, description="noise seed: the same seed and frame give the same picture"
    )
    temporal_smoothing: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="steadier video: noise moves with the picture and the last frame carries over along the "
        "motion; 0 = off, 1 = strongest (turn it down for fast cuts and fast motion)",
    )
    mode: Literal["img2img", "txt2img"] = Field(
        default="img2img",
        description="img2img restyles the camera; txt2img ignores it and draws new pictures at the target rate",
    )

    @classmethod
    def validated(cls, values: dict[str, Any]) -> Self:
        """As `Params.validated`, with a modulation's problems told by its place in the list
        (`modulations[1].amount`): the generic words know only top-level params."""
        if not isinstance(values, dict) or "modulations" not in cls.model_fields:
            return super().validated(values)
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            details = error.errors()
        entry_model = get_args(cls.model_fields["modulations"].annotation)[0]
        problems: list[tuple[str | None, str]] = [
            _modulation_problem(entry_model, d) for d in details if d["loc"][:1] == ("modulations",)
        ]
        try:  # the other params' problems in the usual words (no rule of theirs reads modulations)
            super().validated({**values, "modulations": []})
        except ParamsError as error:
            problems = error.errors + problems
        raise ParamsError(problems)


def steps_that_run(kind: ScheduleKind, steps: int, strength: float | None, origin_steps: int) -> int:
    """How many denoising steps a frame runs, as the diffusers pipeline of `kind` would (0: none at all).

    An SD1.5 LCM UNet's img2img always runs `steps`, if strength leaves that many of its `origin_steps` timesteps
    (else 0); the other img2img pipelines run int(steps x strength). `strength=None` is text-to-image: all.
    """
    if strength is None:
        return steps
    if kind is ScheduleKind.LCM_IMG2IMG:
        return steps if steps <= int(origin_steps * strength) else 0
    return min(int(steps * strength), steps)


def lowest_strength(kind: ScheduleKind, steps: int, origin_steps: int) -> float:
    """The lowest strength (to 4 decimals, rounded up) at which img2img runs `steps` (see `steps_that_run`); above
    1.0 when no strength does."""
    exact = steps / origin_steps if kind is ScheduleKind.LCM_IMG2IMG else 1 / steps
    strength = math.ceil(round(exact * 10_000, 6)) / 10_000
    # Float products round either way (0.29 x 100 = 28.999999999999996): the rule itself has the last word.
    while strength <= 1.0 and steps_that_run(kind, steps, strength, origin_steps) == 0:
        strength = round(strength + 0.0001, 4)
    return strength


def params_model(
    preset: ModelPreset, controls: Sequence[str] = (), origin_steps: int = 50, styles: Sequence[str] = ()
) -> type[StreamParams]:
    """The params class of one loaded model: its preset's defaults and limits, its ControlNet kinds' params (each
    kind's own, and its `controlnet_scale_{kind}`), its styles (`style`, `style_scale`), and the rule that a frame
    runs at least one step (`origin_steps`: the scheduler's original_inference_steps)."""
    from .control import control_kind

    # LCM-LoRA: the guide recommends guidance in [1, 2]; 1 or less turns classifier-free guidance off.
    max_guidance = 2.0 if preset.guidance is GuidanceKind.CLASSIFIER_FREE else 20.0
    kinds = [control_kind(name) for name in controls]
    bases = (StreamParams, *(kind.params for kind in kinds if kind.params is not None))
    control_fields: dict[str, Any] = {
        kind.scale_param: (
            float,
            Field(
                default=0.5,
                ge=0.0,
                le=2.0,
                description=f"how much the picture follows {kind.reads}; 0 skips this ControlNet",
            ),
        )
        for kind in kinds
    }
    if len(kinds) > 1:
        control_fields["control_view"] = (
            Literal[("auto", *controls)],
            Field(
                default="auto",
                description="the control image the second video shows; auto: the one with the largest scale",
            ),
        )

    def at_least_one_step(params: StreamParams) -> StreamParams:
        strength = None if params.mode == "txt2img" else params.strength
        if steps_that_run(preset.schedule, params.steps, strength, origin_steps) == 0:
            steps, strength = params.steps, params.strength
            lowest = lowest_strength(preset.schedule, steps, origin_steps)
            if preset.schedule is ScheduleKind.LCM_IMG2IMG:
                template = (
                    "strength {strength} leaves fewer LCM timesteps than steps={steps}: raise strength to at least "
                    "{lowest} or lower steps"
                )
            else:
                template = (
                    "steps={steps} at strength {strength} runs no denoising step (int(steps x strength) = 0): "
                    "raise strength to at least {lowest} or raise steps"
                )
            # pydantic fills the template's {names}, as strings here so that the words are Python's.
            context = {"strength": str(strength), "steps": str(steps), "lowest": f"{lowest:g}"}
            raise PydanticCustomError("no_step", template, context)
        return params

    style_fields: dict[str, Any] = {}
    if styles:
        style_fields["style"] = (
            Literal[(NO_STYLE, *styles)],
            Field(default=NO_STYLE, description="a style LoRA (from --lora-dir); none = the model alone"),
        )
        style_fields["style_scale"] = (
            float,
            Field(default=1.0, ge=0.0, le=1.5, description="how strongly the style shows"),
        )
    # The decorators' proxies, as pydantic's documentation passes them; create_model's annotation says callables.
    validators: dict[str, Any] = {"at_least_one_step": model_validator(mode="after")(at_least_one_step)}
    if len(kinds) == 1:
        validators["one_control_scale"] = model_validator(mode="before")(_single_scale_alias(kinds[0].scale_param))
    base = StreamParams
    # A preset may have its own first prompt (the toy's names one of its style words); the rest keep the base's.
    prompt = base.model_fields["prompt"]
    first_prompt = prompt.default if preset.default_prompt is None else preset.default_prompt
    model = create_model(
        base.__name__,
        __base__=bases,
        __validators__=validators,
        prompt=(str, Field(default=first_prompt, max_length=MAX_PROMPT_LENGTH, description=prompt.description)),
        strength=(float, _narrowed(base, "strength", default=preset.default_strength)),
        steps=(WholeNumber, _narrowed(base, "steps", default=preset.default_steps, le=preset.max_steps)),
        guidance_scale=(float, _narrowed(base, "guidance_scale", default=preset.default_guidance, le=max_guidance)),
        **control_fields,
        **style_fields,
    )
    assert issubclass(model, StreamParams)  # its first base; the kinds' params classes are mixed in after it
    model.step_rule = (preset.schedule, origin_steps)
    return with_modulations(model)


def _single_scale_alias(scale_param: str) -> Callable[[type, Any], Any]:
    """With one ControlNet kind loaded, `controlnet_scale` (the name from before kinds) sets its scale."""

    def alias(cls: type, data: Any) -> Any:
        if isinstance(data, dict) and "controlnet_scale" in data:
            data = {**data, scale_param: data["controlnet_scale"]}
            del data["controlnet_scale"]
        return data

    return alias


def _narrowed(model: type[BaseModel], name: str, default: Any, le: float | None = None) -> Any:
    """The field `name` of `model` with another default (and upper limit), everything else kept."""
    field = model.model_fields[name]
    lower = next(m.ge for m in field.metadata if hasattr(m, "ge") and m.ge is not None)
    upper = le if le is not None else next(m.le for m in field.metadata if hasattr(m, "le") and m.le is not None)
    return Field(default=default, ge=lower, le=upper, description=field.description)


def params_model_for(components: ModelComponents) -> type[StreamParams]:
    """The params class of loaded components (their preset, ControlNet kinds and scheduler)."""
    origin_steps = components.scheduler.config["original_inference_steps"]
    return params_model(components.preset, components.control_kinds, origin_steps, components.style_names)


def default_params(preset: ModelPreset, controls: Sequence[str] = ()) -> StreamParams:
    """The preset's recommended starting point."""
    return params_model(preset, controls)()


def params_json_schema(*models: type[BaseModel]) -> dict[str, Any]:
    """JSON Schema of one params object made of these models' fields, for clients that build controls from it."""
    properties: dict[str, Any] = {}
    for model in models:
        properties.update(model.model_json_schema()["properties"])
    return {"type": "object", "additionalProperties": False, "properties": properties}


def numeric_range(model: type[BaseModel], name: str) -> tuple[float, float, bool] | None:
    """(minimum, maximum, whole numbers only) of a numeric param with a range; None for any other param."""
    field = model.model_fields.get(name)
    if field is None or field.annotation not in (int, float):
        return None
    lower, upper, _ = field_bounds(model, name)
    if lower is None or upper is None:
        return None
    return lower, upper, field.annotation is int


def valid_range(model: type[BaseModel], name: str, values: dict[str, Any]) -> tuple[float, float, bool] | None:
    """`numeric_range` narrowed to what `model` accepts with the other params at `values`: strength's floor is the
    lowest strength at which a frame runs a step (`lowest_strength`; above the maximum when none does)."""
    bounds = numeric_range(model, name)
    rule: tuple[ScheduleKind, int] | None = getattr(model, "step_rule", None)
    if bounds is None or name != "strength" or rule is None or values.get("mode") == "txt2img":
        return bounds
    lower, upper, whole = bounds
    kind, origin_steps = rule
    return max(lower, lowest_strength(kind, values["steps"], origin_steps)), upper, whole


def modulatable_params(model: type[BaseModel]) -> tuple[str, ...]:
    """The params a modulation may move: numbers with a range that a frame reads as it runs. Whole numbers (steps,
    seed) are left out: each value is another plan (another schedule, other noise), not a shade of the picture."""
    excluded = getattr(model, "not_modulated", frozenset())
    return tuple(
        name
        for name in model.model_fields
        if name not in excluded and (bounds := numeric_range(model, name)) is not None and not bounds[2]
    )


def modulation_model(params: Sequence[str]) -> type[Params]:
    """One entry of `modulations` for a model whose modulatable params are `params`."""
    # Literals made at run time, which a type checker cannot read as types (so, as control_fields above, a dict).
    choices: dict[str, Any] = {
        "param": (Literal[tuple(params)], Field(description="the param to move (a number with a range)")),
        "source": (Literal[MODULATION_SOURCES], Field(description="the sound feature that moves it (0-1)")),
    }
    return create_model(
        "Modulation",
        __base__=Params,
        **choices,
        amount=(
            float,
            Field(
                ge=-1.0, le=1.0, description="how far a full source moves it, as a share of its range (below 0: down)"
            ),
        ),
        smooth_ms=(
            float,
            Field(
                default=100.0,
                ge=0.0,
                le=2000.0,
                description="time constant of the source's smoothing (one-pole low-pass)",
            ),
        ),
    )


def with_modulations(model: type[StreamParams]) -> type[StreamParams]:
    """`model` with its `modulations` param: the entries' `param` is one of the model's own modulatable params."""
    entry = modulation_model(modulatable_params(model))
    # Entries on one param add up; the same param and source twice is allowed too: with two smooth_ms it is a fast
    # hit on a slow swell.
    field = Field(
        default_factory=list,
        max_length=MAX_MODULATIONS,
        description=f"up to {MAX_MODULATIONS} links from the sound to params: each frame runs with the param at "
        "base + amount x range x smoothed source, kept in the range valid at that moment; entries on one param add up",
        # Inline, not a $ref: the served schema is the params' properties alone (params_json_schema), without $defs.
        json_schema_extra=lambda schema: schema.update(items=entry.model_json_schema()),
    )
    # A list of a class made at run time, which a type checker cannot read as a type.
    return create_model(model.__name__, __base__=model, modulations=(list[entry], field))  # pyright: ignore[reportInvalidTypeForm]


def _modulation_problem(entry_model: type[BaseModel], detail: Any) -> tuple[str, str]:
    """One pydantic error inside `modulations` in words that name the entry and its key."""
    kind, location, value = detail["type"], detail["loc"][1:], detail.get("input")
    keys = ", ".join(entry_model.model_fields)
    if not location:
        if kind == "too_long":
            return "modulations", f"modulations has {len(value)} entries; the limit is {MAX_MODULATIONS}"
        return "modulations", f"modulations must be a list of {{{keys}}} objects, got {_json_kind(value)}"
    where = f"modulations[{location[0]}]"
    if len(location) == 1:
        return "modulations", f"{where} must be an object {{{keys}}}, got {_json_kind(value)}"
    key = str(location[1])
    if kind == "extra_forbidden":
        return "modulations", f"{where}: unknown key {key}; known: {keys}"
    if kind == "missing":
        return "modulations", f"{where}.{key} is missing"
    if kind == "literal_error" and key == "param":
        allowed = ", ".join(get_args(entry_model.model_fields["param"].annotation))
        return "modulations", f"{where}.param: {value!r} cannot be modulated; modulatable: {allowed}"
    if kind == "literal_error":
        return "modulations", f"{where}.source must be one of {', '.join(MODULATION_SOURCES)}; got {value!r}"
    lower, upper, _ = field_bounds(entry_model, key)
    if kind in ("greater_than_equal", "less_than_equal"):
        return "modulations", f"{where}.{key} must be between {lower:g} and {upper:g}, got {value}"
    if entry_model.model_fields[key].annotation is float:
        return "modulations", f"{where}.{key} must be a number between {lower:g} and {upper:g}, got {_json_kind(value)}"
    return "modulations", f"{where}.{key} must be a string, got {_json_kind(value)}"


def _json_kind(value: Any) -> str:
    names = {bool: "a boolean", type(None): "null", str: "a string", tuple: "a tuple", dict: "an object"}
    return names.get(type(value), repr(value))
