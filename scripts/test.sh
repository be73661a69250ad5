#!/usr/bin/env bash
# Install everything the test suite needs (Python packages, Debian's chromium) and run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k parity
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "lcmlive: installing Debian's chromium for the browser test" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
scripts/bootstrap.sh test,bench
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
