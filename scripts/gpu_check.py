"""scripts/gpu-check: every GPU measurement of the project in one run (pytest -m cuda, then the benchmarks), each
step a subprocess with a time limit, into one JSON report and one table; `--dry-run` runs the same steps on the CPU
with a tiny model and the smallest settings, so that CI keeps the script working without a GPU."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = Path("artifacts/gpu-report.json")
# The whole run on one H100, environment probe included: each step may run until the sum of the limits of the
# steps up to it (its own limit plus what the steps before it left unused), so the run ends within this.
BUDGET_SECONDS = 480
PROBE_SECONDS = 20  # nvidia-smi, and a Python that imports torch and asks CUDA for the device's name
DRY_RUN_STEP_SECONDS = 300  # the dry run only proves the steps pass; a step that hangs in CI stops here
TAIL_CHARS = 3000
# The dry run measures nothing, so its processes take one thread each: on a busy 2-core machine two OpenMP threads
# spin against each other (the temporal step took 49 s of CPU with 2 threads, 1.9 s with 1, here at load 9).
DRY_RUN_ENV = {"OMP_NUM_THREADS": "1"}
# ... and run two at a time, one a core: the steps' imports (6-7 s of CPU each, 14 processes with the benches' own
# clients) are most of the dry run's time. On the GPU the steps run one at a time, as they measure.
DRY_RUN_PARALLEL = 2
RUNNING: set[subprocess.Popen] = set()  # the steps running now, stopped with the check (Ctrl-C, SIGTERM)
# `bench --temporal` measures ten smoothing settings, two more strengths and a second clip: about 1400 frames, some
# 63 s on the H100 by the estimate below, for one figure that means anything on random weights, fps_ratio (in the
# dry run 29 s of CPU against this step's 9). This runs the bench's own measurement of that figure alone: temporal
# smoothing off and at its default taking turns frame by frame on the moving clip, 45 frames each, with the bench's
# arguments and defaults (256x256, 2 steps).
TEMPORAL_FPS_RATIO = """
import argparse, json, sys
from pipelines import load_model
from server.bench import temporal
from server.bench.command import add_arguments
parser = argparse.ArgumentParser()
add_arguments(parser)
args = parser.parse_args(sys.argv[1:])
args.size, args.steps = args.size or 256, args.steps or 2
model = load_model(args.model, device=args.device)
chosen = next(s for s in temporal.settings() if s.name == f"temporal_smoothing_{temporal.DEFAULT_LEVEL}")
ratio = temporal.interleaved_fps_ratio(model, chosen, args, args.strength)
context = {"bench": "temporal", "model": args.model, "device": str(model.device), "size": args.size}
print(json.dumps({**context, "steps": args.steps, "fps_ratio": round(ratio, 3)}))
"""


@dataclass(frozen=True)
class Step:
    """One measurement: its name, the arguments on the GPU and in the dry run, its limit on the GPU (seconds), and
    the figures the table shows, taken from the result (the bench's JSON line, or pytest's counts)."""

    name: str
    gpu: list[str]
    dry: list[str]
    seconds: float
    figures: Callable[[dict], dict]
    pytest: bool = False
    runs: str | None = None  # Python source run with the arguments instead of `lcmlive bench`


def pick(*keys: str) -> Callable[[dict], dict]:
    """The table's figures: these keys of the bench's JSON (None where a bench no longer reports one)."""
    return lambda result: {key: result.get(key) for key in keys}


def streams_figures(result: dict) -> dict:
    runs = result.get("runs") or []
    batched = {f"batched_fps_{run.get('streams')}": run.get("batched_fps") for run in runs}
    return {"batch_gain": result.get("batch_gain"), **batched}


def viewers_figures(result: dict) -> dict:
    runs = result.get("runs") or []
    fps = {f"fps_out_{run.get('viewers')}": run.get("fps_out") for run in runs}
    return {"fanout_cost_ratio": result.get("fanout_cost_ratio"), **fps}


def plan() -> list[Step]:
    """The steps, in order. GPU sizing (an estimate: no GPU has run this yet): a bench process starts in about 8 s
    (its imports take 6-7 s of CPU on this shared 2-core machine, about half on a server core; then CUDA, sd15-arch
    built on the device, cuDNN's first calls); an SD1.5 UNet step in fp16 eager on an H100 takes 15-25 ms at 512x512,
    the VAE about 10 ms to encode and 20 ms to decode; at 256x256 a UNet call is bound by kernel launches, about
    12 ms. Each limit is about 1.5x its estimate; what a step leaves unused goes to the steps after it, the compile
    last of all. The dry run: `tiny-random` on the CPU at 64x64, one frame where a bench takes frames."""
    model = ["--model", "sd15-arch", "--device", "cuda"]
    tiny = ["--model", "tiny-random", "--device", "cpu", "--size", "64"]
    one_frame = ["--frames", "1", "--warmup", "0"]
    steps = [
        # The cuda tests: sd15-arch at 512 built twice, a few frames each, the tiny model's fp16 parity, the
        # executor's cases on CUDA; collecting the whole suite takes about 13 s of CPU here. Estimate 25-30 s.
        # The dry run collects them (each imports and is collected on the CPU), running none.
        Step(
            "pytest -m cuda",
            ["-m", "cuda", "-q", "tests"],
            ["-m", "cuda", "-q", "--collect-only", "tests"],
            45,
            lambda result: result,
            pytest=True,
        ),
    ]
    for steps_per_frame, seconds in ((1, 25), (2, 25), (4, 30)):
        # Both ways interleaved, 30 measured frames and 3 warm-up: the stream way 1 encode + k UNet steps + 1
        # decode, 55 + 20k ms; the guide's way about 20 ms more (PIL, the prompt encoded per call). 1 step: 8 + 33 x
        # 0.17 = 14 s; 2: 15 s; 4: 8 + 33 x 0.29 = 18 s.
        count = ["--steps", str(steps_per_frame)]
        steps.append(
            Step(
                f"pipeline {steps_per_frame} step{'s' if steps_per_frame > 1 else ''}",
                [*model, "--size", "512", *count, "--frames", "30", "--warmup", "3"],
                [*tiny, *count, *one_frame],
                seconds,
                pick("stream_fps", "naive_fps", "speedup", "stream_p95_ms", "overhead_ratio"),
            )
        )
    steps += [
        # The executor against one frame at a time, at 1 step (where the copies weigh most): the pipeline bench's
        # 14 s, then 2 x 30 frames back to back at about 75 ms: 19 s.
        Step(
            "double buffer",
            [*model, "--size", "512", "--steps", "1", "--frames", "30", "--warmup", "3", "--double-buffer"],
            [*tiny, "--steps", "1", "--frames", "3", "--warmup", "0", "--double-buffer"],
            30,
            pick("sequential_fps", "double_buffered_fps", "double_buffer_speedup"),
        ),
        # 256x256, 2 steps. Per count, 3 rounds x 2 ways of a fresh engine's fixed 2 s warm-up plus a 0.5 s window
        # (--seconds 1.5 split in 3): 4 counts x 6 x 2.5 s = 60 s, + 8 s = 68 s. The windows are short (10-25 frames
        # each at 20-50 fps); the warm-ups, fixed by the bench, take most of the time.
        Step(
            "streams 1,2,4,8",
            [*model, "--streams", "1,2,4,8", "--seconds", "1.5"],
            [*tiny, "--streams", "2", "--seconds", "0.3"],
            75,
            streams_figures,
        ),
        # 256x256, 2 steps, the bench's own 20 frames a way (4 ways) at about 40 ms, 100 style switches, two random
        # LoRAs made and loaded: about 20 s.
        Step(
            "styles",
            [*model, "--styles"],
            [*tiny, "--styles", *one_frame],
            35,
            pick("fps_none", "fps_unfused", "fps_fused", "switch_ms"),
        ),
        # The temporal bench's fps_ratio alone (see TEMPORAL_FPS_RATIO): 256x256, 2 steps, 90 frames at about
        # 45 ms (2 UNet calls, the VAE, the optical flow): 4 s + 8 s.
        Step(
            "temporal fps_ratio",
            ["--model", "sd15-arch", "--device", "cuda"],
            [*tiny, "--steps", "1"],
            25,
            pick("fps_ratio"),
            runs=TEMPORAL_FPS_RATIO,
        ),
        # 256x256, 2 steps: the pipeline alone 2 x 22 frames, the server, a viewer process (its imports, 3 s),
        # the bench's 3 s warm-up and 6 s measured: about 25 s.
        Step(
            "e2e",
            [*model, "--e2e", "--seconds", "6"],
            [*tiny, "--e2e", "--seconds", "1", *one_frame],
            30,
            pick("pipeline_fps", "delivered_fps", "e2e_ratio", "latency_p50_ms", "latency_p95_ms"),
        ),
        # 256x256, 2 steps: a WHIP publisher process, then per count a WHEP process (3 s of imports), the joins,
        # the bench's 4 s warm-up and 3 s measured: 8 + 3 + 2 x 11 = 33 s.
        Step(
            "viewers 1,4",
            [*model, "--viewers", "1,4", "--seconds", "3"],
            [*tiny, "--viewers", "1", "--seconds", "1"],
            40,
            viewers_figures,
        ),
        # Last, as it takes what the others left: 512x512, 2 steps. The pipeline bench (22 frames a way, 9 s),
        # 20 frames eager, torch.compile of the UNet and the VAE decoder for this one size in reduce-overhead
        # mode (inductor with CUDA graphs; SD1.5's UNet is commonly reported at 40-90 s to compile on a server CPU,
        # the decoder less), 20 frames compiled: 80-130 s. Its own limit is the 100 s the others leave of 480;
        # with the others at their estimates (256 s in all, the probe's 4 s included) it gets 224 s.
        Step(
            "compiled vs eager",
            [*model, "--size", "512", "--steps", "2", "--frames", "20", "--warmup", "2", "--compile"],
            [*tiny, "--steps", "1", *one_frame, "--compile"],
            100,
            pick("eager_fps", "compiled_fps", "compile_speedup", "compile_seconds", "recompiles_after_warming"),
        ),
    ]
    return steps


@dataclass
class Outcome:
    status: str  # passed, failed, timed out, not available
    seconds: float
    returncode: int | None
    result: dict = field(default_factory=dict)
    error_tail: str | None = None


def run_step(
    command: list[str], limit: float, log: Path, env: dict[str, str] | None = None
) -> tuple[int | None, str, str, float]:
    """The command in a session of its own, stopped with its children (viewer processes, compile workers) after
    `limit` seconds: (exit status or None when stopped, stdout, stderr, seconds)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=err, text=True, start_new_session=True
        )
        RUNNING.add(process)
        try:
            returncode: int | None = process.wait(timeout=max(limit, 1.0))
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            # Its session whether it overran, ended leaving a child (a bench's viewer, a compile worker) or was
            # interrupted (Ctrl-C here reaches only this process: the step runs in a session of its own).
            stop_group(process)
            RUNNING.discard(process)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(command)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    return returncode, stdout, stderr, seconds


def stop_group(process: subprocess.Popen) -> None:
    """Stop a step's session, its children too: SIGTERM, then SIGKILL 10 s later."""
    for sent, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def outcome(step: Step, returncode: int | None, stdout: str, stderr: str, seconds: float) -> Outcome:
    tail = (stderr.strip() or stdout.strip())[-TAIL_CHARS:]
    if returncode is None:
        return Outcome("timed out", seconds, None, error_tail=tail)
    if step.pytest:
        counts = pytest_summary(stdout)
        status = "passed" if returncode == 0 else "failed"
        return Outcome(
            status, seconds, returncode, counts, None if status == "passed" else stdout.strip()[-TAIL_CHARS:]
        )
    if returncode != 0:
        # A bench without --compile (an older checkout) refuses the flag: a step not available there, not a failure.
        if "unrecognized arguments: --compile" in stderr:
            return Outcome("not available", seconds, returncode, error_tail="this bench has no --compile flag")
        return Outcome("failed", seconds, returncode, error_tail=tail)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return Outcome("failed", seconds, returncode, error_tail="no JSON result line\n" + tail)
    return Outcome("passed", seconds, returncode, result)


def pytest_summary(stdout: str) -> dict:
    """pytest's counts from its last lines: `3 passed, 15 skipped, 531 deselected in 20.1s`, or with
    --collect-only `18/549 tests collected (531 deselected) in 12.5s`."""
    counts: dict[str, int] = {}
    for line in stdout.strip().splitlines()[-3:]:
        collected = re.search(r"(\d+)(?:/\d+)? tests? collected", line)
        if collected:
            counts["collected"] = int(collected.group(1))
        for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line):
            counts["errors" if word.startswith("error") else word] = int(number)
    return counts


def environment(dry_run: bool) -> dict:
    """torch, CUDA, driver and GPU, asked in processes of their own (this one never initialises CUDA)."""
    probe = (
        "import json, platform, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,\n"
        "    'torch_cuda': torch.version.cuda, 'cuda_available': cuda,\n"
        "    'cudnn': torch.backends.cudnn.version() if cuda else None,\n"
        "    'gpu_count': torch.cuda.device_count() if cuda else 0,\n"
        "    'gpu': torch.cuda.get_device_name(0) if cuda else None}))\n"
    )
    found: dict = {"platform": sys.platform, "dry_run": dry_run}
    for package in ("lcmlive", "diffusers", "transformers", "aiortc"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["commit"] = quiet(["git", "rev-parse", "HEAD"], 5)
    smi = quiet(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], 5)
    found["nvidia_smi"] = smi
    found["driver"] = smi.splitlines()[0].rsplit(",", 1)[-1].strip() if smi else None
    torch_said = quiet([sys.executable, "-c", probe], PROBE_SECONDS - 10)
    found.update(json.loads(torch_said.splitlines()[-1]) if torch_said else {"torch": None, "cuda_available": False})
    if not found.get("gpu") and smi:
        found["gpu"] = smi.splitlines()[0].rsplit(",", 1)[0].strip()
    return found


def quiet(command: list[str], seconds: float) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def command_for(step: Step, dry_run: bool) -> list[str]:
    arguments = step.dry if dry_run else step.gpu
    if step.pytest:
        return [sys.executable, "-m", "pytest", *arguments]
    if step.runs is not None:
        return [sys.executable, "-c", step.runs, *arguments]
    return [sys.executable, "-m", "server.cli", "bench", *arguments, "--json"]


def table(entries: list[dict]) -> str:
    rows = [f"{'step':<20}{'status':<15}{'seconds':>8}  figures"]
    for entry in entries:
        figures = ", ".join(f"{key} {format_figure(value)}" for key, value in entry["figures"].items())
        seconds = f"{entry['seconds']:.1f}" if entry["seconds"] is not None else "-"
        rows.append(f"{entry['name']:<20}{entry['status']:<15}{seconds:>8}  {figures}")
    return "\n".join(rows)


def format_figure(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def execute(index: int, step: Step, limit: float, own_limit: float, dry_run: bool, logs: Path) -> dict:
    """Run one step within `limit` seconds; its entry in the report."""
    command = command_for(step, dry_run)
    slug = re.sub(r"[^a-z0-9]+", "-", step.name.lower()).strip("-")
    env = {**os.environ, **DRY_RUN_ENV} if dry_run else None
    returncode, stdout, stderr, seconds = run_step(command, limit, logs / f"{index:02d}-{slug}.log", env)
    done = outcome(step, returncode, stdout, stderr, seconds)
    print(f"[{index}] {step.name}: {done.status} in {done.seconds:.1f} s (limit {limit:.0f} s)", flush=True)
    return {
        "name": step.name,
        "status": done.status,
        "seconds": round(done.seconds, 1),
        "limit_seconds": round(limit, 1),
        "own_limit_seconds": own_limit,
        "command": command,
        "returncode": done.returncode,
        "figures": step.figures(done.result) if done.status == "passed" else {},
        "result": done.result,
        "error_tail": done.error_tail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__)
    parser.add_argument(
        "--dry-run", action="store_true", help="the same steps on the CPU with tiny-random at the smallest settings"
    )
    parser.add_argument("--report", type=Path, default=REPORT, help=f"where the JSON report goes (default {REPORT})")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    report_path = args.report if args.report.is_absolute() else ROOT / args.report
    logs = report_path.parent / f"{report_path.stem}-logs"
    steps = plan()
    found = environment(args.dry_run)
    if not args.dry_run and not found.get("cuda_available"):
        print(
            "scripts/gpu-check: torch sees no CUDA device here (torch "
            f"{found.get('torch')}, CUDA build {found.get('torch_cuda')}); --dry-run runs the steps on the CPU",
            file=sys.stderr,
        )
        return 2
    report: dict = {
        "check": "scripts/gpu-check" + (" --dry-run" if args.dry_run else ""),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_seconds": DRY_RUN_STEP_SECONDS if args.dry_run else BUDGET_SECONDS,
        "environment": found,
        "steps": [],
    }
    entries: dict[int, dict] = {}

    def record(index: int, entry: dict) -> None:
        # Written after every step: a run stopped half-way still leaves what it measured.
        entries[index] = entry
        report["steps"] = [entries[i] for i in sorted(entries)]
        report["seconds"] = round(time.monotonic() - started, 1)
        report["passed"] = all(e["status"] in ("passed", "not available") for e in report["steps"])
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")

    pool = ThreadPoolExecutor(DRY_RUN_PARALLEL)
    try:
        if args.dry_run:
            # Last step first: the longest ones (the compile, the viewers' processes, the loopback) come last in the
            # plan, and started first they do not trail the run alone on one core.
            running = {
                pool.submit(execute, index, step, DRY_RUN_STEP_SECONDS, DRY_RUN_STEP_SECONDS, True, logs): index
                for index, step in reversed(list(enumerate(steps, 1)))
            }
            for future in as_completed(running):
                record(running[future], future.result())
        else:
            # Each step may run until the sum of the limits up to it: what one leaves unused goes to the next.
            deadline = started + PROBE_SECONDS
            for index, step in enumerate(steps, 1):
                deadline += step.seconds
                record(index, execute(index, step, deadline - time.monotonic(), step.seconds, False, logs))
    finally:  # stopped (Ctrl-C, SIGTERM): no step starts after this, and the running ones stop with their children
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(RUNNING):
            stop_group(process)
    print()
    print(table(report["steps"]))
    gpu = found.get("gpu") or "no GPU"
    print(
        f"\n{gpu}; torch {found.get('torch')} (CUDA {found.get('torch_cuda')}), driver {found.get('driver')}; "
        f"{report['seconds']:.0f} s in all; report {report_path}, logs {logs}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
