"""The compiled path (`--compile`): the UNet and the VAE decoder through torch.compile with static shapes, one graph
per processing size, compiled before serving (`warm`), and every compile counted.

Static shapes (dynamic=False): each input shape gets a graph of its own, specialised to it, which is what CUDA graphs
need; the adaptive ladder keeps the sizes few (a 640x480 camera takes 7 sizes from 512 down to 128). A UNet batch of
another size at a known processing size (streams batched together, classifier-free guidance switched on), or a
ControlNet or style switched on, is another graph: compiled when a frame first needs it, counted and logged like a
size the ladder reaches that was not warmed.

The mode: "reduce-overhead" on CUDA, inductor's kernels replayed as CUDA graphs. A frame runs the UNet 1-4 times at
batch 1, where the host launching each of its kernels one by one can leave the GPU idle between them; a graph replay
is one launch. Not "max-autotune": it benchmarks kernel choices for every shape, minutes more per ladder size at
start. Not measured here (no GPU was at hand): scripts/gpu-check measures eager against compiled. On the CPU the
default mode (there are no CUDA graphs), and it is a loss there: the tiny model at 256 px went from 73 to 82 ms a
frame after 53 s of compiling on a 2-core CPU. So eager is the default everywhere, and --compile is for GPUs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch._dynamo.utils import counters

from .batch import stylise_batch
from .components import ModelComponents
from .frame import FrameRequest
from .resolution import size_ladder
from .stream import StreamPipeline, processing_size
from .synthetic import moving_pattern

log = logging.getLogger(__name__)

# Graphs dynamo keeps for one compiled function before it gives up on new shapes and runs them eagerly (with a
# warning only): its default, 8, is fewer than one ladder's 7 sizes with a second batch size. Process-wide.
GRAPHS_PER_FUNCTION = 64
# Frames per size when warming: CUDA graph trees run a new graph once as a warm-up and record it on its next call,
# so that the first served frames replay it; a frame calls the decoder once.
WARM_FRAMES = 3


def compile_mode(device: torch.device) -> str:
    """torch.compile's mode for a device: CUDA graphs on CUDA, plain inductor elsewhere (see the module's note)."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far, by dynamo's own count: a recompile adds one."""
    return counters["stats"]["unique_graphs"]


def ladder_sizes(camera: tuple[int, int], max_side: int, floor: int) -> list[tuple[int, int]]:
    """The processing sizes (width, height) a camera's frames take on the adaptive ladder, largest first: the rung
    a stream starts on comes first."""
    return list(dict.fromkeys(processing_size(*camera, side) for side in size_ladder(max_side, floor)))


@dataclass(frozen=True)
class Compile:
    """One call that compiled graphs: at which processing size and UNet batch, how many graphs, its seconds
    (compiling and the frame), and whether it was warming or serving a frame."""

    size: tuple[int, int]
    unet_batch: int
    graphs: int
    seconds: float
    warming: bool


class CompiledModel:
    """A model's UNet and VAE decoder compiled in place (`torch.nn.Module.compile`), lazily: a graph is made when a
    frame of a new shape first runs. `warm` runs frames at a size to make its graphs before serving; `stylise`
    (the engine's device side of a batch) notes any compile a served frame causes.

    Compiles are counted with dynamo's process-wide count of graphs, read around each call: compile on one thread
    only (the engine's), as the server does.
    """

    def __init__(self, components: ModelComponents, mode: str | None = None) -> None:
        self.components = components
        self.mode = mode or compile_mode(components.device)
        self.compiles: list[Compile] = []
        self._sizes: dict[tuple[int, int], None] = {}  # an ordered set
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, GRAPHS_PER_FUNCTION)
        for module in (components.unet, components.vae.decoder):
            module.compile(dynamic=False, mode=self.mode)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """The processing sizes (width, height) that frames have run at through the compiled modules (warming or
        served): those that have graphs, in the order they first ran."""
        return list(self._sizes)

    @property
    def on_demand(self) -> int:
        """Compiles while serving frames: shapes that warming did not cover."""
        return sum(not record.warming for record in self.compiles)

    def stylise(
        self, requests: Sequence[FrameRequest], on_device: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> list[torch.Tensor]:
        """batch.py's `stylise_batch`, counting and logging a compile that the batch causes."""
        return self._counted(requests, partial(stylise_batch, requests, on_device), warming=False)

    def warm(self, size: tuple[int, int], frames: int = WARM_FRAMES) -> float:
        """Make the graphs of processing size (width, height) by running frames of a new stream (default params)
        through them; the seconds it took."""
        pipeline = StreamPipeline(self.components)
        start = time.perf_counter()
        for index in range(frames):
            request = pipeline.prepare(moving_pattern(*size, index), size)
            self._counted([request], partial(stylise_batch, [request]), warming=True)
        return time.perf_counter() - start

    def _counted(
        self, requests: Sequence[FrameRequest], run: Callable[[], list[torch.Tensor]], warming: bool
    ) -> list[torch.Tensor]:
        before, start = compiled_graphs(), time.perf_counter()
        pictures = run()
        graphs = compiled_graphs() - before
        first = requests[0]
        self._sizes[(first.width, first.height)] = None
        if graphs:
            record = Compile(
                (first.width, first.height),
                len(requests) * first.plan.batch,
                graphs,
                time.perf_counter() - start,
                warming,
            )
            self.compiles.append(record)
            shape = f"{first.width}x{first.height} (UNet batch {record.unet_batch})"
            if warming:
                log.info("compiled %d graph(s) for %s in %.1f s", graphs, shape, record.seconds)
            else:
                log.warning(
                    "compiled %d graph(s) for %s in %.1f s while serving: a shape not compiled at start (%d so far)",
                    graphs,
                    shape,
                    record.seconds,
                    self.on_demand,
                )
        return pictures


def compile_model(components: ModelComponents, mode: str | None = None) -> CompiledModel:
    """`components` compiled (in place, once: a model compiled before keeps its graphs and its count)."""
    compiled = components.compiled
    if compiled is None:
        compiled = components.compiled = CompiledModel(components, mode)
    elif mode is not None and mode != compiled.mode:
        raise ValueError(f"the model is compiled in mode {compiled.mode!r} already, not {mode!r}")
    return compiled
