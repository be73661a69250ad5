"""Double-buffered execution: while one frame runs on the model, the next is staged and the last is fetched back.

Two slots, each with host staging buffers and device buffers. Frame N+1 uploads on an upload stream and frame N-1
downloads on a download stream while frame N runs on the compute stream, all ordered by events; the host waits
only on the event of the result it asks for, never on the whole device. Every host tensor a frame needs goes
through the slot's staging buffers — the camera frame, the Canny map, txt2img's noise: on CUDA they are pinned, and
a copy from pageable memory would wait for the device, so the host could not launch frame N+1 until frame N had
finished.

The streams, events and buffers are the device's (device_streams.py): on CUDA, torch.cuda's, and the copies and
the model overlap; on the CPU, streams that run their work at once, so a batch is done when `submit` returns and
its event is complete once recorded. Either way the same slots, tickets, staging and ordering run, so the CPU's
tests drive the code a GPU runs. Staging costs the CPU a copy of each input and two of each picture, measured
0.03 ms a frame at 256 px and 0.17 ms at 512 (the executor around a device side that does nothing, against that
side called alone), under 0.1% of the tiny model's 73 ms at 256.

A submission is a batch: one or more prepared frames that share one call of the model (see batch.py), with one
result per frame. Every batch, of one frame or more, runs through one function, `stylise` (batch.py's
`stylise_batch` unless the executor is given another: a bench slows it down, a test makes it fail), in the
caller's thread. Decoding and encoding still overlap with the model: aiortc runs them in threads of its own. A
model thread of the executor's own was tried and measured slower: with 2 OpenMP threads on 2 cores, a tiny-model
frame took 200 ms from a second thread against 113 ms from the first (bench --double-buffer: 4.8 against 7.5
fps). Two batches may be in flight on either device; the server keeps one on the CPU (server/engine.py: there a
staged frame waits a whole model time behind the running one, bench --e2e p50 latency 60 ms over the model against
17 with one).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .batch import stylise_batch
from .device_streams import DeviceStream, DeviceStreams, device_streams
from .frame import FrameRequest

SLOTS = 2

# A batch's device side: its frames' pictures (uint8 H x W x 3, on the device) from the frames and their host
# tensors already on the device (None: copied there by the function; the executor always gives them).
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
    """One submitted batch: what to run, the slot it runs in, and its error if launching it failed."""

    ticket: int
    requests: list[FrameRequest]
    slot: _Slot
    error: Exception | None = None


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
        self._streams = device_streams(self.device)
        self._upload_stream = self._streams.stream()
        self._compute_stream = self._streams.stream()
        self._download_stream = self._streams.stream()
        with self.device_context():
            self._slots = [_Slot(self._streams, self._compute_stream) for _ in range(SLOTS)]
            self._origin = self._streams.event()
            self._origin.record(self._compute_stream)
        # (ticket, {"upload"|"compute"|"download": (start ms, end ms)}) of the last frames: on CUDA, shows the overlap.
        self.timeline: deque[tuple[int, dict[str, tuple[float, float]]]] = deque(maxlen=16)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def device_context(self) -> contextlib.AbstractContextManager:
        """Where other work on the device's tensors must run (parameter changes, prompt encoding): the compute
        stream, so that a frame never reads tensors that are still being written or already freed."""
        return self._streams.on(self._compute_stream)

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
        job = InFlightBatch(self._next_ticket, list(requests), self._slots[self._next_ticket % SLOTS])
        self._next_ticket += 1
        self._in_flight.append(job)
        try:
            with self.device_context():
                self._launch(job)
        except Exception as error:  # handed to whoever collects the ticket
            job.error = error
        return job.ticket

    def result(self, ticket: int) -> list[FrameResult]:
        """The results of `ticket`'s frames; waits for that batch only."""
        if not self._in_flight or self._in_flight[0].ticket != ticket:
            expected = self._in_flight[0].ticket if self._in_flight else None
            raise ValueError(f"ticket {ticket} is not the oldest in flight ({expected}): results come in order")
        job = self._in_flight.popleft()
        if job.error is not None:
            raise job.error
        return self._collect(job)

    def close(self) -> None:
        self._closed = True

    # Upload, compute and download streams, ordered by events.

    def _launch(self, job: InFlightBatch) -> None:
        slot = job.slot
        upload, compute, download = self._upload_stream, self._compute_stream, self._download_stream
        with self._streams.on(upload):
            # The slot's previous batch must be done reading its device buffers before they are overwritten.
            upload.wait_event(slot.computed)
            slot.upload_start.record(upload)
            on_device = [slot.upload(index, request) for index, request in enumerate(job.requests)]
            slot.uploaded.record(upload)
        compute.wait_event(slot.uploaded)
        with self._streams.on(compute):
            slot.compute_start.record(compute)
            try:
                outputs = self.stylise(job.requests, on_device)
            finally:
                # Also after a failure: whatever was launched must finish before the slot's buffers are reused.
                slot.computed.record(compute)
        with self._streams.on(download):
            download.wait_event(slot.computed)
            slot.download_start.record(download)
            slot.download(outputs, download)
            slot.downloaded.record(download)

    def _collect(self, job: InFlightBatch) -> list[FrameResult]:
        slot = job.slot
        slot.downloaded.synchronize()  # this result's event only
        seconds = slot.compute_start.elapsed_time(slot.computed) / 1000
        results = _results(job.requests, slot.fetched(len(job.requests)), seconds)
        spans = {
            "upload": (slot.upload_start, slot.uploaded),
            "compute": (slot.compute_start, slot.computed),
            "download": (slot.download_start, slot.downloaded),
        }
        origin = self._origin
        timeline = {name: (origin.elapsed_time(a), origin.elapsed_time(b)) for name, (a, b) in spans.items()}
        self.timeline.append((job.ticket, timeline))
        return results


class _Slot:
    """One of the two buffers: host staging memory both ways, device copies of the frame's inputs, and the events."""

    def __init__(self, streams: DeviceStreams, compute: DeviceStream) -> None:
        self.streams = streams
        self.compute = compute
        # Per (frame of the batch, input name: "pixels", "control_{kind}", "noise"): staging and device buffers.
        self.inputs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.staged_out: list[torch.Tensor] = []
        # Timed: the model's own seconds come from the device, not from the host's view of it, and the timeline
        # shows copies and compute overlapping.
        self.upload_start, self.uploaded = streams.event(), streams.event()
        self.compute_start, self.computed = streams.event(), streams.event()
        self.download_start, self.downloaded = streams.event(), streams.event()
        self.computed.record(compute)  # a slot starts free: nothing is reading its buffers

    def upload(self, index: int, request: FrameRequest) -> dict[str, torch.Tensor]:
        """Each of a frame's host tensors into its staging buffer (a host copy), then to the device without
        blocking, on the current stream."""
        # The slot's last copies out of its staging buffers are long done (its batch was collected) unless that
        # batch failed before anyone waited on it.
        self.uploaded.synchronize()
        on_device = {}
        for name, tensor in request.host_tensors.items():
            buffers = self.inputs.get((index, name))
            if buffers is None or buffers[0].shape != tensor.shape or buffers[0].dtype != tensor.dtype:
                buffers = (
                    self.streams.host_buffer(tensor.shape, tensor.dtype),
                    self.streams.device_buffer(tensor.shape, tensor.dtype),
                )
                # Read on the compute stream: not reused before compute is done with it.
                self.streams.keep_until_used(buffers[1], self.compute)
                self.inputs[(index, name)] = buffers
            staging, device_buffer = buffers
            staging.copy_(tensor)
            device_buffer.copy_(staging, non_blocking=True)
            on_device[name] = device_buffer
        return on_device

    def download(self, outputs: list[torch.Tensor], stream: DeviceStream) -> None:
        for index, output in enumerate(outputs):
            if index == len(self.staged_out):
                self.staged_out.append(torch.empty(0, dtype=torch.uint8))
            if self.staged_out[index].shape != output.shape:
                self.staged_out[index] = self.streams.host_buffer(output.shape, torch.uint8)
            self.streams.keep_until_used(output, stream)  # made on the compute stream, read on the download stream
            self.staged_out[index].copy_(output, non_blocking=True)

    def fetched(self, count: int) -> list[np.ndarray]:
        return [staged.numpy().copy() for staged in self.staged_out[:count]]


def _results(requests: list[FrameRequest], pictures: list[np.ndarray], seconds: float) -> list[FrameResult]:
    """One result per frame; the batch's model time is shared out evenly."""
    share = seconds / len(requests)
    return [FrameResult(p, share, r.control_image) for r, p in zip(requests, pictures, strict=True)]
