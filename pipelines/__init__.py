"""lcmlive's model side: presets and loading, the prompt cache and the stream pipeline. No networking."""

from .components import ModelComponents
from .devices import default_dtype, resolve_device
from .executor import FrameExecutor
from .loading import ModelUnavailableError, load_model
from .params import (
    StreamParams,
    default_params,
    params_json_schema,
    params_model,
    params_model_for,
)
from .presets import PRESETS, GuidanceKind, ModelPreset, ScheduleKind, get_preset
from .prompt_cache import PromptCache
from .stream import StreamPipeline, check_frame, processing_size
from .validation import ParamsError

__all__ = [
    "PRESETS",
    "GuidanceKind",
    "FrameExecutor",
    "ModelComponents",
    "ModelPreset",
    "ModelUnavailableError",
    "ParamsError",
    "PromptCache",
    "ScheduleKind",
    "StreamParams",
    "StreamPipeline",
    "check_frame",
    "default_dtype",
    "default_params",
    "get_preset",
    "load_model",
    "params_model",
    "params_model_for",
    "params_json_schema",
    "processing_size",
    "resolve_device",
]
