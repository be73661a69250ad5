"""`lcmlive bench --av`: sound against picture at a WHEP viewer, from a flash and a beep sent together over WHIP."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time

import numpy as np

from pipelines import ModelComponents, load_model

from ..engine import reserve_a_core_for_media
from ..media.ice import restrict_ice_to_loopback
from .adaptive import SLOWDOWN, SlowedStylise
from .e2e import BenchServer, fixed_size_params, pipeline_only, stage_summary
from .flash import FIRST_FLASH_SECONDS, FLASH_PERIOD_SECONDS, BeepTrack, FlashCard, FlashClock
from .rtc_clients import WhepViewer, WhipPublisher, http
from .tone import SAMPLE_RATE

STREAM = "av"
# The camera's rates to choose from (each puts a frame on every flash): the highest the model keeps up with after
# the 2x slowdown too, so that every camera frame is processed and a flash's first frame is the one shown. Not
# below 2 fps: at 1 fps the server's and the viewer's receivers each hold a frame 1 s (see `run_clients`), a
# flash's picture came 1.4-1.9 s after it, and the next flash's, 2 s later, could not be told from it.
CAMERA_RATES = (30.0, 15.0, 10.0, 5.0, 2.5, 2.0)
# The server decodes, converts and encodes beside the model, and the clients' process shares the CPU: with the
# model's time alone x 1.5 to spare, 256 px chose 2.5 fps here (model 150 ms alone, 175 ms a frame in the server,
# 337 ms slowed) and no camera frame was dropped; while other work took the machine (load 7 on 2 cores) the slowed
# model took 595 ms and 14 were.
HEADROOM = 1.5
CALIBRATION_FRAMES = 6
# After the last flash: time for its picture and sound to arrive (latency was under 1 s in every run).
TAIL_SECONDS = 2.0
SETTLE_AFTER_SLOWDOWN_SECONDS = 2.0  # EBU R37 within 2 s of a latency change: flashes from then on count
EARLY_LIMIT_MS, LATE_LIMIT_MS = -40.0, 60.0  # EBU R37
AUDIO_PREFETCH = 4  # aiortc's audio receiver: JitterBuffer(capacity=16, prefetch=4)
ENVELOPE_SAMPLES = 48  # 1 ms blocks of the received sound
QUIET_BEFORE_ONSET_SECONDS = 0.1
# Mean luma, 0-255, of the stylised bright card over the dark one: 31 against 150 at 256 px, 38 against 154 at 64 px
# (tiny, strength 0.5, 2 steps; checked as PNGs: the card's frame and its inside keep their levels).
MIN_FLASH_CONTRAST = 40.0
SAMPLE_EVERY_SECONDS = 0.25


# ---- the clients' side: publish, watch, and find the flashes and beeps in what arrived ----


async def run_clients(whip: str, whep: str, size: int, fps: float, seconds: float) -> dict:
    """Publish the flashing card with its beep for `seconds` of media time while watching the stream; what was sent
    when, and where the picture's flashes and the sound's beeps arrived."""
    clock = FlashClock(fps)
    publisher = WhipPublisher(whip, camera=FlashCard(clock, size, size), sound=BeepTrack(clock))
    async with publisher, WhepViewer(whep, audio=True, sample_every=1) as viewer:
        await clock.wait_until(seconds)
    received = [arrival for arrival, _ in viewer.record.samples]
    lit, dark, bright = bright_frames([luma(picture) for _, picture in viewer.record.samples])
    turns = list(np.flatnonzero(lit[1:] & ~lit[:-1]) + 1)
    onsets, jitter = sound_onsets(viewer.sound)
    return {
        "start": clock.start,
        "video_sent": clock.video_sent,
        "audio_sent": clock.audio_sent,
        # aiortc's video receiver passes a frame on when the next one's first packet comes: frame k's packets had
        # all come when frame k - 1 was returned (measured on its packets: frame k - 1 returned 2.4 ms p50, 6 ms
        # p95 after frame k's first packet came, and 2.1 ms p50 after its last).
        "picture_edges": [received[k - 1] for k in turns],
        "picture_edges_decoded": [received[k] for k in turns],
        "sound_onsets": [wire for wire, _ in onsets],
        "sound_onsets_decoded": [decoded for _, decoded in onsets],
        "dark_luma": dark,
        "bright_luma": bright,
        "frames_received": len(received),
        "sound_frames_received": len(viewer.sound),
        "sound_arrival_jitter_ms": jitter,
    }


def luma(picture: np.ndarray) -> float:
    """Mean BT.601 luma of an rgb24 picture, 0-255."""
    return float(picture.reshape(-1, 3).astype(np.float32).mean(axis=0) @ np.array([0.299, 0.587, 0.114]))


def bright_frames(lumas: list[float]) -> tuple[np.ndarray, float, float]:
    """Which frames show the bright card (luma past the midpoint between the dark and the bright card's levels), and
    those levels. The card is dark 70% of the time and bright 30%: the 10th and the 95th percentile of the frames'
    luma are the two levels."""
    if len(lumas) < 10:
        raise RuntimeError(f"the viewer received {len(lumas)} frames: too few to find a flash")
    dark, bright = float(np.percentile(lumas, 10)), float(np.percentile(lumas, 95))
    if bright - dark < MIN_FLASH_CONTRAST:
        raise RuntimeError(f"no flash in the stylised picture: luma {dark:.0f} dark against {bright:.0f} bright")
    return np.asarray(lumas) > (dark + bright) / 2, round(dark, 1), round(bright, 1)


def sound_onsets(frames: list[tuple[float, np.ndarray]]) -> tuple[list[tuple[float, float]], dict]:
    """When each beep's onset arrived (at the viewer's socket, and decoded), and how steadily the sound arrived.

    Onsets are found by energy, not by frequency (the server's delay line may stretch the beep's pitch by up to
    1/16): the first 1 ms block whose RMS rises past a fifth of the way from the silence floor to the beeps' level,
    after 100 ms below it. A sample is decoded when `recv()` returns the frame holding it, plus its place in the
    frame (a player plays a frame's samples one after another from when it has it). aiortc's audio receiver passes
    a packet on when the 4th after it comes (measured: 0.5 ms p50, 19 ms p95 after it, on the busy 2-core CPU), so
    frame i's packet came when frame i - 4 was returned.

    The jitter: each frame's return less its place in the sound, above the least of that over the last 2 s (ms,
    p50 / p95 / max): how late `recv()` gave a frame against a steady clock, the uncertainty of both times.
    """
    if len(frames) <= AUDIO_PREFETCH:
        raise RuntimeError(f"the viewer received {len(frames)} frames of sound")
    mono = np.concatenate([samples.astype(np.float32).mean(axis=1) for _, samples in frames]) / 32768
    starts = np.cumsum([0] + [len(samples) for _, samples in frames])
    returned = np.array([arrival for arrival, _ in frames])
    blocks = len(mono) // ENVELOPE_SAMPLES
    envelope = np.sqrt(np.mean(mono[: blocks * ENVELOPE_SAMPLES].reshape(blocks, -1) ** 2, axis=1))
    floor, level = float(np.percentile(envelope, 50)), float(np.percentile(envelope, 99))
    loud = envelope > floor + 0.2 * (level - floor)
    quiet_blocks = round(QUIET_BEFORE_ONSET_SECONDS * SAMPLE_RATE / ENVELOPE_SAMPLES)
    onsets = []
    for block in np.flatnonzero(loud):
        sample = block * ENVELOPE_SAMPLES
        frame = int(np.searchsorted(starts, sample, side="right")) - 1
        if frame >= AUDIO_PREFETCH and not loud[max(0, block - quiet_blocks) : block].any():
            into = (sample - starts[frame]) / SAMPLE_RATE
            onsets.append((float(returned[frame - AUDIO_PREFETCH] + into), float(returned[frame] + into)))
    lags = returned - starts[:-1] / SAMPLE_RATE
    window_starts = np.searchsorted(returned, returned - 2.0)
    excess = 1000 * np.array([lags[i] - lags[first : i + 1].min() for i, first in enumerate(window_starts)])
    jitter = {
        "p50": round(float(np.percentile(excess, 50)), 1),
        "p95": round(float(np.percentile(excess, 95)), 1),
        "max": round(float(excess.max()), 1),
    }
    return onsets, jitter


def clients_main() -> None:
    """`python -m server.bench.av WHIP_URL WHEP_URL --size N --fps F --seconds S`: the clients, JSON out."""
    parser = argparse.ArgumentParser(description=clients_main.__doc__)
    parser.add_argument("whip")
    parser.add_argument("whep")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, required=True, help="media seconds to publish")
    args = parser.parse_args()
    restrict_ice_to_loopback()
    print(json.dumps(asyncio.run(run_clients(args.whip, args.whep, args.size, args.fps, args.seconds))))


# ---- the server's side: serve, slow the model half-way, pair what was sent with what arrived ----


def camera_fps(frame_seconds: float) -> float:
    """The highest of CAMERA_RATES whose frame interval holds the model's frame slowed, with headroom."""
    fitting = [fps for fps in CAMERA_RATES if 1 / fps >= SLOWDOWN * frame_seconds * HEADROOM]
    return max(fitting, default=CAMERA_RATES[-1])


async def av_run(
    model: ModelComponents, args: argparse.Namespace, fps: float, flashes: int, slowed_media: float
) -> dict:
    media_seconds = FIRST_FLASH_SECONDS + (flashes - 1) * FLASH_PERIOD_SECONDS + TAIL_SECONDS
    async with BenchServer(model) as server:
        base = f"http://127.0.0.1:{server.port}"
        clients = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "server.bench.av", f"{base}/whip/{STREAM}", f"{base}/whep/{STREAM}"),
            *("--size", str(args.size), "--fps", str(fps), "--seconds", str(media_seconds)),
            stdout=asyncio.subprocess.PIPE,
        )
        outcome = asyncio.create_task(clients.communicate(), name="av-clients")
        stream = await server.first_stream()
        # The stream's media clock starts about when it is registered (the publisher's tracks are pulled once
        # connected, a few ms later): the slowdown lands between two flashes either way.
        slowed_at = time.monotonic() + slowed_media
        reply = await http("PATCH", f"{base}/streams/{STREAM}", json.dumps(fixed_size_params(args)))
        if reply.status != 200:
            raise RuntimeError(f"the stream refused the bench's params: {reply.status} {reply.body}")
        executor = server.app.state.engine.executor
        trace: list[tuple[float, float | None, float | None]] = []  # (time, latency, sound delay)
        counts_at_slowdown = None
        while not outcome.done():
            now = time.monotonic()
            if now >= slowed_at and not isinstance(executor.stylise, SlowedStylise):
                counts_at_slowdown = frame_counts(stream.stats)
                slowed = SlowedStylise(executor.stylise, SLOWDOWN)
                await server.app.state.engine.call(lambda slowed=slowed: setattr(executor, "stylise", slowed))
            sound = stream.sound
            trace.append((now, stream.stats.recent_latency(), sound.delay if sound is not None else None))
            await asyncio.wait({outcome}, timeout=SAMPLE_EVERY_SECONDS)
        output, _ = outcome.result()
        if clients.returncode != 0:
            raise RuntimeError(f"the bench's WHIP/WHEP clients failed (exit {clients.returncode})")
        counts_at_end = frame_counts(stream.stats)
        sound = stream.sound
        if sound is None:
            raise RuntimeError("the server kept no sound for the stream")
        # Where the sound could lose a beep: packets the server's clock was too late to make, samples read before
        # they came, delays too far off to stretch to.
        glitches = {"packets_skipped": sound.packets_skipped, "underruns": sound.line.underruns}
        glitches |= {"jumps": sound.line.jumps, "packets_dropped": sound.packets_dropped}
    sent = json.loads(output.decode().strip().splitlines()[-1])
    return {
        **sent,
        "flashes": flashes,
        "slowed_at": slowed_at,
        "trace": trace,
        "counts_at_slowdown": counts_at_slowdown,
        "counts_at_end": counts_at_end,
        "sound_glitches": glitches,
        "server_latencies": list(stream.stats.recent_latencies),
        "server_times": list(stream.stats.recent_times),
    }


def frame_counts(stats) -> dict:
    """The stream's running counters (read without `snapshot`, which would reset the stats overlay's interval)."""
    return {
        "frames_in": stats.frames_in,
        "frames_processed": stats.frames_processed,
        "dropped_in": stats.dropped_in,
        "skipped": stats.skipped,
        "model_seconds": stats.model_seconds,
    }


def pair_flashes(run: dict) -> list[dict]:
    """Each flash sent, with the picture's turn to bright and the sound's onset that arrived first after it was sent
    (within a period): the sound's latency less the picture's (the offset) and the picture's latency, in ms (None
    where one was not seen). Arrived: at the viewer's socket; `_decoded`: returned decoded by aiortc's `recv()`."""
    flashes = []
    for index in sorted(int(key) for key in run["video_sent"] if int(key) < run["flashes"]):
        video_sent = run["video_sent"][str(index)]
        audio_sent = run["audio_sent"].get(str(index))
        flash = {
            "flash": index,
            "sent_s": round(video_sent - run["start"], 3),
            "phase": phase(video_sent, run["slowed_at"]),
            "sent_apart_ms": rounded((audio_sent - video_sent) * 1000 if audio_sent is not None else None),
        }
        for suffix in ("", "_decoded"):
            edge = first_within(run["picture_edges" + suffix], video_sent)
            onset = first_within(run["sound_onsets" + suffix], audio_sent)
            latency = (edge - video_sent) * 1000 if edge is not None else None
            sound_latency = (onset - audio_sent) * 1000 if onset is not None and audio_sent is not None else None
            offset = sound_latency - latency if latency is not None and sound_latency is not None else None
            flash |= {
                f"av_offset_ms{suffix}": rounded(offset),
                f"latency_ms{suffix}": rounded(latency),
                f"sound_latency_ms{suffix}": rounded(sound_latency),
            }
        flashes.append(flash)
    return flashes


def first_within(times: list[float], since: float | None) -> float | None:
    later = [t for t in times if since is not None and since < t < since + FLASH_PERIOD_SECONDS]
    return min(later) if later else None


def phase(sent: float, slowed_at: float) -> str:
    if sent < slowed_at:
        return "before"
    return "settling" if sent < slowed_at + SETTLE_AFTER_SLOWDOWN_SECONDS else "slowed"


def rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def phase_summary(run: dict) -> dict:
    """The server's side of each phase: its latency (arrival to departure, as the sound's delay line targets), the
    delay the line had against it, the model's time per frame and the camera frames it dropped."""
    slowed_at = run["slowed_at"]
    summary = {}
    for name, low, high in (("", 0.0, slowed_at), ("_slowed", slowed_at + SETTLE_AFTER_SLOWDOWN_SECONDS, math.inf)):
        latencies = [latency * 1000 for sent, latency in run["server_latencies"] if low <= sent < high]
        gaps = [
            (delay - target) * 1000
            for t, target, delay in run["trace"]
            if low <= t < high and None not in (target, delay)
        ]
        summary[f"server_latency_ms_p50{name}"] = percentile(latencies, 50)
        summary |= stage_summary([times for times in run["server_times"] if low <= times.sent < high], name)
        summary[f"sound_delay_minus_server_latency_ms_p50{name}"] = percentile(gaps, 50)
    start, middle, end = {}, run["counts_at_slowdown"] or run["counts_at_end"], run["counts_at_end"]
    for name, (first, last) in (("", (start, middle)), ("_slowed", (middle, end))):
        processed = last["frames_processed"] - first.get("frames_processed", 0)
        seconds = last["model_seconds"] - first.get("model_seconds", 0.0)
        summary[f"model_ms_per_frame{name}"] = round(seconds / processed * 1000, 1) if processed else None
        summary[f"camera_frames_dropped{name}"] = last["dropped_in"] - first.get("dropped_in", 0)
    return summary


def main(args: argparse.Namespace) -> dict:
    """Serve here (BenchServer); publish and watch from a process of their own (`python -m server.bench.av WHIP
    WHEP`), as real clients would. Per flash: the sound's latency less the picture's (positive: sound late) and the
    picture's glass-to-glass latency; half-way the model turns 2x slower (SlowedStylise), and the flashes from 2 s
    after that are reported apart."""
    flashes = max(2, round(args.seconds / FLASH_PERIOD_SECONDS))
    # Half-way, between two flashes: the one after it falls in the 2 s R37 allows to settle, the rest count.
    slowed_media = FIRST_FLASH_SECONDS + FLASH_PERIOD_SECONDS * (flashes // 2) - FLASH_PERIOD_SECONDS / 2
    restrict_ice_to_loopback()
    model = load_model(args.model, device=args.device)
    threads = reserve_a_core_for_media(model.device)  # as `lcmlive serve` does
    calibration = argparse.Namespace(
        size=args.size, steps=args.steps, strength=args.strength, frames=CALIBRATION_FRAMES, warmup=2
    )
    frame_seconds = statistics.median(pipeline_only(model, calibration))
    fps = camera_fps(frame_seconds)
    load_before = os.getloadavg()[0]
    run = asyncio.run(av_run(model, args, fps, flashes, slowed_media))
    load_after = os.getloadavg()[0]
    per_flash = pair_flashes(run)

    def measured(phase_name: str, key: str) -> list[float]:
        return [flash[key] for flash in per_flash if flash["phase"] == phase_name and flash[key] is not None]

    before, slowed = measured("before", "av_offset_ms"), measured("slowed", "av_offset_ms")
    counted = [flash["av_offset_ms"] for flash in per_flash if flash["phase"] != "settling"]
    result = {
        "mode": "av",
        "model": args.model,
        "device": str(model.device),
        "size": args.size,
        "steps": args.steps,
        "strength": args.strength,
        "seconds": args.seconds,
        "pipeline_ms": round(frame_seconds * 1000, 1),
        # The machine's 1-minute load average before and after: other work on a shared machine moves every number.
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "camera_fps": fps,
        "model_threads": threads,
        "slowdown": SLOWDOWN,
        "measured_at": "the viewer's socket (aiortc's receive holds taken out); *_decoded: returned by recv()",
        "flashes": len(per_flash),
        "flashes_seen": sum(flash["av_offset_ms"] is not None for flash in per_flash),
        "av_offset_ms_p5": percentile(before, 5),
        "av_offset_ms_p50": percentile(before, 50),
        "av_offset_ms_p95": percentile(before, 95),
        "latency_ms_p50": percentile(measured("before", "latency_ms"), 50),
        "latency_ms_p95": percentile(measured("before", "latency_ms"), 95),
        "av_offset_ms_p5_slowed": percentile(slowed, 5),
        "av_offset_ms_p50_slowed": percentile(slowed, 50),
        "av_offset_ms_p95_slowed": percentile(slowed, 95),
        "latency_ms_p50_slowed": percentile(measured("slowed", "latency_ms"), 50),
        "latency_ms_p95_slowed": percentile(measured("slowed", "latency_ms"), 95),
        "av_offset_ms_p50_decoded": percentile(measured("before", "av_offset_ms_decoded"), 50),
        "latency_ms_p50_decoded": percentile(measured("before", "latency_ms_decoded"), 50),
        "av_offset_ms_p50_slowed_decoded": percentile(measured("slowed", "av_offset_ms_decoded"), 50),
        "latency_ms_p50_slowed_decoded": percentile(measured("slowed", "latency_ms_decoded"), 50),
        "within_r37": all(o is not None and EARLY_LIMIT_MS <= o <= LATE_LIMIT_MS for o in counted),
        **phase_summary(run),
        "sound_arrival_jitter_ms": run["sound_arrival_jitter_ms"],
        "sound_glitches": run["sound_glitches"],
        "picture_turns_seen": len(run["picture_edges"]),
        "sound_onsets_heard": len(run["sound_onsets"]),
        "dark_luma": run["dark_luma"],
        "bright_luma": run["bright_luma"],
        "per_flash": per_flash,
    }
    print(
        f"av: model {args.model} on {model.device}, {args.size}x{args.size}, steps {args.steps}, strength "
        f"{args.strength}, H.264 + Opus camera at {fps:g} fps, {len(per_flash)} flashes, model "
        f"{SLOWDOWN}x slower from {slowed_media - FIRST_FLASH_SECONDS:.0f} s on, model on {threads} thread(s)"
    )
    print(f"  {'flash':>5} {'sent s':>7} {'phase':>9} {'offset ms':>10} {'latency ms':>11}  (decoded: offset, latency)")
    for flash in per_flash:
        print(
            f"  {flash['flash']:>5} {flash['sent_s']:>7.2f} {flash['phase']:>9} {flash['av_offset_ms']!s:>10} "
            f"{flash['latency_ms']!s:>11}  ({flash['av_offset_ms_decoded']}, {flash['latency_ms_decoded']})"
        )
    print(
        f"  before: offset p5/p50/p95 {result['av_offset_ms_p5']} / {result['av_offset_ms_p50']} / "
        f"{result['av_offset_ms_p95']} ms, latency p50/p95 {result['latency_ms_p50']} / {result['latency_ms_p95']} ms"
    )
    print(
        f"  slowed: offset p5/p50/p95 {result['av_offset_ms_p5_slowed']} / {result['av_offset_ms_p50_slowed']} / "
        f"{result['av_offset_ms_p95_slowed']} ms, latency p50/p95 {result['latency_ms_p50_slowed']} / "
        f"{result['latency_ms_p95_slowed']} ms"
    )
    print(f"  within EBU R37 (-40/+60 ms) throughout: {result['within_r37']}")
    print(f"  sound arrival jitter at the viewer (ms): {result['sound_arrival_jitter_ms']}")
    print(
        f"  seen {result['picture_turns_seen']} turns to bright, heard {result['sound_onsets_heard']} onsets; "
        f"the server's sound: {result['sound_glitches']}"
    )
    print(
        f"  server: latency p50 {result['server_latency_ms_p50']} / {result['server_latency_ms_p50_slowed']} ms "
        f"slowed, sound delay less it {result['sound_delay_minus_server_latency_ms_p50']} / "
        f"{result['sound_delay_minus_server_latency_ms_p50_slowed']} ms, camera frames dropped "
        f"{result['camera_frames_dropped']} / {result['camera_frames_dropped_slowed']}"
    )
    for name, label in (("", "before"), ("_slowed", "slowed")):
        stages = ", ".join(f"{stage} {ms}" for stage, ms in result[f"stages_ms_p50{name}"].items())
        outside = result[f"outside_model_ms_p50{name}"]
        print(f"  server stages p50 {label} (ms): {stages}; all but the model and the hold {outside}")
    return result


if __name__ == "__main__":
    clients_main()
