"""Ray Serve replicas (`lcmlive serve --replicas N`): the app on N replicas behind Serve's proxy; the `ray` extra."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ServeSettings

RAY_MISSING = "--replicas runs the app on Ray Serve, which is not installed: pip install 'lcmlive[ray]'"


def serve_replicas(settings: ServeSettings) -> int:
    """Run `lcmlive serve` as a Ray Serve application until Ctrl-C; ValueError (with the install line) without Ray."""
    # Found, not imported: Ray reads its environment when it is imported, and launch.py sets it first.
    if importlib.util.find_spec("ray") is None:
        raise ValueError(RAY_MISSING)
    from .launch import run

    return run(settings)
