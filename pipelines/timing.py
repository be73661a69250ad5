"""Measuring the time spent inside model calls, the same way for the stream pipeline and the diffusers one."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class ModelCallTimer:
    """Wraps the UNet, VAE and text-encoder entry points of some modules and sums the seconds spent inside."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def reset(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def attach(self, unet, vae, text_encoder, extra=()) -> Iterator[ModelCallTimer]:
        """Time `unet.forward`, `vae.encode`, `vae.decode`, `text_encoder.forward` and the `forward` of each
        module in `extra` (None entries are skipped) while the block runs."""
        targets = [(unet, "forward"), (vae, "encode"), (vae, "decode"), (text_encoder, "forward")]
        targets += [(module, "forward") for module in extra if module is not None]
        for module, name in targets:
            setattr(module, name, self._timed(getattr(module, name)))
        try:
            yield self
        finally:
            for module, name in targets:
                delattr(module, name)  # the instance attribute goes; the class method shows through again

    def _timed(self, call: Callable) -> Callable:
        @functools.wraps(call)
        def timed(*args, **kwargs):
            # Benchmark-only: on CUDA the kernels are asynchronous, so the boundaries must be synchronised to
            # attribute time to the call. Never used on the serving path.
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            result = call(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - start
            return result

        return timed
