"""Scenes in headless Chromium: the scene buttons, keys 1–9 and "Save scene" on the control and studio pages,
against a real `lcmlive serve --model tiny --token ... --scenes FILE` with an aiortc publisher as the source."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    STEP_TIMEOUT_S,
    open_page,
    wait_for_health,
    wait_for_state,
)
from test_browser_streams import TOKEN, LoopThread, Pages, page_url

from server.bench.loopback import LoopbackClient
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

if TYPE_CHECKING:  # the annotations name its classes; a module found at run time is not a type to a checker
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.browser

SCENES = [
    {"name": "calm", "params": {"prompt": "a calm lake at dawn", "strength": 0.4}},
    {"name": "storm", "params": {"prompt": "a storm over the sea, lightning", "strength": 0.8}},
    {"name": "fog", "params": {"prompt": "fog in a pine forest"}},
]
# The studio publishes after ICE and its first offer; on two shared cores that takes a few seconds.
PUBLISH_TIMEOUT_S = 45


@pytest.fixture(scope="module")
def scenes_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("show") / "scenes.json"
    path.write_text(json.dumps(SCENES))
    return path


@pytest.fixture(scope="module")
def show(scenes_file: Path) -> Iterator[LiveServer]:
    server = LiveServer("--token", TOKEN, "--scenes", str(scenes_file))
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def pages(browser: sync_api.Browser) -> Iterator[Pages]:
    pages = Pages(browser)
    yield pages
    pages.close()


@pytest.fixture
def aio() -> Iterator[LoopThread]:
    restrict_ice_to_loopback()
    loop = LoopThread()
    yield loop
    loop.close()


def scene_buttons(page: sync_api.Page) -> list[str]:
    return page.locator("#scene-row button").all_inner_texts()


def stream_params(server: LiveServer, stream: str) -> dict:
    return server.get_json(f"/streams/{stream}")["params"]


def wait_for_prompt(page: sync_api.Page, prompt: str) -> None:
    """The page's prompt box shows `prompt` (the server's echo of a recall reached this page)."""
    page.wait_for_function("(text) => document.getElementById('prompt').value === text", arg=prompt)


def current_scenes(page: sync_api.Page) -> list[str]:
    return page.locator("#scene-row button[aria-current='true']").all_inner_texts()


def test_control_page_recalls_scenes_by_button_and_key_and_saves_one(show, scenes_file, pages, aio):
    control = pages.open(1000, 760)
    open_page(control, page_url(show, "/control/show"))
    # No stream yet: nothing to recall on, so no scenes.
    assert control.locator("#scenes").is_hidden()

    async def publish() -> LoopbackClient:
        return await LoopbackClient(show.ws_url, 128, 128, token=TOKEN, stream="show").__aenter__()

    publisher = aio.run(publish())
    try:
        wait_for_state(control, "s.connected && s.scenes.length === 3", STEP_TIMEOUT_S)
        assert scene_buttons(control) == ["1 calm", "2 storm", "3 fog"]
        assert control.locator("#error").is_hidden()

        control.click("#scene-row button[data-scene='calm']")
        wait_for_prompt(control, "a calm lake at dawn")
        assert stream_params(show, "show")["strength"] == 0.4
        assert current_scenes(control) == ["1 calm"]

        # Key 2, with the focus on the page (here the button just clicked), recalls the second scene.
        control.keyboard.press("2")
        wait_for_prompt(control, "a storm over the sea, lightning")
        assert stream_params(show, "show")["strength"] == 0.8
        assert current_scenes(control) == ["2 storm"]
        # A digit typed into a text box is text, not a recall.
        control.press("#scene-name", "3")
        assert control.input_value("#scene-name") == "3"
        time.sleep(0.5)
        assert stream_params(show, "show")["prompt"] == "a storm over the sea, lightning"

        # Save: the stream's params become a fourth scene, with its button, written to the file.
        control.fill("#prompt", "neon rain on a city street")
        control.press("#prompt", "Enter")
        wait_for_state(control, "s.lastParams?.prompt === 'neon rain on a city street'", STEP_TIMEOUT_S)
        assert current_scenes(control) == []
        control.fill("#scene-name", "neon")
        control.click("#scene-save-button")
        wait_for_state(control, "s.scenes.length === 4", STEP_TIMEOUT_S)
        assert scene_buttons(control) == ["1 calm", "2 storm", "3 fog", "4 neon"]
        assert current_scenes(control) == ["4 neon"]
        assert control.input_value("#scene-name") == ""
        on_disk = json.loads(scenes_file.read_text())
        assert [scene["name"] for scene in on_disk] == ["calm", "storm", "fog", "neon"]
        assert on_disk[3]["params"]["prompt"] == "neon rain on a city street"
        # An existing name replaces its scene, and the button says so first.
        control.fill("#scene-name", "calm")
        assert control.inner_text("#scene-save-button") == "Replace scene"
        control.fill("#scene-name", "")

        # The server's refusal shows in the error banner.
        control.fill("#scene-name", "two words")
        control.click("#scene-save-button")
        refused = wait_for_state(control, "s.lastError?.code === 'bad_scene'", STEP_TIMEOUT_S)
        assert "not allowed" in refused["lastError"]["message"]
        assert control.locator("#error").is_visible()
        assert "two words" in control.inner_text("#error-message")
        assert scene_buttons(control) == ["1 calm", "2 storm", "3 fog", "4 neon"]

        ARTIFACTS.mkdir(exist_ok=True)
        control.screenshot(path=str(ARTIFACTS / "chromium-scenes.png"), full_page=True)

        # The stream ends: the scenes stay in sight but go nowhere.
        aio.run(publisher.close())
        wait_for_state(control, "!s.connected", STEP_TIMEOUT_S)
        assert control.is_disabled("#scene-row button[data-scene='calm']")
        assert control.is_disabled("#scene-save-button")
    finally:
        aio.run(publisher.close())
    wait_for_health(show, lambda h: h["publishers"] == h["peer_connections"] == 0, STEP_TIMEOUT_S)
    assert pages.errors == []


def test_studio_shows_scenes_once_it_publishes(show, pages):
    studio = pages.open()
    open_page(studio, page_url(show, "/", stream="stage"))
    assert studio.locator("#scenes").is_hidden()
    studio.click("#start")
    wait_for_state(studio, "s.connected && s.scenes.length >= 3", PUBLISH_TIMEOUT_S)
    assert scene_buttons(studio)[:3] == ["1 calm", "2 storm", "3 fog"]

    studio.locator("body").press("3")
    wait_for_prompt(studio, "fog in a pine forest")
    assert stream_params(show, "stage")["prompt"] == "fog in a pine forest"

    studio.click("#stop")
    studio.wait_for_function("() => document.querySelector('#scene-row button').disabled")
    wait_for_health(show, lambda h: h["publishers"] == h["peer_connections"] == 0, STEP_TIMEOUT_S)
    assert pages.errors == []
