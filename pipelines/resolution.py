"""Adaptive processing resolution: pick the size from a short ladder so that frames keep up with the target rate.

Pure logic with an injectable clock: it sees frame times and decides; it never measures or sleeps itself.
Down quickly (straight to the largest rung predicted to fit the budget), up slowly (one rung, after sustained
headroom and a minimum dwell), and a rung that proved too slow is not retried for a while.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .stream import SIZE_MULTIPLE, processing_size


def size_ladder(max_side: int, floor: int = 128) -> list[int]:
    """Longest-side rungs, largest first: multiples of 64 from `max_side` down to `floor`."""
    if max_side % SIZE_MULTIPLE or floor % SIZE_MULTIPLE or floor < SIZE_MULTIPLE:
        raise ValueError(f"max_side and floor must be multiples of {SIZE_MULTIPLE}, got {max_side} and {floor}")
    floor = min(floor, max_side)
    return list(range(max_side, floor - 1, -SIZE_MULTIPLE))


@dataclass(frozen=True)
class ControllerSettings:
    down_window: int = 3  # frames whose median decides that the budget is missed
    over_budget: float = 1.10  # step down when frames take this much of the budget or more
    fit: float = 0.90  # a rung fits when its predicted time is at most this much of the budget
    up_headroom: float = 0.80  # step up when the next rung is predicted at most this much of the budget
    up_after_s: float = 10.0  # ... sustained this long, and at least this long since the last switch
    settle_frames: int = 2  # frames ignored after a switch: the first ones at a new size run cold
    blocked_s: float = 60.0  # a rung that proved too slow (or ran out of memory) is not retried for this long
    # Frame time ~ side ** exponent, the side of a square with the rung's pixels. 2 (pixel count) until measured:
    # fixed per-frame costs make it smaller.
    initial_exponent: float = 2.0


class ResolutionController:
    """Chooses the processing size's longest side. Feed it `observe(frame_seconds)` after every frame."""

    def __init__(
        self,
        target_fps: float,
        max_side: int = 512,
        floor: int = 128,
        settings: ControllerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or ControllerSettings()
        self.clock = clock
        self.target_fps = target_fps
        self.ladder = size_ladder(max_side, floor)
        self.index = 0
        self.switches = 0
        self.state = "starting"
        self._recent: deque[float] = deque(maxlen=max(self.settings.down_window, 8))
        self._ignore = self.settings.settle_frames
        self._last_switch = clock()
        self._headroom_since: float | None = None
        self._blocked_until: dict[int, float] = {}
        self.exponent = self.settings.initial_exponent
        self._left: tuple[int, float] | None = None  # (side, typical frame time) of the rung just left
        self._shape: tuple[int, int] | None = None  # the camera's (width, height); None: square frames

    @property
    def side(self) -> int:
        return self.ladder[self.index]

    @property
    def budget(self) -> float:
        return 1.0 / self.target_fps

    def configure(self, target_fps: float, max_side: int, floor: int) -> None:
        """New target, cap or floor from the stream's params: go to the rung nearest the current size."""
        side = self.side
        self.target_fps = target_fps
        self.ladder = size_ladder(max_side, floor)
        self.index = min(range(len(self.ladder)), key=lambda i: abs(self.ladder[i] - side))
        self._reset_measurements()

    def observe(self, frame_seconds: float) -> None:
        """One frame took `frame_seconds` of model time at the current rung."""
        if self._ignore > 0:
            self._ignore -= 1
            return
        self._recent.append(frame_seconds)
        now = self.clock()
        window = list(self._recent)[-self.settings.down_window :]
        if len(window) < self.settings.down_window:
            return
        typical = statistics.median(window)
        self._learn_exponent(typical)
        if typical >= self.budget * self.settings.over_budget:
            if self.index < len(self.ladder) - 1:
                self._step_down(typical, now)
            else:
                self.state = "at floor"
            return
        self._consider_up(now)

    def out_of_memory(self, side: int | None = None) -> None:
        """A frame at `side` (default: the current rung) did not fit in device memory: block that rung and go one
        rung below it, unless what failed is a frame still in flight at a size already left behind."""
        side = self.side if side is None else side
        if side > self.side:
            self._block(side, self.clock())
        elif self.index < len(self.ladder) - 1:
            self._block(self.side, self.clock())
            self._switch_to(self.index + 1, "out of memory")
        else:
            self.state = "out of memory at the smallest size"

    def _step_down(self, typical: float, now: float) -> None:
        self._block(self.side, now)
        target = len(self.ladder) - 1
        for index in range(self.index + 1, len(self.ladder)):
            if self._predict(typical, index) <= self.budget * self.settings.fit:
                target = index
                break
        self._switch_to(target, "down")

    def _consider_up(self, now: float) -> None:
        if self.index == 0:
            self.state = "steady"
            return
        typical = statistics.median(self._recent)
        up = self.index - 1
        blocked = self._blocked_until.get(self.ladder[up], 0.0) > now
        has_headroom = not blocked and self._predict(typical, up) <= self.budget * self.settings.up_headroom
        if not has_headroom:
            self._headroom_since = None
            self.state = "steady"
            return
        if self._headroom_since is None:
            self._headroom_since = now
        waited = now - self._headroom_since
        dwelt = now - self._last_switch
        if waited >= self.settings.up_after_s and dwelt >= self.settings.up_after_s:
            self._switch_to(up, "up")
        else:
            self.state = "headroom"

    def frame_shape(self, width: int, height: int) -> None:
        """The camera's frame size, from which each rung's processing size follows. Its sides snap to multiples of
        64, so the rungs' shapes differ: a 4:3 camera runs 192x128 at 192 and 128x128 at 128, 1.5x the pixels where
        the sides squared say 2.25x (a stream held at 128 read 192 as too slow and never climbed back)."""
        self._shape = (width, height)

    def _square_side(self, side: int) -> float:
        """The side of a square with as many pixels as the rung `side` processes."""
        if self._shape is None:
            return float(side)
        width, height = processing_size(*self._shape, side)
        return math.sqrt(width * height)

    def _predict(self, seconds_here: float, index: int) -> float:
        """Frame time at another rung, by the learnt power of its pixels' square side."""
        return seconds_here * (self._square_side(self.ladder[index]) / self._square_side(self.side)) ** self.exponent

    def _learn_exponent(self, typical: float) -> None:
        """After a switch, the times just before and just after it give the real cost-versus-size exponent.

        Two measurements a few frames apart see the same load, so a slower device does not bias the estimate.
        """
        if self._left is None:
            return
        side, seconds = self._left
        self._left = None
        before, now = self._square_side(side), self._square_side(self.side)
        if before != now and seconds > 0 and typical > 0:
            measured = math.log(seconds / typical) / math.log(before / now)
            self.exponent = min(2.5, max(0.5, measured))

    def _block(self, side: int, now: float) -> None:
        self._blocked_until[side] = now + self.settings.blocked_s

    def _switch_to(self, index: int, why: str) -> None:
        if index == self.index:
            return
        if len(self._recent) >= self.settings.down_window:
            self._left = (self.side, statistics.median(list(self._recent)[-self.settings.down_window :]))
        self.index = index
        self.switches += 1
        self.state = why
        self._last_switch = self.clock()
        self._reset_measurements()

    def _reset_measurements(self) -> None:
        self._recent.clear()
        self._ignore = self.settings.settle_frames
        self._headroom_since = None
