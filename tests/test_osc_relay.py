"""The OSC relay of `--replicas`, run in this process: real UDP sockets on 127.0.0.1 stand for the show's port and
the replicas' ports, and a plain callable for the board's directory."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from test_osc import hostile_datagrams, osc_message

from server.cluster.osc_relay import OscRelay

WAIT_SECONDS = 10


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # the hostile datagrams are 60-65 KB each
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT_SECONDS)
    return sock


def report(replica: socket.socket | None, streams: list[str], port: int | None = None) -> dict:
    """One replica's entry on the board, as `reports` gives it: its node, its OSC port, its streams."""
    port = port if replica is None else replica.getsockname()[1]
    return {"health": {"node": "127.0.0.1", "osc_port": port}, "streams": [{"name": name} for name in streams]}


def received_until(replica: socket.socket, wanted: bytes) -> list[bytes]:
    """Every datagram the replica gets, up to and including `wanted` (socket timeout: it never came)."""
    got: list[bytes] = []
    while wanted not in got:
        got.append(replica.recvfrom(1 << 16)[0])
    return got


@pytest.fixture
def show() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener, sender = udp_socket(), udp_socket()
    yield listener, sender
    listener.close()
    sender.close()


def test_no_datagram_stops_the_relay(show):
    listener, sender = show
    replica = udp_socket()
    relay = OscRelay(listener, (), lambda: [report(replica, ["vj"])])
    relay.start()  # the directory is read before the first datagram
    try:
        hostile = hostile_datagrams("vj")
        for data in hostile.values():
            sender.sendto(data, listener.getsockname())
        ordinary = osc_message("/lcmlive/vj/seed", 7)
        sender.sendto(ordinary, listener.getsockname())
        # What it cannot split goes on whole, for the replica to refuse and count; then the ordinary message.
        assert received_until(replica, ordinary) == [*hostile.values(), ordinary]
        assert relay.is_alive() and relay.restarts == 0
    finally:
        relay.stop()
        replica.close()


def test_a_failing_board_and_an_unreachable_replica_do_not_stop_the_relay(show, caplog):
    listener, sender = show
    replica = udp_socket()
    answers = iter([RuntimeError("the board is restarting"), [{"no": "health"}]])

    def reports() -> list[dict]:
        answer = next(answers, None)
        if isinstance(answer, Exception):
            raise answer
        # A replica whose report is wrong (port out of range) before the real one: `*` still reaches the real one.
        return answer or [report(None, [], port=70_000), report(replica, ["vj"])]

    relay = OscRelay(listener, (), reports)
    relay.start()
    try:
        everyone = osc_message("/lcmlive/*/seed", 8)
        deadline = time.monotonic() + WAIT_SECONDS
        replica.settimeout(0.2)
        while True:  # dropped until the board answers (about a second: DIRECTORY_SECONDS x 3 reads)
            sender.sendto(everyone, listener.getsockname())
            try:
                if replica.recvfrom(1 << 16)[0] == everyone:
                    break
            except TimeoutError:
                assert time.monotonic() < deadline, "the relay never forwarded after the board came back"
        assert relay.is_alive() and relay.restarts == 0
    finally:
        relay.stop()
        replica.close()
    logged = caplog.text
    # The board's second failure (a report without health) came within the minute: held back, not logged.
    assert logged.count("OSC relay, the board") == 1 and "the board is restarting" in logged, logged
    assert "replica 127.0.0.1:70000: not reached" in logged, logged
