"""The master file: the rendered pictures as H.264 in an MP4 at the input frames' own times, the recorded sound
copied beside them.

Written under a temporary name and renamed when complete, so that a render that fails or is stopped never leaves
a broken file under the name asked for.
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path

import av
import av.audio.stream  # named below: `import av` does not bind it for a type checker
import numpy as np

# x264's "visually lossless" range is crf 17-18; preset medium is x264's default balance and costs little next to
# the model on any device.
CRF = "17"
PRESET = "medium"
# libswscale's RGB -> YUV default is the BT.601 matrix in limited range; the stream says so, so that players do
# not guess BT.709 for large pictures.
SMPTE170M = 6
LIMITED_RANGE = 1


class MasterWriter:
    """An MP4 being written: `add_picture` per rendered frame in order, `add_sound` per Opus packet, then `close`
    (or `discard`). Times are those of input.mkv, moved so that the first picture is at 0."""

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        time_base: Fraction,
        start_pts: int,
        sound: av.audio.stream.AudioStream | None = None,
    ) -> None:
        self.path = path
        self._partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        self._container = av.open(str(self._partial), "w", format="mp4", options={"movflags": "+faststart"})
        video = self._container.add_stream("libx264", options={"crf": CRF, "preset": PRESET})
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.time_base = time_base
        video.codec_context.time_base = time_base
        video.codec_context.colorspace = SMPTE170M
        video.codec_context.color_range = LIMITED_RANGE
        self._video = video
        self._time_base = time_base
        self._start = start_pts
        self._last_pts: int | None = None
        self._sound = self._container.add_stream_from_template(sound) if sound is not None else None
        self._sound_start = 0
        if sound is not None:
            assert sound.time_base is not None  # a stream read from a file has one
            self._sound_start = round(start_pts * time_base / sound.time_base)
        self.pictures = 0
        self.sound_packets = 0
        self.duration = 0.0  # seconds from the first picture to the last one's time

    def add_picture(self, rgb: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        pts -= self._start
        if self._last_pts is not None and pts <= self._last_pts:
            # Two camera frames stamped in one tick of the time base (a burst after a stall): H.264 in MP4 needs
            # rising times, and one tick later is as close as the file can tell.
            pts = self._last_pts + 1
        self._last_pts = pts
        frame.pts, frame.time_base = pts, self._time_base
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self.pictures += 1
        self.duration = float(pts * self._time_base)

    def add_sound(self, packet: av.Packet) -> None:
        """An Opus packet of input.mkv's sound, as it is; sound from before the first picture is left out."""
        if self._sound is None or packet.pts is None:
            return
        pts = packet.pts - self._sound_start
        if pts < 0:
            return
        packet.pts, packet.dts = pts, pts
        packet.stream = self._sound
        self._container.mux(packet)
        self.sound_packets += 1

    def close(self) -> None:
        for packet in self._video.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._partial, self.path)

    def discard(self) -> None:
        """Stop and remove the partial file (after a failure: its own error is the one to tell)."""
        with contextlib.suppress(av.FFmpegError):
            self._container.close()
        self._partial.unlink(missing_ok=True)
