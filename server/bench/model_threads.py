"""CPU time of every thread the model's work runs on: the engine thread and the native helper threads it sets going."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

# Linux's CPU-time clock of one thread of this process, built from its thread id (what glibc's pthread_getcpuclockid
# builds from a pthread handle): nanoseconds, where /proc/self/task/TID/stat counts 10 ms ticks.
_THREAD_SCHEDULER_CLOCK = 0b110


def native_thread_ids() -> set[int]:
    """The kernel ids of every thread of this process, Python's and native ones alike."""
    return {int(name) for name in os.listdir("/proc/self/task")}


def thread_cpu_seconds(thread_id: int) -> float:
    """CPU seconds of one living thread of this process so far."""
    return time.clock_gettime((~thread_id << 3) | _THREAD_SCHEDULER_CLOCK)


def start_helper_pools() -> None:
    """Run one operation that torch and one that OpenCV split over their helper threads, so that both pools exist
    now; on the engine thread, since torch's pool belongs to the thread that calls it."""
    torch.ones(1 << 22).mul_(2)  # 128 grains of 32k elements: more than any pool has threads
    cv2.resize(np.zeros((1024, 1024, 3), np.uint8), (512, 512), interpolation=cv2.INTER_AREA)


# Why helpers: `reserve_a_core_for_media` gives the model every core but one, and the engine's work fans out from its
# thread to torch's intra-op workers (OpenMP keeps a pool per calling thread, started by its first parallel operation
# and ended with it; measured here: 3 workers at 4 threads, gone once their thread ended) and to OpenCV's pool (one
# per process, started by the first parallel call: the engine's resize, optical flow, Canny). On 2 cores the model
# has one thread and only OpenCV's single worker helps; on 32 cores 30 of the model's 31 threads are helpers, and a
# benchmark that counted the engine thread alone would move their time to the other side of its ratio.
# Why by appearance: Python before 3.14 gives its threads no OS names for helpers to inherit, so the helpers are every
# native thread (not one of Python's) that the process started after the benchmark began and before any media ran.
# Those that the model never uses (the loading thread's own pool, the tokenizer's) are counted too; they idle.
class ModelThreads:
    """The engine thread (its clock given as `engine_cpu_seconds`) and the helper threads, as one CPU clock."""

    def __init__(self, engine_cpu_seconds: Callable[[], float], threads_before: set[int]) -> None:
        """Helpers: the native threads started since `threads_before` was taken. Build this once the engine's pools
        run (after `start_helper_pools` on its thread, or a few frames) and before media code starts threads."""
        self.engine_cpu_seconds = engine_cpu_seconds
        python_threads = {thread.native_id for thread in threading.enumerate()}
        self.helpers = frozenset(native_thread_ids() - threads_before - python_threads)

    def helper_cpu_seconds(self) -> float:
        """CPU seconds of the helpers so far (read while the engine runs: its own pool ends with it)."""
        return sum(thread_cpu_seconds(helper) for helper in self.helpers)

    def cpu_seconds(self) -> float:
        return self.engine_cpu_seconds() + self.helper_cpu_seconds()

    def described(self) -> str:
        return f"the engine thread + {len(self.helpers)} native helper thread(s)"


def helper_pool_sizes() -> str:
    """How many helpers the model's work can keep busy at once, in words for a benchmark's output."""
    return f"torch intra-op workers {torch.get_num_threads() - 1}, OpenCV workers {max(cv2.getNumThreads() - 1, 0)}"
