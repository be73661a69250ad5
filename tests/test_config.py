"""`lcmlive serve`'s settings: flags, LCMLIVE_* variables and a --config TOML file, declared once in ServeSettings."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server import cli, serve
from server.config import DEFAULT_MAX_BATCH, ServerConfig, ServeSettings, SettingsError, settings_from_arguments

from conftest import ROOT, LiveServer


def parse(*flags: str) -> ServeSettings:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return settings_from_arguments(parser.parse_args(flags))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "show.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def no_lcmlive_variables(monkeypatch):
    # The settings read LCMLIVE_* variables: the machine's own must not change what these tests see.
    for name in list(os.environ):
        if name.startswith("LCMLIVE_"):
            monkeypatch.delenv(name)


def test_lcmlive_version_is_pyprojects_and_answers_without_loading_the_commands():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # The installed command, as a user runs it; the commands' parsers import torch (8.7 s here), --version must not.
    command = Path(sys.executable).parent / "lcmlive"
    started = time.monotonic()
    result = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"lcmlive {declared}\n", "")
    assert time.monotonic() - started < 5


def test_reading_the_config_imports_no_torch():
    code = "import sys, server.config as c; c.ServeSettings().server_config(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_every_existing_spelling_still_parses_and_repeatable_flags_repeat(tmp_path):
    settings = parse(
        *("--host", "0.0.0.0", "--port", "8080", "--model", "tiny", "--device", "cpu", "--controlnet", "canny"),
        *("--lora-dir", str(tmp_path), "--tiny-vae", "--token", "secret", "--max-sessions", "3"),
        *("--max-viewers", "5", "--max-controllers", "6", "--allow-origin", "https://a.example/"),
        *("--allow-origin", "https://b.example,https://c.example", "--allow-host", "a.lan", "--allow-host", "b.lan"),
        *("--offer-timeout", "1.5", "--connect-timeout", "2", "--idle-timeout", "3", "--target-fps", "12"),
        *("--max-batch", "2", "--cert", "c.pem", "--key", "k.pem", "--ice-loopback", "--scenes", "s.json"),
        *("--osc-port", "9000", "--osc-host", "0.0.0.0", "--osc-allow", "10.0.0.2", "--osc-allow", "10.0.0.3"),
        *("--metrics-public", "--replicas", "2", "--ray-address", "auto", "--bitrate", "4000"),
    )
    assert (settings.host, settings.port, settings.model, settings.device) == ("0.0.0.0", 8080, "tiny", "cpu")
    assert settings.controlnet == ("canny",) and settings.lora_dir == tmp_path and settings.tiny_vae
    assert (settings.max_streams, settings.max_viewers, settings.max_controllers) == (3, 5, 6)
    assert settings.allow_origin == ("https://a.example", "https://b.example", "https://c.example")
    assert settings.allow_host == ("a.lan", "b.lan") and settings.osc_allow == ("10.0.0.2", "10.0.0.3")
    assert (settings.offer_timeout, settings.connect_timeout, settings.idle_timeout) == (1.5, 2.0, 3.0)
    assert (settings.target_fps, settings.max_batch, settings.bitrate) == (12.0, 2, 4000)
    assert (settings.cert, settings.key, settings.scenes) == ("c.pem", "k.pem", Path("s.json"))
    assert settings.ice_loopback and settings.metrics_public
    assert (settings.osc_port, settings.osc_host, settings.replicas, settings.ray_address) == (
        9000,
        "0.0.0.0",
        2,
        "auto",
    )
    config = settings.server_config()
    assert (config.token, config.max_streams, config.bitrate_kbps, config.scenes_path) == (
        "secret",
        3,
        4000,
        Path("s.json"),
    )


def test_defaults_are_declared_once():
    assert parse().server_config() == ServerConfig()
    # engine.py keeps a name of its own for the default batch (its owner may import this one); they must agree.
    from server.engine import DEFAULT_MAX_BATCH as engine_default

    assert engine_default == DEFAULT_MAX_BATCH == ServeSettings().max_batch


def test_max_sessions_still_works_and_says_once_that_it_is_deprecated(caplog):
    with caplog.at_level(logging.WARNING, logger="lcmlive"):
        assert parse("--max-sessions", "2", "--max-sessions", "3").max_streams == 3
    assert [record.getMessage() for record in caplog.records] == [
        "--max-sessions is deprecated: use --max-streams (it works the same)"
    ]
    caplog.clear()
    assert parse("--max-streams", "5").max_streams == 5 and not caplog.records
    with pytest.raises(SettingsError, match="^--max-sessions must be at least 1, got 0$"):
        parse("--max-sessions", "0")


def test_a_bad_flag_is_one_line_naming_it():
    with pytest.raises(SettingsError) as error:
        parse("--max-batch", "0", "--port", "http", "--offer-timeout", "0", "--allow-host", "a.lan:80")
    assert str(error.value).splitlines() == [
        "--port: input should be a valid integer, unable to parse string as an integer, got 'http'",
        "--allow-host takes a host name like studio.lan (no scheme or port), got 'a.lan:80'",
        "--offer-timeout must be positive, got 0",
        "--max-batch must be between 1 and 64, got 0",
    ]
    with pytest.raises(SettingsError, match="^--cert and --key go together$"):
        parse("--cert", "c.pem")


def test_a_config_file_gives_the_same_settings_and_the_command_line_wins(tmp_path):
    show = write(
        tmp_path,
        'port = 8080\nmax_streams = 3\nmodel = "tiny"\nallow_host = ["a.lan", "b.lan"]\ntiny_vae = true\n'
        'scenes = "show.json"\ntarget_fps = 20\n',
    )
    settings = parse("--config", str(show), "--port", "9090", "--allow-host", "c.lan")
    assert (settings.port, settings.max_streams, settings.model, settings.tiny_vae) == (9090, 3, "tiny", True)
    assert settings.allow_host == ("c.lan",)  # a list given on the command line replaces the file's
    assert (settings.scenes, settings.target_fps) == (Path("show.json"), 20.0)


def test_lcmlive_variables_sit_between_the_command_line_and_the_file(tmp_path, monkeypatch):
    show = write(tmp_path, 'token = "from-file"\nmax_viewers = 2\n')
    monkeypatch.setenv("LCMLIVE_TOKEN", "from-environment")
    monkeypatch.setenv("LCMLIVE_ALLOW_HOST", "a.lan,b.lan")
    settings = parse("--config", str(show))
    assert (settings.token, settings.max_viewers, settings.allow_host) == ("from-environment", 2, ("a.lan", "b.lan"))
    assert parse("--token", "from-flag").token == "from-flag"
    monkeypatch.setenv("LCMLIVE_MAX_BATCH", "99")
    with pytest.raises(SettingsError, match=r"^LCMLIVE_MAX_BATCH \(--max-batch\) must be between 1 and 64, got 99$"):
        parse()


def test_a_bad_value_in_the_file_is_one_line_naming_the_setting_and_the_file(tmp_path):
    show = write(tmp_path, 'max_streams = 0\nport = "eighty"\nmodel = "tiny"\n')
    with pytest.raises(SettingsError) as error:
        parse("--config", str(show))
    assert str(error.value).splitlines() == [
        f"{show}: port (--port): input should be a valid integer, unable to parse string as an integer, got 'eighty'",
        f"{show}: max_streams (--max-streams) must be at least 1, got 0",
    ]
    # The command line's value wins, so the file's bad one is never used.
    assert parse("--config", str(show), "--max-streams", "2", "--port", "80").max_streams == 2


def test_an_unknown_key_or_a_file_that_is_not_toml_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match=r"unknown setting 'max-viewers' \(max_viewers\?\), 'max_sessions' "):
        parse("--config", str(write(tmp_path, "max-viewers = 2\nmax_sessions = 2\nport = 1\n")))
    with pytest.raises(SettingsError, match="not a TOML file"):
        parse("--config", str(write(tmp_path, "port: 8080\n")))
    with pytest.raises(SettingsError, match="--config .*missing.toml"):
        parse("--config", str(tmp_path / "missing.toml"))


def test_the_command_says_what_is_wrong_before_loading_anything(tmp_path, capsys):
    show = write(tmp_path, "max_batch = 65\n")
    assert cli.main(["serve", "--config", str(show)]) == 2
    assert capsys.readouterr().err == f"lcmlive: {show}: max_batch (--max-batch) must be between 1 and 64, got 65\n"


@pytest.mark.slow
def test_lcmlive_serve_runs_from_a_config_file(tmp_path):
    # The file's port is the fixture's to choose: the command line (LiveServer's --port) wins over it.
    show = write(tmp_path, 'port = 1\nmax_streams = 3\nmodel = "tiny"\nmax_viewers = 2\n')
    server = LiveServer("--config", str(show), "--max-sessions", "2")
    try:
        health = server.health()
        assert (health["max_sessions"], health["max_streams"], health["model"]) == (2, 2, "tiny")
    finally:
        output = server.stop()
    assert output.count("--max-sessions is deprecated") == 1
