"""One viewer: a WebSocket for signaling and control, one RTCPeerConnection, camera in, stylised video out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipelines import ModelComponents, ParamSpec, PromptCache, StreamPipeline

from .engine import Engine
from .protocol import ProtocolError, error_message, parse_client_message
from .stats import SessionStats
from .tracks import StylisedTrack, pump_frames
from .worker import SessionWorker

log = logging.getLogger(__name__)

STATS_INTERVAL_SECONDS = 1.0
TASK_CANCEL_TIMEOUT_SECONDS = 3.0


class Session:
    """Lives as long as its WebSocket. `run` returns when the socket closes or the peer connection fails."""

    def __init__(
        self,
        websocket: WebSocket,
        engine: Engine,
        model: ModelComponents,
        prompt_cache: PromptCache,
        session_specs: dict[str, ParamSpec],
    ) -> None:
        self.websocket = websocket
        self.session_specs = session_specs
        self.engine = engine
        self.model = model
        self.prompt_cache = prompt_cache
        self.stats = SessionStats()
        self.pc: RTCPeerConnection | None = None
        self.worker: SessionWorker | None = None
        self._tasks: set[asyncio.Task] = set()
        self._send_lock = asyncio.Lock()
        self._ended = asyncio.Event()

    async def run(self) -> None:
        receiver = self._start_task(self._receive_loop(), "receive")
        ended = self._start_task(self._ended.wait(), "ended")
        await asyncio.wait({receiver, ended}, return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        """Cancel every task, leave the engine, close the peer connection and the socket. Idempotent."""
        self._ended.set()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_CANCEL_TIMEOUT_SECONDS)
        self._tasks.clear()
        await self._drop_peer()
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):  # the client may already be gone
                await self.websocket.close()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.websocket.application_state == WebSocketState.CONNECTED:
                await self.websocket.send_text(json.dumps(message))

    def _start_task(self, coroutine, name: str) -> asyncio.Task:
        task = asyncio.create_task(coroutine, name=f"session-{id(self):x}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _receive_loop(self) -> None:
        while True:
            try:
                raw = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if raw["type"] == "websocket.disconnect":
                return
            try:
                message = parse_client_message(raw.get("text"), raw.get("bytes"))
                await self._handle(message)
            except ProtocolError as error:
                await self.send(error.as_message())

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "offer":
            await self._on_offer(message)
        elif kind == "params":
            await self._on_params(message)
        else:
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected 'offer' or 'params'")

    async def _on_offer(self, message: dict[str, Any]) -> None:
        if self.pc is not None:
            raise ProtocolError("already_offered", "this session already has a peer connection; open a new socket")
        sdp = message.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise ProtocolError("bad_sdp", 'an offer needs a non-empty string "sdp"')
        # No STUN/TURN: aiortc's default asks a public STUN server, which a LAN or localhost setup never needs.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as error:  # aiortc raises ValueError, KeyError, ... for malformed SDP
            await pc.close()
            raise ProtocolError("bad_sdp", f"the offer's SDP could not be read: {error}") from None
        except asyncio.CancelledError:  # the session is closing: this connection is not its own yet
            await pc.close()
            raise
        video = [t for t in pc.getTransceivers() if t.kind == "video"]
        if not video:
            await pc.close()
            raise ProtocolError("no_video", "the offer has no video track; send the camera as a video track")
        self.pc = pc
        try:
            await self._attach_media(pc, video)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as error:
            await self._drop_peer()
            raise ProtocolError("bad_sdp", f"could not answer the offer: {error}") from None
        await self.send({"type": "answer", "sdp": pc.localDescription.sdp})
        await self.send({"type": "params", **self.worker.effective()})
        self._start_task(self._stats_loop(), "stats")

    async def _attach_media(self, pc: RTCPeerConnection, video: list) -> None:
        """Camera in and stylised video out on the first video m-line; a second one, if offered, gets the
        ControlNet's Canny map."""
        pipeline = await self.engine.call(lambda: StreamPipeline(self.model, self.prompt_cache))
        output = StylisedTrack(self.stats)
        control_output = None
        # addTrack fills the offered video transceivers in order, so video returns on the same m-lines.
        pc.addTrack(output)
        if len(video) > 1 and self.model.controlnet is not None:
            control_output = StylisedTrack(SessionStats())  # its counts are not the viewer's picture's
            pc.addTrack(control_output)
        self.worker = SessionWorker(
            pipeline,
            output,
            self.stats,
            self.engine.notify,
            self.session_specs,
            control_output,
            device_busy=lambda: self.engine.busy_seconds,
        )

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._ended.set()

        camera = video[0].receiver.track
        self._start_task(pump_frames(camera, self.worker.submit), "pump")
        self.engine.add(self.worker)

    async def _drop_peer(self) -> None:
        if self.worker is not None:
            self.engine.remove(self.worker)
            for track in (self.worker.output, self.worker.control_output):
                if track is not None:
                    track.stop()
            self.worker = None
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()

    async def _on_params(self, message: dict[str, Any]) -> None:
        if self.worker is None:
            raise ProtocolError("no_session", "send an offer before params: parameters belong to a running stream")
        changes = message.get("params")
        if not isinstance(changes, dict):
            raise ProtocolError("bad_params", 'a params message needs an object "params"')
        worker = self.worker
        try:
            effective = await self.engine.call(lambda: worker.update(changes))
        except ValueError as error:
            await self.send(error_message("bad_params", str(error)))
            # Nothing changed: the effective params again, so a client can put back what it showed.
            await self.send({"type": "params", **worker.effective()})
            return
        await self.send({"type": "params", **effective})

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_SECONDS)
            snapshot = self.stats.snapshot()
            worker = self.worker
            if worker is not None:
                snapshot["target_fps"] = worker.session_params.target_fps
            await self.send({"type": "stats", **snapshot})
