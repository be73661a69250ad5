"""A delay line for a stream's sound: it follows a changing delay by stretching, with no skip, repeat, gap or click.

The input's timeline: sample i is due at `origin + i / rate`, where `origin` is the least lag (arrival minus
media position) seen over the last seconds, the arrival of a sample that did not queue (as the camera pump does).
Jitter only makes samples later than due, and a delay longer than the jitter has them in the ring when read;
the window lets the origin follow a publisher whose clock drifts from ours. Reading a packet at time `now` wants
the sample due at `now - target`. The read position moves by the packet's length, plus or minus a share of how
far it is off (closing the distance with a time constant of `settle_seconds`, at most `max_stretch` of the packet)
once it is off by more than the dead band, until it is there: the packet is resampled (linear interpolation) from
that many input samples, so the pitch glides by at most `max_stretch` while the delay moves.
"""

from __future__ import annotations

from collections import deque

import numpy as np

SAMPLE_RATE = 48_000
CHANNELS = 2
# A stretch of 1/16 (about a semitone at most, while it lasts) moves the delay 62.5 ms a second: a latency
# rise of 140 ms (the toy model slowed 2x on the 2-core CPU) is within EBU R37's 40 ms "early" limit in 1.6 s.
MAX_STRETCH = 1 / 16
# The picture's latency wobbles: its median over a second moved by 5-30 ms every few seconds (tiny at 256 px
# on the 2-core CPU, 105-135 ms server-side). With the full stretch each such step was a 1-semitone jump in
# pitch for 0.2 s; closing a share of the distance each packet, a 10-30 ms step glides by 2-6% at first and less
# after (1/e of it left in 0.5 s).
SETTLE_SECONDS = 0.5
# A latency that jumps (the model 2x slower at 2 fps: +250-450 ms within 2-4 s, `lcmlive bench --av`) is more
# than 1/16 can follow in R37's time: the stretch allowed grows with the distance (a share of it per second, the
# time constant below: 400 ms closes to 40 in 1.8 s), up to MAX_FAST_STRETCH (4 semitones while it lasts, instead
# of the picture out of step for seconds); within 37.5 ms of the target it is 1/16 as before.
CATCH_UP_SECONDS = 0.6
MAX_FAST_STRETCH = 1 / 4
# The sound's own way in has jitter (a busy event loop held packets back by up to 160 ms on the loaded 2-core
# machine): a delay shorter than it reads samples before they came, silence. The delay is at least the 95th
# percentile of the last seconds' lag above the least, plus this margin.
JITTER_PERCENTILE = 95
JITTER_MARGIN_SECONDS = 0.005
# Corrections start beyond 20 ms and go on until the delay is there. The picture's latency (the median of a
# second's frames) wanders 107-167 ms in steps of 20-50 ms every second or two (tiny at 256 px on the 2-core CPU,
# one WHIP stream): a 10 ms band glided after every step, the pitch never still; at 20 ms the smaller steps are
# left alone, inside R37's -40/+60 ms.
DEAD_BAND_SECONDS = 0.020
# The first latencies are the warm-up's: 213 ms when the first picture left, 152 ms a second later, 115 ms from
# 2.5 s on (same run). Starting at once meant gliding for 3 s at the full stretch, a semitone sharp; the sound
# starts this long after the first latency instead, nearer the steady one, and is silence until then.
START_HOLD_SECONDS = 1.5
# The latency may still fall after that (a loaded CPU's ladder stepping down): in the sound's first seconds a
# distance that would need more than 1/16 restarts it at the right place, faded in (a dip in the first seconds),
# rather than a second at 4 semitones sharp (heard at 549 Hz for a 440 Hz tone here).
START_SETTLE_SECONDS = 3.0
# A delay that far off would take 16 s to stretch to (a source that restarted its clock): jump, fading in.
JUMP_SECONDS = 1.0
ANCHOR_SECONDS = 10.0
CAPACITY_SECONDS = 10.0
MAX_DELAY_SECONDS = 8.0
# Media-time gaps (Opus DTX sends nothing while quiet) of at least this much are kept as silence; smaller ones
# are a resampler's rounding, and longer than JUMP_SECONDS a clock that restarted: the samples stay contiguous.
MIN_GAP_SECONDS = 0.010


class DelayLine:
    """One stream's sound, int16 samples of `channels` channels at `rate`. Not thread-safe: the event loop's.

    `delay` is the delay of the last packet read (None before the first); `underruns` counts samples read before
    they arrived (played as silence), `jumps` the times the delay was too far off to stretch.
    """

    def __init__(
        self,
        rate: int = SAMPLE_RATE,
        channels: int = CHANNELS,
        capacity_seconds: float = CAPACITY_SECONDS,
        max_stretch: float = MAX_STRETCH,
        settle_seconds: float = SETTLE_SECONDS,
        dead_band_seconds: float = DEAD_BAND_SECONDS,
        jump_seconds: float = JUMP_SECONDS,
        anchor_seconds: float = ANCHOR_SECONDS,
        max_delay_seconds: float = MAX_DELAY_SECONDS,
        start_hold_seconds: float = START_HOLD_SECONDS,
    ) -> None:
        if max_delay_seconds >= capacity_seconds:
            raise ValueError("max_delay_seconds must be shorter than the line's capacity")
        self.rate = rate
        self.channels = channels
        self.max_stretch = max_stretch
        self.settle_seconds = settle_seconds
        self.max_delay = max_delay_seconds
        self.start_hold = start_hold_seconds
        self._first_target_at: float | None = None
        self._sound_started_at: float | None = None
        self._catch_up_band = round(CATCH_UP_SECONDS * max_stretch * rate)  # beyond it, more than max_stretch
        self._ring = np.zeros((int(capacity_seconds * rate), channels), np.int16)
        self._dead_band = round(dead_band_seconds * rate)
        self._jump = round(jump_seconds * rate)
        self._min_gap = round(MIN_GAP_SECONDS * rate)
        self._anchor_seconds = anchor_seconds
        self._lags: deque[tuple[float, float]] = deque()  # (arrival, lag), lags rising: the window's least first
        self._recent: deque[tuple[float, float]] = deque()  # (arrival, lag) of every write in the window
        self._next_media: int | None = None
        self.written = 0  # the position of the next sample written
        self.position: int | None = None  # the next sample read
        self.target: float | None = None
        self.delay: float | None = None
        self._correcting = False
        self.underruns = 0
        self.jumps = 0

    def write(self, samples: np.ndarray, arrival: float, media_time: float | None = None) -> None:
        """`samples` (frames x channels, int16) that arrived at `arrival`, their first at `media_time` (seconds
        on the publisher's clock) if known: a forward gap in media time is kept as silence."""
        count = len(samples)
        if media_time is not None:
            media = round(media_time * self.rate)
            gap = media - self._next_media if self._next_media is not None else 0
            if self._min_gap <= gap <= self._jump:
                self._put(np.zeros((gap, self.channels), np.int16))
            self._next_media = media + count
        self._put(samples)
        lag = arrival - self.written / self.rate
        while self._lags and self._lags[-1][1] >= lag:
            self._lags.pop()
        self._lags.append((arrival, lag))
        while self._lags[0][0] < arrival - self._anchor_seconds:
            self._lags.popleft()
        self._recent.append((arrival, lag))
        while self._recent[0][0] < arrival - self._anchor_seconds:
            self._recent.popleft()

    @property
    def jitter(self) -> float:
        """Seconds the sound's arrivals run late (the JITTER_PERCENTILE of the window's lag above its least)."""
        if not self._recent:
            return 0.0
        lags = np.fromiter((lag for _, lag in self._recent), np.float64, len(self._recent))
        return float(np.percentile(lags, JITTER_PERCENTILE)) - self._lags[0][1]

    def read(self, count: int, now: float, target: float | None) -> np.ndarray:
        """`count` samples to leave at `now`, delayed by `target` seconds (None: the last target kept)."""
        if target is not None:
            self.target = min(max(target, 0.0), self.max_delay)
            if self._first_target_at is None:
                self._first_target_at = now
        held = self._first_target_at is None or now - self._first_target_at < self.start_hold
        if held or not self._lags:
            return np.zeros((count, self.channels), np.int16)  # no delay known yet, or a warm-up's, or no sound
        assert self.target is not None  # kept from the first read that gave one, which ended the hold's wait
        origin = self._lags[0][1]
        delay = max(self.target, self.jitter + JITTER_MARGIN_SECONDS)
        wanted = round((now - delay - origin) * self.rate)
        far = abs(wanted - self.position) if self.position is not None else 0
        settling = self._sound_started_at is not None and now - self._sound_started_at < START_SETTLE_SECONDS
        starting = self.position is None or far > self._jump or (settling and far > self._catch_up_band)
        if starting:
            if self.position is None:
                self._sound_started_at = now
            elif far > self._jump:
                self.jumps += 1
            self.position, self._correcting = wanted, False
        assert self.position is not None  # set just above when there was none
        error = wanted - self.position
        step = 0
        if self._correcting or abs(error) > self._dead_band:
            fraction = min(max(abs(error) / (self.rate * CATCH_UP_SECONDS), self.max_stretch), MAX_FAST_STRETCH)
            limit = max(1, round(count * fraction))
            share = count / (self.rate * self.settle_seconds)
            step = min(max(round(error * share), -limit), limit)
            self._correcting = step != 0
        advance = count + step
        self.delay = now - origin - self.position / self.rate
        self.underruns += min(max(self.position + advance - max(self.written, self.position), 0), advance)
        samples = self._stretched(self.position, advance, count)
        self.position += advance
        if starting:  # a sound that starts mid-wave would click: fade it in over the packet
            ramp = np.linspace(0.0, 1.0, count, dtype=np.float32)[:, None]
            samples = (samples * ramp).astype(np.int16)
        return samples

    def skip(self, count: int) -> None:
        """Packets the output could not send in time: their samples are passed over as if read."""
        if self.position is not None:
            self.position += count

    def _put(self, samples: np.ndarray) -> None:
        size = len(self._ring)
        end = self.written + len(samples)
        samples = samples[-size:]  # more than the ring holds: only the newest are kept
        start = (end - len(samples)) % size
        first = min(len(samples), size - start)
        self._ring[start : start + first] = samples[:first]
        self._ring[: len(samples) - first] = samples[first:]
        self.written = end

    def _stretched(self, start: int, advance: int, count: int) -> np.ndarray:
        """`count` samples from the `advance` samples at `start`: exact when they are as many, else resampled
        so that the first and last input samples are kept and the next packet goes on from `start + advance`."""
        if advance == count:
            return self._samples(start + np.arange(count))
        where = start + np.arange(count) * ((advance - 1) / (count - 1))
        below = np.floor(where).astype(np.int64)
        fraction = (where - below).astype(np.float32)[:, None]
        low = self._samples(below).astype(np.float32)
        high = self._samples(np.minimum(below + 1, start + advance - 1)).astype(np.float32)
        return np.round(low + (high - low) * fraction).astype(np.int16)

    def _samples(self, positions: np.ndarray) -> np.ndarray:
        """The samples at `positions`; silence where they have not arrived or were overwritten."""
        kept = (positions >= max(0, self.written - len(self._ring))) & (positions < self.written)
        samples = np.zeros((len(positions), self.channels), np.int16)
        samples[kept] = self._ring[positions[kept] % len(self._ring)]
        return samples
