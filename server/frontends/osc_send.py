"""OSC out: each stream's sound features, 50 times a second, to the `--osc-send HOST:PORT` addresses.

For TouchDesigner, Resolume and the like, which take OSC in and can then follow the same music as the picture:
`/lcmlive/{stream}/sound/{level,low,mid,high,onset}` (floats 0-1), and `/lcmlive/{stream}/sound/bpm` and
`.../beat` (the beat phase 0-1) once the tempo is confident. One bundle per stream and tick, sent whether the
values changed or not: a receiver that missed a datagram (UDP) has the current values 20 ms later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from ..registry import StreamRegistry

log = logging.getLogger(__name__)

# Each feature is updated every 10 ms hop; 20 ms is a frame at 50 fps, finer than any picture shows.
SEND_INTERVAL_SECONDS = 0.02
KEYS = ("level", "low", "mid", "high", "onset", "bpm", "beat")


def sound_bundle(stream: str, values: dict[str, Any]) -> bytes:
    """One stream's features as an OSC bundle of one message a value (bpm and beat only when known)."""
    bundle = OscBundleBuilder(IMMEDIATELY)
    for key in KEYS:
        value = values.get(key)
        if value is None:
            continue
        message = OscMessageBuilder(f"/lcmlive/{stream}/sound/{key}")
        message.add_arg(float(value), "f")
        bundle.add_content(message.build())
    return bundle.build().dgram


class SoundSender:
    """Sends every stream's sound features to each target every SEND_INTERVAL_SECONDS, from the event loop."""

    def __init__(self, registry: StreamRegistry, targets: tuple[tuple[str, int], ...]) -> None:
        self._registry = registry
        self._targets = targets
        self._transports: list[asyncio.DatagramTransport] = []
        self._task: asyncio.Task | None = None
        self.sent = 0  # datagrams

    async def start(self) -> None:
        """Open a UDP socket per target (ValueError if a host does not resolve) and start the clock."""
        loop = asyncio.get_running_loop()
        for host, port in self._targets:
            try:
                transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
            except OSError as error:
                self.close()
                raise ValueError(f"--osc-send {host}:{port}: {error.strerror or error}") from None
            self._transports.append(transport)
        self._task = asyncio.create_task(self._run(), name="osc-send")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for transport in self._transports:
            transport.close()
        self._transports = []

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while True:
            tick += SEND_INTERVAL_SECONDS
            await asyncio.sleep(max(0.0, tick - loop.time()))
            tick = max(tick, loop.time() - SEND_INTERVAL_SECONDS)  # after a stall, on from now: no burst
            for stream in list(self._registry):
                if stream.sound is None:
                    continue
                datagram = sound_bundle(stream.name, stream.sound.features.snapshot())
                for transport in self._transports:
                    # Never blocks: a datagram the socket cannot take is lost, as UDP's are, and the next one is
                    # 20 ms away (asyncio reports the error to the protocol, which ignores it).
                    transport.sendto(datagram)
                    self.sent += 1
