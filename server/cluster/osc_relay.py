"""The show's one OSC listener under `--replicas`: each message goes on, byte for byte, to the replica that holds
its stream (to every replica for `*`).

Each replica runs the ordinary OSC front end on a port of its own node and reports it to the board; the relay
reads the board every DIRECTORY_SECONDS to learn which replica holds which stream. It only splits packets into
messages and forwards them, a `sendto` each: checking, coalescing (a fader's flood) and applying stay with the
replica, as on one server. A message for a stream no replica holds goes to one replica, which refuses it, logs
it and counts it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pythonosc.osc_packet import OscPacket, ParseError
from ray.exceptions import RayError

from ..frontends.osc import ALL_STREAMS, PREFIX, is_loopback

log = logging.getLogger(__name__)

DIRECTORY_SECONDS = 0.5
RECEIVE_TIMEOUT_SECONDS = 0.25  # how soon the thread sees a stop or a due refresh when no message comes


class OscRelay(threading.Thread):
    def __init__(self, sock: socket.socket, allow: tuple[str, ...], reports: Callable[[], list[dict[str, Any]]]):
        super().__init__(name="osc-relay", daemon=True)
        self._sock = sock
        host = sock.getsockname()[0]
        self._allowed = None if is_loopback(host) else frozenset(allow)
        self._reports = reports
        self._replicas: list[tuple[str, int]] = []  # each replica's OSC address
        self._holders: dict[str, tuple[str, int]] = {}  # stream name: its replica's OSC address
        # Its own socket to send from: the listener may be bound to loopback while replicas run on other nodes.
        families = (socket.AF_INET, socket.AF_INET6)
        self._senders = {family: socket.socket(family, socket.SOCK_DGRAM) for family in families}
        self._stopping = threading.Event()
        self._refreshed = 0.0

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        for sender in self._senders.values():
            sender.close()

    def run(self) -> None:
        self._sock.settimeout(RECEIVE_TIMEOUT_SECONDS)
        while not self._stopping.is_set():
            self._refresh_when_due()
            try:
                data, sender = self._sock.recvfrom(1 << 16)
            except TimeoutError:
                continue
            if self._allowed is not None and sender[0] not in self._allowed:
                continue  # as on one server: beyond localhost only --osc-allow's senders are heard
            try:
                messages = [timed.message for timed in OscPacket(data).messages]
            except ParseError:
                messages = []
                self._forward(data, self._replicas[:1])  # the replica refuses it, logs it and counts it
            for message in messages:
                self._forward(message.dgram, self._targets(message.address))

    def _targets(self, address: str) -> list[tuple[str, int]]:
        parts = address.split("/")
        stream = parts[2] if len(parts) > 2 and parts[1] == PREFIX else None
        if stream == ALL_STREAMS:
            return self._replicas
        holder = self._holders.get(stream)
        return [holder] if holder is not None else self._replicas[:1]

    def _forward(self, data: bytes, targets: list[tuple[str, int]]) -> None:
        for target in targets:
            self._senders[socket.AF_INET6 if ":" in target[0] else socket.AF_INET].sendto(data, target)

    def _refresh_when_due(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < DIRECTORY_SECONDS:
            return
        self._refreshed = now
        try:
            reports = self._reports()
        except RayError as error:  # the board restarting: keep the last directory until it answers
            log.warning("OSC relay: the board did not answer (%s); keeping the last directory", error)
            return
        replicas, holders = [], {}
        for report in reports:
            health = report["health"]
            if health.get("osc_port") is None:
                continue
            address = (health["node"], health["osc_port"])
            replicas.append(address)
            holders.update((stream["name"], address) for stream in report["streams"])
        self._replicas, self._holders = replicas, holders
