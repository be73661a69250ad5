"""scripts/gpu-check: its dry run passes every step on the CPU and writes the report, its GPU plan fits 8 minutes
and names the measurements of issue 22, and a step that fails or overruns is stopped with its children while the
run goes on."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = [
    "pytest -m cuda",
    "pipeline 1 step",
    "pipeline 2 steps",
    "pipeline 4 steps",
    "double buffer",
    "streams 1,2,4,8",
    "styles",
    "temporal fps_ratio",
    "e2e",
    "viewers 1,4",
    "compiled vs eager",
]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """`scripts/gpu-check --dry-run` once for the module: every step, tiny-random at 64x64, two at a time: 137-159 s
    here at load 4-6 (171 s of CPU). Its benches' results are checked below as `bench --streams` and `--viewers`'s."""
    folder = tmp_path_factory.mktemp("gpu-check")
    report_path = folder / "gpu-report.json"
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--report", str(report_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert report_path.exists(), done.stdout + done.stderr  # it stopped before writing its report
    return done, json.loads(report_path.read_text()), folder


def step_result(report: dict, name: str) -> dict:
    (step,) = [step for step in report["steps"] if step["name"] == name]
    assert step["status"] == "passed", step["error_tail"]
    return step["result"]


def finite_and_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.mark.slow
def test_the_dry_run_passes_every_step_and_writes_the_report(dry_run):
    done, report, folder = dry_run
    failed = {step["name"]: step["error_tail"] for step in report["steps"] if step["status"] != "passed"}
    assert done.returncode == 0 and not failed, failed
    assert [step["name"] for step in report["steps"]] == STEPS
    environment = report["environment"]
    assert environment["torch"] and environment["dry_run"] is True
    assert {"torch_cuda", "driver", "gpu", "nvidia_smi", "cuda_available"} <= environment.keys()
    for step in report["steps"]:
        assert step["command"][0] == sys.executable
        assert step["seconds"] <= step["limit_seconds"]
        if step["name"] == "pytest -m cuda":
            # Collected on the CPU, every cuda test: the marked tests import and are found.
            assert "--collect-only" in step["command"] and step["figures"]["collected"] > 0
            continue
        assert step["command"][step["command"].index("--device") + 1] == "cpu"
        figures = step["figures"]
        assert figures and all(isinstance(v, (int, float)) and math.isfinite(v) for v in figures.values()), figures
    by_name = {step["name"]: step for step in report["steps"]}
    assert by_name["temporal fps_ratio"]["result"]["size"] == 64  # the bench's arguments reach the measurement
    assert by_name["compiled vs eager"]["result"]["recompiles_after_warming"] == 0
    # One table: a row per step, its status and seconds.
    for step in report["steps"]:
        assert any(line.startswith(step["name"]) and "passed" in line for line in done.stdout.splitlines())
    assert (folder / "gpu-report-logs").is_dir()


@pytest.mark.slow
def test_the_streams_bench_reports_a_batch_gain_per_cpu_second_of_the_models_threads(dry_run):
    # `bench --streams 2`: two streams, one at a time then batched, each way's fps over the CPU time of the model's
    # threads (the dry run's step; it ran as a test of its own before, the same command at 1.5 s).
    report = step_result(dry_run[1], "streams 1,2,4,8")
    assert finite_and_positive(report["batch_gain"])
    assert report["gain_measured_on"] == "CPU time of the model's threads"
    assert report["model_cpu_counted"].startswith("the engine thread + ")
    (run,) = report["runs"]
    for way in ("one_at_a_time", "batched"):
        assert finite_and_positive(run[f"{way}_fps_per_cpu_second"])
        assert 0 <= run[f"{way}_helper_cpu_share"] < 1


@pytest.mark.slow
def test_the_viewers_bench_reports_a_fanout_cost_ratio_outside_the_models_threads(dry_run):
    # `bench --viewers 1`: one viewer count, the smallest run (the publisher's and the viewer's processes each take
    # 6 s of CPU to import aiortc and torch). With one count the ratio is 1 by construction, so the per-frame costs
    # it divides are checked too.
    report = step_result(dry_run[1], "viewers 1,4")
    assert finite_and_positive(report["fanout_cost_ratio"])
    assert report["model_cpu_counted"].startswith("the engine thread + ")
    (run,) = report["runs"]
    assert finite_and_positive(run["model_cpu_ms_per_frame"])
    assert finite_and_positive(run["outside_model_cpu_ms_per_frame"])
    assert run["frames_out"] > 1


def test_the_gpu_plan_fits_eight_minutes_and_measures_what_the_issue_names():
    script = load_script()
    plan = script.plan()
    assert [step.name for step in plan] == STEPS
    assert script.PROBE_SECONDS + sum(step.seconds for step in plan) <= script.BUDGET_SECONDS <= 8 * 60
    gpu = {step.name: " ".join(step.gpu) for step in plan}
    for name, arguments in gpu.items():
        if name != "pytest -m cuda":
            assert "--model sd15-arch --device cuda" in arguments, name
    for steps in (1, 2, 4):
        assert "--size 512" in gpu[f"pipeline {steps} step{'s' if steps > 1 else ''}"]
    assert "--streams 1,2,4,8" in gpu["streams 1,2,4,8"] and "--viewers 1,4" in gpu["viewers 1,4"]
    assert "--double-buffer" in gpu["double buffer"] and "--compile" in gpu["compiled vs eager"]
    assert "--collect-only" not in gpu["pytest -m cuda"]


@pytest.mark.slow
def test_a_step_past_its_limit_is_stopped_with_its_children(tmp_path):
    script = load_script()
    pid_file = tmp_path / "child.pid"
    # A step that starts a child of its own (as the benches start viewers and compile workers) and outlives its limit.
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('started', flush=True); time.sleep(60)"
    )
    started = time.monotonic()
    returncode, stdout, _, seconds = script.run_step([sys.executable, "-c", code], 3.0, tmp_path / "step.log")
    assert returncode is None and stdout.strip() == "started"
    assert seconds < 20 and time.monotonic() - started < 20
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # the grandchild is reaped by init shortly after its kill
            os.kill(child, 0)
            time.sleep(0.1)
    step = script.plan()[1]
    assert script.outcome(step, returncode, stdout, "", seconds).status == "timed out"
    assert "started" in (tmp_path / "step.log").read_text()


def test_a_failing_step_gives_its_error_tail_and_a_missing_compile_flag_is_not_available(tmp_path):
    script = load_script()
    step = script.plan()[-1]
    returncode, stdout, stderr, seconds = script.run_step(
        [sys.executable, "-c", "import sys; print('{\"partial\": 1}'); sys.exit('CUDA error: out of memory')"],
        30.0,
        tmp_path / "step.log",
    )
    failed = script.outcome(step, returncode, stdout, stderr, seconds)
    assert (failed.status, failed.returncode) == ("failed", 1) and "out of memory" in failed.error_tail
    refused = "lcmlive bench: error: unrecognized arguments: --compile\n"
    assert script.outcome(step, 2, "", refused, 1.0).status == "not available"
    no_json = script.outcome(step, 0, "a table but no JSON line\n", "", 1.0)
    assert no_json.status == "failed" and "no JSON result line" in no_json.error_tail


def test_pytests_counts_are_read_from_its_summary_lines():
    script = load_script()
    ran = "....s\n3 passed, 15 skipped, 531 deselected in 20.10s\n"
    assert script.pytest_summary(ran) == {"passed": 3, "skipped": 15, "deselected": 531}
    collected = "tests/test_cuda.py::test_x\n\n18/549 tests collected (531 deselected) in 12.49s\n"
    assert script.pytest_summary(collected) == {"collected": 18, "deselected": 531}
    broke = "1 failed, 2 passed, 1 error in 3.00s\n"
    assert script.pytest_summary(broke) == {"failed": 1, "passed": 2, "errors": 1}
