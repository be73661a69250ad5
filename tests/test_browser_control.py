"""Two ControlNet kinds and styles in headless Chromium: the page's control view shows the kind with the larger scale
(the depth map), and the one `control_view` names (the Canny map); the style picker switches the stream's style;
against `lcmlive serve --controlnet canny,depth --lora-dir DIR`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
import test_browser
from test_browser import (
    ARTIFACTS,
    GRAB_RGB,
    STEP_TIMEOUT_S,
    start_with_control_view,
    state,
    wait_for_state,
)

from conftest import LiveServer

if TYPE_CHECKING:  # the annotations name its classes; a module found at run time is not a type to a checker
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.browser

# test_browser's fixtures, bound by assignment: imported by name they would be shadowed by the test's arguments.
browser = test_browser.browser
page = test_browser.page
script_errors = test_browser.script_errors


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    from pipelines import load_model
    from pipelines.styles import make_random_lora

    styles = tmp_path_factory.mktemp("styles")
    toy = load_model("tiny", device="cpu")  # the server's model: random LoRAs of its UNet's shape
    for seed, name in enumerate(("ink", "neon"), start=4):
        make_random_lora(toy, styles / f"{name}.safetensors", seed=seed)
    live = LiveServer("--controlnet", "canny,depth", "--lora-dir", str(styles))
    yield live
    output = live.stop()
    assert "Traceback" not in output, output


def grab_rgb(page: sync_api.Page, video: str = "control-video") -> np.ndarray:
    """A video element's picture as the browser shows it: 64 x 64 x 3, after VP8 and the page's scaling."""
    return np.array(page.evaluate(GRAB_RGB, video)).reshape(64, 64, 3)


def channel_gap(image: np.ndarray) -> float:
    """How far apart R, G and B are, on average: 0 for a grey picture, a level or two after VP8's 4:2:0 chroma."""
    channels = image.astype(float)
    return float(np.abs(channels - channels.mean(axis=2, keepdims=True)).mean())


def looks_like_depth(image: np.ndarray) -> bool:
    """A depth map: grey, stretched over 0..255 per frame, so a spread of levels and not mostly black."""
    grey = image.mean(axis=2)
    low, high = np.percentile(grey, [5, 95])
    return channel_gap(image) < 4 and high - low > 60 and (grey < 48).mean() < 0.5


def looks_like_canny(image: np.ndarray) -> bool:
    """A Canny map: mostly dark, with some bright edges of the fake camera's shapes."""
    grey = image.mean(axis=2)
    return (grey < 48).mean() > 0.7 and (grey > 128).any()


def describe(image: np.ndarray) -> str:
    grey = image.mean(axis=2)
    low, high = np.percentile(grey, [5, 95])
    return (
        f"channels {channel_gap(image):.1f} apart, grey 5th-95th percentile {low:.0f}..{high:.0f}, "
        f"{(grey < 48).mean():.0%} below 48, {(grey > 128).mean():.0%} above 128"
    )


def wait_for_control(page: sync_api.Page, looks_right: Callable[[np.ndarray], bool], what: str) -> np.ndarray:
    """Grab the control video until it shows `what` (it changes a few frames after the params do)."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    # In view: Chromium pauses a muted autoplaying video while it is scrolled out of sight (filling the sliders at
    # the bottom of the page scrolls there), and it plays again once seen.
    page.locator("#control-video").scroll_into_view_if_needed()
    while True:
        image = grab_rgb(page)
        if looks_right(image):
            return image
        if time.monotonic() > deadline:
            pytest.fail(f"the control video never showed {what} within {STEP_TIMEOUT_S} s: {describe(image)}")
        page.wait_for_timeout(300)


def test_chromium_control_view_shows_the_larger_scales_depth_map_then_the_named_canny_map(
    page: sync_api.Page, script_errors: list[str], server: LiveServer
):
    start_with_control_view(page, f"{server.url}/")
    # Both scales start at 0.5, and a tie goes to the kind loaded first: the Canny map.
    wait_for_control(page, looks_like_canny, "the Canny map (both scales equal, auto view)")

    # Depth above Canny, through the page's sliders: the auto view follows the larger scale.
    page.fill("#param-controlnet_scale_canny", "0.3")
    page.fill("#param-controlnet_scale_depth", "1.5")
    wait_for_state(
        page,
        "s.lastParams?.controlnet_scale_depth === 1.5 && s.lastParams?.controlnet_scale_canny === 0.3",
        STEP_TIMEOUT_S,
    )
    assert state(page)["lastParams"]["control_view"] == "auto"
    depth_map = wait_for_control(page, looks_like_depth, "the depth map (depth's scale the larger)")
    # The grab keeps colour (the stylised picture of the green camera is far from grey): the grey is the map's.
    picture = grab_rgb(page, "output-video")
    assert channel_gap(picture) > 8, describe(picture)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chromium-depth.png"), full_page=True)

    # The view named: the Canny map again, though depth's scale is still the larger.
    page.select_option("#param-control_view", "canny")
    wait_for_state(page, "s.lastParams?.control_view === 'canny'", STEP_TIMEOUT_S)
    canny_map = wait_for_control(page, looks_like_canny, "the Canny map (control_view canny)")
    assert state(page)["lastParams"]["controlnet_scale_depth"] == 1.5
    assert np.abs(depth_map.astype(int) - canny_map.astype(int)).mean() > 30, describe(canny_map)

    # Styles: a picker from the schema; a pick reaches the stream and the pictures keep coming (the picture's change
    # is measured in test_loopback_control, where the camera stands still).
    options = page.locator("#param-style option").all_inner_texts()
    assert options == ["none", "ink", "neon"], options
    page.select_option("#param-style", "neon")
    wait_for_state(page, "s.lastParams?.style === 'neon'", STEP_TIMEOUT_S)
    frames = state(page)["outputFrames"]
    wait_for_state(page, f"s.outputFrames > {frames + 3}", STEP_TIMEOUT_S)
    assert script_errors == []
