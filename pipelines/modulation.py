"""Modulations: the values of a stream's params for one frame, moved from what was set by its sound's features."""

from __future__ import annotations

import math
from collections.abc import Mapping

from .params import StreamParams, numeric_range, valid_range

# A modulated value lands on a grid of this many steps of its param's range: far finer than the eye tells apart
# (strength's schedule itself has 50 levels), and it lets the frames that share a value share its plan
# (StreamPipeline caches the plans of modulated values; a value of its own per frame would rebuild one per frame).
GRID_STEPS = 200


class Modulator:
    """Smooths each modulation's source over frame times and gives the values a frame runs with.

    One per stream, called once per frame from one thread (the engine's). The smoothing is a one-pole low-pass
    with the entry's `smooth_ms` as its time constant; a new entry starts from 0, so it fades in rather than jumps.
    """

    def __init__(self) -> None:
        # Per (source, smooth_ms): the same filter of the same source is one state, whichever entries use it.
        self._smoothed: dict[tuple[str, float], float] = {}
        self._last_time: float | None = None

    def values(self, params: StreamParams, levels: Mapping[str, float | None] | None, now: float) -> dict[str, float]:
        """Each modulated param's value for a frame at clock time `now` (seconds): base + amount x range x smoothed
        source, summed over the param's entries, on the grid and in the range valid with the other params. Empty
        when `params` has no modulations. `levels` None (no sound) or a source's None reads as 0."""
        modulations = getattr(params, "modulations", ())
        if not modulations:
            self._smoothed.clear()
            self._last_time = None
            return {}
        elapsed = 0.0 if self._last_time is None else max(now - self._last_time, 0.0)
        self._last_time = now
        smoothed: dict[tuple[str, float], float] = {}
        offsets: dict[str, float] = {}
        model = type(params)
        for entry in modulations:
            key = (entry.source, entry.smooth_ms)
            if key not in smoothed:
                level = (levels or {}).get(entry.source)
                target = min(max(float(level), 0.0), 1.0) if level is not None else 0.0
                smoothed[key] = _low_pass(self._smoothed.get(key, 0.0), target, elapsed, entry.smooth_ms / 1000)
            lower, upper, _ = numeric_range(model, entry.param)  # type: ignore[misc]  # modulatable: it has one
            offsets[entry.param] = offsets.get(entry.param, 0.0) + entry.amount * (upper - lower) * smoothed[key]
        self._smoothed = smoothed  # filters no entry uses any more are forgotten
        context = {"steps": getattr(params, "steps", None), "mode": getattr(params, "mode", None)}
        return {name: _landed(model, name, getattr(params, name), offset, context) for name, offset in offsets.items()}


def _low_pass(previous: float, target: float, elapsed: float, time_constant: float) -> float:
    if time_constant <= 0:
        return target
    return previous + (target - previous) * (1.0 - math.exp(-elapsed / time_constant))


def _landed(model: type[StreamParams], name: str, base: float, offset: float, context: dict) -> float:
    """`base` moved by `offset` in whole steps of the grid (no offset: the base itself), then into the range valid
    now (strength's floor depends on steps)."""
    lower, upper, _ = numeric_range(model, name)  # type: ignore[misc]
    step = (upper - lower) / GRID_STEPS
    value = base + round(offset / step) * step
    low, high, _ = valid_range(model, name, context)  # type: ignore[misc]
    return round(min(max(value, low), high), 6)
