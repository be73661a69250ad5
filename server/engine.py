"""The engine thread: owns the device, takes the newest frame of every stream that is due, batches the frames that
can share a model call, and keeps the model busy.

The asyncio loop never runs model work; this thread never awaits. Streams hand it frames through one-slot
mailboxes and parameter changes through `call`, which it runs between batches. Each due stream's worker (a client
of the engine) prepares its frame and hears of the result; the engine only groups, submits and collects. Batches go
through a double-buffered executor: while the model runs one, this thread prepares the next and publishes the
last.

Fair by construction: each round takes every stream that is due now (never waiting for one that is not), groups
their frames by what a shared call needs (see pipelines/batch.py), and runs the groups in a rotating order, so no
stream waits more than one batch for its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import torch

from pipelines import FrameExecutor
from pipelines.batch import batch_key, stylise_batch
from pipelines.executor import SLOTS, Stylise

from .worker import StreamFrame

log = logging.getLogger(__name__)


def reserve_a_core_for_media(device: torch.device) -> int:
    """On a CPU, give the model every core but one, and return how many it got.

    Decoding, encoding, RTP and the event loop need a core of their own: when they preempt one of the model's
    OpenMP threads, the others wait at every barrier, and a 2-thread model on 2 busy cores runs slower than a
    1-thread model (measured: bench --e2e, docs/performance.md). On CUDA nothing changes.
    """
    if device.type != "cpu":
        return torch.get_num_threads()
    threads = max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    return threads


class EngineClient(Protocol):
    """What the engine needs from a stream's worker: whether it has work now, and its next frame, prepared."""

    def next_due(self, now: float) -> float | None:
        """Monotonic time at which the stream wants a frame processed; None when it has no frame waiting."""

    def prepare(self) -> StreamFrame | None: ...


# Batches of 8 at 512 px stay far inside a GPU's memory next to an SD1.5 model; more streams make more batches.
DEFAULT_MAX_BATCH = 8


class Engine:
    """One thread per device, one model in memory, shared fairly by every stream (round robin).

    `stylise`: the device side of each batch (batch.py's; a bench slows it down, a test makes it fail).
    """

    def __init__(
        self, device: torch.device, max_batch: int = DEFAULT_MAX_BATCH, stylise: Stylise = stylise_batch
    ) -> None:
        self.executor = FrameExecutor(device, stylise)
        self.max_batch = max_batch  # 1: every frame on its own (the way before batching, for comparison)
        # How many batches to keep in flight. On CUDA two: the next one uploads while this one computes. On a
        # CPU one: there the staged frame would wait a whole model time behind the running one and reach the
        # viewer that much older (bench --e2e: p50 latency 60 ms over the model instead of 17, for ~1% of time
        # saved on conversion); decoding and encoding already run in aiortc's own threads.
        self.max_batches_in_flight = SLOTS if torch.device(device).type == "cuda" else 1
        # Model seconds of every frame of every stream, summed: how busy the device is (read by the streams'
        # resolution controllers, so that several streams share one budget instead of each assuming the device).
        self.busy_seconds = 0.0
        self._wake = threading.Condition()
        self._clients: list[EngineClient] = []
        self._commands: deque[tuple[Callable[[], Any], asyncio.Future]] = deque()
        self._next_index = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lcmlive-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.executor.close()

    def cpu_seconds(self) -> float:
        """CPU time of the engine thread so far (benchmarks add its helper threads: server/bench/model_threads.py)."""
        if self._thread.ident is None:
            return 0.0
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    @property
    def client_count(self) -> int:
        with self._wake:
            return len(self._clients)

    def add(self, client: EngineClient) -> None:
        with self._wake:
            self._clients.append(client)

    def remove(self, client: EngineClient) -> None:
        with self._wake:
            if client in self._clients:
                self._clients.remove(client)

    def notify(self) -> None:
        """A stream has a new frame."""
        with self._wake:
            self._wake.notify()

    async def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the engine thread between frames and return its result (or raise its error)."""
        future = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            self._commands.append((function, future))
            self._wake.notify()
        return await future

    def _run(self) -> None:
        in_flight: deque[tuple[int, list[StreamFrame]]] = deque()
        while True:
            with self._wake:
                # With batches in flight, never sleep: collect the oldest instead.
                command, clients = self._wait_for_work(block=not in_flight)
                if self._stopping:
                    break
            if command is not None:
                with self.executor.device_context():
                    self._run_command(*command)
            for batch in self._batches(clients):
                if len(in_flight) >= self.max_batches_in_flight:
                    self._collect(*in_flight.popleft())
                # submit keeps a batch's own failure for `result`; anything else is the engine's to survive.
                ticket = self._guarded(self.executor.submit, [frame.request for frame in batch])
                if ticket is not None:
                    in_flight.append((ticket, batch))
            # Collect once the pipeline is full (the next batch is staged), or when nothing else is waiting.
            if in_flight and (len(in_flight) >= self.max_batches_in_flight or not clients):
                self._collect(*in_flight.popleft())
        while in_flight:
            self._collect(*in_flight.popleft())

    def _batches(self, clients: list[EngineClient]) -> list[list[StreamFrame]]:
        """The due streams' frames, prepared and grouped into batches that can share a call, in stream order."""
        groups: dict[object, list[StreamFrame]] = {}
        for client in clients:
            frame = self._guarded(client.prepare)
            if frame is not None:
                groups.setdefault(batch_key(frame.request), []).append(frame)
        size = self.max_batch
        return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]

    def _collect(self, ticket: int, frames: list[StreamFrame]) -> None:
        try:
            results = self.executor.result(ticket)
        except Exception as error:  # the batch's own failure, raised again here by the executor
            for frame in frames:
                self._guarded(frame.fail, error)
        else:
            self.busy_seconds += sum(result.model_seconds for result in results)
            for frame, result in zip(frames, results, strict=True):
                self._guarded(frame.finish, result)

    @staticmethod
    def _guarded(call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except Exception:  # one stream's failure must not stop the others' video
            log.exception("frame processing failed")
            return None

    def _wait_for_work(self, block: bool = True) -> tuple[tuple | None, list[EngineClient]]:
        """Under the lock: the next command, else every stream that is due now, starting one further along each
        round (a rotating order); (None, []) when there is nothing and `block` is false."""
        while not self._stopping:
            if self._commands:
                return self._commands.popleft(), []
            now = time.monotonic()
            count = len(self._clients)
            due: list[EngineClient] = []
            earliest: float | None = None
            for offset in range(count):
                client = self._clients[(self._next_index + offset) % count]
                when = client.next_due(now)
                if when is None:
                    continue
                if when <= now:
                    due.append(client)
                else:
                    earliest = when if earliest is None else min(earliest, when)
            if due:
                self._next_index = (self._next_index + 1) % count
                return None, due
            if not block:
                return None, []
            self._wake.wait(timeout=0.5 if earliest is None else max(earliest - now, 0.0))
        for _, future in self._commands:
            _resolve(future, error=RuntimeError("the engine stopped"))
        return None, []

    @staticmethod
    def _run_command(function: Callable[[], Any], future: asyncio.Future) -> None:
        try:
            result = function()
        except Exception as error:  # handed to the awaiting coroutine, which reports it to its client
            _resolve(future, error=error)
        else:
            _resolve(future, result=result)


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    # A closed loop means the waiting coroutine is gone with it; nothing is left to tell.
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(settle)
