"""A synthetic drum machine: a kick on every beat at `bpm`, in 20 ms frames of 48 kHz mono sent at the real pace."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc.mediastreams import AUDIO_PTIME, MediaStreamError, MediaStreamTrack
from av import AudioFrame

SAMPLE_RATE = 48_000
KICK_SECONDS = 0.12


def kick(level: float) -> np.ndarray:
    """A kick drum's thump: 55 Hz falling to 45 Hz with a click on top, decaying in about 50 ms."""
    t = np.arange(round(KICK_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    body = np.sin(2 * np.pi * (55 * t - 25 * t**2)) * np.exp(-t / 0.05)
    click = np.sin(2 * np.pi * 3000 * t) * np.exp(-t / 0.003) * 0.5
    return level * (body + click) / 1.5


class ClickTrack(MediaStreamTrack):
    """Kicks at `bpm` from the first frame on. `beats` holds when each kick's first sample was due, on
    `time.monotonic()`'s clock (the track runs at the real pace from its first frame: sample n is due then + n/rate),
    so that a receiver in the same machine can compare its beat times with them."""

    kind = "audio"

    def __init__(self, bpm: float = 120.0, level: float = 0.5) -> None:
        super().__init__()
        self.bpm = bpm
        self._kick = kick(level)
        self._period = round(60.0 / bpm * SAMPLE_RATE)
        self.sent = 0  # samples
        self.start: float | None = None
        self.beats: list[float] = []

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        count = int(AUDIO_PTIME * SAMPLE_RATE)
        if self.start is None:
            self.start = time.monotonic()
        else:
            await asyncio.sleep(self.start + self.sent / SAMPLE_RATE - time.monotonic())
        positions = self.sent + np.arange(count)
        since_beat = positions % self._period
        wave = np.zeros(count)
        sounding = since_beat < len(self._kick)
        wave[sounding] = self._kick[since_beat[sounding]]
        for position in positions[since_beat == 0]:
            self.beats.append(self.start + position / SAMPLE_RATE)
        samples = np.round(wave * 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self.sent, fractions.Fraction(1, SAMPLE_RATE)
        self.sent += count
        return frame
