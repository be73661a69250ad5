"""A recording folder as the renderer reads it: the header and events of events.jsonl, and what input.mkv holds.

A recording is written as the show goes, so a crash leaves it short: a torn last line of events.jsonl, no end
event, no recording.json, an input.mkv cut mid-cluster. Those are told (`notes`) and the rest is rendered; a folder
without its input or its header is not a recording, and says what is missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

INPUT = "input.mkv"
EVENTS = "events.jsonl"
SUMMARY = "recording.json"


class RecordingError(ValueError):
    """The folder cannot be rendered: what is missing or broken, in words."""


@dataclass(frozen=True)
class ParamsChange:
    """A change that took effect at `t` (seconds): every param after it, from the input frame at `applies_from`."""

    t: float
    params: dict[str, Any]
    # The first input frame at or after `t`, or the frame the live path ran next if that came earlier: the engine
    # applies a change between frames, so the frame waiting then (arrived before `t`) ran with it.
    applies_from: float


@dataclass(frozen=True)
class FrameEvent:
    """What the live path decided for the input frame at `t`: its processing size and its modulated values."""

    t: float
    size: tuple[int, int]
    modulated: dict[str, float]


@dataclass(frozen=True)
class InputVideo:
    """input.mkv's camera video, from one pass over its packets (no decoding)."""

    width: int
    height: int
    time_base: Fraction
    packets: int  # the frames it holds, for the progress bar
    first_pts: int  # the earliest presentation time: the master starts there
    has_sound: bool
    cut_short: str | None  # how the file ends early, if it does


@dataclass
class Recording:
    folder: Path
    header: dict[str, Any]
    changes: list[ParamsChange]
    frames: list[FrameEvent]
    video: InputVideo
    notes: list[str] = field(default_factory=list)  # what a person should know: a torn end, a crash

    @property
    def input_path(self) -> Path:
        return self.folder / INPUT

    @property
    def start_params(self) -> dict[str, Any]:
        return self.header["params"]

    def largest_live_side(self) -> int | None:
        """The longest side of the largest processing size the live path ran at; None when no frame ran."""
        return max((max(frame.size) for frame in self.frames), default=None)


def read_recording(folder: str | Path) -> Recording:
    """The recording in `folder`, or a RecordingError that says what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordingError(f"{folder} is not a folder (give a recording's folder, e.g. recordings/cam-20260101T…Z)")
    missing = [name for name in (INPUT, EVENTS) if not (folder / name).is_file()]
    if missing:
        raise RecordingError(
            f"{folder} is not a recording: {' and '.join(missing)} missing (a recording folder holds {INPUT}, "
            f"{EVENTS} and, after a clean end, {SUMMARY})"
        )
    notes: list[str] = []
    header, changes, frames, ended = _read_events(folder / EVENTS, notes)
    video = _scan_input(folder / INPUT)
    if video.cut_short:
        notes.append(f"{INPUT} {video.cut_short}: rendering the frames before it")
    if not ended:
        summary = "" if (folder / SUMMARY).is_file() else f" and no {SUMMARY}"
        notes.append(
            f"{EVENTS} has no end event{summary}: the recording did not end cleanly (a crash?); rendering what it holds"
        )
    return Recording(folder, header, changes, frames, video, notes)


def _read_events(path: Path, notes: list[str]) -> tuple[dict[str, Any], list[ParamsChange], list[FrameEvent], bool]:
    lines = path.read_bytes().split(b"\n")
    events: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as error:
            if number == len(lines):  # no newline after it: the writer stopped mid-line
                notes.append(f"{path.name}: its last line is cut off (the server stopped while writing it); left out")
                break
            raise RecordingError(f"{path}: line {number} is not JSON ({error})") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RecordingError(f'{path}: line {number} is not an event (a JSON object with a "type")')
        events.append((number, event))
    if not events or events[0][1]["type"] != "header":
        raise RecordingError(f"{path} does not start with a header line: not a recording's events")
    header = events[0][1]
    if not isinstance(header.get("params"), dict):
        raise RecordingError(f'{path}: the header has no "params" object (the params at the start)')
    changes: list[ParamsChange] = []
    frames: list[FrameEvent] = []
    waiting: list[ParamsChange] = []  # changes with no frame line after them yet
    ended = False
    for number, event in events[1:]:
        kind = event["type"]
        if kind == "params":
            if not isinstance(event.get("params"), dict):
                raise RecordingError(f'{path}: line {number}, a params event, has no "params" object')
            t = _time(path, number, event)
            waiting.append(ParamsChange(t, event["params"], t))
        elif kind == "frame":
            frame = FrameEvent(_time(path, number, event), _size(path, number, event), _modulated(event))
            # The lines are in the order things happened: this frame ran with every change logged before it.
            changes += [replace(change, applies_from=min(change.t, frame.t)) for change in waiting]
            waiting.clear()
            frames.append(frame)
        elif kind == "end":
            ended = True
        # Other kinds say nothing the picture depends on; newer recorders may add some.
    return header, changes + waiting, frames, ended


def _time(path: Path, number: int, event: dict[str, Any]) -> float:
    t = event.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise RecordingError(f'{path}: line {number}, a {event["type"]} event, has no time "t" in seconds')
    return float(t)


def _size(path: Path, number: int, event: dict[str, Any]) -> tuple[int, int]:
    size = event.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise RecordingError(f'{path}: line {number}, a frame event, has no "size": [width, height]')
    return size[0], size[1]


def _modulated(event: dict[str, Any]) -> dict[str, float]:
    values = event.get("modulated")
    if not isinstance(values, dict):  # null: the frame ran with the params as set
        return {}
    return {name: float(value) for name, value in values.items() if isinstance(value, int | float)}


def _scan_input(path: Path) -> InputVideo:
    """One pass over input.mkv's video packets: how many, where the video starts, whether the file ends early."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise RecordingError(f"{path} cannot be read as video ({error}): the recording holds no input") from None
    with container:
        if not container.streams.video:
            raise RecordingError(f"{path} has no video stream: the recording holds no camera frames")
        stream = container.streams.video[0]
        packets, first_pts, cut_short = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.pts is None:  # the flush packet at the end
                    continue
                packets += 1
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
        except av.FFmpegError as error:
            cut_short = f"ends in a broken packet after {packets} frames ({error})"
        if first_pts is None:
            raise RecordingError(f"{path} holds no video frame: nothing to render")
        if stream.time_base is None:
            raise RecordingError(f"{path}: its video stream has no time base, so its frames have no times")
        return InputVideo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            time_base=stream.time_base,
            packets=packets,
            first_pts=first_pts,
            has_sound=bool(container.streams.audio),
            cut_short=cut_short,
        )
