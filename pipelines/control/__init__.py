"""ControlNet kinds: each one a preprocessor (camera frame -> control image), its params, its weights per family.

A kind is one module in this package with a `KIND` (a `ControlKind`) and one row in `CONTROL_KINDS` below. The
rest of the code — loading, the params schema, batching, MultiControlNet arithmetic, the page's control view —
reads the table and never names a kind.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import canny, depth
from .kind import ControlKind, Preprocessor

CONTROL_KINDS: dict[str, ControlKind] = {kind.name: kind for kind in (canny.KIND, depth.KIND)}


def control_kind(name: str) -> ControlKind:
    """The kind called `name`, or a ValueError that lists the known ones."""
    if name not in CONTROL_KINDS:
        raise ValueError(f"unknown ControlNet kind {name!r}; known: {', '.join(CONTROL_KINDS)}")
    return CONTROL_KINDS[name]


def parse_kinds(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """`canny,depth` (as `--controlnet` takes it) or a list -> ("canny", "depth"): known kinds, without repeats, in
    the given order; ValueError for an unknown one."""
    if not names:
        return ()
    parts = names.split(",") if isinstance(names, str) else names
    names = tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))
    for name in names:
        control_kind(name)
    return names


__all__ = ["CONTROL_KINDS", "ControlKind", "Preprocessor", "control_kind", "parse_kinds"]
