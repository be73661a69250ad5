"""`bench --streams` and `bench --viewers` run end to end, and their ratios count every thread the model runs on."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch

from server.bench.model_threads import ModelThreads, native_thread_ids
from server.bench.streams import SyntheticStream
from server.engine import Engine

pytestmark = pytest.mark.slow  # benchmarks end to end: 71 s and 32 s (CI, under load)


def bench(*arguments: str) -> dict:
    command = [sys.executable, "-m", "server.cli", "bench", "--model", "tiny", "--size", "64", *arguments, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def finite_and_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_streams_bench_reports_a_batch_gain_per_cpu_second_of_the_models_threads():
    # Two streams, three 0.5 s windows per way after each fresh engine's 2 s warm-up: 25-45 s here, shared.
    report = bench("--streams", "2", "--seconds", "1.5")
    assert finite_and_positive(report["batch_gain"])
    assert report["gain_measured_on"] == "CPU time of the model's threads"
    assert report["model_cpu_counted"].startswith("the engine thread + ")
    (run,) = report["runs"]
    for way in ("one_at_a_time", "batched"):
        assert finite_and_positive(run[f"{way}_fps_per_cpu_second"])
        assert 0 <= run[f"{way}_helper_cpu_share"] < 1


def test_viewers_bench_reports_a_fanout_cost_ratio_outside_the_models_threads():
    # One viewer count, the smallest run: the publisher's and the viewer's processes each take 6 s of CPU to import
    # aiortc and torch, and a second count would add another viewer process and warm-up. With one count the ratio is
    # 1 by construction, so the per-frame costs it divides are checked too.
    report = bench("--viewers", "1", "--seconds", "1")
    assert finite_and_positive(report["fanout_cost_ratio"])
    assert report["model_cpu_counted"].startswith("the engine thread + ")
    (run,) = report["runs"]
    assert finite_and_positive(run["model_cpu_ms_per_frame"])
    assert finite_and_positive(run["outside_model_cpu_ms_per_frame"])
    assert run["frames_out"] > 1


def test_the_models_threads_include_the_intra_op_workers_the_engine_starts(tiny):
    # Three model threads on this 2-core machine stand in for a bigger CPU: the engine thread and two OpenMP workers.
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    threads_before = native_thread_ids()
    engine = Engine(tiny.device, max_batch=1)
    engine.start()
    try:
        engine.add(SyntheticStream(tiny, (64, 64)))
        time.sleep(1.0)
        model = ModelThreads(engine.cpu_seconds, threads_before)
        assert len(model.helpers) >= 2
        process, total, engine_only = time.process_time(), model.cpu_seconds(), engine.cpu_seconds()
        time.sleep(2.0)
        process, total = time.process_time() - process, model.cpu_seconds() - total
        engine_only = engine.cpu_seconds() - engine_only
    finally:
        engine.stop()
        torch.set_num_threads(previous)
    # This thread sleeps, so nearly all of the process's CPU time is the model's, and the workers did a share of it.
    assert total > 0.9 * process
    assert total > 1.2 * engine_only
