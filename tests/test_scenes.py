"""Scenes: a show's named params, loaded at start (a bad file is one clear error), saved and recalled over REST."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines import PRESETS, params_model
from server.bench.loopback import ControlClient, LoopbackClient
from server.bench.rtc_clients import NOT_POSTED, http
from server.media.ice import restrict_ice_to_loopback
from server.pacing import pacing_params_model, settings_model
from server.scenes import MAX_FILE_BYTES, MAX_SCENES, SceneBook

from conftest import ROOT, LiveServer

SETTINGS = settings_model(params_model(PRESETS["tiny"]), pacing_params_model())


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


@pytest.mark.slow
def test_the_server_refuses_to_start_with_a_bad_scene_file(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text('[{"name": "a", "params": {"strength": 7}}]')
    command = [sys.executable, "-m", "server.cli", "serve", "--model", "tiny", "--device", "cpu", "--port", "1"]
    result = subprocess.run([*command, "--scenes", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "strength must be between 0.01 and 1.0" in result.stderr and "Traceback" not in result.stderr


async def test_scenes_are_found_by_name_or_position():
    book = SceneBook(SETTINGS)
    await book.store("calm", {"prompt": "calm"})
    await book.store("storm", {"prompt": "storm"})
    assert (await book.find("storm")).params == {"prompt": "storm"}
    assert (await book.find(1)).name == "calm" and (await book.find("2")).name == "storm"
    for missing in ("fog", 3, 0, True, "²", "9" * 5000):
        with pytest.raises(KeyError):
            await book.find(missing)


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([{"name": f"s{n}", "params": {}} for n in range(MAX_SCENES + 1)], "257 scenes, over the limit of 256"),
        ([{"name": "long", "params": {"prompt": "x" * (MAX_FILE_BYTES + 1)}}], "over the limit of 1 MiB"),
    ],
)
def test_a_scene_file_over_the_caps_is_refused_at_start(tmp_path, entries, words):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="--scenes") as error:
        SceneBook(SETTINGS, path)
    assert words in str(error.value)


async def test_a_store_over_a_cap_changes_nothing_and_the_file_holds_the_list(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps([{"name": f"s{n}", "params": {"seed": n}} for n in range(MAX_SCENES)]))
    book = SceneBook(SETTINGS, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="at most 256 scenes"):
        await book.store("one-more", {"seed": 1})
    assert path.read_bytes() == before and len(await book.all()) == MAX_SCENES
    # Saved over an existing name, a scene adds nothing: the show stays at the cap.
    await book.store("s7", {"seed": 70})
    listed = [scene.as_dict() for scene in await book.all()]
    assert json.loads(path.read_text()) == listed and listed[7] == {"name": "s7", "params": {"seed": 70}}
    assert not list(tmp_path.glob(".scenes.json.*"))  # no temporary file left behind

    # Each "é" takes six bytes in the file (a \u escape): scenes of three 2000-character prompts reach 1 MiB
    # within some thirty.
    long = {"prompt": "é" * 2000, "negative_prompt": "é" * 2000, "prompt_b": "é" * 2000}
    n = 0  # the scene refused (bound here too for the checker, which cannot tell that the loop runs)
    with pytest.raises(ValueError, match=r"over the limit of 1 MiB \(1048576 bytes\)"):
        for n in range(MAX_SCENES):
            await book.store(f"s{n}", long)
    assert (await book.find(f"s{n}")).params != long  # the refused scene kept what it held
    kept = path.read_bytes()
    assert len(kept) <= MAX_FILE_BYTES and json.loads(kept) == [scene.as_dict() for scene in await book.all()]


@pytest.mark.slow
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


@pytest.mark.slow
async def test_the_caps_hold_over_rest(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps([{"name": f"s{n}", "params": {"seed": n}} for n in range(MAX_SCENES)]))
    server = LiveServer("--scenes", str(path))
    try:
        async with LoopbackClient(server.ws_url, 128, 128, stream="show") as page:
            before = path.read_bytes()
            refused = await http("PUT", f"{server.url}/scenes/one-more?stream=show", "{}")
            assert refused.status == 422 and json.loads(refused.body)["code"] == "bad_scene"
            assert "at most 256 scenes" in refused.body
            listed = json.loads((await http("GET", f"{server.url}/scenes")).body)["scenes"]
            assert path.read_bytes() == before and len(listed) == MAX_SCENES

            await page.send_params(prompt="é" * 2000, negative_prompt="é" * 2000, prompt_b="é" * 2000)
            n, reply = 0, NOT_POSTED  # bound here too for the checker, which cannot tell that the loop runs
            for n in range(MAX_SCENES):
                reply = await http("PUT", f"{server.url}/scenes/s{n}?stream=show", "{}")
                if reply.status != 200:
                    break
                before = path.read_bytes()
            assert reply.status == 422 and "over the limit of 1 MiB" in reply.body, reply.body
            listed = json.loads((await http("GET", f"{server.url}/scenes")).body)["scenes"]
            assert path.read_bytes() == before and json.loads(before) == listed
            assert listed[n]["params"] == {"seed": n}  # the refused scene kept what it held
    finally:
        server.stop()
