"""Double-buffered execution: while one frame runs on the model, the next is staged and the last is fetched back.

On CUDA: two slots, each with pinned host buffers and device buffers. Frame N+1 uploads on an upload stream and
frame N-1 downloads on a download stream while frame N runs on the compute stream, all ordered by CUDA events; the
host waits only on the event of the result it asks for, never on the whole device. Every host tensor a frame needs
goes through the slot's pinned buffers — the camera frame, the Canny map, txt2img's noise: a copy from pageable
memory waits for the device, and the host could not launch frame N+1 until frame N had finished.

A submission is a batch: one or more prepared frames that share one call of the model (see batch.py), with one
result per frame. Every batch, of one frame or more, runs through one function, `stylise` (batch.py's
`stylise_batch` unless the executor is given another: a bench slows it down, a test makes it fail). On the CPU the
same interface runs each batch when it is submitted, in the caller's thread, with no CUDA call.
Decoding and encoding still overlap with the model: aiortc runs them in threads of its own. A model thread of the
executor's own was tried and measured slower: with 2 OpenMP threads on 2 cores, a tiny-model frame took 200 ms
from a second thread against 113 ms from the first (bench --double-buffer: 4.8 against 7.5 fps).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .batch import stylise_batch
from .frame import FrameRequest

SLOTS = 2

# A batch's device side: its frames' pictures (uint8 H x W x 3, on the device) from the frames and, on CUDA, their
# host tensors already on the device (None: copied there by the function).
Stylise = Callable[[Sequence[FrameRequest], Sequence[dict[str, torch.Tensor]] | None], list[torch.Tensor]]


@dataclass
class FrameResult:
    """A finished frame: the picture (uint8 H x W x 3), the model's seconds (its share of its batch's), and the
    Canny map it was given."""

    picture: np.ndarray
    model_seconds: float
    control_image: np.ndarray | None


@dataclass
class InFlightBatch:
    """One submitted batch: what to run, and (once done) its results or its error."""

    ticket: int
    requests: list[FrameRequest]
    results: list[FrameResult] | None = None
    error: Exception | None = None
    slot: _CudaSlot | None = None


class FrameExecutor:
    """Runs batches of prepared frames with at most two in flight; results come back in submission order.

    `submit` returns a ticket; `result(ticket)` returns the batch's FrameResults (one per request, in order) once
    it is done, or raises the batch's own error. Tickets must be collected in order, each exactly once. One
    executor per device, driven from one thread (the engine's); any pipeline on that device may use it.
    """

    def __init__(self, device: torch.device, stylise: Stylise = stylise_batch) -> None:
        self.device = torch.device(device)
        self.stylise = stylise
        self._next_ticket = 0
        self._in_flight: deque[InFlightBatch] = deque()
        self._closed = False
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                self._upload_stream = torch.cuda.Stream(self.device)
                self._compute_stream = torch.cuda.Stream(self.device)
                self._download_stream = torch.cuda.Stream(self.device)
                self._slots = [_CudaSlot(self.device, self._compute_stream) for _ in range(SLOTS)]
                self._origin = _timed_event()
                self._origin.record(self._compute_stream)
            # (ticket, {"upload"|"compute"|"download": (start ms, end ms)}) of the last frames: shows the overlap.
            self.timeline: deque[tuple[int, dict[str, tuple[float, float]]]] = deque(maxlen=16)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def device_context(self) -> contextlib.AbstractContextManager:
        """Where other work on the device's tensors must run (parameter changes, prompt encoding): on CUDA the
        compute stream, so that a frame never reads tensors that are still being written or already freed."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(torch.cuda.stream(self._compute_stream))
        return stack

    def submit(self, requests: list[FrameRequest]) -> int:
        """Start one batch (frames prepared with `StreamPipeline.prepare` that share a `batch_key`). At most two
        may be in flight: collect the oldest before submitting a third.

        A failure of the batch itself (out of memory, say) is kept and raised by `result`.
        """
        if self._closed:
            raise RuntimeError("the executor is closed")
        if len(self._in_flight) >= SLOTS:
            raise RuntimeError(f"{SLOTS} batches are in flight: collect the oldest result before submitting")
        if not requests:
            raise ValueError("a batch needs at least one frame")
        job = InFlightBatch(self._next_ticket, list(requests))
        self._next_ticket += 1
        self._in_flight.append(job)
        try:
            if self.device.type == "cuda":
                with torch.cuda.device(self.device):
                    self._launch_on_cuda(job)
            else:
                self._run_on_cpu(job)
        except Exception as error:  # handed to whoever collects the ticket
            job.error = error
        return job.ticket

    def result(self, ticket: int) -> list[FrameResult]:
        """The results of `ticket`'s frames; waits for that batch only."""
        if not self._in_flight or self._in_flight[0].ticket != ticket:
            expected = self._in_flight[0].ticket if self._in_flight else None
            raise ValueError(f"ticket {ticket} is not the oldest in flight ({expected}): results come in order")
        job = self._in_flight.popleft()
        if job.error is None and self.device.type == "cuda":
            try:
                self._collect_from_cuda(job)
            except Exception as error:
                job.error = error
        if job.error is not None:
            raise job.error
        return job.results

    def close(self) -> None:
        self._closed = True

    # CPU: each frame runs as it is submitted.

    def _run_on_cpu(self, job: InFlightBatch) -> None:
        start = time.perf_counter()
        pictures = self.stylise(job.requests, None)
        job.results = _results(job.requests, [p.numpy() for p in pictures], time.perf_counter() - start)

    # CUDA: upload, compute and download streams, ordered by events.

    def _launch_on_cuda(self, job: InFlightBatch) -> None:
        slot = self._slots[job.ticket % SLOTS]
        job.slot = slot
        upload, compute, download = self._upload_stream, self._compute_stream, self._download_stream
        with torch.cuda.stream(upload):
            # The slot's previous batch must be done reading its device buffers before they are overwritten.
            upload.wait_event(slot.computed)
            slot.upload_start.record(upload)
            on_device = [slot.upload(index, request) for index, request in enumerate(job.requests)]
            slot.uploaded.record(upload)
        compute.wait_event(slot.uploaded)
        with torch.cuda.stream(compute):
            slot.compute_start.record(compute)
            try:
                outputs = self.stylise(job.requests, on_device)
            finally:
                # Also after a failure: whatever was launched must finish before the slot's buffers are reused.
                slot.computed.record(compute)
        with torch.cuda.stream(download):
            download.wait_event(slot.computed)
            slot.download_start.record(download)
            slot.download(outputs, download)
            slot.downloaded.record(download)

    def _collect_from_cuda(self, job: InFlightBatch) -> None:
        slot = job.slot
        slot.downloaded.synchronize()  # this result's event only
        seconds = slot.compute_start.elapsed_time(slot.computed) / 1000
        job.results = _results(job.requests, slot.fetched(len(job.requests)), seconds)
        spans = {
            "upload": (slot.upload_start, slot.uploaded),
            "compute": (slot.compute_start, slot.computed),
            "download": (slot.download_start, slot.downloaded),
        }
        origin = self._origin
        timeline = {name: (origin.elapsed_time(a), origin.elapsed_time(b)) for name, (a, b) in spans.items()}
        self.timeline.append((job.ticket, timeline))


class _CudaSlot:
    """One of the two buffers: pinned host memory both ways, device copies of the frame's inputs, and the events."""

    def __init__(self, device: torch.device, compute: torch.cuda.Stream) -> None:
        self.device = device
        self.compute = compute
        # Per (frame of the batch, input name: "pixels", "control_{kind}", "noise"): pinned host and device buffers.
        self.inputs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.pinned_out: list[torch.Tensor] = []
        # Timed: the model's own seconds come from the device, not from the host's view of it, and the timeline
        # shows copies and compute overlapping.
        self.upload_start, self.uploaded = _timed_event(), _timed_event()
        self.compute_start, self.computed = _timed_event(), _timed_event()
        self.download_start, self.downloaded = _timed_event(), _timed_event()
        self.computed.record(compute)  # a slot starts free: nothing is reading its buffers

    def upload(self, index: int, request: FrameRequest) -> dict[str, torch.Tensor]:
        """Each of a frame's host tensors into its pinned buffer (a host copy), then to the device without
        blocking, on the current stream."""
        # The slot's last copies out of its pinned buffers are long done (its batch was collected) unless that
        # batch failed before anyone waited on it.
        self.uploaded.synchronize()
        on_device = {}
        for name, tensor in request.host_tensors.items():
            pinned, device_buffer = self.inputs.get((index, name), (None, None))
            if pinned is None or pinned.shape != tensor.shape or pinned.dtype != tensor.dtype:
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                device_buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
                device_buffer.record_stream(self.compute)  # read there: not reused before compute is done with it
                self.inputs[(index, name)] = (pinned, device_buffer)
            pinned.copy_(tensor)
            device_buffer.copy_(pinned, non_blocking=True)
            on_device[name] = device_buffer
        return on_device

    def download(self, outputs: list[torch.Tensor], stream: torch.cuda.Stream) -> None:
        for index, output in enumerate(outputs):
            if index == len(self.pinned_out):
                self.pinned_out.append(torch.empty(0, dtype=torch.uint8))
            if self.pinned_out[index].shape != output.shape:
                self.pinned_out[index] = torch.empty(output.shape, dtype=torch.uint8, pin_memory=True)
            output.record_stream(stream)  # made on the compute stream, read on the download stream
            self.pinned_out[index].copy_(output, non_blocking=True)

    def fetched(self, count: int) -> list[np.ndarray]:
        return [pinned.numpy().copy() for pinned in self.pinned_out[:count]]


def _results(requests: list[FrameRequest], pictures: list[np.ndarray], seconds: float) -> list[FrameResult]:
    """One result per frame; the batch's model time is shared out evenly."""
    share = seconds / len(requests)
    return [FrameResult(p, share, r.control_image) for r, p in zip(requests, pictures, strict=True)]


def _timed_event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)
