"""The ratios of `bench --streams` and `bench --viewers` count every thread the model runs on. The two benches run
end to end in scripts/gpu-check's dry run, and their reports are checked there (tests/test_gpu_check.py)."""

from __future__ import annotations

import time

import torch

from server.bench.model_threads import ModelThreads, native_thread_ids
from server.bench.streams import SyntheticStream
from server.engine import Engine


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
