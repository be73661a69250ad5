"""Shared fixtures: the tiny offline models, built once per test session."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import ModelComponents, load_model
from pipelines.synthetic import moving_pattern
from server.bench.loopback import free_port

ROOT = Path(__file__).resolve().parent.parent


# Left out of the quick loop (`scripts/test.sh --quick` is `pytest -m "not slow"`) with the tests marked slow.
SLOW_KINDS = ("browser", "ray", "packaging")


def pytest_addoption(parser):
    parser.addoption(
        "--part",
        choices=("parallel", "serial"),
        help="run only the tests marked serial, or only the others (scripts/test.sh runs the others on two workers "
        "with pytest-xdist, then the serial ones alone)",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(kind in item.keywords for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)
    part = config.getoption("part")
    if part is not None:
        kept, left = [], []
        for item in items:
            (kept if ("serial" in item.keywords) == (part == "serial") else left).append(item)
        config.hook.pytest_deselected(items=left)
        items[:] = kept
    # Modules with slow tests first (a stable sort: the rest keep their order): pytest-xdist's `--dist loadfile`
    # hands out modules in this order, so the long ones start early and the short ones fill in at the end, rather
    # than one worker finishing the 2-minute gpu-check module alone while the other sits idle.
    slow_modules = {item.module.__name__ for item in items if "slow" in item.keywords and item.module is not None}
    items.sort(key=lambda item: item.module is None or item.module.__name__ not in slow_modules)
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def tiny() -> ModelComponents:
    """The `tiny` preset (the trained toy model) on the CPU in float32. Shared: tests must not modify its modules."""
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_random() -> ModelComponents:
    """`tiny-random`: seeded random weights built in code, for tests that compare arithmetic with diffusers' own
    pipelines built from the same code (`tiny_sd15_parts`)."""
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def tiny_lora() -> ModelComponents:
    return load_model("tiny-lcm-lora", device="cpu")


@pytest.fixture
def frame() -> np.ndarray:
    return moving_pattern(128, 64, 5)


class LiveServer:
    """`lcmlive serve` in a subprocess on a free loopback port; stopped (SIGINT) when the fixture ends."""

    # Load, import and bind: 5-20 s on the 2-core machine, more while the other test worker loads it too.
    START_SECONDS = 90

    def __init__(self, *args: str) -> None:
        self.token = args[args.index("--token") + 1] if "--token" in args else None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--model", "tiny", "--device", "cpu", "--ice-loopback", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Read as it comes: the pipe holds 64 KiB, and a server blocked on a full pipe looks like a server that
        # hangs (a minute of sessions, a fuzz run or Ray's worker logs fill it).
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"lcmlive-{self.port}-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise RuntimeError(f"lcmlive serve exited early:\n{self.output()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"lcmlive serve did not answer /health within {self.START_SECONDS} s")

    def health(self) -> dict:
        return self.get_json("/health")

    def get_json(self, path: str) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def _read(self) -> None:
        assert self.process.stdout is not None  # stdout=PIPE
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.lines)

    def stop(self, timeout: float = 20) -> str:
        """Ctrl-C the server (if it still runs); returns everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.output()


@pytest.fixture(scope="module")
def live_server():
    server = LiveServer()
    yield server
    server.stop()
