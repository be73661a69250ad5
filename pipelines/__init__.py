"""lcmlive's model side: presets and loading, the prompt cache and the stream pipeline. No networking."""

from .components import ModelComponents
from .devices import default_dtype, resolve_device
from .executor import FrameExecutor
from .loading import ModelUnavailableError, load_model
from .params import ParamSpec, StreamParams, default_params, param_specs, params_json_schema
from .presets import PRESETS, GuidanceKind, ModelPreset, ScheduleKind, get_preset
from .prompt_cache import PromptCache
from .stream import StreamPipeline, check_frame, processing_size

__all__ = [
    "PRESETS",
    "GuidanceKind",
    "FrameExecutor",
    "ModelComponents",
    "ModelPreset",
    "ModelUnavailableError",
    "ParamSpec",
    "PromptCache",
    "ScheduleKind",
    "StreamParams",
    "StreamPipeline",
    "check_frame",
    "default_dtype",
    "default_params",
    "get_preset",
    "load_model",
    "param_specs",
    "params_json_schema",
    "processing_size",
    "resolve_device",
]
