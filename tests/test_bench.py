"""`lcmlive bench` runs end to end and reports the keys the issue names."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_prints_a_table_and_a_json_line():
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "bench", "--model", "tiny", "--size", "64", "--frames", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    for key in ("naive_fps", "stream_fps", "speedup", "overhead_ratio"):
        assert report[key] > 0, key
    assert report["overhead_ratio"] >= 1.0  # frame time includes the model time
    assert any("stream pipeline" in line for line in lines)


def test_bench_rejects_a_bad_size():
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "bench", "--size", "100"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "multiple of 64" in result.stderr


def test_bench_reports_each_mode_and_controlnet_combination():
    command = [sys.executable, "-m", "server.cli", "bench", "--model", "tiny-sdxl", "--size", "64", "--frames", "1"]
    command += ["--mode", "img2img,txt2img", "--controlnet", "none,canny", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    combinations = {(run["mode"], run["controlnet"]) for run in report["runs"]}
    assert combinations == {("img2img", "none"), ("img2img", "canny"), ("txt2img", "none"), ("txt2img", "canny")}
    assert all(run["stream_fps"] > 0 and run["naive_fps"] > 0 for run in report["runs"])


def test_bench_rejects_an_unknown_mode():
    command = [sys.executable, "-m", "server.cli", "bench", "--size", "64", "--mode", "inpaint"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--mode" in result.stderr


def test_adaptive_bench_without_matplotlib_names_the_extra_before_running():
    # A None entry in sys.modules is how Python marks a module as not importable.
    script = "import sys; sys.modules['matplotlib'] = None; from server.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", script, "bench", "--adaptive", "--model", "tiny", "--device", "cpu"]
    # A run would take a minute (calibration, then 40 s); the refusal comes before the model is even loaded.
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "pip install 'lcmlive[bench]'" in result.stderr
    assert "loading" not in result.stdout + result.stderr
