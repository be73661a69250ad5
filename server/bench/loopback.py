"""A Python WebRTC client for `/ws`: sends a synthetic camera, receives the stylised video, records what it saw.

Used by the loopback tests and `lcmlive bench --e2e`. Real parts throughout: aiortc on both ends, VP8, ICE on
the loopback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from pipelines.synthetic import moving_pattern

PATTERN_CYCLE = 60  # frames prepared up front, so that sending costs the client almost nothing


class SyntheticCamera(VideoStreamTrack):
    """A 30 fps camera showing the moving pattern (or one still frame when `still`)."""

    def __init__(self, width: int, height: int, still: bool = False) -> None:
        super().__init__()
        self.still = still
        self.sent = 0
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """From the next frame on, send this size (a camera switched to another mode)."""
        count = 1 if self.still else PATTERN_CYCLE
        self.frames = [moving_pattern(width, height, i) for i in range(count)]

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(self.frames[self.sent % len(self.frames)], format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        self.sent += 1
        return frame


@dataclass
class LoopbackRecord:
    """What the client saw: arrival times of stylised frames, sampled pictures, and the server's messages."""

    arrivals: list[float] = field(default_factory=list)
    samples: list[tuple[float, np.ndarray]] = field(default_factory=list)
    control_samples: list[tuple[float, np.ndarray]] = field(default_factory=list)  # the Canny map track
    stats: list[dict] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    def fps_between(self, start: float, end: float) -> float:
        count = sum(1 for t in self.arrivals if start <= t < end)
        return count / max(end - start, 1e-6)


class SocketClient:
    """The `/ws` socket of a page: files the server's messages in a record and sends params (with their echo)."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.stream_name: str | None = None
        self.record = LoopbackRecord()
        self._ws: Any = None
        self._tasks: list[asyncio.Task] = []
        self._params_seen = asyncio.Condition()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()

    async def _connect(self) -> None:
        self._ws = await websockets.connect(self.ws_url, max_size=1 << 20)

    def _start_reading(self) -> None:
        self._tasks.append(asyncio.create_task(self._read_messages(), name="loopback-messages"))

    async def send_params(self, timeout: float = 30, **params: Any) -> dict:
        """Send a params message and wait for the server's echo of the effective params."""
        async with self._params_seen:
            seen = len(self.record.params)
            await self._ws.send(json.dumps({"type": "params", "params": params}))
            await asyncio.wait_for(self._params_seen.wait_for(lambda: len(self.record.params) > seen), timeout)
            return self.record.params[-1]

    async def wait_for_params(self, condition, timeout: float = 30) -> dict:
        """The first params message (already received or coming) for which `condition(params)` holds."""
        async with self._params_seen:
            await asyncio.wait_for(
                self._params_seen.wait_for(lambda: any(condition(m["params"]) for m in self.record.params)), timeout
            )
            return next(m for m in self.record.params if condition(m["params"]))

    async def _next_message(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self._ws.recv(), max(deadline - time.monotonic(), 0.01))
            message = json.loads(raw)
            if message.get("type") == kind:
                return message
            if message.get("type") == "error":
                raise RuntimeError(f"server error: {message}")
            await self._file(message)

    async def _read_messages(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                await self._file(json.loads(raw))

    async def _file(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "stream":
            self.stream_name = message["name"]
        elif kind == "stats":
            self.record.stats.append(message)
        elif kind == "error":
            self.record.errors.append(message)
        elif kind == "params":
            async with self._params_seen:
                self.record.params.append(message)
                self._params_seen.notify_all()


class LoopbackClient(SocketClient):
    """A page publishing its camera. `async with LoopbackClient(url) as client:` streams until the block ends."""

    def __init__(
        self,
        ws_url: str,
        width: int = 256,
        height: int = 256,
        still: bool = False,
        sample_every: int = 5,
        token: str | None = None,
        canny_view: bool = False,
        stream: str | None = None,
    ) -> None:
        super().__init__(socket_url(ws_url, token, stream=stream))
        self.stream_name = stream
        self.camera = SyntheticCamera(width, height, still)
        self.sample_every = sample_every
        self.canny_view = canny_view
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def __aenter__(self) -> LoopbackClient:
        await self._connect()
        self._pc.addTransceiver(self.camera, direction="sendrecv")
        control = self._pc.addTransceiver("video", direction="recvonly") if self.canny_view else None

        @self._pc.on("track")
        def on_track(track) -> None:
            is_control = control is not None and track is control.receiver.track
            consume = self._consume_control(track) if is_control else self._consume(track)
            self._tasks.append(asyncio.create_task(consume, name="loopback-consume"))

        await self._pc.setLocalDescription(await self._pc.createOffer())
        # A refused socket (stream_taken, server_full) may already be closed: its error is still queued, and the
        # read below reports it.
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._ws.send(json.dumps({"type": "offer", "sdp": self._pc.localDescription.sdp}))
        answer = await self._next_message("answer", timeout=30)
        # The server follows its answer with the effective params; take them here, so that the echo awaited by
        # `send_params` is never mistaken for them.
        await self._file(await self._next_message("params", timeout=30))
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self._start_reading()
        return self

    async def close(self) -> None:
        await super().close()
        await self._pc.close()

    async def wait_for_frames(self, count: int, timeout: float) -> None:
        await wait_for_frames(self.record, count, timeout)

    async def _consume(self, track) -> None:
        await consume_frames(track, self.record, self.sample_every)

    async def _consume_control(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.record.control_samples.append((time.monotonic(), frame.to_ndarray(format="rgb24")))
            del self.record.control_samples[:-20]  # the latest few are all a test looks at


class ControlClient(SocketClient):
    """A control socket on a stream that publishes elsewhere: params and stats, no camera, no video."""

    def __init__(self, ws_url: str, stream: str, token: str | None = None) -> None:
        super().__init__(socket_url(ws_url, token, stream=stream, role="control"))
        self.stream_name = stream

    async def __aenter__(self) -> ControlClient:
        await self._connect()
        await self._file(await self._next_message("params", timeout=30))
        self._start_reading()
        return self


async def wait_for_frames(record: LoopbackRecord, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(record.arrivals) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(record.arrivals)} of {count} frames in {timeout} s")
        await asyncio.sleep(0.05)


async def consume_frames(track, record: LoopbackRecord, sample_every: int) -> None:
    """Receive a video track until it ends: every arrival time, and every `sample_every`-th picture."""
    received = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.monotonic()
        record.arrivals.append(now)
        if received % sample_every == 0:
            record.samples.append((now, frame.to_ndarray(format="rgb24")))
        received += 1


def socket_url(ws_url: str, token: str | None = None, **query: str | None) -> str:
    """`ws_url` with the token and any other query parameters that are set."""
    pairs = {"token": token, **query}
    encoded = urllib.parse.urlencode({k: v for k, v in pairs.items() if v is not None})
    return f"{ws_url}?{encoded}" if encoded else ws_url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def measure(ws_url: str, size: int, params: dict, warmup: float, seconds: float) -> dict:
    """Stream for `warmup` + `seconds`; report the measured window and the frames that arrived in it."""
    async with LoopbackClient(ws_url, size, size) as client:
        if params:
            await client.send_params(**params)
        await client.wait_for_frames(3, timeout=120)
        await asyncio.sleep(warmup)
        window_start = time.monotonic()
        await asyncio.sleep(seconds)
        window_end = time.monotonic()
    return {
        "window_start": window_start,
        "window_end": window_end,
        "delivered_fps": client.record.fps_between(window_start, window_end),
        "arrivals": client.record.arrivals,
        "errors": client.record.errors,
    }


def main() -> None:
    """`python -m server.bench.loopback URL ...`: run one measuring viewer in its own process, print JSON."""
    import argparse

    from ..media.ice import restrict_ice_to_loopback

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("url")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--params", default="{}", help="JSON object of params to send first")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    restrict_ice_to_loopback()
    result = asyncio.run(measure(args.url, args.size, json.loads(args.params), args.warmup, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
