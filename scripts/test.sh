#!/usr/bin/env bash
# Install everything the test suite needs (Python packages, Debian's chromium and GStreamer) and run it all.
# Extra arguments go to pytest, e.g. scripts/test.sh -k parity
# `scripts/test.sh --quick [ARGS]`: the quick loop, every test not marked slow (pytest -m "not slow"); it needs
# neither the Debian packages nor Ray, and installs neither.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi

if [ -z "$quick" ]; then
  # Debian packages: chromium for the browser tests; GStreamer's webrtcbin (run by Debian's own python3 with its
  # gi bindings) for the test of a real non-browser WHIP publisher; g++, with which torch.compile's inductor builds
  # its CPU kernels (tests/test_compiled.py).
  debian_packages=(chromium python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0
    gir1.2-nice-0.1 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly gstreamer1.0-nice g++)
  missing=()
  for package in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "lcmlive: installing Debian packages for the tests: ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  export LCMLIVE_REQUIRE_GSTREAMER=1
  # Ray Serve for the replica test (tests/test_ray.py): about 20 s and 300 MB more to install, measured here.
  export LCMLIVE_REQUIRE_RAY=1
  scripts/bootstrap.sh test,bench,ray,docs
  # Inductor's CPU kernels also include the venv's Python headers: Debian's python3.X-dev when its python3 made the
  # venv (a Python built elsewhere, pyenv's say, has its own).
  python_include="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  if [ ! -f "$python_include/Python.h" ]; then
    headers="$(.venv/bin/python -c 'import sys; print("python%d.%d-dev" % sys.version_info[:2])')"
    echo "lcmlive: installing $headers for torch.compile's CPU kernels (no $python_include/Python.h)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$headers" >&2
  fi
else
  scripts/bootstrap.sh test,bench,docs
fi
# Types over pipelines/, server/, tests/ and scripts/ ([tool.basedpyright] in pyproject.toml): a call that no longer fits its
# signature (a test's too) fails here, GPU-only code included. About 50 s of one core: it runs beside the checks
# below (ruff, the contracts, the docs, the executor's coverage) and the suite's parallel part. Not in the quick
# loop, which installs no Ray: server/cluster's imports of it would not resolve.
typecheck=""
if [ -z "$quick" ]; then
  typecheck_log="$(mktemp)"
  .venv/bin/basedpyright > "$typecheck_log" 2>&1 &
  typecheck=$!
  trap 'kill "$typecheck" 2>/dev/null || true' EXIT  # a check below failed: the type check stops with the script
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pre-commit validate-config .pre-commit-config.yaml  # the hooks a contributor installs (0.3 s)
.venv/bin/lint-imports --no-cache  # the layers in .importlinter: an upward import fails here with its contract's name
# The docs site (mkdocs.yml): a link to a missing page or anchor, or a page left out of the nav, fails the build.
# About 2 s, and 11 s to install the docs extra once, measured here.
site="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site"
rm -rf "$site"
# Two pytest-xdist workers (LCMLIVE_TEST_WORKERS, 1 for one process), each taking whole modules (their servers are
# module fixtures), the modules with slow tests first; the tests marked serial then run alone, as their checks hold
# a real-time pace (a latency, a beat, frames a second) that a test beside them on the same cores would move.
# The type check, started above, is waited for once the parallel part is done: before the serial tests, which it
# would slow.
workers="${LCMLIVE_TEST_WORKERS:-2}"
finish_typecheck() {
  [ -z "$typecheck" ] && return 0
  if wait "$typecheck"; then
    tail -n 1 "$typecheck_log"
  else
    cat "$typecheck_log"
    return 1
  fi
}
run_tests() {
  local status=0 parallel=0 serial=0
  if [ "$workers" -le 1 ]; then
    finish_typecheck || status=1
    .venv/bin/python -m pytest "$@" || status=$?
    return "$status"
  fi
  .venv/bin/python -m pytest -n "$workers" --dist loadfile --part parallel "$@" || parallel=$?
  finish_typecheck || status=1
  .venv/bin/python -m pytest --part serial "$@" || serial=$?
  # 5: no test selected in that part (say `-k parity` matches no serial test), fine while the other part ran some.
  if [ "$parallel" -eq 5 ] && [ "$serial" -eq 5 ]; then return 5; fi
  for part in "$parallel" "$serial"; do
    if [ "$part" -ne 0 ] && [ "$part" -ne 5 ]; then status=$part; fi
  done
  return "$status"
}
if [ -n "$quick" ]; then
  run_tests -m "not slow" "$@"
  exit
fi
# Line coverage of the double-buffered executor and its device streams ([tool.coverage.run] in pyproject.toml),
# printed and held at 90%: the executor's own tests, traced, in a run of their own: 18-19 s of CPU with one model
# thread, start-up included (13-14 s untraced). Traced through the whole suite instead, Python 3.11's tracer (called
# on every Python call) cost 20% more CPU on the loopback, fuzz and executor tests (user 163-173 s untraced, 199-205 s
# traced): minutes of CI's 17.
.venv/bin/python -m pytest -q tests/test_executor.py --cov --cov-report=term-missing --cov-fail-under=90
run_tests "$@"
