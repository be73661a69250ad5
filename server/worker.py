"""One stream's work on the engine thread: its newest camera frame, its pipeline and its parameters."""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from av import VideoFrame

from pipelines import ParamsError, StreamPipeline, processing_size
from pipelines.executor import FrameResult
from pipelines.frame import FrameRequest
from pipelines.modulation import Modulator
from pipelines.resolution import ResolutionController

from .media.feed import Feed
from .media.mailbox import LatestSlot
from .pacing import PacingParams, settings_model
from .stats import FrameTimes, StreamStats

# Told of each frame sent to the model: its arrival, processing size, modulated values and sound features.
OnFrame = Callable[[float, tuple[int, int], dict[str, float], Mapping | None], None]

# A frame passed over by the pacing runs if no newer one has come by this many camera intervals after it.
NEXT_FRAME_LATE = 1.5
CAMERA_INTERVALS = 8  # the last intervals between camera frames, whose median is the camera's


@dataclass(frozen=True)
class StreamFrame:
    """One frame of a stream for the engine: prepared for the device, and what the stream does with its result."""

    request: FrameRequest
    finish: Callable[[FrameResult], None]
    fail: Callable[[BaseException], None]


@dataclass(frozen=True)
class CameraFrame:
    """A camera frame in the stream's mailbox, with when it came."""

    frame: VideoFrame
    arrival: float  # time.monotonic() when its last packet came (see pump_frames)
    decoded: float  # time.monotonic() when the pump handed it over, decoded
    queue_seconds: float  # how far behind real time it arrived (see pump_frames)


class FrameSchedule:
    """When a stream's next frame may start: at most `fps` frames a second on average, each as soon as it comes.

    A frame may start up to one interval before the exact rate would start it (GCRA with one interval of
    tolerance), so arrival jitter costs no wait. A frame earlier than that (a camera faster than the target) is
    passed over for the next one, which will be due when it comes; it runs only if none comes (`newest` and
    `camera_interval` say when the frame in the mailbox came and how often frames come).

    Starting each frame one interval after the last one's start, as before, made a camera at the target's rate
    wait for the pacing clock: every frame that came a little early (jitter, a camera clock a little fast) waited out
    the difference, and the waits added up until a frame was replaced. A 5 fps camera with target_fps 5 (tiny at
    128 px, model 84 ms): wait 79 ms p50 of a 179 ms latency (bench --av's clients, the loaded 2-core CPU).
    """

    def __init__(self) -> None:
        self._next = float("-inf")  # when the next frame would start at exactly the rate

    def due(self, fps: float, newest: float | None = None, camera_interval: float | None = None) -> float:
        due = self._next - 1.0 / fps
        if newest is None or camera_interval is None or newest >= due:
            return due
        return max(due, newest + NEXT_FRAME_LATE * camera_interval)

    def started(self, now: float, fps: float) -> None:
        self._next = max(self._next, now) + 1.0 / fps


class StreamWorker:
    """Implements the engine's client interface for one stream. Only the engine thread calls `prepare`, the
    frames' callbacks and `update`; the pump calls `submit` from the event loop."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        picture: Feed,
        stats: StreamStats,
        wake,
        pacing_model: type[PacingParams],
        control: Feed | None = None,
        device_busy: Callable[[], float] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.picture = picture  # the stylised picture's feed: the publisher's return track, WHEP viewers, /view
        # The control image on view (the Canny map, the depth map), for those who asked for a second video track.
        self.control = control
        self.stats = stats
        self.pacing = pacing_model()
        self.settings_model = settings_model(pipeline.params_model, pacing_model)
        self.controller = ResolutionController(
            self.pacing.target_fps,
            max_side=self.pacing.max_resolution,
            floor=self.pacing.min_resolution,
        )
        self._camera_size: tuple[int, int] | None = None  # (width, height): its longest side caps the ladder
        self._device_busy = device_busy
        self._busy_mark: tuple[float, float] | None = None  # (wall time, device busy seconds) at the last frame
        # Similarity skip: a small grey thumbnail of the last camera frame that ran the model, and its result.
        self._last_thumbnail: np.ndarray | None = None
        self._last_result: np.ndarray | None = None
        self.inbox: LatestSlot[CameraFrame] = LatestSlot()
        self._wake = wake
        self.schedule = FrameSchedule()
        self._camera_intervals: deque[float] = deque(maxlen=CAMERA_INTERVALS)
        self._newest_decoded: float | None = None  # when the newest camera frame was handed over
        # txt2img with ControlNet keeps drawing from the last camera frame when no newer one has come.
        self._last_camera: CameraFrame | None = None
        # The stream's sound features (source: 0-1 or None), read once per frame for the params' modulations;
        # None: no sound, every source reads 0 and the params run as set.
        self.sound_levels: Callable[[], Mapping[str, float | None]] | None = None
        self.modulator = Modulator()
        # The modulated params' values the last frame ran with (the stats show them beside the params as set).
        self.modulated: dict[str, float] = {}
        # Told of each frame sent to the model (arrival, processing size, modulated values, sound features): a
        # recording's frame lines. Called on the engine thread; it must only queue.
        self.on_frame: OnFrame | None = None
        self._record_from_next: OnFrame | None = None  # set by record(), taken by the engine thread

    def record(self, on_frame: OnFrame | None) -> None:
        """Tell `on_frame` of each frame sent to the model from the next one on (None: stop telling).

        That next frame starts the stream's temporal smoothing afresh, as a cut in the camera does: a render of
        the recording starts with no history, and would otherwise carry a different motion history (the noise's
        journey since it was drawn) for as long as the camera moves. Set here on the event loop and taken by the
        engine thread at a frame's start, so that the first frame told of is the first after the fresh start."""
        if on_frame is None:
            self._record_from_next = self.on_frame = None
        else:
            self._record_from_next = on_frame

    def submit(self, frame: VideoFrame, arrival: float, queue_seconds: float) -> None:
        dropped_before = self.inbox.dropped
        decoded = time.monotonic()
        if self._newest_decoded is not None:
            self._camera_intervals.append(decoded - self._newest_decoded)
        self._newest_decoded = decoded
        self.inbox.put(CameraFrame(frame, arrival, decoded, queue_seconds))
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
        if not self.inbox.has_item():  # txt2img on its own clock
            return self.schedule.due(self.pacing.target_fps)
        intervals = list(self._camera_intervals)
        interval = statistics.median(intervals) if intervals else None
        return self.schedule.due(self.pacing.target_fps, self._newest_decoded, interval)

    def prepare(self) -> StreamFrame | None:
        """Take the newest camera frame and prepare it for the device; None when there is nothing to run.

        A frame the similarity skip answers with the last picture is published here and runs nothing.
        """
        camera = self.inbox.take()
        if camera is not None:
            self._last_camera = camera
        elif self._draws_without_camera:
            camera = self._last_camera
        if camera is None and self.pipeline.needs_frame:
            return None
        now = time.monotonic()
        self.schedule.started(now, self.pacing.target_fps)
        # A txt2img picture is new when it is drawn; an img2img one is as old as its camera frame.
        txt2img = self.pipeline.params.mode == "txt2img"
        arrival = now if txt2img or camera is None else camera.arrival
        decoded = now if txt2img or camera is None else camera.decoded
        queue_seconds = camera.queue_seconds if camera is not None else 0.0
        levels = self.sound_levels() if self.sound_levels is not None else None
        modulated = self.modulator.values(self.pipeline.params, levels, now)
        # A still camera under a moving modulation is not the same picture: the skip holds only for both still.
        similar = camera is not None and not txt2img and self._similar_to_last(camera.frame)
        if similar and modulated == self.modulated:
            assert self._last_result is not None  # what _similar_to_last compared with
            times = FrameTimes(arrival, decoded, taken=now, done=time.monotonic())
            self.picture.publish(VideoFrame.from_ndarray(self._last_result, format="rgb24"), arrival, times)
            self.stats.add(frames_processed=1, skipped=1, queue_seconds=queue_seconds)
            return None
        if camera is not None:
            frame_width, frame_height = camera.frame.width, camera.frame.height
            self._fit_ladder_to_camera(frame_width, frame_height)
        else:  # txt2img before any camera frame: a square picture
            frame_width = frame_height = self.pacing.max_resolution
        size = processing_size(frame_width, frame_height, self.controller.side)
        # The stream's picture keeps one size, whatever the processing size: OBS and the page never see it jump.
        output_size = processing_size(frame_width, frame_height, self.pacing.max_resolution)
        rgb = None
        if camera is not None and self.pipeline.needs_frame:
            # libswscale converts and scales in one pass, on the engine thread (never on the event loop), while
            # the executor runs the previous frame on the model.
            rgb = camera.frame.to_ndarray(format="rgb24", width=size[0], height=size[1])

        def finish(result: FrameResult) -> None:
            model_seconds = result.model_seconds
            times = FrameTimes(arrival, decoded, taken=now, done=time.monotonic(), model_seconds=model_seconds)
            self.controller.observe(self._device_seconds_per_frame(model_seconds))
            self._last_result = result.picture
            self.picture.publish(VideoFrame.from_ndarray(result.picture, format="rgb24"), arrival, times)
            control_image = result.control_image
            if self.control is not None and control_image is not None and self.control.subscribed:
                # At the picture's size, so that the two line up and the control track keeps one size too.
                control_frame = VideoFrame.from_ndarray(control_image, format="rgb24")
                if (control_frame.width, control_frame.height) != output_size:
                    control_frame = control_frame.reformat(width=output_size[0], height=output_size[1])
                self.control.publish(control_frame, arrival)
            self.stats.set(
                width=size[0],
                height=size[1],
                output_width=output_size[0],
                output_height=output_size[1],
                state=self.controller.state,
                switches=self.controller.switches,
            )
            self.stats.processed(model_seconds, queue_seconds)

        side = self.controller.side

        def failed(error: BaseException) -> None:
            if isinstance(error, torch.cuda.OutOfMemoryError):
                # With two frames in flight the second may fail at a size the first already stepped down from:
                # the controller is told which size failed, so one error costs one rung.
                self.controller.out_of_memory(side)
                torch.cuda.empty_cache()  # only raised on CUDA, so this is a CUDA call on a CUDA path
                return
            raise error

        if (recording := self._record_from_next) is not None:
            self._record_from_next = None
            self.pipeline.motion.reset()
            self.on_frame = recording
        self.pipeline.control_shown = self.control is not None and self.control.subscribed
        try:  # the host side: checks, the control images, txt2img's noise
            request = self.pipeline.prepare(rgb, size, output_size, modulated)
        except Exception as error:  # this frame's own failure (a bad frame, say): told as a failed batch is
            failed(error)
            return None
        self.modulated = modulated
        if self.on_frame is not None:
            self.on_frame(arrival, size, modulated, levels)
        return StreamFrame(request, finish, failed)

    def _device_seconds_per_frame(self, model_seconds: float) -> float:
        """What one of this stream's frames costs the device: its own model time plus the other streams' frames
        since its last one. With one stream that is the model time; with three, about three frames' worth — so
        each controller sizes its frames for a third of the device, and all of them hold the target."""
        if self._device_busy is None:
            return model_seconds
        now, busy = time.monotonic(), self._device_busy()
        mark, self._busy_mark = self._busy_mark, (now, busy)
        # After a pause (no camera, a slow client), the others' work in between says nothing about this frame.
        if mark is None or now - mark[0] > 3 / self.pacing.target_fps:
            return model_seconds
        return max(model_seconds, busy - mark[1])

    def _fit_ladder_to_camera(self, width: int, height: int) -> None:
        """No rung above the camera's own size: above it every rung gives the same picture, and stepping down
        through them would change nothing. The controller predicts a rung's cost from the pixels it processes."""
        if (width, height) == self._camera_size:
            return
        self._camera_size = (width, height)
        self.controller.frame_shape(width, height)
        self._configure_controller()

    def _configure_controller(self) -> None:
        params = self.pacing
        largest = params.max_resolution
        if self._camera_size is not None:
            largest = min(largest, max(64, max(self._camera_size) // 64 * 64))
        self.controller.configure(params.target_fps, largest, min(params.min_resolution, largest))

    def _similar_to_last(self, frame: VideoFrame) -> bool:
        """Whether the camera barely changed since the last frame that ran the model (similarity skip).

        The comparison is on a 32x32 grey thumbnail: deterministic, and cheap next to the model.
        """
        threshold = self.pacing.similarity_skip
        if threshold <= 0:
            self._last_thumbnail = None
            return False
        thumbnail = frame.to_ndarray(format="gray", width=32, height=32).astype(np.int16)
        previous = self._last_thumbnail
        similar = (
            previous is not None
            and self._last_result is not None
            and float(np.abs(thumbnail - previous).mean()) < threshold
        )
        if not similar:
            self._last_thumbnail = thumbnail
        return similar

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate every change first; apply all or none (ParamsError). Returns the effective params and notes."""
        current = {**self.pipeline.effective_params(), **self.pacing.as_dict()}
        if not isinstance(changes, dict):
            raise ParamsError([(None, "params must be a JSON object of name: value")])
        # Validated once, whole, here: each half goes on as it is, without a second check.
        settings = self.settings_model.validated({**current, **changes})
        self.pipeline.apply(settings)
        pacing_model = type(self.pacing)
        fields = {name: getattr(settings, name) for name in pacing_model.model_fields}
        pacing = pacing_model.model_construct(**fields)
        adaptation = ("target_fps", "max_resolution", "min_resolution")
        changed = any(getattr(pacing, n) != getattr(self.pacing, n) for n in adaptation)
        self.pacing = pacing
        if changed:  # a prompt change must not reset what the controller has measured
            self._configure_controller()
        return self.effective()

    def effective(self) -> dict[str, Any]:
        return {
            "params": {**self.pipeline.effective_params(), **self.pacing.as_dict()},
            "notes": self.pipeline.notes(),
        }
