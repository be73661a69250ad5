"""The lines of a recording's `events.jsonl` (see docs/recording-format.md), and the file they go to."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

FORMAT_VERSION = 1


def utc_iso(moment: datetime | None = None) -> str:
    """ISO 8601 in UTC to the millisecond, with a Z: `2026-01-02T03:04:05.678Z`."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds(t: float) -> float:
    """A t as written: to the tenth of a millisecond (the renderer matches frames to input pts in milliseconds)."""
    return round(t, 4)


def frame_line(t: float, size: tuple[int, int], modulated: Mapping[str, float], sound: Mapping | None) -> dict:
    return {
        "type": "frame",
        "t": seconds(t),
        "size": [int(size[0]), int(size[1])],
        "modulated": dict(modulated),
        "sound": _finite(sound) if sound is not None else None,
    }


def params_line(t: float, params: Mapping[str, Any], front_end: str, scene: str | None = None) -> dict:
    line = {"type": "params", "t": seconds(t), "wall": utc_iso(), "front_end": "scene" if scene else front_end}
    if scene:
        line["scene"] = scene
    line["params"] = dict(params)
    return line


def end_line(t: float, reason: str) -> dict:
    return {"type": "end", "t": seconds(t), "reason": reason}


def _finite(values: Mapping) -> dict:
    """Sound features as JSON can hold them: a NaN or infinity (no tempo yet, say) is null."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in values.items()
    }


class EventLog:
    """`events.jsonl`: one JSON object a line, flushed per line so that a crash loses at most the line it tore."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, line: dict) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
