"""OSC control over UDP for TouchOSC, Resolume, TouchDesigner: set params and recall scenes of live streams.

Addresses: `/lcmlive/{stream}/{param} value`, `/lcmlive/{stream}/{param}/norm 0..1` (mapped onto the param's
range), `/lcmlive/{stream}/scene N` (a scene's name or 1-based position); `*` as the stream addresses every stream.

A fader sends hundreds of messages a second. They are coalesced: the latest value per address wins, and each
stream gets at most one params change in flight (applied by the engine between frames), so a flood never slows
the video. OSC has no authentication: beyond localhost only the senders in `--osc-allow` are heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_packet import OscPacket, ParseError

from pipelines import ParamsError
from pipelines.params import Params, numeric_range

from ..metrics import Metrics
from ..registry import StreamError, StreamRegistry
from ..scenes import SceneBook

log = logging.getLogger(__name__)

PREFIX = "lcmlive"
ALL_STREAMS = "*"
# A 1000-message burst from a fader overflowed the kernel's default 208 KiB UDP buffer here (each datagram costs
# about 1 KiB of buffer whatever its size); 4 MiB holds it with room to spare.
RECEIVE_BUFFER_BYTES = 4 << 20
MAX_LOGGED_ADDRESSES = 1000  # "logged once per address" must not become a memory leak under a hostile sender


@dataclass(frozen=True)
class OscChange:
    """One address's latest wish: a param value (already mapped from /norm) or a scene to recall."""

    stream: str  # a name, or ALL_STREAMS
    param: str | None  # None: a scene recall
    value: Any


class OscControl(asyncio.DatagramProtocol):
    """Receives OSC datagrams, keeps the latest value per address, and applies them stream by stream."""

    def __init__(
        self,
        registry: StreamRegistry,
        scenes: SceneBook,
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
        self._logged: set[str] = set()
        self._flusher: asyncio.Task | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flusher = asyncio.create_task(self._flush_loop(), name="osc-flush")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._flusher is not None:
            self._flusher.cancel()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.allowed_senders is not None and addr[0] not in self.allowed_senders:
            self._reject(f"sender {addr[0]}", "not in --osc-allow: ignored")
            return
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except ParseError as error:
            self._reject(f"malformed from {addr[0]}", f"not an OSC packet ({error})")
            return
        for message in messages:
            self._take(message.address, list(message.params))

    def _take(self, address: str, arguments: list[Any]) -> None:
        """Check the address and the value now (so a bad one is refused at once); keep the latest per address."""
        parts = address.split("/")
        if len(parts) not in (4, 5) or parts[0] or parts[1] != PREFIX:
            self._reject(address, f"not an lcmlive address: use /{PREFIX}/STREAM/PARAM or /{PREFIX}/STREAM/scene")
            return
        stream, param = parts[2], parts[3]
        norm = len(parts) == 5
        if norm and parts[4] != "norm":
            self._reject(address, "only /norm may follow a param")
            return
        if len(arguments) != 1:
            self._reject(address, f"expected one value, got {len(arguments)}")
            return
        value = arguments[0]
        if isinstance(value, float):
            # OSC floats are 32-bit: a fader's 0.7 arrives as 0.699999988. Seven significant digits is what it sent.
            value = float(f"{value:.7g}")
        if param == "scene":
            change = OscChange(stream, None, value)
        elif param not in self.settings_model.model_fields:
            self._reject(address, f"unknown param {param!r}; known: {', '.join(self.settings_model.model_fields)}")
            return
        elif norm:
            mapped = self._from_norm(address, param, value)
            if mapped is None:
                return
            change = OscChange(stream, param, mapped)
        else:
            change = OscChange(stream, param, value)
        if address in self._pending:
            self.metrics.control_message("osc", result="coalesced")
        self._pending[address] = change
        self._wake.set()

    def _from_norm(self, address: str, param: str, value: Any) -> float | int | None:
        bounds = numeric_range(self.settings_model, param)
        if bounds is None:
            self._reject(address, f"{param} has no numeric range: /norm applies to numeric params only")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            self._reject(address, f"/norm takes a number from 0 to 1, got {value!r}")
            return None
        lower, upper, whole = bounds
        mapped = lower + value * (upper - lower)
        return round(mapped) if whole else mapped

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            await self._apply(pending)

    async def _apply(self, pending: dict[str, OscChange]) -> None:
        """Per stream: the last scene recalled first, then the params, in one change where all are valid."""
        by_stream: dict[str, dict[str, tuple[str, OscChange]]] = {}
        for address, change in pending.items():
            for stream in self._streams(address, change.stream):
                by_stream.setdefault(stream.name, {})[change.param or "scene"] = (address, change)
        for name, changes in by_stream.items():
            try:
                stream = self.registry.get(name)
            except StreamError:
                continue  # ended meanwhile
            scene = changes.pop("scene", None)
            if scene is not None:
                await self._recall(stream, *scene)
            # Each value is checked alone first: one bad value must not hold back the good ones sent with it.
            params = {}
            for param, (address, change) in changes.items():
                try:
                    stream.check({param: change.value})
                except ParamsError as error:
                    self._reject(address, str(error))
                    continue
                params[param] = change.value
            if params:
                with contextlib.suppress(ParamsError):  # a rule across params; counted, and the socket echo says so
                    await stream.set_params(params, front_end="osc", messages=len(params))

    async def _recall(self, stream, address: str, change: OscChange) -> None:
        try:
            scene = self.scenes.find(change.value)
        except KeyError as error:
            self._reject(address, str(error.args[0]))
            return
        try:
            await stream.set_params(scene.params, front_end="osc")
        except ParamsError as error:
            self._log_once(address, f"scene {scene.name!r} does not apply: {error}")

    def _streams(self, address: str, name: str) -> list:
        if name == ALL_STREAMS:
            return list(self.registry)
        try:
            return [self.registry.get(name)]
        except StreamError as error:
            self._reject(address, error.message)
            return []

    def _reject(self, address: str, reason: str) -> None:
        self.metrics.control_message("osc", result="rejected")
        self._log_once(address, reason)

    def _log_once(self, address: str, reason: str) -> None:
        if address in self._logged or len(self._logged) >= MAX_LOGGED_ADDRESSES:
            return
        self._logged.add(address)
        log.warning("OSC %s: %s (further messages to this address are not logged)", address, reason)


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
    scenes: SceneBook,
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
