"""The registry of named streams and the one place that admits publishers, viewers and controllers.

Every limit (streams per server, viewers and controllers per stream) is checked and its slot taken in one step,
before the first `await`: a check made before awaiting ICE gathering and a count made after it let eight WHEP offers
through a limit of two. A publisher reserves its name first (the page's socket when it opens, WHIP when its offer
comes), so a second publisher under that name is refused at once, and the reservation counts against
`--max-sessions` until its stream starts or it is given back (an offer that never comes frees its slot after the
offer timeout). A failed answer gives every slot back. Front ends only translate their protocol into these calls.
"""

from __future__ import annotations

import re
import secrets
from importlib.metadata import version
from typing import Any

from aiortc import RTCPeerConnection

from pipelines import ModelComponents, PromptCache, StreamPipeline

from .config import ServerConfig
from .engine import Engine
from .media.feed import Feed
from .media.peers import OfferError, PeerConnections
from .metrics import Metrics
from .pacing import PacingParams
from .recording import RecordingError
from .stats import StreamStats
from .streams import Listener, Stream, Viewer
from .worker import StreamWorker

__all__ = ["OfferError", "StreamError", "StreamRegistry", "check_stream_name"]  # OfferError: for the front ends

STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StreamError(Exception):
    """A request about a stream that cannot be met; `code` for sockets, `status` for HTTP."""

    STATUS = {
        "bad_stream_name": 400,
        "no_such_stream": 404,
        "stream_taken": 409,
        **RecordingError.STATUS,
        "server_full": 503,
        "viewers_full": 503,
        "controllers_full": 503,
        "shutting_down": 503,
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
        pacing_model: type[PacingParams],
        peers: PeerConnections,
        config: ServerConfig,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.model = model
        self.prompt_cache = prompt_cache
        self.pacing_model = pacing_model
        self.peers = peers
        self.config = config
        self._streams: dict[str, Stream] = {}
        self._reserved: dict[str, object] = {}  # name: the reservation (a new object each time it is taken)
        self._ending = False  # shutting down: no stream may start any more

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
        if self.publishers >= self.config.max_streams:
            raise StreamError("server_full", f"the server is at its limit of {self.config.max_streams} streams")
        self._reserved[name] = object()
        return name

    def release(self, name: str) -> None:
        """Give back a reservation whose stream never started."""
        self._reserved.pop(name, None)

    async def publish(
        self, name: str, source_kind: str, offer: str, listener: Listener | None = None
    ) -> tuple[Stream, str]:
        """Start the reserved stream `name` from its source's offer; returns the stream and the SDP answer.

        `listener` (the page's socket) is attached and gets the picture back on the offer's receiving video m-line.
        The name stays reserved until the stream is live: if the offer fails (OfferError) nothing is left, and the
        caller keeps the reservation for another offer or gives it back."""
        reservation = self._reserved.get(name)
        if reservation is None:
            raise RuntimeError(f"stream {name!r} was not reserved")
        pc = await self.peers.accept(offer, sends_video=True)
        try:
            stream = await self._make_stream(name, source_kind, pc)
        except BaseException:
            await self.peers.close(pc)
            raise
        try:
            # The page gets its own sound back only on an audio m-line it offers to receive (its Sound switch adds
            # one; Hear plays it): its default offer has none, so nothing comes back to feed back.
            outputs = stream.add_outputs(pc) if listener is not None else []
            answer = await self.peers.answer(pc)
            if self._ending:
                raise StreamError("shutting_down", "the server is shutting down")
            if self._reserved.get(name) is not reservation:  # given back meanwhile (its socket closed)
                raise OfferError("offer_abandoned", "the publisher left before its offer was answered")
            stream.bind_outputs(pc, outputs)
            if listener is not None:
                stream.listeners.add(listener)
            stream.start()
        except BaseException as error:
            await stream.end(getattr(error, "code", "internal_error"), "the stream could not start")
            raise
        del self._reserved[name]
        self._streams[name] = stream
        return stream, answer

    async def add_viewer(self, name: str, offer: str) -> tuple[Viewer, str]:
        """A new WHEP viewer of `name` from its offer; returns the viewer and the SDP answer."""
        stream = self.get(name)
        limit = self.config.max_viewers
        if len(stream.viewers) + stream.joining_viewers >= limit:
            raise StreamError("viewers_full", f"stream {name!r} has its limit of {limit} viewers")
        stream.joining_viewers += 1
        try:
            pc = await self.peers.accept(offer, sends_video=False)
            tracks = stream.add_outputs(pc)
            try:
                answer = await self.peers.answer(pc)
                if stream.ended.is_set():  # it ended while this viewer was being answered
                    raise StreamError("no_such_stream", f"stream {name!r} has ended")
            except BaseException:
                for track in tracks:
                    track.stop()
                await self.peers.close(pc)
                raise
            stream.bind_outputs(pc, tracks)
            viewer = Viewer(secrets.token_urlsafe(12), pc, tracks)
            stream.attach_viewer(viewer)
        finally:
            stream.joining_viewers -= 1
        return viewer, answer

    def add_controller(self, name: str, listener: Listener) -> Stream:
        """Attach a control socket to the stream `name`; StreamError if there is none or it has its controllers."""
        stream = self.get(name)
        limit = self.config.max_controllers
        if sum(1 for attached in stream.listeners if attached.role == "control") >= limit:
            raise StreamError("controllers_full", f"stream {name!r} has its limit of {limit} controllers")
        stream.listeners.add(listener)
        return stream

    async def start_recording(self, name: str) -> dict[str, Any]:
        """Record the stream `name` under `--record-dir`: its id, folder and start. StreamError: no such stream,
        one runs already (409), free space under `--record-min-free` (507), the folder cannot be made."""
        stream = self.get(name)
        model = self.model
        header = {
            "version": version("lcmlive"),
            "model": model.preset.name,
            "preset": model.preset.description,
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "controlnet": list(model.control_kinds),
            "styles": list(model.style_names),
            # What `lcmlive render` needs to load the same model: the VAE swapped for TAESD, the styles' folder.
            "tiny_vae": type(model.vae).__name__ == "AutoencoderTiny",
            "lora_dir": str(model.styles.directory) if model.styles is not None and model.styles.directory else None,
        }
        try:
            recording = await stream.start_recording(self.config.record_dir, self.config.record_min_free_bytes, header)
        except RecordingError as error:
            raise StreamError(error.code, error.message) from None
        state = recording.state()
        return {"id": state["id"], "dir": state["dir"], "started": state["started"]}

    async def stop_recording(self, name: str) -> dict[str, Any]:
        """Stop the stream's recording: its summary. StreamError: no such stream, or none runs (404)."""
        stream = self.get(name)
        try:
            return await stream.stop_recording()
        except RecordingError as error:
            raise StreamError(error.code, error.message) from None

    async def _make_stream(self, name: str, source_kind: str, source: RTCPeerConnection) -> Stream:
        model, cache = self.model, self.prompt_cache
        pipeline = await self.engine.call(lambda: StreamPipeline(model, cache))
        stats = StreamStats(metrics=self.metrics.for_stream(name))
        bitrate = self.config.bitrate_kbps
        picture = Feed(f"{name}-picture", stats, bitrate)
        control = Feed(f"{name}-control", None, bitrate) if model.controlnets else None
        worker = StreamWorker(
            pipeline,
            picture,
            stats,
            self.engine.notify,
            self.pacing_model,
            control,
            device_busy=lambda: self.engine.busy_seconds,
        )
        return Stream(
            name, source_kind, source, worker, self.engine, self.peers, self.config, self.metrics, self._forget
        )

    async def end_all(self, code: str, reason: str) -> None:
        self._ending = True
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
