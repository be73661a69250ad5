"""`bench --av`'s camera and microphone on one clock: a dark card that flashes bright with a beep every 2 s."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc.mediastreams import AUDIO_PTIME, VIDEO_CLOCK_RATE, MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from .tone import SAMPLE_RATE

FLASH_PERIOD_SECONDS = 2.0
FIRST_FLASH_SECONDS = 4.0  # the first picture out and the sound's delay settle before it
FLASH_SECONDS = 0.6  # bright this long: several frames at the bench's rates, so a flash is never one lone frame
BEEP_SECONDS = 0.2
BEEP_HZ = 1000.0
BEEP_LEVEL = 0.5
DARK, BRIGHT = 24, 232  # rgb levels of the card


class FlashClock:
    """The one clock of both tracks: media time 0 is when the first of them is pulled, and a flash starts at
    `FIRST_FLASH_SECONDS + k * FLASH_PERIOD_SECONDS` of media time on both, on a video frame's and a sample's
    boundary. Each track notes when it handed on the frame that starts flash k (`video_sent`, `audio_sent`:
    time.monotonic(), the beep's first sample counted at its place in its 20 ms frame)."""

    def __init__(self, fps: float) -> None:
        boundaries = (FLASH_PERIOD_SECONDS * fps, FIRST_FLASH_SECONDS * fps)
        if any(abs(frames - round(frames)) > 1e-9 for frames in boundaries):
            raise ValueError(f"{fps} fps puts no frame at the flashes' {FLASH_PERIOD_SECONDS:g} s boundaries")
        self.fps = fps
        self.start: float | None = None
        self.video_sent: dict[int, float] = {}
        self.audio_sent: dict[int, float] = {}

    def begin(self) -> float:
        if self.start is None:
            self.start = time.monotonic()
        return self.start

    async def wait_until(self, media_seconds: float) -> float:
        """Sleep until `media_seconds` of media time; the time it is now."""
        due = self.begin() + media_seconds
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        return time.monotonic()

    def flashes(self, first: int, count: int, rate: float, length: float) -> tuple[np.ndarray, np.ndarray]:
        """For units `first .. first + count - 1` of a clock at `rate` a second (frames or samples): the index of
        the flash each falls in (-1: none, a flash lasting `length` seconds), and the units since it started."""
        unit = first + np.arange(count)
        since_first = unit - round(FIRST_FLASH_SECONDS * rate)
        period = round(FLASH_PERIOD_SECONDS * rate)
        into = since_first % period
        index = np.where((since_first >= 0) & (into < round(length * rate)), since_first // period, -1)
        return index, into


class FlashCard(MediaStreamTrack):
    """The camera: a dark card at `clock.fps`, bright for `FLASH_SECONDS` from each flash on."""

    kind = "video"

    def __init__(self, clock: FlashClock, width: int, height: int) -> None:
        super().__init__()
        self.clock = clock
        self.sent = 0
        card = np.zeros((height, width, 3), np.uint8)
        # A card, not a flat field: a lighter frame around it gives the model an edge to keep in both states.
        card[:] = DARK + 40
        inset = max(width, height) // 8
        self._dark = card.copy()
        self._dark[inset:-inset, inset:-inset] = DARK
        self._bright = card.copy()
        self._bright[inset:-inset, inset:-inset] = BRIGHT

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        media_seconds = self.sent / self.clock.fps
        now = await self.clock.wait_until(media_seconds)
        (flash,), (into,) = self.clock.flashes(self.sent, 1, self.clock.fps, FLASH_SECONDS)
        if flash >= 0 and into == 0:
            self.clock.video_sent[int(flash)] = now
        frame = VideoFrame.from_ndarray(self._bright if flash >= 0 else self._dark, format="rgb24")
        frame.pts = round(media_seconds * VIDEO_CLOCK_RATE)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self.sent += 1
        return frame


class BeepTrack(MediaStreamTrack):
    """The microphone: silence in 20 ms frames of 48 kHz mono, with a `BEEP_HZ` beep `BEEP_SECONDS` long from
    each flash on (from sine phase 0, so its first sample is the onset)."""

    kind = "audio"

    def __init__(self, clock: FlashClock) -> None:
        super().__init__()
        self.clock = clock
        self.sent = 0  # samples

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        count = int(AUDIO_PTIME * SAMPLE_RATE)
        now = await self.clock.wait_until(self.sent / SAMPLE_RATE)
        flash, into = self.clock.flashes(self.sent, count, SAMPLE_RATE, BEEP_SECONDS)
        for offset in np.flatnonzero((flash >= 0) & (into == 0)):
            self.clock.audio_sent[int(flash[offset])] = now + offset / SAMPLE_RATE
        wave = np.where(flash >= 0, BEEP_LEVEL * np.sin(2 * np.pi * BEEP_HZ * into / SAMPLE_RATE), 0.0)
        samples = np.round(wave * 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self.sent, fractions.Fraction(1, SAMPLE_RATE)
        self.sent += count
        return frame
