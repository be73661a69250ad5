"""Weights from the local Hugging Face cache first, the hub second, and one clear message when neither has them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from .presets import OFFLINE_PRESET

log = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """The weights a preset needs are neither cached nor downloadable; the message says how to get them."""


def fetch_weights(name: str, repos: list[str], load: Callable[[dict[str, Any]], Any]) -> Any:
    """`load` from the local cache; if that fails and the hub may be used, let it download (with progress)."""
    try:
        return load({"local_files_only": True})
    except (OSError, ValueError) as cached_error:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise ModelUnavailableError(unavailable_message(name, repos, cached_error)) from None
    log.info("downloading %s (first run only)", ", ".join(repos))
    try:
        return load({"local_files_only": False})
    except Exception as download_error:  # any network, auth or format failure ends in the same advice
        raise ModelUnavailableError(unavailable_message(name, repos, download_error)) from None


def unavailable_message(name: str, repos: list[str], cause: BaseException) -> str:
    """What is missing, how to fetch it, and the offline alternative — no traceback."""
    fetch = "\n".join(f"    hf download {repo}" for repo in repos)
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (
        f"{name!r} needs weights that are not on this machine: {', '.join(repos)}\n"
        f"  ({first_line})\n"
        f"  Fetch them once on a machine with network access (they land in the Hugging Face cache):\n{fetch}\n"
        f"  or pass a local diffusers folder with --model /path/to/folder.\n"
        f"  `--model {OFFLINE_PRESET}` runs offline with a toy model that ships in the package."
    )
