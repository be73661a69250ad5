"""Soak and leaks (issue 12, item 6): three publishers for a minute, then a storm of 50 short sessions, against a
live `lcmlive serve`. It asserts behaviour, not speed; the fps and latency figures are in the printed report
(`pytest -s` or `-rP` shows it). `lcmlive soak` runs the same against any server.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.bench.soak import RESOURCE_COUNTS, SESSION_COUNTS, SoakConfig, checks, format_report, run_soak
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

# the soak: 88 s, and the soak command's refusals 15 s (CI, under load)
# serial: its checks hold a real-time pace (scripts/test.sh runs it alone)
pytestmark = [pytest.mark.slow, pytest.mark.serial]

# Short timeouts, so that the storm's sockets that never offer, and peers that never connect, are closed by the
# server within the test. The idle timeout never fires: every publisher sends 30 frames a second.
SERVER_FLAGS = ("--offer-timeout", "2", "--connect-timeout", "10", "--idle-timeout", "10", "--max-sessions", "4")


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.fixture(scope="module")
def soaked():
    server = LiveServer(*SERVER_FLAGS)
    yield server
    server.stop()


async def test_streams_hold_and_every_resource_comes_back(soaked):
    server = soaked
    config = SoakConfig(server.url, pid=server.process.pid, publishers=3, seconds=60, storm=50, offer_wait=8, settle=30)
    report = await run_soak(config, log=lambda line: print(f"soak: {line}", flush=True))
    text = format_report(report)
    print(text)
    results = {check["name"]: check for check in report["checks"]}

    def failed(*prefixes: str) -> list[dict]:
        return [c for name, c in results.items() if name.startswith(prefixes) and not c["ok"]]

    # Every viewer (a page's own return video, a WHEP viewer of a WHIP publisher) got frames in every 10-s window.
    assert len(report["windows"]) == 6
    assert not failed("frames"), text
    # No queue grows: each stream's server-reported latency at the end is at most twice that at the start.
    assert len([name for name in results if name.startswith("latency")]) == 3
    assert not failed("latency"), text
    # Every short session behaved: frames for the full ones, 200 for every DELETE, and a socket that never sent
    # an offer closed by the server with `offer_timeout`.
    assert report["storm"]["by_kind"]["page-no-offer-wait"]["sessions"] >= 7
    assert not failed("storm"), text
    # Sessions, streams, sockets, peer connections and engine clients back to zero; the process's threads, open
    # descriptors (and asyncio tasks, where /health reports them) back to the warm-up's baseline; RSS within 50 MB.
    assert all(report["end"][name] == 0 for name in SESSION_COUNTS), text
    assert {"threads", "fds", "rss growth"} <= set(results)
    assert not failed("/health", *RESOURCE_COUNTS, "rss"), text
    assert report["ok"], text

    log = server.stop()
    # No task of the server died with an unhandled exception along the way.
    for sign in ("Traceback", "exception was never retrieved", "ERROR"):
        assert sign not in log, log


def test_checks_catch_a_silent_window_growing_latency_and_a_leak():
    def window(fps: float, latency: float | None) -> dict:
        return {"fps": {"a": fps}, "latency_ms": {"a": latency}}

    counts = {name: 0 for name in SESSION_COUNTS}
    report = {
        "windows": [window(4.0, 80.0), window(0.0, None), window(3.0, 170.0)],
        "latency_ms": {"a": {"start": 80.0, "end": 170.0}},
        "storm": {"sessions": 50, "failures": []},
        "baseline": {**counts, "threads": 9, "fds": 7, "tasks": 3, "rss_mb": 400.0},
        "end": {**counts, "peer_connections": 1, "threads": 9, "fds": 8, "tasks": 3, "rss_mb": 420.0},
    }
    failed = {check["name"] for check in checks(report) if not check["ok"]}
    assert failed == {"frames in every window", "latency of a", "/health peer_connections", "fds"}


def test_latency_is_judged_against_the_largest_start_of_the_streams():
    # The shape seen in CI: one stream started low because its frames landed first in the engine's round.
    def report(latency: dict[str, tuple[float, float]]) -> dict:
        counts = {name: 0 for name in SESSION_COUNTS}
        return {
            "windows": [{"fps": {name: 6.0 for name in latency}, "latency_ms": {}}],
            "latency_ms": {name: {"start": start, "end": end} for name, (start, end) in latency.items()},
            "storm": {"sessions": 50, "failures": []},
            "baseline": {**counts, "threads": 9, "fds": 7, "tasks": 3, "rss_mb": 400.0},
            "end": {**counts, "threads": 9, "fds": 7, "tasks": 3, "rss_mb": 400.0},
        }

    def failed(latency: dict[str, tuple[float, float]]) -> set[str]:
        return {check["name"] for check in checks(report(latency)) if not check["ok"]}

    assert failed({"a": (116.8, 164.2), "b": (118.6, 167.1), "c": (78.8, 162.8)}) == set()
    # Every stream's queue growing is still caught.
    assert failed({"a": (80.0, 250.0), "b": (82.0, 260.0), "c": (78.8, 240.0)}) == {
        "latency of a",
        "latency of b",
        "latency of c",
    }


def test_soak_command_refuses_what_it_cannot_bound():
    command = [sys.executable, "-m", "server.cli", "soak", "--url", "http://127.0.0.1:9", "--seconds", "3600"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--seconds must be between 10 and 420" in result.stderr
