"""The Record buttons in headless Chromium: the studio page's stream (its fake camera, VP8) recorded from the studio,
a prompt change typed on the page in the middle, the recording seen and stopped from the control page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
import test_browser
from test_browser import ARTIFACTS, STEP_TIMEOUT_S, open_page, start_and_wait_for_video, state, wait_for_state

from conftest import LiveServer

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.browser

# test_browser's fixtures, bound by assignment: imported by name they would be shadowed by the test's arguments.
browser = test_browser.browser
page = test_browser.page
script_errors = test_browser.script_errors


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    live = LiveServer("--record-dir", str(tmp_path_factory.mktemp("recordings")), "--record-min-free", "0")
    yield live
    output = live.stop()
    assert "Traceback" not in output, output


def test_the_studio_records_its_stream_and_the_control_page_stops_it(page, script_errors, server, browser):
    open_page(page, f"{server.url}/?stream=pagerec")
    assert not page.is_enabled("#record")  # nothing to record before Start
    start_and_wait_for_video(page)
    page.click("#record")
    started = wait_for_state(page, "s.recording !== null", STEP_TIMEOUT_S)["recording"]
    assert started["id"].startswith("pagerec-")
    assert page.get_attribute("#record", "aria-pressed") == "true" and page.inner_text("#record") == "Stop recording"
    assert page.inner_text("#record-time").startswith("● 0:0")

    page.wait_for_timeout(1500)
    page.fill("#prompt", "a negative photo")
    page.press("#prompt", "Enter")
    wait_for_state(page, "s.lastParams?.prompt === 'a negative photo'", STEP_TIMEOUT_S)
    page.wait_for_timeout(1500)
    shown_seconds = int(page.inner_text("#record-time").split(":")[1])
    server_seconds = server.get_json("/streams/pagerec")["recording"]["seconds"]
    assert server_seconds > 2.5 and abs(shown_seconds - server_seconds) <= 1.0, (shown_seconds, server_seconds)

    control = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        control.goto(f"{server.url}/control/pagerec")
        # The stats tell the control page that the stream records (the studio started it).
        shown = wait_for_state(control, "s.recording !== null", STEP_TIMEOUT_S)["recording"]
        assert shown["id"] == started["id"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")  # the prompt's Enter scrolled the header off
        page.screenshot(path=str(ARTIFACTS / "recording-studio.png"))
        control.screenshot(path=str(ARTIFACTS / "recording-control.png"))
        control.click("#record")
        wait_for_state(control, "s.recording === null", STEP_TIMEOUT_S)
        assert control.inner_text("#record") == "Record" and control.is_hidden("#record-time")
    finally:
        control.close()
    wait_for_state(page, "s.recording === null", STEP_TIMEOUT_S)  # the studio hears it from its stats
    assert server.get_json("/streams/pagerec")["recording"] is None
    assert script_errors == []

    folder = Path(started["dir"])
    summary = json.loads((folder / "recording.json").read_text())
    assert summary["reason"] == "stopped" and summary["frames"] > 10 * summary["seconds"], summary
    with av.open(str(folder / "input.mkv")) as container:
        assert [stream.type for stream in container.streams] == ["video"]  # the page sent no sound
        pictures = sum(1 for _ in container.decode(video=0))
    assert pictures == summary["frames"]
    lines = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    changes = [line for line in lines if line["type"] == "params"]
    assert [(c["front_end"], c["params"]["prompt"]) for c in changes] == [("websocket", "a negative photo")]
    assert 1.0 < changes[0]["t"] < summary["seconds"] - 1.0
    assert state(page)["connected"]
