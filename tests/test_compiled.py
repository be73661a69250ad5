"""The compiled path (pipelines/compiled.py) on the CPU: the same pictures as eager, one compile per shape, counted
and logged, none for a change of prompt, strength or seed; and the server's /health while it compiles.

One compile for the module (tiny-random, 64x64, inductor on the CPU): a second model of the same shapes shares its
graphs (dynamo's guards read the parameters' shapes, not which module they belong to).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import torch

from pipelines import ModelComponents, StreamPipeline, load_model
from pipelines.compiled import (
    WARM_FRAMES,
    Compile,
    CompiledModel,
    compile_model,
    compiled_graphs,
    ladder_sizes,
)
from pipelines.synthetic import moving_pattern
from server import serve
from server.app import create_app
from server.config import ServerConfig, settings_from_arguments

SIZE = (64, 64)
# Compiled kernels fuse and reorder float32 arithmetic; the decoded picture in 0-1 may differ by rounding only.
PARITY = 1e-3


@dataclass
class Compiled:
    model: ModelComponents
    compiled: CompiledModel
    eager: torch.Tensor  # the eager picture of the first frame, float in 0-1 before uint8
    first_compile_log: list[logging.LogRecord]
    seconds: float  # the first served frame's, compiling included


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def compiled_tiny():
    """tiny-random's eager picture of a frame, then the model compiled and that frame served (compiled then)."""
    model = load_model("tiny-random", device="cpu")
    frame = moving_pattern(*SIZE, 0)
    eager = StreamPipeline(model).render(frame, SIZE)
    compiled = compile_model(model)
    records = _Records()
    logger = logging.getLogger("pipelines.compiled")
    logger.addHandler(records)
    try:
        start = time.perf_counter()
        compiled.stylise([StreamPipeline(model).prepare(frame, SIZE)])
        seconds = time.perf_counter() - start
    finally:
        logger.removeHandler(records)
    yield Compiled(model, compiled, eager, records.records, seconds)
    torch._dynamo.reset()  # the graphs and the modules they hold go


@pytest.mark.slow  # the module's one compile: about a minute on an idle 2-core CPU
def test_compiled_frames_match_eager_ones(compiled_tiny):
    graphs = compiled_graphs()
    picture = StreamPipeline(compiled_tiny.model).render(moving_pattern(*SIZE, 0), SIZE)
    # Not vacuous: the UNet and the decoder were compiled for this shape, and this frame ran their graphs.
    assert compiled_tiny.compiled.compiles[0].graphs >= 2 and compiled_graphs() == graphs
    difference = (picture - compiled_tiny.eager).abs().max().item()
    print(f"compiled against eager: max abs difference {difference:.2e}; first frame {compiled_tiny.seconds:.1f} s")
    assert difference <= PARITY


@pytest.mark.slow  # the module's one compile: about a minute on an idle 2-core CPU
def test_a_shape_first_served_is_compiled_then_counted_and_logged(compiled_tiny):
    compiled = compiled_tiny.compiled
    [record] = compiled.compiles
    assert record == Compile(SIZE, 1, record.graphs, record.seconds, warming=False)
    assert compiled.on_demand == 1 and compiled.sizes == [SIZE]
    [message] = [r.getMessage() for r in compiled_tiny.first_compile_log]
    assert "for 64x64 (UNet batch 1)" in message and "while serving" in message


@pytest.mark.slow  # the module's one compile: about a minute on an idle 2-core CPU
def test_prompt_strength_and_seed_changes_compile_nothing(compiled_tiny):
    compiled, graphs = compiled_tiny.compiled, compiled_graphs()
    pipeline = StreamPipeline(compiled_tiny.model)
    changes = [{}, {"prompt": "a lighthouse at night"}, {"strength": 0.9}, {"seed": 7}, {"steps": 2, "seed": 8}]
    pictures = []
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompile raises
        for index, change in enumerate(changes):
            pipeline.update(**change)
            [picture] = compiled.stylise([pipeline.prepare(moving_pattern(*SIZE, index), SIZE)])
            pictures.append(picture)
    assert compiled_graphs() == graphs and compiled.on_demand == 1
    # The changes took effect: every picture differs from the one before it.
    assert all(not torch.equal(a, b) for a, b in zip(pictures, pictures[1:], strict=False))


@pytest.mark.slow  # the module's one compile: about a minute on an idle 2-core CPU
async def test_health_says_compiling_until_the_sizes_are_made(compiled_tiny):
    model = load_model("tiny-random", device="cpu")  # another model: its own count, the module's graphs
    app = create_app(model, ServerConfig(compile=True, compile_sizes=(SIZE,)))
    compiled = model.compiled
    assert compiled is not None and app.state.engine.executor.stylise == compiled.stylise  # frames are counted
    # Warming held on the engine thread, as a long compile holds it: the event loop must go on answering.
    release = threading.Event()
    warm = compiled.warm

    def held_warm(size: tuple[int, int], frames: int = WARM_FRAMES) -> float:
        release.wait(30)
        return warm(size, frames)

    compiled.warm = held_warm
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        health = (await client.get("/health")).json()
        assert (health["compile"], health["compiled_sizes"]) == ("compiling", [])
        release.set()
        await app.state.compiled_at_start.wait()
        health = (await client.get("/health")).json()
    assert (health["compile"], health["compiled_sizes"], health["compiles_while_serving"]) == ("ready", ["64x64"], 0)


def test_serve_compile_flag_reaches_the_app_config():
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert settings_from_arguments(parser.parse_args(["--compile"])).server_config().compile
    assert not settings_from_arguments(parser.parse_args([])).server_config().compile


def test_the_ladder_sizes_of_the_page_camera():
    assert ladder_sizes((640, 480), 512, 128) == [
        (512, 384),
        (448, 320),
        (384, 320),
        (320, 256),
        (256, 192),
        (192, 128),
        (128, 128),
    ]
    assert ladder_sizes((640, 480), 256, 128) == [(256, 192), (192, 128), (128, 128)]
