"""`lcmlive bench --e2e`: the aiortc loopback as a benchmark — delivered fps and latency against the pipeline alone."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import uvicorn

from pipelines import ModelComponents, StreamPipeline, load_model
from pipelines.compiled import compile_model
from pipelines.synthetic import moving_pattern

from ..app import create_app
from ..config import ServerConfig
from ..engine import reserve_a_core_for_media
from ..media.ice import restrict_ice_to_loopback
from ..stats import STAGES, FrameTimes, stage_medians
from .loopback import free_port

WARMUP_SECONDS = 3.0


def pipeline_only(model: ModelComponents, args: argparse.Namespace) -> list[float]:
    """Seconds per frame of the stream pipeline alone at the benchmark's size, steps and strength."""
    pipe = StreamPipeline(model)
    pipe.update(steps=args.steps, strength=args.strength)
    frames = [moving_pattern(args.size, args.size, i) for i in range(args.frames + args.warmup)]
    for frame in frames[: args.warmup]:
        pipe(frame)
    seconds = []
    for frame in frames[args.warmup :]:
        start = time.perf_counter()
        pipe(frame)
        seconds.append(time.perf_counter() - start)
    return seconds


async def loopback_run(model: ModelComponents, args: argparse.Namespace) -> dict:
    """Serve `model` on 127.0.0.1 here; stream a 30 fps synthetic camera from a viewer in another process."""
    # A fixed size and no pacing: this benchmark measures the transport, not the adaptation.
    compile_sizes = ((args.size, args.size),) if args.compile else None
    async with BenchServer(model, compile_sizes) as server:
        viewer = await server.start_viewer(args.size, fixed_size_params(args), WARMUP_SECONDS, args.seconds)
        stream = await server.first_stream()
        measured = await server.viewer_result(viewer, args.seconds)
        compiles = server.app.state.health_report()["compiles_while_serving"]
        window = (measured["window_start"], measured["window_end"])
        latencies = sorted(latency for sent, latency in stream.stats.recent_latencies if window[0] <= sent < window[1])
        times = [times for times in stream.stats.recent_times if window[0] <= times.sent < window[1]]
        final = stream.stats.snapshot()
        return {**measured, "latencies": latencies, "times": times, "final": final, "compiles_while_serving": compiles}


def stage_summary(frames: list[FrameTimes], name: str = "") -> dict:
    """The server's stages for `frames`: each one's median ms (`stages_ms_p50`), and the median of everything but
    the model (`outside_model_ms_p50`: a frame's latency less its model time and its hold for the sound, which is
    chosen, not lost; the hold is a stage of its own); None without frames."""
    if not frames:
        return {f"stages_ms_p50{name}": dict.fromkeys(STAGES), f"outside_model_ms_p50{name}": None}
    outside = statistics.median(times.latency - times.model_seconds - times.stages()["hold"] for times in frames)
    return {
        f"stages_ms_p50{name}": {stage: round(seconds * 1000, 1) for stage, seconds in stage_medians(frames).items()},
        f"outside_model_ms_p50{name}": round(outside * 1000, 1),
    }


def fixed_size_params(args: argparse.Namespace) -> dict:
    """The benchmark's steps and strength at one fixed processing size, unpaced (a target no model reaches)."""
    return {
        "steps": args.steps,
        "strength": args.strength,
        "max_resolution": args.size,
        "min_resolution": args.size,
        "target_fps": 60,
    }


class BenchServer:
    """The web app on a free 127.0.0.1 port in this process, and loopback viewers in processes of their own.

    The viewer runs apart, as a real one would: in this process its RTP work would compete with the server's
    event loop for the GIL and charge the server for the client's costs.
    """

    def __init__(self, model: ModelComponents, compile_sizes: tuple[tuple[int, int], ...] | None = None) -> None:
        """`compile_sizes`: serve the model compiled (`--compile`), with these processing sizes made at start."""
        config = ServerConfig(max_streams=1, compile=compile_sizes is not None, compile_sizes=compile_sizes)
        self.app = create_app(model, config)
        self.port = free_port()
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, ws="websockets-sansio", log_level="warning", lifespan="on"
            )
        )
        self._serving: asyncio.Task | None = None

    async def __aenter__(self) -> BenchServer:
        self._serving = asyncio.create_task(self._server.serve(), name="bench-server")
        for _ in range(600):  # uvicorn exposes no start event; poll for at most 30 s
            if self._server.started or self._serving.done():
                break
            await asyncio.sleep(0.05)
        if not self._server.started:
            await self.__aexit__()
            raise RuntimeError(f"the benchmark server did not start on 127.0.0.1:{self.port}")
        if self.app.state.health_report()["compile"] != "off":  # measured frames never wait for a compile
            await self.app.state.compiled_at_start.wait()
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._server.should_exit = True
        if self._serving is not None:
            await self._serving

    async def start_viewer(self, size: int, params: dict, warmup: float, seconds: float):
        return await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "server.bench.loopback", f"ws://127.0.0.1:{self.port}/ws", "--size", str(size)),
            *("--params", json.dumps(params), "--warmup", str(warmup), "--seconds", str(seconds)),
            stdout=asyncio.subprocess.PIPE,
        )

    async def viewer_result(self, viewer, seconds: float) -> dict:
        output, _ = await asyncio.wait_for(viewer.communicate(), timeout=seconds + 180)
        if viewer.returncode != 0:
            raise RuntimeError(f"the loopback viewer failed (exit {viewer.returncode})")
        result = json.loads(output.decode().strip().splitlines()[-1])
        if result["errors"]:
            raise RuntimeError(f"the server reported errors during the run: {result['errors']}")
        return result

    async def first_stream(self, timeout: float = 120):
        """The viewer's stream, held so that its stats outlive its removal from the registry when it ends."""
        registry = self.app.state.registry
        deadline = time.monotonic() + timeout
        while not len(registry):
            if time.monotonic() > deadline:
                raise RuntimeError("the loopback viewer never started a stream")
            await asyncio.sleep(0.05)
        return next(iter(registry))


def main(args: argparse.Namespace) -> dict:
    restrict_ice_to_loopback()
    model = load_model(args.model, device=args.device)
    threads = reserve_a_core_for_media(model.device)  # as `lcmlive serve` does
    compile_seconds = None
    if args.compile:  # compiled before the pipeline alone is measured, which then runs compiled too
        compile_seconds = compile_model(model).warm((args.size, args.size))
    # The pipeline alone, with the serving thread budget, before and after the run: a shared machine drifts.
    before = pipeline_only(model, args)
    run = asyncio.run(loopback_run(model, args))
    frame_seconds = statistics.median(before + pipeline_only(model, args))
    latencies = run["latencies"]
    if not latencies:
        raise RuntimeError("no stylised frame arrived during the measured window")
    p50 = statistics.median(latencies) * 1000
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] * 1000
    pipeline_fps = 1 / frame_seconds
    final = run["final"]
    result = {
        "mode": "e2e",
        "model": args.model,
        "device": str(model.device),
        "size": args.size,
        "steps": args.steps,
        "strength": args.strength,
        "seconds": args.seconds,
        "model_threads": threads,
        "compile": args.compile,
        "compile_seconds": None if compile_seconds is None else round(compile_seconds, 1),
        "compiles_while_serving": run["compiles_while_serving"],
        "pipeline_fps": round(pipeline_fps, 3),
        "pipeline_ms": round(frame_seconds * 1000, 2),
        "delivered_fps": round(run["delivered_fps"], 3),
        "e2e_ratio": round(run["delivered_fps"] / pipeline_fps, 3),
        "latency_p50_ms": round(p50, 1),
        "latency_p95_ms": round(p95, 1),
        "latency_over_model_ms": round(p50 - frame_seconds * 1000, 1),
        "dropped_in": final["dropped_in"],
        "dropped_out": final["dropped_out"],
        **stage_summary(run["times"]),
    }
    print(
        f"e2e loopback: model {args.model} on {model.device}, {args.size}x{args.size}, steps {args.steps}, "
        f"strength {args.strength}, 30 fps camera, {args.seconds:.0f} s measured, model on {threads} thread(s)"
    )
    if compile_seconds is not None:
        compiles = run["compiles_while_serving"]
        print(f"  compiled (UNet, VAE decoder) in {compile_seconds:.1f} s; compiles while serving: {compiles}")
    print(f"  pipeline alone     {pipeline_fps:8.2f} fps  ({frame_seconds * 1000:.1f} ms/frame)")
    print(f"  delivered          {run['delivered_fps']:8.2f} fps  (e2e_ratio {result['e2e_ratio']:.3f})")
    print(f"  latency p50 / p95  {p50:8.1f} / {p95:.1f} ms  (last packet in -> packet to the sender)")
    stages = ", ".join(f"{stage} {ms}" for stage, ms in result["stages_ms_p50"].items())
    print(f"  server stages p50 (ms): {stages}; all but the model {result['outside_model_ms_p50']}")
    print(f"  stale camera frames dropped: {final['dropped_in']}")
    return result
