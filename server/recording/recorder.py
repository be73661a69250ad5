"""One recording of a stream: what comes in and what goes out, on one clock, written by two threads.

The event loop only queues: camera frames and the incoming sound (from the stream's pumps) go to the input file's
thread, which encodes them (libx264, Opus); the stream's encoded picture and sound (pulled like a viewer's tracks)
and the events go to the output thread, which only muxes and writes lines. Each queue is bounded; what finds it
full is dropped and counted (a dropped picture packet also asks the feed for a keyframe, so the file is whole again
at the next one). A guard stops the recording when free space falls under the minimum or a writer fails.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from ..media.feed import Feed, PacketTrack
from ..media.sound import OPUS, SoundFeed, SoundTrack
from .disk import describe_bytes, folder_bytes, free_bytes
from .events import EventLog, end_line, frame_line, params_line, utc_iso
from .writer import SAMPLE_RATE, InputFile, OutputFile, WriterThread

log = logging.getLogger(__name__)

H264 = "video/H264"
# About 2 s of a 30 fps camera with its sound (50 packets a second) before the input's encoder is counted behind.
INPUT_QUEUE = 160
OUTPUT_QUEUE = 1000  # packets and lines: muxing is cheap, so this only fills if the disk stalls
GUARD_SECONDS = 1.0
# Camera frames remembered by arrival, for the engine's frame lines to name their input frame's exact pts: more
# than the engine can be behind the pump.
PLACED_FRAMES = 256
CLOSE_TIMEOUT_SECONDS = 30.0


class RecordingError(Exception):
    """A recording that cannot start or stop: `code` and `status` for the front ends."""

    STATUS = {"recording_running": 409, "no_recording": 404, "disk_full": 507, "record_failed": 500}

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = self.STATUS[code]


def folder_name(stream: str, started: datetime) -> str:
    return f"{stream}-{started.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


class Recording:
    """Lives from `start` to `stop`. The event loop calls it, except `frame`, which the engine thread calls."""

    def __init__(
        self,
        root: Path,
        header: dict[str, Any],
        picture: Feed,
        sound: SoundFeed | None,
        min_free_bytes: int,
        on_end: Callable[[Recording, dict[str, Any]], Awaitable[None]],
    ) -> None:
        """`header`: the events' first line (the model, the stream, every param now); `on_end` is awaited with the
        summary once the files are closed, however the recording ended."""
        self.stream = header["stream"]
        self.origin = time.monotonic()  # t = 0 of every file
        self.started = datetime.now(timezone.utc)
        self.header = {"type": "header", **header, "started": utc_iso(self.started)}
        self.root = Path(root)
        self.folder = self.root / folder_name(self.stream, self.started)
        self.id = self.folder.name
        self.min_free_bytes = min_free_bytes
        self._picture = picture
        self._sound = sound
        self._on_end = on_end
        self._input = InputFile(self.folder / "input.mkv", sound is not None)
        self._output = OutputFile(self.folder / "output.mkv", sound is not None)
        self._events: EventLog | None = None
        self._input_thread = WriterThread(
            f"record-{self.stream}-input", self._input.handle, self._input.finish, INPUT_QUEUE
        )
        self._output_thread = WriterThread(
            f"record-{self.stream}-output", self._write_output, self._finish_output, OUTPUT_QUEUE
        )
        self._tracks: list[PacketTrack | SoundTrack] = []
        self._tasks: set[asyncio.Task] = set()
        self._closing = False  # set first thing in stop: nothing is queued after the end line
        # arrival (monotonic) -> t written for that camera frame (ms, strictly increasing: frames that the pump
        # hands over in one burst arrive in the same millisecond).
        self._placed: dict[float, float] = {}
        self._placed_order: collections.deque[float] = collections.deque()
        self._last_ms = -1
        self._stopped: asyncio.Task | None = None

    # ---- life ----

    async def start(self) -> None:
        """Make the folder and write the header (RecordingError: too little disk, or the folder cannot be made);
        then subscribe to the stream's picture and sound as an H.264 and Opus viewer would."""
        await asyncio.to_thread(self._make_folder)
        self._input_thread.start()
        self._output_thread.start()
        picture = self._picture.subscribe()
        picture.bind(H264)
        self._tracks.append(picture)
        self._spawn(self._pull_picture(picture), "picture")
        if self._sound is not None:
            sound = self._sound.subscribe()
            sound.bind(OPUS)
            self._tracks.append(sound)
            self._spawn(self._pull_sound(sound), "sound")
        self._spawn(self._guard(), "guard")
        log.info("stream %s: recording to %s", self.stream, self.folder)

    async def stop(self, reason: str) -> dict[str, Any]:
        """End the recording (idempotent: a second call waits for the first) and return its summary."""
        if self._stopped is None:
            self._stopped = asyncio.create_task(self._stop(reason), name=f"record-{self.stream}-stop")
        return await asyncio.shield(self._stopped)

    def state(self) -> dict[str, Any]:
        """What GET /streams/NAME and the stats show."""
        return {"id": self.id, "dir": str(self.folder), "started": utc_iso(self.started), "seconds": self._t()}

    # ---- what comes in (event loop, engine thread) ----

    def camera(self, frame: VideoFrame, arrival: float) -> None:
        """A camera frame as the pump received it."""
        if self._closing:
            return
        milliseconds = max(round((arrival - self.origin) * 1000), self._last_ms + 1)
        self._last_ms = milliseconds
        t = milliseconds / 1000
        self._placed[arrival] = t
        self._placed_order.append(arrival)
        if len(self._placed_order) > PLACED_FRAMES:
            self._placed.pop(self._placed_order.popleft(), None)
        self._input_thread.put(("video", frame, t))

    def sound(self, frame: AudioFrame, arrival: float) -> None:
        """A decoded frame of the publisher's sound as it came in."""
        if not self._closing:
            self._input_thread.put(("sound", frame, arrival - self.origin))

    def frame(
        self, arrival: float, size: tuple[int, int], modulated: Mapping[str, float], sound: Mapping | None
    ) -> None:
        """From the engine thread: a frame sent to the model, what it ran with beyond the params."""
        if not self._closing:
            # The input frame's own pts; a frame that came before the recording started has its arrival (t < 0).
            t = self._placed.get(arrival, arrival - self.origin)
            self._output_thread.put(("event", frame_line(t, size, modulated, sound)))

    def params(self, params: Mapping[str, Any], front_end: str, applied: float, scene: str | None = None) -> None:
        """A params change that took effect on the engine at `applied` (monotonic)."""
        if not self._closing:
            self._output_thread.put(("event", params_line(applied - self.origin, params, front_end, scene)))

    # ---- the tasks ----

    async def _pull_picture(self, track: PacketTrack) -> None:
        broken = False
        while True:
            try:
                packet = await track.recv()
            except MediaStreamError:
                return
            if broken and not packet.is_keyframe:
                continue  # the file resumes at a keyframe: the pictures before it refer to one it lacks
            item = ("video", bytes(packet), packet.is_keyframe, self._t())
            broken = not self._output_thread.put(item)
            if broken:
                track.on_picture_loss()

    async def _pull_sound(self, track: SoundTrack) -> None:
        first: tuple[float, int] | None = None  # (t, pts) of the first packet: the rest follow its 48 kHz clock
        while True:
            try:
                packet = await track.recv()
            except MediaStreamError:
                return
            assert packet.pts is not None  # the sound's encoder stamps every packet
            if first is None:
                first = (self._t(), packet.pts)
            t = first[0] + (packet.pts - first[1]) / SAMPLE_RATE
            self._output_thread.put(("audio", bytes(packet), t))

    async def _guard(self) -> None:
        """Stop cleanly when the disk fills up to the minimum or a writer fails."""
        while True:
            await asyncio.sleep(GUARD_SECONDS)
            failed = self._input_thread.error or self._output_thread.error
            if failed is not None:
                log.error("stream %s: recording %s stopped: writing failed: %s", self.stream, self.id, failed)
                await self.stop("write_failed")
                return
            free = await asyncio.to_thread(free_bytes, self.folder)
            if free < self.min_free_bytes:
                log.warning(
                    "stream %s: recording %s stopped: %s free, under the minimum of %s (--record-min-free)",
                    self.stream,
                    self.id,
                    describe_bytes(free),
                    describe_bytes(self.min_free_bytes),
                )
                await self.stop("disk_full")
                return

    async def _stop(self, reason: str) -> dict[str, Any]:
        self._closing = True
        end = end_line(self._t(), reason)
        for track in self._tracks:
            track.stop()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        try:
            await asyncio.to_thread(self._close_files, end)
        except TimeoutError as error:  # a stalled disk: the threads are daemons and end with the process
            log.error("stream %s: recording %s: %s", self.stream, self.id, error)
        summary = {
            "id": self.id,
            "stream": self.stream,
            "dir": str(self.folder),
            "started": utc_iso(self.started),
            "seconds": end["t"],
            "frames": self._input.frames,
            "output_frames": self._output.frames,
            "bytes": 0,
            "reason": reason,
            "dropped": self._dropped(),
        }
        try:
            summary["bytes"] = await asyncio.to_thread(self._write_summary, summary)
        except OSError as error:
            log.error("stream %s: recording %s: no recording.json: %s", self.stream, self.id, error)
        log.info(
            "stream %s: recording %s ended (%s): %.1f s, %d frames in, %d out, %s",
            self.stream,
            self.id,
            reason,
            summary["seconds"],
            summary["frames"],
            summary["output_frames"],
            describe_bytes(summary["bytes"]),
        )
        await self._on_end(self, summary)
        return summary

    # ---- in the writer threads and worker threads ----

    def _make_folder(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            free = free_bytes(self.root)
        except OSError as error:
            raise RecordingError("record_failed", f"cannot use {self.root}: {error.strerror or error}") from None
        if free < self.min_free_bytes:
            raise RecordingError(
                "disk_full",
                f"{describe_bytes(free)} free under {self.root}, under the minimum of "
                f"{describe_bytes(self.min_free_bytes)} (--record-min-free)",
            )
        base, number = self.folder, 1
        while True:
            try:
                self.folder.mkdir()
                break
            except FileExistsError:
                number += 1
                self.folder = base.with_name(f"{base.name}-{number}")
            except OSError as error:
                raise RecordingError("record_failed", f"cannot make {self.folder}: {error.strerror or error}") from None
        self.id = self.folder.name
        self._input.path = self.folder / "input.mkv"
        self._output.path = self.folder / "output.mkv"
        self._events = EventLog(self.folder / "events.jsonl")
        self._events.write(self.header)

    def _write_output(self, item: tuple) -> None:
        if item[0] == "event":
            assert self._events is not None
            self._events.write(item[1])
        else:
            self._output.handle(item)

    def _finish_output(self) -> None:
        try:
            self._output.finish()
        finally:
            if self._events is not None:
                self._events.close()

    def _close_files(self, end: dict[str, Any]) -> None:
        self._input_thread.close(timeout=CLOSE_TIMEOUT_SECONDS)
        self._output_thread.close(("event", end), timeout=CLOSE_TIMEOUT_SECONDS)

    def _write_summary(self, summary: dict[str, Any]) -> int:
        """Writes recording.json (atomically: a crash leaves none or all of it); returns the folder's bytes."""
        path = self.folder / "recording.json"
        partial = path.with_suffix(".json.partial")
        summary["bytes"] = folder_bytes(self.folder)
        partial.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        partial.replace(path)
        return summary["bytes"]

    def _dropped(self) -> dict[str, int]:
        into_input, into_output = self._input_thread.dropped, self._output_thread.dropped
        return {
            "input": sum(into_input.values()),
            "output": into_output.get("video", 0) + into_output.get("audio", 0),
            "events": into_output.get("event", 0),
        }

    def _t(self) -> float:
        return round(time.monotonic() - self.origin, 4)

    def _spawn(self, coroutine, name: str) -> None:
        task = asyncio.create_task(coroutine, name=f"record-{self.stream}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
