"""Sound in headless Chromium against a real `lcmlive serve --model tiny`: the studio page with Sound on publishes
its microphone (Chromium's fake one beeps twice a second), `/view/NAME?sound=1` plays the stream's sound, and the
studio hears it back with Hear on; with Sound off (the default) no sound is published or played.

What is asserted is what a person hears: the level (RMS, Web Audio) of the audio the page's video element plays."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FIRST_VIDEO_TIMEOUT_S,
    STEP_TIMEOUT_S,
    open_page,
    start_and_wait_for_video,
    state,
    wait_for_state,
)

from conftest import ROOT, LiveServer

if TYPE_CHECKING:  # the annotations name its classes; a module found at run time is not a type to a checker
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "artifacts"
# An OBS browser source plays sound without a click; this flag makes headless Chromium do the same.
SOUND_ARGS = [*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"]
# Measured on the fake microphone's beeps, at the microphone and after the server's Opus: 0.29-0.31 RMS in the
# 43 ms window that holds a beep, 0.000 between beeps. A window counts as sound above a tenth of that.
BEEP_RMS = 0.03
LISTEN_SECONDS = 3.0
# Two beeps a second: in 3 s at least 4 windows should hold one (6 beeps, some missed between two looks).
MIN_LOUD_WINDOWS = 4

# The RMS level, every 50 ms for `seconds`, of the audio track that the video element `id` plays; null if it has
# none. A Web Audio AnalyserNode on the element's own track, the one a person would hear.
LISTEN = """
async ({ id, seconds }) => {
  const video = document.getElementById(id);
  const track = video.srcObject?.getAudioTracks()[0];
  if (!track) return null;
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const levels = [];
  for (let t = 0; t < seconds * 1000; t += 50) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    analyser.getFloatTimeDomainData(samples);
    levels.push(Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length));
  }
  await context.close();
  return levels;
}
"""


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    server = LiveServer()
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=SOUND_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def pages(browser: sync_api.Browser) -> Iterator[list[sync_api.Page]]:
    """New pages, each in a context of its own; the test asserts their script errors are none."""
    opened: list[sync_api.Page] = []
    errors: list[str] = []

    def open_new(width: int = 1280, height: int = 800) -> sync_api.Page:
        page = browser.new_context(viewport={"width": width, "height": height}).new_page()
        page.set_default_timeout(STEP_TIMEOUT_S * 1000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        opened.append(page)
        return page

    yield open_new  # type: ignore[misc]
    for page in opened:
        page.context.close()
    assert errors == []


def listen(page: sync_api.Page, video_id: str) -> list[float] | None:
    return page.evaluate(LISTEN, {"id": video_id, "seconds": LISTEN_SECONDS})


def loud_windows(levels: list[float] | None) -> int:
    return sum(level > BEEP_RMS for level in levels or [])


def stream_stats(server: LiveServer, name: str, condition, timeout_s: float = STEP_TIMEOUT_S) -> dict:
    """The server's stats of stream `name` (GET /streams/NAME) once `condition(stats)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = server.get_json(f"/streams/{name}")["stats"]
        if condition(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.25)


def test_sound_on_plays_on_the_view_page(server, pages):
    studio = pages()
    open_page(studio, f"{server.url}/?stream=beeps")
    assert not studio.is_checked("#sound") and studio.is_disabled("#hear")
    studio.check("#sound")
    studio.check("#hear")
    start_and_wait_for_video(studio)
    # Chromium's fake devices are three microphones ("default" and two): once allowed, the picker shows them.
    live = wait_for_state(studio, "s.sound.microphones >= 2 && s.sound.received", STEP_TIMEOUT_S)
    assert live["sound"]["microphone"] and not live["sound"]["muted"], live["sound"]
    assert studio.is_visible("#microphone") and studio.is_disabled("#sound")
    ARTIFACTS.mkdir(exist_ok=True)
    studio.screenshot(path=str(ARTIFACTS / "chromium-studio-sound.png"))

    view = pages(960, 540)
    with view.expect_request(lambda request: request.method == "POST" and "/whep/beeps" in request.url) as offer:
        view.goto(f"{server.url}/view/beeps?sound=1")
    assert "m=audio" in (offer.value.post_data or ""), "?sound=1 asks for sound with an audio m-line"
    wait_for_state(view, "s.playing && s.frames > 5 && s.sound.tracks === 1", FIRST_VIDEO_TIMEOUT_S)
    heard = listen(view, "picture")
    assert loud_windows(heard) >= MIN_LOUD_WINDOWS, heard
    assert state(view)["sound"] == {"asked": True, "tracks": 1, "muted": False, "blocked": False}
    assert view.evaluate("!document.getElementById('picture').paused")
    # The server says by how much it holds the sound back (the picture's latency).
    stats = stream_stats(server, "beeps", lambda s: s.get("sound_delay_ms") is not None)
    assert stats.get("sound_delay_ms") is not None and stats["sound_delay_ms"] >= 0, stats

    # "+ modulation" in the page's editor links the strength to the sound; the overlay shows the sound's features
    # and the strength each frame ran with.
    studio.locator("button", has_text="+ modulation").click()
    params = stream_stats(server, "beeps", lambda s: s.get("modulated"))
    modulations = server.get_json("/streams/beeps")["params"]["modulations"]
    assert [(m["param"], m["source"]) for m in modulations] == [("strength", "level")], modulations
    assert "strength" in params["modulated"], params
    overlay = "document.getElementById('stats').textContent"
    studio.wait_for_function(f"() => {overlay}.includes('♪ level') && {overlay}.includes('~ strength')")

    # Hear off mutes the studio at once; a live change of microphone keeps the stream's sound going.
    studio.uncheck("#hear")
    assert state(studio)["sound"]["muted"]
    other = studio.locator("#microphone option").nth(1)
    studio.select_option("#microphone", value=other.get_attribute("value"))
    wait_for_state(studio, f"s.sound.microphone === {other.inner_text()!r}", STEP_TIMEOUT_S)
    assert loud_windows(listen(view, "picture")) >= MIN_LOUD_WINDOWS

    studio.click("#stop")
    assert not studio.is_disabled("#sound")


# The page offers its microphone and its sound back on two audio m-lines. Under aiortc's default bundle policy the
# second one joins the first one's transport before BUNDLE moves that one to the primary, and sends on a
# transport that never connects: no packet arrived until server/media/peers.py answered an offer that bundles
# every m-line with RTCBundlePolicy.MAX_BUNDLE.
def test_hear_plays_the_sound_back_in_the_studio(server, pages):
    studio = pages()
    open_page(studio, f"{server.url}/?stream=hear")
    studio.check("#sound")
    studio.check("#hear")
    start_and_wait_for_video(studio)
    wait_for_state(studio, "s.sound.received && !s.sound.muted", STEP_TIMEOUT_S)
    back = listen(studio, "output-video")
    assert loud_windows(back) >= MIN_LOUD_WINDOWS, back
    studio.click("#stop")


def test_sound_off_publishes_no_sound(server, pages):
    studio = pages()
    open_page(studio, f"{server.url}/?stream=silent")
    start_and_wait_for_video(studio)
    sound = state(studio)["sound"]
    assert (sound["microphone"], sound["received"], sound["muted"]) == (None, False, True), sound
    assert studio.is_hidden("#microphone")

    # The view page asks, and the server answers its audio m-line inactive: the picture plays without sound.
    view = pages(960, 540)
    view.goto(f"{server.url}/view/silent?sound=1")
    wait_for_state(view, "s.playing && s.frames > 5", FIRST_VIDEO_TIMEOUT_S)
    assert state(view)["sound"]["tracks"] == 0
    assert listen(view, "picture") is None
    stats = stream_stats(server, "silent", lambda s: "sound_delay_ms" in s)
    assert "sound_delay_ms" in stats and stats["sound_delay_ms"] is None, stats
    studio.click("#stop")

    # A value the page does not understand is said, not guessed: nothing is asked of the server.
    odd = pages(960, 540)
    odd.goto(f"{server.url}/view/silent?sound=yes")
    assert "?sound= takes 1" in odd.inner_text("#waiting")
    assert state(odd)["attempts"] == 0
