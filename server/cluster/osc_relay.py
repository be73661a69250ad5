"""The show's one OSC listener under `--replicas`: each message goes on, byte for byte, to the replica that holds
its stream (to every replica for `*`).

Each replica runs the ordinary OSC front end on a port of its own node and reports it to the board; the relay
reads the board every DIRECTORY_SECONDS to learn which replica holds which stream. It only splits packets into
messages and forwards them, a `sendto` each: checking, coalescing (a fader's flood) and applying stay with the
replica, as on one server. A message for a stream no replica holds, and a datagram the relay cannot split, go to
one replica, which refuses them, logs them and counts them.

No datagram and no answer of the board stops the relay: each datagram's failure is logged (once a minute per
sender) and the next one is read; anything that still escapes is logged and the loop starts again, so OSC lasts
the show.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pythonosc.osc_packet import OscPacket

from ..frontends.osc import ALL_STREAMS, PREFIX, OncePerSender, clipped, is_loopback

log = logging.getLogger(__name__)

DIRECTORY_SECONDS = 0.5
RECEIVE_TIMEOUT_SECONDS = 0.25  # how soon the thread sees a stop or a due refresh when no message comes
RESTART_PAUSE_SECONDS = 1.0  # a failure that repeats (a socket gone bad) restarts the loop once a second, no faster


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
        self._logged = OncePerSender()
        self.restarts = 0  # how often the loop failed and started again

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        for sender in self._senders.values():
            sender.close()

    def run(self) -> None:
        """Relay until stopped; if the loop itself fails, log it and start it again."""
        while not self._stopping.is_set():
            try:
                self._relay_until_stopped()
            except Exception as error:
                self.restarts += 1
                self._log("the relay", f"failed ({type(error).__name__}: {error}); restart {self.restarts}")
                self._stopping.wait(RESTART_PAUSE_SECONDS)

    def _relay_until_stopped(self) -> None:
        self._sock.settimeout(RECEIVE_TIMEOUT_SECONDS)
        while not self._stopping.is_set():
            self._refresh_when_due()
            try:
                data, sender = self._sock.recvfrom(1 << 16)
            except TimeoutError:
                continue
            try:
                self._relay(data, str(sender[0]))
            except Exception as error:  # this datagram is lost; the next one is read
                self._log(str(sender[0]), f"a {len(data)}-byte datagram not relayed ({type(error).__name__}: {error})")

    def _relay(self, data: bytes, sender: str) -> None:
        if self._allowed is not None and sender not in self._allowed:
            return  # as on one server: beyond localhost only --osc-allow's senders are heard
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except Exception:  # ParseError, and RecursionError from a 60 KB datagram of nested bundles
            self._forward(data, self._replicas[:1])  # the replica refuses it, logs it and counts it
            return
        for message in messages:
            self._forward(message.dgram, self._targets(message.address))

    def _targets(self, address: str) -> list[tuple[str, int]]:
        parts = address.split("/")
        stream = parts[2] if len(parts) > 2 and parts[1] == PREFIX else None
        if stream == ALL_STREAMS:
            return self._replicas
        holder = self._holders.get(stream) if stream is not None else None
        return [holder] if holder is not None else self._replicas[:1]

    def _forward(self, data: bytes, targets: list[tuple[str, int]]) -> None:
        for target in targets:
            try:
                self._senders[socket.AF_INET6 if ":" in target[0] else socket.AF_INET].sendto(data, target)
            except Exception as error:  # a replica out of reach (its node gone, a bad report): the others get theirs
                self._log(f"replica {target[0]}:{target[1]}", f"not reached: {error}")

    def _refresh_when_due(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < DIRECTORY_SECONDS:
            return
        self._refreshed = now
        try:
            self._replicas, self._holders = self._directory(self._reports())
        except Exception as error:  # the board restarting (a RayError), or a report unread: keep the last directory
            self._log("the board", f"no directory ({type(error).__name__}: {error}); keeping the last one")

    @staticmethod
    def _directory(reports: list[dict[str, Any]]) -> tuple[list[tuple[str, int]], dict[str, tuple[str, int]]]:
        replicas, holders = [], {}
        for report in reports:
            health = report["health"]
            if health.get("osc_port") is None:
                continue
            address = (health["node"], health["osc_port"])
            replicas.append(address)
            holders.update((stream["name"], address) for stream in report["streams"])
        return replicas, holders

    def _log(self, who: str, problem: str) -> None:
        held_back = self._logged.allow(who)
        if held_back is not None:
            since = f"; {held_back} more since its last line" if held_back else ""
            log.warning("OSC relay, %s: %s (not logged again for a minute%s)", who, clipped(problem), since)
