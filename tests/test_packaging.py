"""The wheel installs into a fresh virtual environment outside the source tree and serves every page from there."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import pytest

from server.bench.loopback import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.packaging

# As scripts/bootstrap.sh: torch is pinned and installed first, or the bare `torch` requirement pulls a multi-GB
# CUDA build.
TORCH = os.environ.get("LCMLIVE_TORCH", "torch==2.13.0")
# What a source checkout has but a wheel build must not see: a stale build/lib would put removed files in the wheel.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "artifacts", "__pycache__", ".*_cache"
)


def run(*command: str | Path, timeout: float, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run a command to the end; its output, or a failure that shows the output."""
    done = subprocess.run(command, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def pip_install(python: Path, requirement: str | Path) -> None:
    # The test's own pip installs into the new environment (--python): a venv made without pip is ready in 0.2 s
    # instead of 5. --no-compile: compiling torch's sources took about half of its install.
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        "--prefer-binary",
        "--no-compile",
        requirement,
        timeout=600,
    )


def http_get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def test_the_installed_wheel_serves_the_pages_and_their_modules(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", wheels, source, timeout=300)
    (wheel,) = wheels.glob("lcmlive-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, timeout=60)
    python = venv / "bin" / "python"
    pip_install(python, TORCH)
    pip_install(python, wheel)
    shutil.rmtree(source)  # nothing of the source tree is left to be found by accident

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    located = run(
        python,
        "-c",
        "import client, server; print(client.__file__, server.__file__)",
        cwd=elsewhere,
        env=env,
        timeout=60,
    )
    assert all(path.startswith(str(venv)) for path in located.split()), located

    port = free_port()
    server = subprocess.Popen(
        [str(venv / "bin" / "lcmlive"), "serve", "--model", "tiny", "--device", "cpu"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"lcmlive serve exited:\n{server.stdout.read() if server.stdout else ''}"
            assert time.monotonic() < deadline, "lcmlive serve did not answer /health within 90 s"
            try:
                http_get(f"{url}/health")
                break
            except OSError:
                time.sleep(0.3)
        # Each page, its stylesheets and its module scripts with everything they import (client/lib/*.js).
        scripts: list[str] = []
        for page_path in ("/", "/view/demo", "/control/demo"):
            status, content_type, page = http_get(f"{url}{page_path}")
            assert status == 200 and content_type.startswith("text/html"), page_path
            assert "<html" in page, page_path
            for style in re.findall(r'<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"', page):
                status, content_type, _ = http_get(urljoin(f"{url}{page_path}", style))
                assert status == 200 and content_type.startswith("text/css"), style
            found = re.findall(r'<script[^>]*type="module"[^>]*src="([^"]+)"', page)
            assert found, page_path
            scripts += [urljoin(f"{url}{page_path}", src) for src in found]
        fetched: set[str] = set()
        while scripts:
            script = scripts.pop()
            if script in fetched:
                continue
            fetched.add(script)
            status, content_type, code = http_get(script)
            assert status == 200 and "javascript" in content_type, (script, content_type)
            scripts += [
                urljoin(script, target)
                for target in re.findall(r'^\s*(?:import|export)\b[^;]*?["\'](\.{1,2}/[^"\']+)["\']', code, re.M)
            ]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
