#!/usr/bin/env bash
# Make (or refresh) the project's virtual environment in .venv: torch first, then lcmlive with its extras.
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh test,bench
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"
# torch is pinned and installed first: a bare `torch` requirement resolved by pip pulls a multi-GB CUDA build
# on machines that keep a CPU wheel at hand. Set LCMLIVE_TORCH to choose another build (e.g. "torch==2.13.0").
torch_requirement="${LCMLIVE_TORCH:-torch==2.13.0}"

stamp=".venv/.lcmlive-installed"
base="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16) ${torch_requirement}"
if [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$base" ]; then
  # Up to date if every extra asked for now was installed before (the tests install a superset of serve's).
  installed=",$(sed -n 2p "$stamp"),"
  missing=""
  for extra in ${extras//,/ }; do
    case "$installed" in *",$extra,"*) ;; *) missing=1 ;; esac
  done
  [ -z "$missing" ] && exit 0
fi

echo "lcmlive: preparing .venv (first run only; a few minutes)" >&2
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >&2
.venv/bin/python -m pip install --quiet "$torch_requirement" >&2
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
.venv/bin/python -m pip install --quiet -e "$spec" >&2
printf '%s\n%s\n' "$base" "$extras" >"$stamp"
