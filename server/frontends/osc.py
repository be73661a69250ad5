"""OSC control over UDP for TouchOSC, Resolume, TouchDesigner: set params and recall scenes of live streams.

Addresses: `/lcmlive/{stream}/{param} value`, `/lcmlive/{stream}/{param}/norm 0..1` (mapped onto the param's
range that is valid with the stream's other params when it applies: strength/norm 0 is the lowest strength that runs
at the stream's steps), `/lcmlive/{stream}/scene N` (a scene's name or 1-based position), `/lcmlive/{stream}/record
1|0` (start or stop recording); `*` as the stream addresses every stream. A param whose value is a list
(`modulations`) takes it as one JSON string, OSC having no lists of objects.

A fader sends hundreds of messages a second. They are coalesced: the latest value per address wins, and each
stream gets at most one params change in flight (applied by the engine between frames), so a flood never slows
the video. OSC has no authentication: beyond localhost only the senders in `--osc-allow` are heard. No datagram
stops it: whatever fails to parse or apply is counted as rejected and logged at most once a minute per sender.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_packet import OscPacket

from pipelines import ParamsError
from pipelines.params import Params, numeric_range, valid_range

from ..metrics import Metrics
from ..registry import StreamError, StreamRegistry
from ..scenes import SceneBookUnavailable, Scenes

log = logging.getLogger(__name__)

PREFIX = "lcmlive"
ALL_STREAMS = "*"
# A 1000-message burst from a fader overflowed the kernel's default 208 KiB UDP buffer here (each datagram costs
# about 1 KiB of buffer whatever its size); 4 MiB holds it with room to spare.
RECEIVE_BUFFER_BYTES = 4 << 20
LOG_INTERVAL_SECONDS = 60.0  # a sender's problems are logged at most this often (each one is counted)
# Senders remembered for that minute: a flood from spoofed source addresses can neither grow memory nor the log
# beyond this many lines a minute.
MAX_LOGGED_SENDERS = 256
MAX_LOGGED_CHARS = 200  # a hostile address or value is quoted in the log, cut to this
JSON_PARAMS = frozenset({"modulations"})  # params whose value is a list: one JSON string over OSC
RECORD = "record"  # /lcmlive/{stream}/record 1|0: not a param


class OncePerSender:
    """Says when a sender's problem may be logged: once per sender per `interval`, at most `capacity` senders."""

    def __init__(
        self,
        interval: float = LOG_INTERVAL_SECONDS,
        capacity: int = MAX_LOGGED_SENDERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.capacity = capacity
        self._clock = clock
        self._senders: dict[str, list] = {}  # sender: [when last logged, problems held back since], oldest first

    def allow(self, sender: str) -> int | None:
        """None: stay quiet; else log now, and this many problems of this sender went unlogged since its last line."""
        now = self._clock()
        entry = self._senders.get(sender)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        self._senders.pop(sender, None)
        while self._senders:  # forget the expired, oldest first (they are kept in the order they were logged)
            oldest, (logged_at, _) = next(iter(self._senders.items()))
            if now - logged_at < self.interval:
                break
            del self._senders[oldest]
        if len(self._senders) >= self.capacity:
            return None
        self._senders[sender] = [now, 0]
        return entry[1] if entry is not None else 0


def clipped(text: str) -> str:
    return text if len(text) <= MAX_LOGGED_CHARS else f"{text[:MAX_LOGGED_CHARS]}... ({len(text)} characters)"


@dataclass(frozen=True)
class OscChange:
    """One address's latest wish: a param value, a /norm value (0..1, mapped when applied) or a scene to recall."""

    stream: str  # a name, or ALL_STREAMS
    param: str | None  # None: a scene recall
    value: Any
    sender: str  # who sent it: its problems are logged under its name
    norm: bool = False


class OscControl(asyncio.DatagramProtocol):
    """Receives OSC datagrams, keeps the latest value per address, and applies them stream by stream."""

    def __init__(
        self,
        registry: StreamRegistry,
        scenes: Scenes,
        settings_model: type[Params],
        metrics: Metrics,
        allowed_senders: frozenset[str] | None,
    ) -> None:
        self.registry = registry
        self.scenes = scenes
        self.settings_model = settings_model
        self.metrics = metrics
        self.allowed_senders = allowed_senders  # None: any sender (listening on loopback only)
        self._pending: dict[str, OscChange] = {}
        self._wake = asyncio.Event()
        self._logged = OncePerSender()
        self._flusher: asyncio.Task | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flusher = asyncio.create_task(self._flush_loop(), name="osc-flush")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._flusher is not None:
            self._flusher.cancel()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        sender = str(addr[0])
        if self.allowed_senders is not None and sender not in self.allowed_senders:
            self._reject(sender, "a datagram", "not in --osc-allow: ignored")
            return
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except Exception as error:  # ParseError, and RecursionError from a 60 KB datagram of nested bundles
            self._reject(sender, f"a {len(data)}-byte datagram", f"not an OSC packet ({type(error).__name__}: {error})")
            return
        for message in messages:
            try:
                self._take(sender, message.address, list(message.params))
            except Exception as error:  # whatever python-osc hands over, the next message is still heard
                self._reject(sender, repr(message.address), f"unreadable ({type(error).__name__}: {error})")

    def _take(self, sender: str, address: str, arguments: list[Any]) -> None:
        """Check the address and the value now (so a bad one is refused at once); keep the latest per address."""
        parts = address.split("/")
        if len(parts) not in (4, 5) or parts[0] or parts[1] != PREFIX:
            reason = f"not an lcmlive address: use /{PREFIX}/STREAM/PARAM or /{PREFIX}/STREAM/scene"
            self._reject(sender, address, reason)
            return
        stream, param = parts[2], parts[3]
        norm = len(parts) == 5
        if norm and parts[4] != "norm":
            self._reject(sender, address, "only /norm may follow a param")
            return
        if len(arguments) != 1:
            self._reject(sender, address, f"expected one value, got {len(arguments)}")
            return
        value = arguments[0]
        if isinstance(value, float):
            # OSC floats are 32-bit: a fader's 0.7 arrives as 0.699999988. Seven significant digits is what it sent.
            value = float(f"{value:.7g}")
        if param == "scene":
            change = OscChange(stream, None, value, sender)
        elif param == RECORD:
            if norm or isinstance(value, str) or value not in (0, 1):
                self._reject(sender, address, f"record takes 1 (start) or 0 (stop), got {value!r}")
                return
            change = OscChange(stream, RECORD, bool(value), sender)
        elif param not in self.settings_model.model_fields:
            known = ", ".join(self.settings_model.model_fields)
            self._reject(sender, address, f"unknown param {param!r}; known: {known}")
            return
        elif norm:
            problem = self._norm_problem(param, value)
            if problem is not None:
                self._reject(sender, address, problem)
                return
            change = OscChange(stream, param, value, sender, norm=True)
        elif param in JSON_PARAMS:
            try:
                parsed = json.loads(value) if isinstance(value, str) else None
            except (ValueError, RecursionError) as error:  # not JSON; or lists nested past the parser's depth
                self._reject(sender, address, f"{param} takes one JSON string: {error}")
                return
            if not isinstance(parsed, list):
                self._reject(sender, address, f"{param} takes one JSON string of a list, got {value!r}")
                return
            change = OscChange(stream, param, parsed, sender)
        else:
            change = OscChange(stream, param, value, sender)
        if address in self._pending:
            self.metrics.control_message("osc", result="coalesced")
        self._pending[address] = change
        self._wake.set()

    def _norm_problem(self, param: str, value: Any) -> str | None:
        if numeric_range(self.settings_model, param) is None:
            return f"{param} has no numeric range: /norm applies to numeric params only"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            return f"/norm takes a number from 0 to 1, got {value!r}"
        return None

    def _from_norm(self, param: str, value: float, values: dict[str, Any]) -> float | int:
        """`value` (0..1) on the range `param` may take with the other params at `values`: strength/norm 0 at
        steps=2 is the lowest strength that runs 2 steps, not the schema's minimum, which the engine refuses."""
        bounds = valid_range(self.settings_model, param, values)
        assert bounds is not None, param  # _norm_problem let only numeric params with a range through
        lower, upper, whole = bounds
        mapped = lower + value * (upper - lower)
        # Seven significant digits, as an OSC float carries: 0.52, not 0.5200000000000001, in the echo.
        return round(mapped) if whole else float(f"{mapped:.7g}")

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            try:
                await self._apply(pending)
            except Exception as error:  # the loop outlives any batch: OSC must keep working for the rest of the show
                self.metrics.control_message("osc", result="rejected", count=len(pending))
                for change in {change.sender: change for change in pending.values()}.values():
                    self._log(change.sender, "a batch of messages", f"not applied ({type(error).__name__}: {error})")

    async def _apply(self, pending: dict[str, OscChange]) -> None:
        """Per stream: the last scene recalled first, then the params, in one change where all are valid."""
        by_stream: dict[str, dict[str, tuple[str, OscChange]]] = {}
        for address, change in pending.items():
            for stream in self._streams(address, change):
                by_stream.setdefault(stream.name, {})[change.param or "scene"] = (address, change)
        for name, changes in by_stream.items():
            try:
                await self._apply_to(name, dict(changes))  # a copy: what fails is counted whole below
            except Exception as error:  # a stream ending mid-change, a scene that breaks: the other streams go on
                for address, change in changes.values():
                    self._reject(change.sender, address, f"not applied ({type(error).__name__}: {error})")

    async def _apply_to(self, name: str, changes: dict[str, tuple[str, OscChange]]) -> None:
        try:
            stream = self.registry.get(name)
        except StreamError:
            return  # ended meanwhile
        record = changes.pop(RECORD, None)
        if record is not None:
            await self._record(stream.name, *record)
        scene = changes.pop("scene", None)
        if scene is not None:
            try:
                await self._recall(stream, *scene)
            except Exception as error:  # a scene that breaks must not hold back the params sent with it
                address, change = scene
                self._reject(change.sender, address, f"not recalled ({type(error).__name__}: {error})")
        # /norm maps now, against the params as they are: strength's range depends on steps and mode, so it maps
        # after them.
        values = {**stream.effective()["params"]}
        values.update((param, change.value) for param, (_, change) in changes.items() if not change.norm)
        for param, (_, change) in sorted(changes.items(), key=lambda item: item[0] == "strength"):
            if change.norm:
                values[param] = self._from_norm(param, change.value, values)
        params = {param: values[param] for param in changes}
        try:
            stream.check(params)
        except ParamsError:
            params = self._each_alone(stream, params, changes)
        if params:
            try:
                await stream.set_params(params, front_end="osc", messages=len(params))
            except ParamsError as error:  # a rule across params; counted by the stream, and the socket echo says so
                sender = changes[next(iter(params))][1].sender
                self._log(sender, ", ".join(sorted(params)), str(error))

    def _each_alone(self, stream, params: dict[str, Any], changes: dict[str, tuple[str, OscChange]]) -> dict[str, Any]:
        """The values that pass alone: one bad value must not hold back the good ones sent with it."""
        passed = {}
        for param, value in params.items():
            address, change = changes[param]
            try:
                stream.check({param: value})
            except ParamsError as error:
                self._reject(change.sender, address, str(error))
                continue
            passed[param] = value
        return passed

    async def _record(self, name: str, address: str, change: OscChange) -> None:
        """Start (1) or stop (0) the stream's recording; one already in that state is a rejected message."""
        try:
            if change.value:
                await self.registry.start_recording(name)
            else:
                await self.registry.stop_recording(name)
        except StreamError as error:
            self._reject(change.sender, address, error.message)
            return
        self.metrics.control_message("osc", result="applied")

    async def _recall(self, stream, address: str, change: OscChange) -> None:
        try:
            scene = await self.scenes.find(change.value)
        except KeyError as error:
            self._reject(change.sender, address, str(error.args[0]))
            return
        except SceneBookUnavailable as error:  # under replicas: the board that keeps them, restarting
            self._log(change.sender, address, str(error))
            return
        try:
            await stream.set_params(scene.params, front_end="osc", scene=scene.name)
        except ParamsError as error:
            self._log(change.sender, address, f"scene {scene.name!r} does not apply: {error}")

    def _streams(self, address: str, change: OscChange) -> list:
        if change.stream == ALL_STREAMS:
            return list(self.registry)
        try:
            return [self.registry.get(change.stream)]
        except StreamError as error:
            self._reject(change.sender, address, error.message)
            return []

    def _reject(self, sender: str, subject: str, reason: str) -> None:
        self.metrics.control_message("osc", result="rejected")
        self._log(sender, subject, reason)

    def _log(self, sender: str, subject: str, reason: str) -> None:
        held_back = self._logged.allow(sender)
        if held_back is None:
            return
        since = f"; {held_back} more since its last line" if held_back else ""
        log.warning(
            "OSC from %s: %s: %s (this sender's next problems are counted, not logged, for %.0f s%s)",
            sender,
            clipped(subject),
            clipped(reason),
            self._logged.interval,
            since,
        )


def osc_socket(host: str, port: int) -> socket.socket:
    """A UDP socket on host:port with a receive buffer that holds a fader's burst; ValueError if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < RECEIVE_BUFFER_BYTES:  # Linux grants at most net.core.rmem_max (doubled)
        log.warning(
            "OSC receive buffer is %d KiB, not %d: a burst of messages may be dropped "
            "(raise it with: sysctl -w net.core.rmem_max=%d)",
            granted >> 10,
            RECEIVE_BUFFER_BYTES >> 10,
            RECEIVE_BUFFER_BYTES,
        )
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"OSC cannot listen on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def start_osc(
    registry: StreamRegistry,
    scenes: Scenes,
    settings_model: type[Params],
    metrics: Metrics,
    sock: socket.socket,
    allow: tuple[str, ...],
) -> tuple[asyncio.DatagramTransport, OscControl]:
    """Listen for OSC on the bound `sock`; beyond localhost only `allow`'s senders are heard."""
    host, port = sock.getsockname()[:2]
    allowed = None if is_loopback(host) else frozenset(allow)
    if allowed is not None:
        log.warning(
            "OSC on %s:%d has no authentication: only %s may control streams",
            host,
            port,
            ", ".join(sorted(allowed)) or "nobody (list senders with --osc-allow)",
        )
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: OscControl(registry, scenes, settings_model, metrics, allowed), sock=sock
    )
    return transport, protocol
