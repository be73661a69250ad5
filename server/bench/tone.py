"""A synthetic microphone: a steady sine tone in 20 ms frames of 48 kHz mono, sent at the real pace."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc.mediastreams import AUDIO_PTIME, MediaStreamError, MediaStreamTrack
from av import AudioFrame

SAMPLE_RATE = 48_000


class ToneTrack(MediaStreamTrack):
    """A sine of `frequency` Hz at `level` of full scale; its phase runs on across frames (no click)."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, level: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self.level = level
        self.sent = 0  # samples
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        count = int(AUDIO_PTIME * SAMPLE_RATE)
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(self._start + self.sent / SAMPLE_RATE - time.monotonic())
        times = (self.sent + np.arange(count)) / SAMPLE_RATE
        wave = np.round(self.level * 32767 * np.sin(2 * np.pi * self.frequency * times)).astype(np.int16)
        frame = AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self.sent, fractions.Fraction(1, SAMPLE_RATE)
        self.sent += count
        return frame
