"""Named streams in headless Chromium: the view page, the control page and the studio's addresses, against a real
`lcmlive serve --model tiny --token ...` with other Chromium pages and an aiortc WHIP publisher as the sources."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    FIRST_VIDEO_TIMEOUT_S,
    GRAB_OUTPUT_GREY,
    STEP_TIMEOUT_S,
    assert_not_blank,
    mean_abs_difference,
    open_page,
    start_and_wait_for_video,
    state,
    wait_for_health,
    wait_for_state,
)

from server.bench.loopback import ControlClient
from server.bench.rtc_clients import WhipPublisher
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

if TYPE_CHECKING:  # the annotations name its classes; a module found at run time is not a type to a checker
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.browser

TOKEN = "studio-secret"
# The view page retries every 0.5, 1, 2, 4 then 5 s, and the studio needs a second or two to publish again.
COME_BACK_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def studio() -> Iterator[LiveServer]:
    """One server with a token for the module: every page and client here must carry it."""
    server = LiveServer("--token", TOKEN)
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Pages:
    """Pages in browser contexts of their own (separate browsers, as far as the pages can tell), and the script
    errors of all of them: a person would not see those, so the tests assert there are none."""

    def __init__(self, browser: sync_api.Browser) -> None:
        self.browser = browser
        self.contexts: list[sync_api.BrowserContext] = []
        self.errors: list[str] = []

    def open(self, width: int = 1280, height: int = 800, **options) -> sync_api.Page:
        context = self.browser.new_context(viewport={"width": width, "height": height}, **options)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_S * 1000)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: sync_api.Browser) -> Iterator[Pages]:
    pages = Pages(browser)
    yield pages
    pages.close()


class LoopThread:
    """An asyncio loop in a thread of its own: the aiortc clients run there, next to Playwright's sync API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aiortc-clients", daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = STEP_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def aio() -> Iterator[LoopThread]:
    restrict_ice_to_loopback()  # process-wide: the Python peers offer and accept 127.0.0.1 only
    loop = LoopThread()
    yield loop
    loop.close()


def page_url(server: LiveServer, path: str, **query: str) -> str:
    pairs = "&".join(f"{name}={value}" for name, value in {**query, "token": TOKEN}.items())
    return f"{server.url}{path}?{pairs}"


def grab_grey(page: sync_api.Page, video_id: str) -> list[int]:
    return page.evaluate(GRAB_OUTPUT_GREY, video_id)


def test_view_page_plays_a_stream_published_by_another_page_and_comes_back(studio, pages):
    studio_page = pages.open()
    open_page(studio_page, page_url(studio, "/", stream="stage"))
    start_and_wait_for_video(studio_page)

    view = pages.open(1280, 720)
    view.goto(page_url(studio, "/view/stage"))
    playing = wait_for_state(view, "s.playing && s.frames > 5", FIRST_VIDEO_TIMEOUT_S)
    wait_for_state(view, f"s.frames > {playing['frames'] + 5}", STEP_TIMEOUT_S)
    assert view.locator("#waiting").is_hidden()
    picture = grab_grey(view, "picture")
    camera = grab_grey(studio_page, "input-video")
    output = grab_grey(studio_page, "output-video")
    assert_not_blank(picture, "on the view page")
    # The stylised stream, not the camera: nearer the studio's output than the fake camera it was made from (the
    # toy model shows the camera, so both are near it).
    assert mean_abs_difference(picture, output) < mean_abs_difference(picture, camera), (
        mean_abs_difference(picture, output),
        mean_abs_difference(picture, camera),
    )
    # Chrome-free: the video fills the window on black, with nothing else on the page.
    box = view.locator("#picture").bounding_box()
    assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 1280, 720), box
    assert view.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(0, 0, 0)"
    assert view.evaluate("getComputedStyle(document.getElementById('picture')).objectFit") == "contain"
    assert view.locator("button, input, select, textarea").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    view.screenshot(path=str(ARTIFACTS / "chromium-view.png"))

    # The publisher stops: the stream ends and the view page waits for it...
    studio_page.click("#stop")
    wait_for_state(view, "!s.playing", STEP_TIMEOUT_S)
    waiting = view.locator("#waiting")
    waiting.wait_for(state="visible")
    assert waiting.inner_text() == "waiting for stream stage"
    attempts = state(view)["attempts"]

    # ...and plays it again by itself when it is back.
    studio_page.click("#start")
    frames = state(view)["frames"]
    back = wait_for_state(view, f"s.playing && s.frames > {frames + 5}", COME_BACK_TIMEOUT_S)
    assert back["attempts"] > attempts
    assert waiting.is_hidden()
    assert_not_blank(grab_grey(view, "picture"), "after the stream came back")
    assert studio.health()["viewers"] == 1

    # Leaving the page gives the viewer slot back at once: DELETE on its WHEP resource, with the token.
    with view.expect_response(lambda response: response.request.method == "DELETE") as deleted:
        view.evaluate("dispatchEvent(new PageTransitionEvent('pagehide'))")
    assert "/whep/stage/" in deleted.value.url and deleted.value.status == 200, (
        deleted.value.url,
        deleted.value.status,
        deleted.value.text(),
        studio.output()[-4000:],
    )
    wait_for_health(studio, lambda h: h["viewers"] == 0, STEP_TIMEOUT_S)
    # The server heard it leave, rather than finding its connection gone (the page closes it after the answer).
    # Its log reaches this process through a reader thread: wait for the line rather than race it.
    left = f"viewer {deleted.value.url.rsplit('/', 1)[1]} removed: it left (DELETE)"
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while left not in studio.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left in studio.output(), studio.output()[-4000:]

    studio_page.click("#stop")
    wait_for_health(studio, lambda h: h["publishers"] == h["viewers"] == h["peer_connections"] == 0, STEP_TIMEOUT_S)
    assert pages.errors == []


def test_control_page_changes_the_prompt_of_a_whip_stream(studio, pages, aio):
    whip_url = f"{studio.url}/whip/obs-cam"
    control = pages.open(1000, 800)
    control.goto(page_url(studio, "/control/obs-cam"))
    control.locator("#prompt").wait_for(state="visible")
    # Nothing publishes yet: the page waits (and keeps asking) instead of showing an error.
    wait_for_state(control, "s.lastError?.code === 'no_such_stream' && s.attempts >= 2", STEP_TIMEOUT_S)
    assert not state(control)["connected"]
    assert control.inner_text("#status") == "waiting for stream obs-cam"
    assert control.locator("#error").is_hidden()
    assert control.locator("video").count() == 0
    assert control.is_disabled("#prompt"), "a change made now would have nowhere to go"

    async def publish() -> WhipPublisher:
        publisher = WhipPublisher(whip_url, token=TOKEN)
        return await publisher.__aenter__()

    async def attach() -> ControlClient:
        return await ControlClient(studio.ws_url, "obs-cam", token=TOKEN).__aenter__()

    publisher = aio.run(publish())
    clients: list[ControlClient] = []
    try:
        attached = wait_for_state(
            control, "s.connected && s.lastStats && s.lastStats.frames_in > 0", 2 * STEP_TIMEOUT_S
        )
        assert attached["lastStats"]["stream"] == "obs-cam"
        assert control.inner_text("#status") == "attached"
        assert control.is_enabled("#prompt")
        clients.append(aio.run(attach()))

        new_prompt = "a neon city at night, rain"
        control.fill("#prompt", new_prompt)
        control.press("#prompt", "Enter")
        # The server's echo reaches every socket on the stream: this page and the Python controller.
        wait_for_state(control, f"s.lastParams?.prompt === {new_prompt!r}", STEP_TIMEOUT_S)
        echo = aio.run(clients[0].wait_for_params(lambda params: params.get("prompt") == new_prompt))
        assert echo["params"]["prompt"] == new_prompt
        # The stream's own params changed: a controller attaching now is told the new prompt first thing.
        clients.append(aio.run(attach()))
        assert clients[1].record.params[0]["params"]["prompt"] == new_prompt

        # OBS stops publishing: the page goes back to waiting for the stream.
        assert aio.run(publisher.close()) == 200
        wait_for_state(control, "!s.connected && s.lastError?.code === 'publisher_left'", STEP_TIMEOUT_S)
        control.wait_for_function("() => document.getElementById('status').textContent.startsWith('waiting')")
        assert control.locator("#error").is_hidden()
    finally:
        for client in clients:
            aio.run(client.close())
        aio.run(publisher.close())
    wait_for_health(studio, lambda h: h["publishers"] == h["peer_connections"] == 0, STEP_TIMEOUT_S)
    assert pages.errors == []


def test_studio_shows_its_stream_addresses_and_refuses_a_taken_name(studio, pages):
    first = pages.open(permissions=["clipboard-read", "clipboard-write"])
    open_page(first, page_url(studio, "/", stream="taken-name"))
    # The name from the URL is known at once: the addresses can be shared before Start.
    assert first.inner_text("#stream-name") == "taken-name"
    assert first.input_value("#view-url") == f"{studio.url}/view/taken-name?token={TOKEN}"
    assert first.input_value("#control-url") == f"{studio.url}/control/taken-name?token={TOKEN}"
    # A WHEP player sends the token as a Bearer header, so it is not in that URL; the page says so.
    assert first.input_value("#whep-url") == f"{studio.url}/whep/taken-name"
    assert "Bearer" in first.inner_text("#whep-token-note")
    start_and_wait_for_video(first)
    assert state(first)["streamName"] == "taken-name"
    first.click("button[data-copy='view-url']")
    first.wait_for_function("() => document.querySelector(\"button[data-copy='view-url']\").textContent === 'Copied'")
    assert first.evaluate("navigator.clipboard.readText()") == first.input_value("#view-url")

    second = pages.open()
    sockets: list[str] = []
    second.on("websocket", lambda socket: sockets.append(socket.url))
    open_page(second, page_url(studio, "/", stream="taken-name"))
    second.click("#start")
    refused = wait_for_state(second, "!s.running && s.lastError?.code === 'stream_taken'", STEP_TIMEOUT_S)
    assert "taken-name" in refused["lastError"]["message"]
    assert second.locator("#error").is_visible()
    assert "another-name" in second.inner_text("#error-message")
    assert second.inner_text("#status") == "error"
    # No retry: a reconnect would come after 1 s; give it more than that, and the one socket stays the only one.
    time.sleep(2.5)
    assert len(sockets) == 1, sockets
    assert not state(second)["running"]
    # The first page publishes on, undisturbed.
    frames = state(first)["outputFrames"]
    wait_for_state(first, f"s.connected && s.outputFrames > {frames + 3}", STEP_TIMEOUT_S)
    assert studio.health()["publishers"] == 1

    first.click("#stop")
    wait_for_health(studio, lambda h: h["publishers"] == h["peer_connections"] == 0, STEP_TIMEOUT_S)
    assert pages.errors == []


def test_view_and_control_pages_with_a_wrong_token_say_so_and_stop(studio, pages):
    view = pages.open(640, 360)
    view.goto(f"{studio.url}/view/anything?token=wrong")
    refused = wait_for_state(view, "s.lastError?.code === 'unauthorized'", STEP_TIMEOUT_S)
    assert "token" in view.inner_text("#waiting")
    control = pages.open()
    control.goto(f"{studio.url}/control/anything?token=wrong")
    wait_for_state(control, "s.lastError?.code === 'unauthorized'", STEP_TIMEOUT_S)
    control.locator("#error").wait_for(state="visible")
    assert "token" in control.inner_text("#error-message")
    assert control.inner_text("#status") == "error"
    # Another try could not help: neither page asks again (the first retry would come within a second).
    time.sleep(1.5)
    assert state(view)["attempts"] == refused["attempts"] == 1
    assert state(control)["attempts"] == 1
    assert pages.errors == []
