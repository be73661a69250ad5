"""A named stream: one source of camera frames, its engine worker and params, its outputs and its controllers.

Front ends never touch the engine or the media directly: the registry admits publishers, viewers and controllers,
and front ends ask a stream it holds to change params (echoed to every attached socket) or to end. A stream ends
when its source leaves (socket closed, WHIP DELETE, ICE failed or closed), connects too late, or sends no frame for
too long; its viewers' peer connections close and its controllers are told.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiortc import RTCPeerConnection
from av import AudioFrame, VideoFrame

from pipelines import ParamsError

from .config import ServerConfig
from .engine import Engine
from .media.feed import PacketTrack
from .media.peers import PeerConnections, negotiated_codec, offered_transceivers, request_keyframe
from .media.pump import drain, pump_frames, pump_sound
from .media.sound import SoundFeed, SoundTrack
from .metrics import Metrics
from .recording import Recording, RecordingError
from .worker import StreamWorker

log = logging.getLogger(__name__)

STATS_INTERVAL_SECONDS = 1.0
TASK_CANCEL_TIMEOUT_SECONDS = 3.0
WATCH_INTERVAL_SECONDS = 0.5
BEATS_PER_BAR = 4  # no downbeat is detected: a bar starts at a beat the tempo tracker counted as a multiple of 4
RECALL_AT = ("now", "beat", "bar")


class Listener(Protocol):
    """A socket attached to a stream: it gets the params echo and the stats, and is told when the stream ends."""

    role: str  # "publish" or "control"

    async def send(self, message: dict[str, Any]) -> None: ...

    async def end(self, code: str, message: str) -> None: ...


@dataclass
class Viewer:
    """One WHEP viewer: its peer connection and the tracks it receives."""

    id: str
    pc: RTCPeerConnection
    tracks: list[PacketTrack | SoundTrack]
    created: float = field(default_factory=time.monotonic)


class Stream:
    """Lives from its source's offer to its end. Only the event loop calls it; the engine thread sees its worker."""

    def __init__(
        self,
        name: str,
        source_kind: str,
        source: RTCPeerConnection,
        worker: StreamWorker,
        engine: Engine,
        peers: PeerConnections,
        config: ServerConfig,
        metrics: Metrics,
        on_end: Callable[[Stream], Awaitable[None]],
    ) -> None:
        self.name = name
        self.id = secrets.token_urlsafe(12)  # the WHIP resource of the source
        self.source_kind = source_kind  # "page" or "whip"
        self.source = source
        self.worker = worker
        self.stats = worker.stats
        self.picture = worker.picture
        self.control = worker.control
        # The first audio m-line the source sends is the stream's sound, delayed by the picture's latency; the
        # picture waits for the sound's delay while someone listens (media/feed.py).
        has_sound = bool(offered_transceivers(source, "audio", sends=True))
        self.sound = SoundFeed(f"{name}-sound", self.stats.recent_ready_latency) if has_sound else None
        if self.sound is not None:
            worker.sound_levels = self.sound.features.snapshot  # the params' modulations read them once a frame
            for feed in (self.picture, self.control):  # the control map stays in step with the picture
                if feed is not None:
                    feed.hold_to = self.sound.picture_latency
        self.viewers: dict[str, Viewer] = {}
        self.joining_viewers = 0  # admitted, their offers being answered: they count against --max-viewers
        self.listeners: set[Listener] = set()
        self.last_stats: dict[str, Any] = {}  # the latest once-a-second snapshot, for REST and dashboards
        self.recording: Recording | None = None
        self.ended = asyncio.Event()
        self.end_code = ""
        self.end_reason = ""
        self._engine = engine
        self._peers = peers
        self._config = config
        self._metrics = metrics
        self._on_end = on_end
        self._tasks: set[asyncio.Task] = set()
        self._started = time.monotonic()

    # ---- life ----

    def start(self) -> None:
        """Pump the source's camera into the worker and its sound into the stream's, drain any other audio, and
        watch it; the engine starts serving."""
        camera = next(iter(offered_transceivers(self.source, "video", sends=True)), None)
        if camera is not None:
            self._spawn(pump_frames(camera.receiver.track, self._camera_frame), "pump")
            self._spawn(request_keyframe(camera.receiver), "keyframe")
        for index, audio in enumerate(offered_transceivers(self.source, "audio", sends=True)):
            if index == 0 and self.sound is not None:
                self._spawn(pump_sound(audio.receiver.track, self._sound_frame), "sound")
            else:
                self._spawn(drain(audio.receiver.track), "audio")
        self._spawn(self._watch_source(), "watch")
        self._spawn(self._stats_loop(), "stats")

        @self.source.on("connectionstatechange")
        async def on_state() -> None:
            if self.source.connectionState in ("failed", "closed"):
                self._spawn(self.end("source_gone", "the publisher's connection ended"), "end")

        self._engine.add(self.worker)

    async def end(self, code: str, reason: str) -> None:
        """Stop serving, close every viewer and the source, tell the listeners. Idempotent."""
        if self.ended.is_set():
            return
        self.ended.set()
        self.end_code, self.end_reason = code, reason
        log.info("stream %s ended: %s", self.name, reason)
        self._engine.remove(self.worker)
        if self.recording is not None:  # before the picture and the sound close: the files end with them
            await self.recording.stop("shutting_down" if code == "shutting_down" else f"stream_ended:{code}")
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_CANCEL_TIMEOUT_SECONDS)
        try:
            await self.picture.close()
            if self.control is not None:
                await self.control.close()
            if self.sound is not None:
                await self.sound.close()
            for viewer in list(self.viewers.values()):
                await self.remove_viewer(viewer.id, "the stream ended")
            await self._peers.close(self.source)
        finally:
            await self._on_end(self)
        listeners, self.listeners = list(self.listeners), set()
        message = f"stream {self.name} ended: {reason}"
        await asyncio.gather(*(listener.end(code, message) for listener in listeners), return_exceptions=True)

    # ---- params and listeners ----

    def effective(self) -> dict[str, Any]:
        return self.worker.effective()

    def check(self, changes: dict[str, Any]) -> None:
        """ParamsError if `changes` would be refused now; nothing is applied."""
        current = self.effective()["params"]
        self.worker.settings_model.validated({**current, **changes})

    async def set_params(
        self, changes: dict[str, Any], front_end: str, messages: int = 1, scene: str | None = None
    ) -> dict[str, Any]:
        """Validate and apply on the engine thread (all or nothing: ParamsError), then echo to every listener.

        `front_end` names who asked (websocket, rest, osc) and `messages` how many messages the change carries,
        for the metrics; `scene`, the scene recalled, for a recording's events."""
        worker = self.worker

        def apply() -> tuple[dict[str, Any], float]:
            # When the engine applied it: the first camera frame that arrives after this runs with it.
            return worker.update(changes), time.monotonic()

        try:
            effective, applied = await self._engine.call(apply)
        except ParamsError:
            self._metrics.control_message(front_end, "rejected", messages)
            raise
        self._metrics.control_message(front_end, "applied", messages)
        if self.recording is not None:
            self.recording.params(effective["params"], front_end, applied, scene)
        await self.broadcast({"type": "params", **effective})
        return effective

    # ---- recording ----

    async def start_recording(self, root: Path, min_free_bytes: int, header: dict[str, Any]) -> Recording:
        """Record the stream under `root` from now (RecordingError: one runs already, too little disk); `header`
        says the model and the server, the stream and its params are added."""
        if self.recording is not None:
            raise RecordingError("recording_running", f"stream {self.name} is recording already ({self.recording.id})")
        header = {**header, "stream": self.name, "params": self.effective()["params"]}
        recording = Recording(root, header, self.picture, self.sound, min_free_bytes, self._recording_ended)
        self.recording = recording  # before the first await: a second start is refused, not raced
        try:
            await recording.start()
        except BaseException:
            self.recording = None
            raise
        self.worker.record(recording.frame)
        await self.broadcast({"type": "recording", "recording": recording.state()})
        return recording

    async def stop_recording(self) -> dict[str, Any]:
        """Stop the running recording; its summary. RecordingError when none runs."""
        if self.recording is None:
            raise RecordingError("no_recording", f"stream {self.name} is not recording")
        return await self.recording.stop("stopped")

    def recording_state(self) -> dict[str, Any] | None:
        return self.recording.state() if self.recording is not None else None

    async def _recording_ended(self, recording: Recording, summary: dict[str, Any]) -> None:
        """However it ended (asked, the stream's end, the disk guard): unhook it and tell the stream's sockets."""
        if self.recording is recording:
            self.recording = None
            self.worker.record(None)
        await self.broadcast({"type": "recording", "recording": None, "ended": summary})

    def _camera_frame(self, frame: VideoFrame, arrival: float, queue_seconds: float) -> None:
        self.worker.submit(frame, arrival, queue_seconds)
        if self.recording is not None:
            self.recording.camera(frame, arrival)

    def _sound_frame(self, frame: AudioFrame, arrival: float) -> None:
        assert self.sound is not None  # pumped only when the stream has sound
        self.sound.write(frame, arrival)
        if self.recording is not None:
            self.recording.sound(frame, arrival)

    def sound_state(self) -> dict[str, Any] | None:
        """The sound's delay, features and losses now; None when the stream has no sound."""
        return self.sound.state() if self.sound is not None else None

    def time_to(self, at: str) -> tuple[float, str | None]:
        """Seconds from now to the stream's next beat (`at="beat"`) or bar of 4 beats (`"bar"`) on the sound's
        clock, which the camera frames share; (0, why) when it has no tempo now, (0, None) for `"now"`."""
        if at == "now":
            return 0.0, None
        tempo = self.sound.features.tempo if self.sound is not None else None
        if tempo is None:
            why = "no tempo yet" if self.sound is not None else "the stream has no sound"
            return 0.0, f"{why}: applied now, not at the next {at}"
        now = time.monotonic()
        return max(0.0, tempo.next_beat(now, BEATS_PER_BAR if at == "bar" else 1) - now), None

    async def broadcast(self, message: dict[str, Any]) -> None:
        listeners = list(self.listeners)
        if listeners:
            await asyncio.gather(*(listener.send(message) for listener in listeners), return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        """What a list of streams shows (REST): who publishes, who watches, how fast, at what size."""
        stats = self.last_stats
        return {
            "name": self.name,
            "replica": self._config.replica,
            "source": self.source_kind,
            "viewers": len(self.viewers),
            "controllers": sum(1 for listener in self.listeners if listener.role == "control"),
            "fps": stats.get("fps_out", 0.0),
            "processing_size": [stats.get("width", 0), stats.get("height", 0)],
            "latency_ms": stats.get("latency_ms", 0.0),
        }

    # ---- outputs ----

    def add_outputs(self, pc: RTCPeerConnection, sound: bool = True) -> list[PacketTrack | SoundTrack]:
        """Tracks for the video m-lines of `pc` that receive: the first gets the picture, a second the control map;
        and with `sound`, the stream's sound for its first audio m-line that receives (none if the stream has no
        sound: that m-line is answered inactive).

        Call before the answer: addTrack fills the offered transceivers in order.
        """
        receiving = offered_transceivers(pc, "video", sends=False)
        feeds = [self.picture] + ([self.control] if self.control is not None else [])
        tracks: list[PacketTrack | SoundTrack] = []
        for _, feed in zip(receiving, feeds, strict=False):
            track = feed.subscribe()
            pc.addTrack(track)
            tracks.append(track)
        if sound and self.sound is not None:
            for transceiver in offered_transceivers(pc, "audio", sends=False)[:1]:
                # That transceiver, not addTrack's first audio one (it may be one the viewer only sends on); and
                # sendonly: a viewer's own sound would queue unread in aiortc's receiver.
                sound_track = self.sound.subscribe()
                transceiver.sender.replaceTrack(sound_track)
                microphone = offered_transceivers(self.source, "audio", sends=True)[:1]
                if transceiver not in microphone:  # a publisher's one sendrecv m-line keeps bringing its sound
                    transceiver.direction = "sendonly"
                tracks.append(sound_track)
        return tracks

    def bind_outputs(self, pc: RTCPeerConnection, tracks: list[PacketTrack | SoundTrack]) -> None:
        """After the answer: each track gets the codec its m-line negotiated, and the viewer's keyframe requests."""
        for transceiver in pc.getTransceivers():
            track = transceiver.sender.track
            if track in tracks:
                assert isinstance(track, (PacketTrack, SoundTrack))  # one of `tracks`
                codec = negotiated_codec(pc, transceiver)
                if codec is None:
                    track.stop()
                    continue
                if isinstance(track, PacketTrack):
                    # aiortc's sender would set its own (unused) encoder's flag on a PLI/FIR; the feed's encoder
                    # must hear it instead.
                    transceiver.sender._send_keyframe = track.on_picture_loss
                track.bind(codec)

    def attach_viewer(self, viewer: Viewer) -> None:
        self.viewers[viewer.id] = viewer
        log.info("stream %s: viewer %s joined", self.name, viewer.id)

        @viewer.pc.on("connectionstatechange")
        async def on_state() -> None:
            if viewer.pc.connectionState in ("failed", "closed"):
                await self.remove_viewer(viewer.id, f"its connection is {viewer.pc.connectionState}")

    async def remove_viewer(self, viewer_id: str, reason: str) -> bool:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        log.info("stream %s: viewer %s removed: %s", self.name, viewer_id, reason)
        for track in viewer.tracks:
            track.stop()
        await self._peers.close(viewer.pc)
        return True

    # ---- watching ----

    async def _watch_source(self) -> None:
        """End the stream when its source never connects, or stops sending; drop viewers that never connect."""
        config = self._config
        last_frames, last_frame_time = self.stats.frames_in, time.monotonic()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            now = time.monotonic()
            connected = self.source.connectionState == "connected"
            if not connected and self.stats.frames_in == 0 and now - self._started > config.connect_timeout:
                await self.end("connect_timeout", f"the publisher did not connect within {config.connect_timeout:g} s")
                return
            if self.stats.frames_in != last_frames:
                last_frames, last_frame_time = self.stats.frames_in, now
            elif self.stats.frames_in and now - last_frame_time > config.idle_timeout:
                await self.end("source_idle", f"no camera frame for {config.idle_timeout:g} s")
                return
            for viewer in list(self.viewers.values()):
                late = now - viewer.created > config.connect_timeout
                if late and viewer.pc.connectionState != "connected":
                    state = viewer.pc.connectionState
                    await self.remove_viewer(viewer.id, f"not connected ({state}) after {config.connect_timeout:g} s")

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_SECONDS)
            snapshot = self.stats.snapshot()
            snapshot["target_fps"] = self.worker.pacing.target_fps
            snapshot["viewers"] = len(self.viewers)
            snapshot["encodes"] = self.picture.encodes  # one per output frame and codec, whatever the viewers
            snapshot["packets_dropped"] = self.picture.packets_dropped  # a viewer's sender fell a frame behind
            # The values the last frame ran with where the params' modulations moved them (the params keep the base).
            snapshot["modulated"] = self.worker.modulated
            snapshot["recording"] = self.recording_state()  # the pages' Record buttons show its time
            sound = self.sound_state()
            snapshot["sound"] = sound
            snapshot["sound_delay_ms"] = sound["delay_ms"] if sound is not None else None
            self.last_stats = snapshot
            await self.broadcast({"type": "stats", "stream": self.name, "replica": self._config.replica, **snapshot})

    def _spawn(self, coroutine, name: str) -> asyncio.Task:
        task = asyncio.create_task(coroutine, name=f"stream-{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
