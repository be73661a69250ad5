"""The device calls the double-buffered executor orders its work by: streams, timed events, staging buffers.

Two implementations of one small interface. `CudaStreams` is torch.cuda's own: work launched on a stream runs
later, in that stream's order; an event completes when the work before it on its stream does. `CpuStreams` serves
every other device: a stream runs its work at once (torch's CPU calls return when they are done), so an event is
complete once recorded and waiting on one waits for nothing. The executor's slots, tickets, staging and ordering
are the same code on both; only on CUDA do the copies and the model overlap.

The copies themselves are torch's `Tensor.copy_(source, non_blocking=True)` on both: asynchronous on CUDA between
pinned host memory and the device, done at once on the CPU.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol, cast

import torch


class DeviceStream(Protocol):
    """A queue of device work (torch.cuda.Stream)."""

    # Any: torch.cuda.Stream's methods take only torch's own events, the CPU's only its own.
    def wait_event(self, event: Any) -> None:
        """Work queued on this stream after this call starts after `event` completes."""


class DeviceEvent(Protocol):
    """A point in a stream's work, timed (torch.cuda.Event with enable_timing)."""

    def record(self, stream: Any = None) -> None:
        """Mark the end of the work queued on `stream` so far."""

    def synchronize(self) -> None:
        """Wait on the host until the recorded work is done (at once if never recorded)."""

    def elapsed_time(self, end_event: Any) -> float:
        """Milliseconds from this event to `end_event`, both recorded and complete."""
        ...


class DeviceStreams(Protocol):
    """What the executor needs of its device: streams, timed events, staging buffers, a stream to run on."""

    device: torch.device

    def stream(self) -> DeviceStream: ...

    def event(self) -> DeviceEvent: ...

    def on(self, stream: DeviceStream) -> contextlib.AbstractContextManager[Any]:
        """Run the block with this device and `stream` current: the work it launches goes on `stream`."""
        ...

    def host_buffer(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Host memory that the device copies from and to without waiting (pinned on CUDA)."""
        ...

    def device_buffer(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor: ...

    def keep_until_used(self, tensor: torch.Tensor, stream: DeviceStream) -> None:
        """`tensor` is read on `stream`, not the one that made it: its memory is not reused before that work is
        done."""


def device_streams(device: torch.device) -> DeviceStreams:
    return CudaStreams(device) if device.type == "cuda" else CpuStreams(device)


class CudaStreams:
    """torch.cuda's streams and events, pinned host memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def stream(self) -> DeviceStream:
        return torch.cuda.Stream(self.device)

    def event(self) -> DeviceEvent:
        return torch.cuda.Event(enable_timing=True)

    def on(self, stream: DeviceStream) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(torch.cuda.stream(cast(torch.cuda.Stream, stream)))
        return stack

    def host_buffer(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def device_buffer(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def keep_until_used(self, tensor: torch.Tensor, stream: DeviceStream) -> None:
        tensor.record_stream(cast(torch.cuda.Stream, stream))


class CpuStreams:
    """Streams that run their work at once: the CPU (or any device without CUDA's streams). No CUDA call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def stream(self) -> DeviceStream:
        return CpuStream()

    def event(self) -> DeviceEvent:
        return CpuEvent()

    def on(self, stream: DeviceStream) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def host_buffer(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def device_buffer(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def keep_until_used(self, tensor: torch.Tensor, stream: DeviceStream) -> None:
        """Nothing to keep: the work that reads it has already run."""


class CpuStream:
    """A stream whose work has run by the time it was launched."""

    def wait_event(self, event: Any) -> None:
        """Nothing to wait for: whatever `event` marks has run."""


class CpuEvent:
    """Complete once recorded; its time is the host's clock when it was recorded."""

    def __init__(self) -> None:
        self._recorded_at: float | None = None

    def record(self, stream: Any = None) -> None:
        self._recorded_at = time.perf_counter()

    def synchronize(self) -> None:
        """Nothing to wait for: recorded means done, and like CUDA's, an event never recorded waits for nothing."""

    def elapsed_time(self, end_event: Any) -> float:
        if self._recorded_at is None or end_event._recorded_at is None:
            # As CUDA's events refuse: a time from an event never recorded is a bug in the order of the calls.
            raise RuntimeError("elapsed_time needs both events recorded")
        return (end_event._recorded_at - self._recorded_at) * 1000
