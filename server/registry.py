"""The registry of named streams: names checked and reserved, streams made, found and ended, limits kept.

A publisher reserves its name first (the page's socket when it opens, WHIP when its offer comes), so a second
publisher under that name is refused at once, and a reservation counts against `--max-sessions` until its stream
starts or the reservation is given back (an offer that never comes frees its slot after the offer timeout).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiortc import RTCPeerConnection

from pipelines import ModelComponents, PromptCache, StreamPipeline

from .config import ServerConfig
from .engine import Engine
from .media.feed import Feed
from .media.peers import PeerConnections
from .metrics import Metrics
from .session_params import SessionParams
from .stats import SessionStats
from .streams import Stream
from .worker import StreamWorker

STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StreamError(Exception):
    """A request about a stream that cannot be met; `code` for sockets, `status` for HTTP."""

    STATUS = {
        "bad_stream_name": 400,
        "no_such_stream": 404,
        "stream_taken": 409,
        "server_full": 503,
        "viewers_full": 503,
        "controllers_full": 503,
    }

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = self.STATUS[code]


def check_stream_name(name: Any) -> str:
    if not isinstance(name, str) or not STREAM_NAME.fullmatch(name):
        raise StreamError(
            "bad_stream_name",
            f"stream name {name!r} is not allowed: use 1-64 characters of A-Z, a-z, 0-9, _ and -",
        )
    return name


class StreamRegistry:
    """Every stream of one server, and what making one needs (the engine, the model, the limits)."""

    def __init__(
        self,
        engine: Engine,
        model: ModelComponents,
        prompt_cache: PromptCache,
        session_model: type[SessionParams],
        peers: PeerConnections,
        config: ServerConfig,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.model = model
        self.prompt_cache = prompt_cache
        self.session_model = session_model
        self.peers = peers
        self.config = config
        self._streams: dict[str, Stream] = {}
        self._reserved: set[str] = set()

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self):
        return iter(list(self._streams.values()))

    @property
    def publishers(self) -> int:
        """Streams plus names reserved by publishers that have not sent their offer yet."""
        return len(self._streams) + len(self._reserved)

    @property
    def names(self) -> list[str]:
        """The names this server holds: its streams' and its publishers' reservations (what replicas report)."""
        return sorted(self._streams.keys() | self._reserved)

    def get(self, name: str) -> Stream:
        stream = self._streams.get(check_stream_name(name))
        if stream is None:
            raise StreamError("no_such_stream", f"no stream named {name!r} is publishing")
        return stream

    def reserve(self, name: str | None) -> str:
        """Hold `name` (or a new generated one) for a publisher; StreamError if taken, bad or over the limit."""
        if name is None:
            name = self._generated_name()
        check_stream_name(name)
        if name in self._streams or name in self._reserved:
            raise StreamError("stream_taken", f"stream {name!r} already has a publisher; choose another name")
        if self.publishers >= self.config.max_sessions:
            raise StreamError("server_full", f"the server is at its limit of {self.config.max_sessions} streams")
        self._reserved.add(name)
        return name

    def release(self, name: str) -> None:
        """Give back a reservation whose stream never started."""
        self._reserved.discard(name)

    async def open(self, name: str, source_kind: str, source: RTCPeerConnection) -> Stream:
        """Make the reserved stream `name` for the source's offer (the caller answers, then `Stream.start`)."""
        if name not in self._reserved:
            raise RuntimeError(f"stream {name!r} was not reserved")
        model, cache = self.model, self.prompt_cache
        pipeline = await self.engine.call(lambda: StreamPipeline(model, cache))
        stats = SessionStats(metrics=self.metrics.for_stream(name))
        bitrate = self.config.bitrate_kbps
        picture = Feed(f"{name}-picture", stats, bitrate)
        control = Feed(f"{name}-control", None, bitrate) if model.controlnets else None
        worker = StreamWorker(
            pipeline,
            picture,
            stats,
            self.engine.notify,
            self.session_model,
            control,
            device_busy=lambda: self.engine.busy_seconds,
        )
        stream = Stream(
            name, source_kind, source, worker, self.engine, self.peers, self.config, self.metrics, self._forget
        )
        self._reserved.discard(name)
        self._streams[name] = stream
        return stream

    async def end_all(self, code: str, reason: str) -> None:
        for stream in list(self._streams.values()):
            await stream.end(code, reason)

    async def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
        if stream.stats.metrics is not None:
            stream.stats.metrics.remove()

    def _generated_name(self) -> str:
        while True:
            name = f"cam-{secrets.token_hex(3)}"
            if name not in self._streams and name not in self._reserved:
                return name
