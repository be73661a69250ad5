"""The stream pipeline: one camera frame in, one stylised frame out, with all per-parameter work done up front.

The stream's state lives here (params, prompt cache, temporal history); a frame leaves `prepare` as a FrameRequest
(frame.py) for the device side (batch.py, executor.py), which never reaches back into it.

It runs the same arithmetic as diffusers' pipelines — LatentConsistencyModelImg2ImgPipeline for an SD1.5 LCM UNet,
StableDiffusion(XL)Img2ImgPipeline with LCMScheduler for LCM-LoRA, Turbo and SDXL, StableDiffusion(XL)Pipeline for
text-to-image, and their ControlNet variants — minus everything that does not change between frames: prompt
embeddings, timesteps, LCM boundary coefficients, the guidance embedding, SDXL's size ids and the seeded noise are
computed when the parameters (or the processing size) change.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .batch import render_batch, stylise_batch
from .components import ModelComponents
from .conditioning import PromptEmbeds
from .frame import FramePlan, FrameRequest
from .noise import SeededNoise
from .params import NO_STYLE, StreamParams, params_model_for
from .presets import GuidanceKind
from .prompt_cache import PromptCache
from .schedule import Schedule, build_schedule, guidance_embedding
from .temporal import LatentHistory, MotionTracker, SmoothedFrame, Smoothing
from .transition import PromptTransition, blend

SIZE_MULTIPLE = 64
# Plans of modulated values kept per stream (see `_modulated_plan`), and schedules of modulated strengths with
# their scaled noise: a sound moves a value back and forth over a few dozen grid steps, so most frames find theirs.
MODULATED_PLANS = 64


def processing_size(width: int, height: int, max_side: int | None = None) -> tuple[int, int]:
    """The model's (width, height) for a frame: longest side at most `max_side`, both multiples of 64."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0

    def snap(side: float) -> int:
        # Half-up rounding, not Python's half-to-even: a 288-pixel side becomes 320, not 256.
        return max(SIZE_MULTIPLE, math.floor(side * scale / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)

    return snap(width), snap(height)


def check_frame(frame: Any) -> np.ndarray:
    """The frame if it is uint8 H x W x 3 with H, W >= 1; otherwise a ValueError that says what is wrong."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (0-255 RGB), got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must have shape H x W x 3 (RGB), got {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame is empty: shape {frame.shape}")
    return frame


class StreamPipeline:
    """Turns uint8 RGB frames into stylised uint8 frames with one model, at a processing size of multiples of 64.

    Several pipelines may share one `ModelComponents` and one `PromptCache` (one per stream): each keeps its own
    parameters, schedule and noise. `update` may be called from another thread; a frame in flight finishes with
    the plan it started with. `clock` times prompt transitions (tests pass a fake one).
    """

    def __init__(
        self,
        components: ModelComponents,
        prompt_cache: PromptCache | None = None,
        params: StreamParams | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.components = components
        self.clock = clock
        self.prompt_cache = prompt_cache if prompt_cache is not None else PromptCache()
        self.params_model = params_model_for(components)
        self._update_lock = threading.Lock()
        self._tick = 0  # txt2img frames drawn so far: each one gets new noise
        self.motion = MotionTracker()  # temporal smoothing: the host side (prepare) ...
        self.history = LatentHistory()  # ... and the device side, which each smoothed frame carries to render_batch
        self.smoothing_at: Callable[[float], Smoothing] = Smoothing.at  # the knob's techniques (a bench swaps them)
        # Whether anyone watches the control image: if not, a kind that is on view but does not run (scale 0) is
        # not preprocessed (a depth estimator run per frame for nobody). The server sets it per frame.
        self.control_shown = True
        self._plan = self._make_plan(params or self.params_model())
        # Modulated frames' plans, which belong to one base plan (dropped when it changes): by their values, and
        # (schedule, noise per size) by their strength.
        self._modulated_of: FramePlan | None = None
        self._modulated_plans: OrderedDict[tuple, FramePlan] = OrderedDict()
        self._modulated_schedules: OrderedDict[float, tuple[Schedule, dict[tuple[int, int], SeededNoise]]] = (
            OrderedDict()
        )

    @property
    def params(self) -> StreamParams:
        return self._plan.params

    @property
    def uses_controlnet(self) -> bool:
        return bool(self._plan.control_scales)

    @property
    def classifier_free(self) -> bool:
        """Whether each step runs the UNet on a batch of 2 (negative and positive prompt): guidance > 1, LCM-LoRA."""
        return self._plan.classifier_free

    @property
    def steps_per_frame(self) -> int:
        """The denoising steps one frame runs: fewer than `steps` where strength shortens the schedule."""
        return len(self._plan.schedule.steps)

    @property
    def needs_frame(self) -> bool:
        """False in txt2img without ControlNet: the camera is not looked at."""
        return not self._plan.txt2img or bool(self._plan.control_scales)

    def effective_params(self) -> dict[str, Any]:
        return self.params.as_dict()

    def update(self, **changes: Any) -> StreamParams:
        """Validate and apply parameter changes from the next frame on; a ParamsError leaves everything as it was."""
        with self._update_lock:
            return self._apply(self._plan.params.replace(changes))

    def apply(self, validated: StreamParams) -> StreamParams:
        """Apply params that a model built on `params_model` has validated (the server's settings of a stream,
        which add its own fields), from the next frame on: checked once where they came in, not again here."""
        if not isinstance(validated, self.params_model):
            raise TypeError(f"params validated by {type(validated).__name__}, not by this model's params")
        fields = {name: getattr(validated, name) for name in self.params_model.model_fields}
        with self._update_lock:
            return self._apply(self.params_model.model_construct(**fields))

    def _apply(self, params: StreamParams) -> StreamParams:
        if params != self._plan.params:
            self._plan = self._make_plan(params, previous=self._plan)
        return params

    def notes(self) -> list[str]:
        """Things a person should know about the current parameters with this model."""
        plan, guidance = self._plan, self.components.preset.guidance
        params = plan.params
        notes = []
        if params.negative_prompt and not plan.classifier_free:
            if guidance is GuidanceKind.EMBEDDED:
                notes.append("negative_prompt has no effect with an LCM UNet: guidance is built into the model")
            else:
                notes.append("negative_prompt has an effect only when guidance_scale > 1")
        if guidance is GuidanceKind.NONE and params.guidance_scale not in (0.0, 1.0):
            notes.append("this model takes no guidance: guidance_scale is ignored")
        if plan.txt2img:
            notes.append("txt2img: strength is not used; the camera only feeds the ControlNet, if any")
            if params.temporal_smoothing > 0:
                notes.append("temporal_smoothing follows the camera's motion: it has no effect in txt2img")
        elif len(plan.schedule.steps) != params.steps:
            notes.append(f"{len(plan.schedule.steps)} of {params.steps} steps run at this strength")
        return notes

    def __call__(
        self,
        frame: np.ndarray | None,
        size: tuple[int, int] | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Stylise one uint8 H x W x 3 frame; the result is uint8 at `output_size` (width, height), scaled on the
        device, or at the processing `size` if none is given. A frame is a batch of one (see batch.py)."""
        return stylise_batch([self.prepare(frame, size, output_size)])[0].cpu().numpy()

    def prepare(
        self,
        frame: np.ndarray | None,
        size: tuple[int, int] | None = None,
        output_size: tuple[int, int] | None = None,
        modulated: Mapping[str, float] | None = None,
    ) -> FrameRequest:
        """The host side of one frame: checks, the plan and processing size, the control images, txt2img's noise,
        the camera's motion; what comes out is ready for the device (batch.py, the executor).

        `frame` may be None only in txt2img mode without ControlNet, and then `size` is required. `output_size`
        (width, height): the size the picture leaves at, scaled on the device; None: the processing size.
        `modulated`: values of numeric params for this frame alone (modulation.py's), already in their valid
        ranges; the params stay as they were set.
        """
        plan = self._plan  # one plan for the whole frame, whatever `update` does meanwhile
        if modulated:
            plan = self._modulated_plan(plan, modulated)
        if frame is None:
            if not plan.txt2img or plan.control_scales:
                raise ValueError("this mode needs a camera frame")
            if size is None:
                raise ValueError("without a frame, the processing size must be given")
        else:
            frame = check_frame(frame)
            size = size or processing_size(frame.shape[1], frame.shape[0])
        width, height = size
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width <= 0 or height <= 0:
            raise ValueError(f"processing size must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}")
        host_tensors: dict[str, torch.Tensor] = {}
        control_images = self._control_images(plan, frame, width, height) if frame is not None else {}
        for kind in plan.control_scales:
            host_tensors[f"control_{kind}"] = torch.from_numpy(control_images[kind])
        control_image = None if plan.control_view is None else control_images.get(plan.control_view)
        temporal = None
        if plan.txt2img:
            host_tensors["noise"] = torch.stack(plan.txt2img_draws((height, width), self._tick))
            self._tick += 1
            self.motion.reset()  # back in img2img, motion starts from that frame, not from one long gone
        else:
            assert frame is not None  # img2img: refused above without one
            host_tensors["pixels"] = torch.from_numpy(np.ascontiguousarray(frame))
            if plan.params.temporal_smoothing > 0:
                temporal = SmoothedFrame(self.smoothing_at(plan.params.temporal_smoothing), self.history)
                factor = self.components.vae_scale_factor
                host_tensors.update(self.motion.step(frame, (height // factor, width // factor)))
            else:
                self.motion.reset()
        progress = plan.prompt.progress(self.clock())
        return FrameRequest(plan, width, height, host_tensors, control_image, output_size, progress, temporal)

    @torch.inference_mode()
    def render(self, frame: np.ndarray | None, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The float image in [0, 1] (1 x 3 x H x W, on the device) before quantisation to uint8."""
        request = self.prepare(frame, size)
        device = self.components.device
        return render_batch([request], [{k: t.to(device) for k, t in request.host_tensors.items()}])

    def _control_images(self, plan: FramePlan, frame: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
        """The control image of each kind the frame needs, at the processing size, uint8 H x W x 3."""
        kinds = plan.preprocessed_kinds(self.control_shown)
        if not kinds:
            return {}
        import cv2

        if frame.shape[:2] != (height, width):
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        preprocessors = self.components.preprocessors
        return {kind: preprocessors[kind](frame, plan.params) for kind in kinds}

    def _modulated_plan(self, base: FramePlan, values: Mapping[str, float]) -> FramePlan:
        """The plan of `base`'s params with `values`, for one frame. Built once per set of values and kept: a frame
        that finds its plan costs a dictionary look-up. What the values leave alone is `base`'s own (the prompt
        embeddings from the cache, the noise of an unchanged schedule); a new strength builds its schedule and
        scales its noise once."""
        params = base.params
        if all(getattr(params, name) == value for name, value in values.items()):
            return base
        if self._modulated_of is not base:
            self._modulated_of = base
            self._modulated_plans.clear()
            self._modulated_schedules.clear()
        key = tuple(sorted(values.items()))
        plan = _cached(self._modulated_plans, key)
        if plan is None:
            params = params.model_construct(**{**dict(params), **values})  # valid: the modulator kept the ranges
            schedule_and_noise = None
            if params.strength != base.params.strength and not base.txt2img:
                schedule_and_noise = _cached(self._modulated_schedules, params.strength)
                if schedule_and_noise is None:
                    schedule_and_noise = (self._schedule(params), {})
                    _keep(self._modulated_schedules, params.strength, schedule_and_noise)
            plan = self._make_plan(params, base, frame_of=schedule_and_noise or (base.schedule, base.noise))
            _keep(self._modulated_plans, key, plan)
            device = self.components.device
            if device.type == "cuda" and torch.cuda.current_stream(device) == torch.cuda.default_stream(device):
                # Its tensors (the prompt's blend, say) were launched on the default stream and are read on the
                # executor's compute stream, which does not wait for it: they must be done before the frame goes.
                torch.cuda.current_stream(device).synchronize()
        return plan

    def _schedule(self, params: StreamParams) -> Schedule:
        c = self.components
        strength = None if params.mode == "txt2img" else params.strength
        return build_schedule(c.scheduler, c.preset.schedule, params.steps, strength, device=c.device, dtype=c.dtype)

    def _make_plan(
        self,
        params: StreamParams,
        previous: FramePlan | None = None,
        frame_of: tuple[Schedule, dict[tuple[int, int], SeededNoise]] | None = None,
    ) -> FramePlan:
        """The plan of `params`, following on `previous`. `frame_of`: a modulated frame's (schedule, noise cache);
        its prompt moves with `previous`'s transition (only its blend is its own) instead of starting one."""
        c = self.components
        schedule, noise = frame_of if frame_of is not None else (self._schedule(params), {})
        classifier_free = c.preset.guidance is GuidanceKind.CLASSIFIER_FREE and params.guidance_scale > 1
        if frame_of is not None and previous is not None:
            prompt = previous.prompt
            if params.prompt_mix != previous.params.prompt_mix:
                prompt = dataclasses.replace(prompt, target=self._blended_prompt(params))
        else:
            prompt = self._prompt_transition(params, previous)
        negative = None
        if classifier_free:
            if c.is_sdxl and not params.negative_prompt:
                negative = prompt.target.zeros_like()  # SDXL's force_zeros_for_empty_prompt
            else:
                negative = self.prompt_cache.get(c, params.negative_prompt)
        timestep_cond = None
        if c.has_guidance_embedding:
            dim = c.unet.config["time_cond_proj_dim"]
            timestep_cond = guidance_embedding(params.guidance_scale, dim, c.device, c.dtype)
        control_scales = control_scales_of(params, c.control_kinds)
        return FramePlan(
            c,
            params,
            schedule,
            prompt,
            negative,
            classifier_free,
            timestep_cond,
            control_scales,
            control_view_of(params, c.control_kinds, control_scales),
            style_of(params),
            guidance_tensor=torch.tensor(params.guidance_scale, device=c.device, dtype=c.dtype),
            control_scale_tensors={
                kind: torch.tensor(scale, device=c.device, dtype=c.dtype) for kind, scale in control_scales.items()
            },
            noise=noise,
        )

    def _blended_prompt(self, params: StreamParams) -> PromptEmbeds:
        """The blend of prompt and prompt_b at prompt_mix, from the prompt cache."""
        c = self.components
        target = self.prompt_cache.get(c, params.prompt)
        if params.prompt_mix > 0:
            target = blend(target, self.prompt_cache.get(c, params.prompt_b), params.prompt_mix)
        return target

    def _prompt_transition(self, params: StreamParams, previous: FramePlan | None) -> PromptTransition:
        """The prompt conditioning of new params: the blend of prompt and prompt_b, reached over transition_s from
        what the last plan shows now; a change that leaves the blend alone keeps a running transition as it is."""
        target = self._blended_prompt(params)
        if previous is None:
            return PromptTransition(target)
        old = previous.params
        if (old.prompt, old.prompt_b, old.prompt_mix) == (params.prompt, params.prompt_b, params.prompt_mix):
            return previous.prompt
        return previous.prompt.towards(target, self.clock(), params.transition_s)


def control_scales_of(params: StreamParams, kinds: tuple[str, ...]) -> dict[str, float]:
    """The scale of each loaded kind that runs (scale > 0), in load order."""
    scales = {kind: getattr(params, f"controlnet_scale_{kind}") for kind in kinds}
    return {kind: scale for kind, scale in scales.items() if scale > 0}


def control_view_of(params: StreamParams, kinds: tuple[str, ...], scales: dict[str, float]) -> str | None:
    """The kind the control view shows: the one `control_view` names, else the running one with the largest scale
    (the first loaded on a tie); None when none runs."""
    named = getattr(params, "control_view", "auto")
    if named != "auto":
        return named
    return max(scales, key=lambda kind: (scales[kind], -kinds.index(kind)), default=None)


def style_of(params: StreamParams) -> tuple[str, float] | None:
    """The style a frame runs with, or None for the model alone (no styles loaded, `none`, or scale 0)."""
    style, scale = getattr(params, "style", NO_STYLE), getattr(params, "style_scale", 0.0)
    return None if style == NO_STYLE or scale == 0 else (style, scale)


def _cached(cache: OrderedDict, key: Any) -> Any:
    """`cache[key]` marked as the latest used, or None."""
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _keep(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    while len(cache) > MODULATED_PLANS:
        cache.popitem(last=False)
