"""A recorded stream run again: every input frame through the stream pipeline with the params in force at its time
and the modulated values the live path gave it, on the show's own clock.

The pipeline's clock reads the recording's time (a change's t when it is applied, then each frame's t), so prompt
transitions replay as they ran. Temporal smoothing carries state from frame to frame; running every frame in
order, one at a time, keeps it deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import av
import numpy as np

from pipelines import ModelComponents, ParamsError, StreamParams, StreamPipeline, params_model_for, processing_size
from pipelines.batch import stylise_batch
from pipelines.params import valid_range

from ..pacing import PacingParams
from .folder import FrameEvent, ParamsChange, Recording, RecordingError

# A frame line's t is its input frame's pts in whole milliseconds (frames of one burst are 1 ms apart): within half
# of one it names that frame. A change applies from the first frame at or after its t; this much is float noise.
SAME_FRAME = 0.0005
SAME_TIME = 1e-6
# Without a processing size in the events (no frame ran live), the input's own size, capped here: what a GPU
# serves by default (server/config.py's DEFAULT_MAX_RESOLUTION on CUDA).
FALLBACK_SIDE = 512


class ShowClock:
    """The recording's time in seconds, as the pipeline's prompt transitions read it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timeline:
    """A recording's events taken in time order as the input frames come."""

    def __init__(self, changes: list[ParamsChange], frames: list[FrameEvent]) -> None:
        # Sorted (stable): the writer may log a change after a frame event that is later in show time.
        self._changes = sorted(changes, key=lambda change: change.applies_from)
        self._frames = sorted(frames, key=lambda frame: frame.t)
        self._next_change = 0
        self._next_frame = 0

    def until(self, t: float) -> tuple[list[ParamsChange], FrameEvent | None]:
        """The changes that apply from the input frame at `t` on, in order, and the live path's event for that
        frame (None: the live path dropped it)."""
        changes = []
        while self._next_change < len(self._changes) and self._changes[self._next_change].applies_from <= t + SAME_TIME:
            changes.append(self._changes[self._next_change])
            self._next_change += 1
        event = None
        while self._next_frame < len(self._frames) and self._frames[self._next_frame].t <= t + SAME_FRAME:
            event = self._frames[self._next_frame]
            self._next_frame += 1
        if event is not None and event.t < t - SAME_FRAME:
            event = None  # an earlier frame's, which no input frame matched (not this one's)
        return changes, event


def master_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The processing size of a width x height frame with its longest side at `side`, both multiples of 64: the
    live path's `processing_size`, which also scales up here (a master may be larger than the camera)."""
    # processing_size only scales down; a whole-number multiple of the frame scales down to the same float sizes.
    factor = max(1, math.ceil(side / max(width, height)))
    return processing_size(width * factor, height * factor, side)


class ReplayedStream:
    """One recorded stream, run again frame by frame on `components`: at the recording's processing size or with
    the longest side `side`, with the recorded steps or `steps`."""

    def __init__(
        self, components: ModelComponents, recording: Recording, side: int | None = None, steps: int | None = None
    ) -> None:
        video = recording.video
        if side is None:
            side = recording.largest_live_side()
        if side is None:
            cap = recording.start_params.get("max_resolution", FALLBACK_SIDE)
            side = min(max(video.width, video.height), cap if isinstance(cap, int) else FALLBACK_SIDE)
        self.side = side
        self.steps = steps
        self.notes: list[str] = []
        self._left_out: set[str] = set()
        self.clock = ShowClock()
        # The pipeline starts on the recorded params as they were (no fade in from its defaults); each params class
        # is its own, so later changes are validated by the pipeline's.
        params = self._params(params_model_for(components), recording.start_params, "the start")
        self.pipeline = StreamPipeline(components, params=params, clock=self.clock)
        self.pipeline.control_shown = False  # a render writes no control image
        self.timeline = Timeline(recording.changes, recording.frames)
        # The master's size: the input's processing size. A camera that changed size mid-show is scaled to it.
        self.picture_size = master_size(video.width, video.height, side)
        # What the sound added to each modulated param at the last frame the live path ran: a frame it dropped
        # runs with the same push on the params then in force.
        self._offsets: dict[str, float] = {}
        self.live_frames = 0  # frames rendered that the live path ran too (the others it dropped)

    def render(self, frame: av.VideoFrame, t: float) -> np.ndarray:
        """The picture of the input frame at `t` seconds (uint8 H x W x 3 at `picture_size`)."""
        changes, event = self.timeline.until(t)
        self.live_frames += event is not None
        for change in changes:
            self.clock.now = change.t  # a transition starts when its change took effect
            self.pipeline.apply(self._params(self.pipeline.params_model, change.params, f"{change.t:.3f} s"))
        # Live, a frame is prepared after its arrival and after the changes before it: the clock never goes back.
        self.clock.now = max(t, self.clock.now)
        size = master_size(frame.width, frame.height, self.side)
        rgb = None
        if self.pipeline.needs_frame:
            # The live path's conversion (server/worker.py): libswscale, to RGB at the processing size in one pass.
            rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
        request = self.pipeline.prepare(rgb, size, self.picture_size, self._modulated(event))
        return stylise_batch([request])[0].cpu().numpy()

    def _params(self, model: type[StreamParams], recorded: Mapping[str, Any], when: str) -> StreamParams:
        """The model's params from the recorded ones: pacing params dropped (a render has no pace), `steps`
        overridden, validated as the server validates a change."""
        fields = model.model_fields
        values = {name: value for name, value in recorded.items() if name in fields}
        left_out = set(recorded) - set(fields) - set(PacingParams.model_fields) - self._left_out
        if left_out:
            self._left_out |= left_out
            self.notes.append(f"params this model does not take, left out: {', '.join(sorted(left_out))}")
        if self.steps is not None:
            values["steps"] = self.steps
        try:
            return model.validated(values)
        except ParamsError as error:
            raise RecordingError(f"the params at {when} do not fit this model: {error}") from None

    def _modulated(self, event: FrameEvent | None) -> dict[str, float]:
        """The frame's modulated values: the live path's own for a frame it ran, else the last pushes on the
        current params; each kept in the range valid now (another `steps` moves strength's floor)."""
        params = self.pipeline.params
        moved = {entry.param for entry in getattr(params, "modulations", ())}
        if event is not None:
            self._offsets = {
                name: value - getattr(params, name) for name, value in event.modulated.items() if name in moved
            }
            values = {name: value for name, value in event.modulated.items() if name in moved}
        else:
            values = {name: getattr(params, name) + offset for name, offset in self._offsets.items() if name in moved}
        context = {"steps": params.steps, "mode": params.mode}
        kept = {}
        for name, value in values.items():
            bounds = valid_range(type(params), name, context)
            if bounds is not None:
                kept[name] = round(min(max(value, bounds[0]), bounds[1]), 6)
        return kept
