"""One session's work on the engine thread: its newest camera frame, its pipeline and its parameters."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from av import VideoFrame

from pipelines import ParamSpec, StreamPipeline, processing_size

from .mailbox import LatestSlot
from .session_params import SessionParams
from .stats import SessionStats
from .tracks import StylisedTrack


@dataclass(frozen=True)
class CameraFrame:
    frame: VideoFrame
    arrival: float  # time.monotonic() when the pump received it
    queue_seconds: float  # how far behind real time it arrived (see pump_frames)


class SessionWorker:
    """Implements the engine's client interface for one viewer. Only the engine thread calls `process_one`
    and `update`; the pump calls `submit` from the event loop."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        output: StylisedTrack,
        stats: SessionStats,
        wake,
        session_specs: dict[str, ParamSpec],
        control_output: StylisedTrack | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.output = output
        self.control_output = control_output  # the Canny map, when the viewer asked for a second video track
        self.stats = stats
        self.session_specs = session_specs
        self.session_params = SessionParams.defaults(session_specs)
        self.inbox: LatestSlot[CameraFrame] = LatestSlot()
        self._wake = wake
        self._last_start = float("-inf")
        # txt2img with ControlNet keeps drawing from the last camera frame when no newer one has come.
        self._last_camera: CameraFrame | None = None

    def submit(self, frame: VideoFrame, arrival: float, queue_seconds: float) -> None:
        dropped_before = self.inbox.dropped
        self.inbox.put(CameraFrame(frame, arrival, queue_seconds))
        self.stats.add(frames_in=1, dropped_in=self.inbox.dropped - dropped_before)
        self._wake()

    @property
    def _draws_without_camera(self) -> bool:
        """txt2img draws on its own clock: without ControlNet it needs no frame, with it the last one will do."""
        return self.pipeline.params.mode == "txt2img" and (
            not self.pipeline.needs_frame or self._last_camera is not None
        )

    def next_due(self, now: float) -> float | None:
        if not self.inbox.has_item() and not self._draws_without_camera:
            return None
        return self._last_start + 1.0 / self.session_params.target_fps

    def process_one(self) -> None:
        camera = self.inbox.take()
        if camera is not None:
            self._last_camera = camera
        elif self._draws_without_camera:
            camera = self._last_camera
        if camera is None and self.pipeline.needs_frame:
            return
        self._last_start = now = time.monotonic()
        max_side = self.session_params.max_resolution
        if camera is None:  # txt2img before any camera frame: a square picture
            width = height = max_side
            rgb = None
        else:
            frame = camera.frame
            width, height = processing_size(frame.width, frame.height, max_side)
            # libswscale converts and scales in one pass, here on the engine thread, never on the event loop.
            rgb = frame.to_ndarray(format="rgb24", width=width, height=height) if self.pipeline.needs_frame else None
        start = time.perf_counter()
        stylised = self.pipeline(rgb, size=(width, height))
        model_seconds = time.perf_counter() - start
        # A txt2img picture is new when it is drawn; an img2img one is as old as its camera frame.
        arrival = now if self.pipeline.params.mode == "txt2img" or camera is None else camera.arrival
        self.output.publish(VideoFrame.from_ndarray(stylised, format="rgb24"), arrival)
        control = self.pipeline.last_control_image
        if self.control_output is not None and control is not None and self.pipeline.uses_controlnet:
            self.control_output.publish(VideoFrame.from_ndarray(control, format="rgb24"), arrival)
        self.stats.width, self.stats.height = width, height
        queue_seconds = camera.queue_seconds if camera is not None else 0.0
        self.stats.add(frames_processed=1, model_seconds=model_seconds, queue_seconds=queue_seconds)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate every change first; apply all or none. Returns the effective params and notes."""
        known = {**self.pipeline.specs, **self.session_specs}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")
        session_changes = {k: v for k, v in changes.items() if k in self.session_specs}
        session_params = self.session_params.replace(session_changes, self.session_specs)
        self.pipeline.update(**{k: v for k, v in changes.items() if k in self.pipeline.specs})
        self.session_params = session_params
        return self.effective()

    def effective(self) -> dict[str, Any]:
        return {
            "params": {**self.pipeline.effective_params(), **dataclasses.asdict(self.session_params)},
            "notes": self.pipeline.notes(),
        }
