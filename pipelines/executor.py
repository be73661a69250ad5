"""Double-buffered execution: while one frame runs on the model, the next is staged and the last is fetched back.

On CUDA: two slots, each with pinned host buffers and device buffers. Uploads of frame N+1 and downloads of frame
N-1 run on a copy stream while frame N runs on the compute stream, ordered by CUDA events; the host waits only on
the event of the result it asks for, never on the whole device.

On the CPU the same interface runs each frame when it is submitted, in the caller's thread, with no CUDA call.
Decoding and encoding still overlap with the model: aiortc runs them in threads of its own. A model thread of the
executor's own was tried and measured slower: with 2 OpenMP threads on 2 cores, a tiny-model frame took 200 ms
from a second thread against 113 ms from the first (bench --double-buffer: 4.8 against 7.5 fps).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from .stream import StreamPipeline

SLOTS = 2


@dataclass
class Job:
    """One frame in flight: what to run, and (once done) its result and the seconds the model took."""

    ticket: int
    pipeline: StreamPipeline
    frame: np.ndarray | None
    size: tuple[int, int] | None
    output_size: tuple[int, int] | None
    result: np.ndarray | None = None
    error: BaseException | None = None
    model_seconds: float = 0.0
    slot: _CudaSlot | None = None
    uploaded: bool = False


class FrameExecutor:
    """Runs frames through stream pipelines with at most two in flight; results come back in submission order.

    `submit` returns a ticket; `result(ticket)` returns (frame, model seconds) once that frame is done. Tickets
    must be collected in order, each exactly once. One executor per device, driven from one thread (the engine's);
    any pipeline on that device may use it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._next_ticket = 0
        self._in_flight: deque[Job] = deque()
        self._closed = False
        if self.device.type == "cuda":
            self._copy_stream = torch.cuda.Stream(self.device)
            self._compute_stream = torch.cuda.Stream(self.device)
            self._slots = [_CudaSlot(self.device) for _ in range(SLOTS)]
            self._origin = torch.cuda.Event(enable_timing=True)
            self._origin.record()
            # (ticket, {"upload"|"compute"|"download": (start ms, end ms)}) of the last frames: shows the overlap.
            self.timeline: deque[tuple[int, dict[str, tuple[float, float]]]] = deque(maxlen=16)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def submit(
        self,
        pipeline: StreamPipeline,
        frame: np.ndarray | None,
        size: tuple[int, int] | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> int:
        """Start one frame. With both slots busy, first waits for the oldest result to be collected."""
        if self._closed:
            raise RuntimeError("the executor is closed")
        if len(self._in_flight) >= SLOTS:
            raise RuntimeError(f"{SLOTS} frames are in flight: collect the oldest result before submitting")
        job = Job(self._next_ticket, pipeline, frame, size, output_size)
        self._next_ticket += 1
        self._in_flight.append(job)
        if self.device.type == "cuda":
            self._launch_on_cuda(job)
        else:
            self._run_on_cpu(job)
        return job.ticket

    def result(self, ticket: int) -> tuple[np.ndarray, float]:
        """The frame of `ticket` (uint8 H x W x 3) and its model seconds; waits for that frame only."""
        if not self._in_flight or self._in_flight[0].ticket != ticket:
            expected = self._in_flight[0].ticket if self._in_flight else None
            raise ValueError(f"ticket {ticket} is not the oldest in flight ({expected}): results come in order")
        job = self._in_flight[0]
        if self.device.type == "cuda":
            self._collect_from_cuda(job)
        self._in_flight.popleft()
        if job.error is not None:
            raise job.error
        return job.result, job.model_seconds

    def close(self) -> None:
        self._closed = True

    # CPU: each frame runs as it is submitted.

    @staticmethod
    def _run_on_cpu(job: Job) -> None:
        start = time.perf_counter()
        try:
            job.result = job.pipeline(job.frame, job.size, job.output_size)
        except Exception as error:  # handed to whoever collects the ticket, as on CUDA
            job.error = error
        job.model_seconds = time.perf_counter() - start

    # CUDA: copy stream and compute stream, ordered by events.

    def _launch_on_cuda(self, job: Job) -> None:
        slot = self._slots[job.ticket % SLOTS]
        job.slot = slot
        copy, compute = self._copy_stream, self._compute_stream
        pixels = None
        if job.frame is not None and job.pipeline.needs_frame:
            staged = slot.stage(job.frame)  # host memcpy into pinned memory
            with torch.cuda.stream(copy):
                # The slot's last frame must be done reading its device buffer before it is overwritten.
                copy.wait_event(slot.computed)
                slot.upload_start.record(copy)
                pixels = slot.upload(staged)
                slot.uploaded.record(copy)
            compute.wait_event(slot.uploaded)
        with torch.cuda.stream(compute):
            slot.compute_start.record(compute)
            try:
                output = job.pipeline.stylise_on_device(job.frame, job.size, job.output_size, pixels=pixels)
            except Exception as error:
                job.error = error
                return
            slot.computed.record(compute)
        with torch.cuda.stream(copy):
            copy.wait_event(slot.computed)
            slot.download_start.record(copy)
            slot.download(output, copy)
            slot.downloaded.record(copy)
        job.uploaded = pixels is not None

    def _collect_from_cuda(self, job: Job) -> None:
        if job.error is not None:
            return
        slot = job.slot
        slot.downloaded.synchronize()  # this result's event only
        job.result = slot.fetched()
        job.model_seconds = slot.compute_start.elapsed_time(slot.computed) / 1000
        spans = {
            "compute": (slot.compute_start, slot.computed),
            "download": (slot.download_start, slot.downloaded),
        }
        if job.uploaded:
            spans["upload"] = (slot.upload_start, slot.uploaded)
        origin = self._origin
        timeline = {name: (origin.elapsed_time(a), origin.elapsed_time(b)) for name, (a, b) in spans.items()}
        self.timeline.append((job.ticket, timeline))


class _CudaSlot:
    """One of the two buffers: pinned host memory both ways, the device copy of the frame, and the events."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned_in: torch.Tensor | None = None
        self.device_in: torch.Tensor | None = None
        self.pinned_out: torch.Tensor | None = None
        # Timed: the model's own seconds come from the device, not from the host's view of it, and the timeline
        # shows copies and compute overlapping.
        self.upload_start, self.uploaded = _timed_event(), _timed_event()
        self.compute_start, self.computed = _timed_event(), _timed_event()
        self.download_start, self.downloaded = _timed_event(), _timed_event()
        self.computed.record()  # a slot starts free: nothing is reading its buffers

    def stage(self, frame: np.ndarray) -> torch.Tensor:
        if self.pinned_in is None or tuple(self.pinned_in.shape) != frame.shape:
            self.pinned_in = torch.empty(frame.shape, dtype=torch.uint8, pin_memory=True)
            self.device_in = torch.empty(frame.shape, dtype=torch.uint8, device=self.device)
        self.pinned_in.numpy()[...] = frame
        return self.pinned_in

    def upload(self, staged: torch.Tensor) -> torch.Tensor:
        self.device_in.copy_(staged, non_blocking=True)
        return self.device_in

    def download(self, output: torch.Tensor, stream: torch.cuda.Stream) -> None:
        if self.pinned_out is None or self.pinned_out.shape != output.shape:
            self.pinned_out = torch.empty(output.shape, dtype=torch.uint8, pin_memory=True)
        output.record_stream(stream)  # made on the compute stream, read on the copy stream
        self.pinned_out.copy_(output, non_blocking=True)

    def fetched(self) -> np.ndarray:
        return self.pinned_out.numpy().copy()


def _timed_event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)
