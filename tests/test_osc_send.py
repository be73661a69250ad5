"""OSC out (`--osc-send`): a WHIP publisher's tone reaches an OSC receiver as its stream's sound features."""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

import pytest
from pythonosc.osc_packet import OscPacket

from server import serve
from server.bench.rtc_clients import WhipPublisher
from server.config import SettingsError, settings_from_arguments
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

TIMEOUT = 60


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


def parse_settings(flags: list[str]):
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return settings_from_arguments(parser.parse_args(flags))


def test_a_bad_target_is_one_line_naming_the_flag():
    with pytest.raises(SettingsError) as error:
        parse_settings(["--osc-send", "localhost"])
    assert "--osc-send" in str(error.value) and "HOST:PORT" in str(error.value)
    with pytest.raises(SettingsError):
        parse_settings(["--osc-send", "127.0.0.1:70000"])
    assert parse_settings(["--osc-send", "127.0.0.1:9000", "--osc-send", "[::1]:9001"]).osc_send == (
        "127.0.0.1:9000",
        "[::1]:9001",
    )


@pytest.mark.slow
async def test_the_stream_s_sound_features_arrive_as_osc():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    port = receiver.getsockname()[1]
    server = LiveServer("--osc-send", f"127.0.0.1:{port}")
    values: dict[str, list[float]] = {}
    try:
        async with WhipPublisher(f"{server.url}/whip/drums", tone_hz=220.0):
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + TIMEOUT
            # Until a second of loud level readings came: the tone is sent at 0.3 of full scale (-10.5 dBFS).
            while sum(v > 0.5 for v in values.get("level", [])) < 50:
                assert time.monotonic() < deadline, f"no loud level over OSC within {TIMEOUT} s: {values}"
                datagram = await asyncio.wait_for(loop.sock_recv(receiver, 65536), timeout=TIMEOUT)
                for message in OscPacket(datagram).messages:
                    address = message.message.address
                    assert address.startswith("/lcmlive/drums/sound/"), address
                    values.setdefault(address.rsplit("/", 1)[1], []).append(message.message.params[0])
    finally:
        receiver.close()
        log = server.stop()
    assert {"level", "low", "mid", "high", "onset"} <= set(values), set(values)
    # A steady 220 Hz tone: its energy is in the mid band, and after its start there is no onset.
    assert max(values["mid"][-50:]) > 0.5, values["mid"][-50:]
    assert max(values["onset"][-25:]) < 0.2, values["onset"][-25:]
    assert "Traceback" not in log, log
