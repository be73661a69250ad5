"""Scenes: a show's named params, loaded at start (a bad file is one clear error), saved and recalled over REST."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines import PRESETS, params_model
from server.bench.loopback import ControlClient, LoopbackClient
from server.bench.rtc_clients import http
from server.media.ice import restrict_ice_to_loopback
from server.scenes import SceneBook
from server.session_params import session_params_model, settings_model

from conftest import ROOT, LiveServer

SETTINGS = settings_model(params_model(PRESETS["tiny"]), session_params_model())


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "not JSON"),
        ('{"name": "a"}', "expected a JSON list"),
        ('[{"name": "a"}]', 'entry 1 must be {"name"'),
        ('[{"name": "a", "params": {"steps": 9}}]', "scene 'a': steps must be between 1 and 4"),
        ('[{"name": "a", "params": {"colour": 1}}]', "unknown parameter colour"),
        ('[{"name": "a b", "params": {}}]', "scene name 'a b' is not allowed"),
        ('[{"name": "12", "params": {}}]', "all digits"),
        ('[{"name": "a", "params": {}}, {"name": "a", "params": {}}]', "appears twice"),
    ],
)
def test_a_bad_scene_file_is_one_clear_error(tmp_path, content, words):
    path = tmp_path / "scenes.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="--scenes") as error:
        SceneBook(SETTINGS, path)
    assert words in str(error.value)


def test_the_server_refuses_to_start_with_a_bad_scene_file(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text('[{"name": "a", "params": {"strength": 7}}]')
    command = [sys.executable, "-m", "server.cli", "serve", "--model", "tiny", "--device", "cpu", "--port", "1"]
    result = subprocess.run([*command, "--scenes", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "strength must be between 0.01 and 1.0" in result.stderr and "Traceback" not in result.stderr


def test_scenes_are_found_by_name_or_position():
    book = SceneBook(SETTINGS)
    book.store("calm", {"prompt": "calm"})
    book.store("storm", {"prompt": "storm"})
    assert book.find("storm").params == {"prompt": "storm"}
    assert book.find(1).name == "calm" and book.find("2").name == "storm"
    for missing in ("fog", 3, 0, True):
        with pytest.raises(KeyError):
            book.find(missing)


async def test_scenes_are_saved_from_a_stream_and_recalled_over_rest(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps([{"name": "calm", "params": {"prompt": "a calm lake", "strength": 0.4}}]))
    server = LiveServer("--scenes", str(path))
    try:
        listed = json.loads((await http("GET", f"{server.url}/scenes")).body)
        assert [s["name"] for s in listed["scenes"]] == ["calm"]
        async with (
            LoopbackClient(server.ws_url, 128, 128, stream="show") as page,
            ControlClient(server.ws_url, "show") as control,
        ):
            await page.send_params(prompt="a glass forest", seed=9)
            saved = await http("PUT", f"{server.url}/scenes/forest", json.dumps({"stream": "show"}))
            assert saved.status == 200 and json.loads(saved.body)["params"]["prompt"] == "a glass forest"
            on_disk = json.loads(path.read_text())
            assert [s["name"] for s in on_disk] == ["calm", "forest"] and on_disk[1]["params"]["seed"] == 9

            recalled = await http("POST", f"{server.url}/scenes/calm/recall", json.dumps({"stream": "show"}))
            assert recalled.status == 200 and json.loads(recalled.body)["params"]["prompt"] == "a calm lake"
            echo = await control.wait_for_params(lambda p: p["prompt"] == "a calm lake")
            assert echo["params"]["strength"] == 0.4 and echo["params"]["seed"] == 9  # a scene sets what it holds
            # The stream may also come in the query (what a router in front of replicas can read).
            by_position = await http("POST", f"{server.url}/scenes/2/recall?stream=show", "{}")
            assert json.loads(by_position.body)["params"]["prompt"] == "a glass forest"

            missing = await http("POST", f"{server.url}/scenes/fog/recall", json.dumps({"stream": "show"}))
            assert missing.status == 404 and "no_such_scene" in missing.body
            nobody = await http("POST", f"{server.url}/scenes/calm/recall", json.dumps({"stream": "nobody"}))
            assert nobody.status == 404
            bad_name = await http("PUT", f"{server.url}/scenes/a%20b", json.dumps({"stream": "show"}))
            assert bad_name.status == 422
    finally:
        server.stop()
