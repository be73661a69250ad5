"""`lcmlive bench --viewers 1,4`: what more viewers of one stream cost the server outside the model.

A stream encodes once per codec and every viewer's sender only packetises the same packets, so a fourth viewer
should cost sending, not encoding. The measure: the server's CPU seconds per output frame outside the model
(decoding the camera, encoding, packetising, encrypting, sending) — the whole process's CPU time minus that of the
model's threads: the engine thread and its helpers (see model_threads.py), so that the measure is the same on 2
cores (one model thread) as on 32 (31). The publisher (WHIP) and the viewers (WHEP) run in processes of their own,
so their work is not charged to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from pipelines import ModelComponents, load_model

from ..engine import reserve_a_core_for_media
from ..media.ice import restrict_ice_to_loopback
from .e2e import BenchServer, fixed_size_params
from .model_threads import ModelThreads, helper_pool_sizes, native_thread_ids, start_helper_pools

WARMUP_SECONDS = 4.0
STREAM = "bench-viewers"


def parse_counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"--viewers takes viewer counts such as 1,4; got {value!r}")
    return counts


async def clients(*arguments: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.bench.rtc_clients", *arguments, stdout=asyncio.subprocess.PIPE
    )


async def finished(process: asyncio.subprocess.Process, timeout: float) -> dict:
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    if process.returncode != 0:
        raise RuntimeError(f"a benchmark client failed (exit {process.returncode})")
    return json.loads(output.decode().strip().splitlines()[-1])


async def measure_count(server: BenchServer, model_threads: ModelThreads, stream, count: int, seconds: float) -> dict:
    """Serve `count` viewers; the server's CPU per output frame over `seconds` after a warm-up."""
    url = f"http://127.0.0.1:{server.port}/whep/{STREAM}"
    viewers = await clients("whep", url, "--count", str(count), "--seconds", str(WARMUP_SECONDS + seconds + 1))
    deadline = time.monotonic() + 60
    while len(stream.viewers) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(stream.viewers)} of {count} viewers joined within a minute")
        await asyncio.sleep(0.1)
    await asyncio.sleep(WARMUP_SECONDS)
    feed, stats = stream.picture, stream.stats

    def mark() -> tuple[float, float, int, int, float]:
        return time.process_time(), model_threads.cpu_seconds(), stats.frames_out, feed.encodes, feed.encode_seconds

    before = mark()
    await asyncio.sleep(seconds)
    after = mark()
    received = (await finished(viewers, seconds + 60))["received"]
    process_cpu, model_cpu, frames, encodes, encode_seconds = (a - b for a, b in zip(after, before, strict=True))
    frames = max(frames, 1)
    return {
        "viewers": count,
        "frames_out": frames,
        "fps_out": round(frames / seconds, 2),
        "encodes_per_frame": round(encodes / frames, 3),
        "encode_ms_per_frame": round(encode_seconds / frames * 1000, 2),
        "server_cpu_ms_per_frame": round(process_cpu / frames * 1000, 2),
        "model_cpu_ms_per_frame": round(model_cpu / frames * 1000, 2),
        "outside_model_cpu_ms_per_frame": round((process_cpu - model_cpu) / frames * 1000, 2),
        "frames_received_per_viewer": received,
    }


async def viewers_run(
    model: ModelComponents, args: argparse.Namespace, counts: list[int], threads_before: set[int]
) -> tuple[list[dict], str]:
    async with BenchServer(model) as server:
        engine = server.app.state.engine
        # The helpers are found now, before the publisher: the media's codecs may start native threads of their own
        # once packets flow, and those are outside the model.
        await engine.call(start_helper_pools)
        model_threads = ModelThreads(engine.cpu_seconds, threads_before)
        # The publisher runs until it is stopped below, within the longest each count may take (its viewers' minute
        # to join and minute to report): on the shared 2-core machine a tighter budget ran out before the last count
        # was measured, the stream ended, and the run measured a stream without a camera.
        total = len(counts) * (WARMUP_SECONDS + 2 * args.seconds + 120) + 60
        url = f"http://127.0.0.1:{server.port}/whip/{STREAM}"
        publisher = await clients("whip", url, "--size", str(args.size), "--seconds", str(total))
        try:
            stream = await server.first_stream()
            await stream.set_params(fixed_size_params(args), front_end="bench")
            runs = [await measure_count(server, model_threads, stream, count, args.seconds) for count in counts]
            if publisher.returncode is not None:
                raise RuntimeError(f"the WHIP publisher ended (exit {publisher.returncode}) before the measurement")
            return runs, model_threads.described()
        finally:
            if publisher.returncode is None:
                publisher.terminate()
            await publisher.wait()


def main(args: argparse.Namespace) -> dict:
    counts = parse_counts(args.viewers)
    restrict_ice_to_loopback()
    threads_before = native_thread_ids()
    model = load_model(args.model, device=args.device)
    threads = reserve_a_core_for_media(model.device)
    runs, model_threads = asyncio.run(viewers_run(model, args, counts, threads_before))
    model_cpu_counted = f"{model_threads} ({helper_pool_sizes()})"
    first, last = runs[0], runs[-1]
    ratio = last["outside_model_cpu_ms_per_frame"] / max(first["outside_model_cpu_ms_per_frame"], 1e-9)
    print(
        f"viewers: model {args.model} on {model.device} ({threads} model thread(s)), {args.size}x{args.size}, "
        f"steps {args.steps}, WHIP publisher and WHEP viewers in processes of their own, {args.seconds:.0f} s each"
    )
    print(f"  the model's CPU seconds, left out: {model_cpu_counted}")
    print(f"  {'viewers':>7}{'fps out':>9}{'encodes/frame':>15}{'encode ms':>11}{'outside-model CPU ms/frame':>28}")
    for run in runs:
        print(
            f"  {run['viewers']:>7}{run['fps_out']:>9.2f}{run['encodes_per_frame']:>15.2f}"
            f"{run['encode_ms_per_frame']:>11.2f}{run['outside_model_cpu_ms_per_frame']:>28.2f}"
        )
    print(f"  fanout_cost_ratio ({last['viewers']} viewers over {first['viewers']}): {ratio:.3f}")
    return {
        "mode": "viewers",
        "model": args.model,
        "device": str(model.device),
        "size": args.size,
        "steps": args.steps,
        "seconds": args.seconds,
        "model_threads": threads,
        "model_cpu_counted": model_cpu_counted,
        "runs": runs,
        "encode_ms_per_frame": {str(run["viewers"]): run["encode_ms_per_frame"] for run in runs},
        "fanout_cost_ratio": round(ratio, 3),
    }
