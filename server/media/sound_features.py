"""A stream's sound as 0-1 sources for the picture: level, three bands, an onset envelope, tempo and beat phase.

Fed on the event loop with the publisher's sound as it arrives (SoundFeed.write's int16 stereo at 48 kHz, any
chunk length); every 10 ms hop it takes one Hann-windowed 2048-sample frame's FFT (numpy) and updates the values
that `snapshot()` returns, a new dict each hop so that the engine's thread can read it without a lock.

Times are the delay line's: sample i is due at `origin + i / 48000`, the origin being the least lag (arrival
minus position) of the last seconds, so a beat time here is when that sample arrived had it not queued, the
clock the camera frames' arrivals are on; the picture made then leaves with that sound.

Tempo is our own (numpy, below) rather than a library's. aubio is unmaintained upstream with no wheel for Python
3.11; its maintained fork aubio-ledfx 0.4.12 has one and tracked 97/120/140 BPM click tracks to within 0.1 BPM
at 9 us a 10 ms hop, but installs 70 MB (its own libaubio and libgomp), needs Python >= 3.11 (we support 3.10),
and with a 480-sample hop and a 1024 window it found 120.0 BPM yet reported no beat in 12 s of clicks. madmom
and BeatNet need Cython builds and torch models; essentia (14 MB wheel) tracks beats offline.

Cost on the event loop per 20 ms chunk (two hops), a minute of drums over noise on the 2-core dev CPU (AMD EPYC)
while other work loaded it (load 6.8): 0.125 ms median, 0.38 ms p95, 0.47 ms p99 of thread CPU time; the chunks
over 0.3 ms are the one in 25 that re-estimates the tempo (0.28 ms median, 0.55 ms at most). Wall time had the
same median and p95 but a p99 of 8 ms: the process waiting for a core, not this code.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .delayline import ANCHOR_SECONDS, JUMP_SECONDS, MIN_GAP_SECONDS, SAMPLE_RATE

# The modulation sources: each 0-1 (bpm is not one).
SOURCES = ("level", "low", "mid", "high", "onset", "beat")

HOP = 480  # 10 ms at 48 kHz: two hops per 20 ms Opus packet
FRAME = 2048  # 43 ms: 23.4 Hz bins, so the low band gets 7 bins; one FFT serves the bands and the onsets
# Low: kick and bass fundamentals; mid: voice, snare body, most instruments; high: hats, cymbals, sibilants.
# The low band starts at the third bin, 47 Hz (a DC offset leaks into the second through the window); 16 kHz
# is about where a 96 kbps Opus stream's content ends.
BANDS_HZ = ((40.0, 200.0), (200.0, 2000.0), (2000.0, 16000.0))
LEVEL_FLOOR_DB = -60.0  # dBFS (a full-scale sine reads 0): the level's 0
# A band reads 0 at BAND_FLOOR_DB and 1 at its peak, over at most BAND_RANGE_DB (the ear's scale: a band 6 dB
# under its peak reads 0.8). Its peak never falls below the floor plus the range: -75 dBFS hiss reads 0 and
# -60 dBFS white noise at most 0.37 (its high band; not blown up to 1), while kicks at -46 dBFS still swing the
# low band to 0.71.
BAND_FLOOR_DB = -70.0
BAND_RANGE_DB = 30.0
BAND_PEAK_FLOOR_DB = BAND_FLOOR_DB + BAND_RANGE_DB
PEAK_FALL_DB_PER_S = 3.0  # a loud chorus's peak is forgotten in a few seconds of a quiet verse
# Log-compressed magnitudes for the spectral flux: a -60 dBFS partial sits at the knee (log1p(1)).
FLUX_GAMMA = 1000.0
FLUX_BANDS = 27  # a third of an octave each from 40 Hz to 16 kHz (fewer: the lowest are under a bin wide)
FLUX_MEAN_SECONDS = 0.5  # the flux's running mean, taken off it: steady noise and tones are not onsets
ONSET_PEAK_FALL_PER_S = 0.5  # the novelty's peak halves in a second of quieter hits
ONSET_DECAY_SECONDS = 0.15  # the onset envelope falls to 1/e in 150 ms after a hit
# The novelty's peak never falls below this, so noise is not blown up into hits: -60 dBFS noise's scatter reads
# under 0.15 at p99 (0.31 raw), -40 dBFS noise's under 0.8; a kick at -46 dBFS (2.9) still reaches 1.
ONSET_FLOOR = 2.0
# The tempo's envelope takes the novelty less this: a steady -20 dBFS tone's flux scatter (under 0.01, beating
# with the hop) was periodic enough to be a confident tempo (0.90) until taken off.
ENVELOPE_FLOOR = 0.2
# A hit shows in the flux from the hop it enters, stamped at the hop's end: beats came out 8-17 ms late (mean
# 12.6) for kicks and hats at four places within a hop, at 120 BPM; -4.2..+4.3 ms with this taken off.
ONSET_DELAY_SECONDS = 0.0125

# Tempo: the onset envelope's last 8 s, autocorrelated every 0.5 s from 4 s on; 60-200 BPM with a prior of one
# octave around 120 (it picks between 70 and 140 when both fit, as a listener would).
TEMPO_WINDOW_SECONDS = 8.0
TEMPO_MIN_SECONDS = 4.0
TEMPO_EVERY_SECONDS = 0.5
BPM_RANGE = (60.0, 200.0)
# Measured: 120, 75 and 180 BPM click tracks within 0.05 BPM, 97 at 96.87, 140 at 139.63: the autocorrelation
# of an envelope sampled every 10 ms leans towards whole lags.
BPM_STEP = 0.25
BPM_PRIOR = 120.0
BPM_PRIOR_OCTAVES = 1.0
HARMONICS = 4  # the autocorrelation at 1-4 periods: sharper than one lag, and a period's half cannot fake it
# Confidence: the best period's score less the median score. Click tracks (75-180 BPM, kicks or hats) scored
# 0.51-0.71 at 4 s, 0.7-0.88 from 8 s, drum patterns 0.54-0.78; white noise, Poisson-timed kicks, random hits
# over noise and speech-like modulated noise at most 0.10 (12 s each).
TEMPO_ENTER = 0.3
TEMPO_LEAVE = 0.2
HOLD_SPAN = 0.04  # the tempo held is preferred within 4% of it, by this much (one octave's prior is 0.61)
HOLD_BONUS = 1.2
PHASE_STEP = 0.25  # hops
PHASE_RECENCY = 0.85  # each earlier beat weighs this much less in the phase fit


@dataclass(frozen=True)
class Tempo:
    """A tempo and where its beats fall: `beat_time` is a beat (monotonic seconds), `beat_index` its count, a bar
    (4 beats) starting where the count is a multiple of 4 (no downbeat detection: the first beat found is one)."""

    bpm: float
    beat_time: float
    beat_index: int
    confidence: float

    @property
    def period(self) -> float:
        return 60.0 / self.bpm

    def phase_at(self, t: float) -> float:
        """0 at a beat, rising to 1 at the next."""
        return ((t - self.beat_time) / self.period) % 1.0

    def next_beat(self, now: float, every: int = 1) -> float:
        """The time of the first beat after `now` whose count is a multiple of `every` (4: the next bar)."""
        beats = math.floor((now - self.beat_time) / self.period) + 1
        index = self.beat_index + beats
        index += -index % every
        return self.beat_time + (index - self.beat_index) * self.period


SILENT = {"level": 0.0, "low": 0.0, "mid": 0.0, "high": 0.0, "onset": 0.0, "bpm": None, "beat": None}


class SoundFeatures:
    """One stream's sound features. `write`, `advance` and `time_of` on the event loop; `snapshot()` and `tempo`
    from any thread: both are replaced whole, never changed in place."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self._window = np.hanning(FRAME + 1)[:-1].astype(np.float32)  # periodic: overlapped hops sum flat
        self._window_power = float(np.sum(self._window.astype(np.float64) ** 2))
        bins = [round(hz * FRAME / rate) for pair in BANDS_HZ for hz in pair]
        self._bins = (bins[0], bins[1], bins[3], bins[5])  # contiguous: low [0,1), mid [1,2), high [2,3)
        self._tail = np.zeros(FRAME, np.float32)  # the last frame's samples, ending at the last hop
        self._pending = np.zeros(0, np.float32)  # samples after the last hop
        edges = np.geomspace(BANDS_HZ[0][0], BANDS_HZ[-1][1], FLUX_BANDS + 1) * FRAME / rate
        self._flux_edges = np.unique(np.round(edges[:-1]).astype(int)) - self._bins[0]  # low bins merge
        self._previous_log = np.zeros(len(self._flux_edges))
        self._hops = 0
        self._lags: deque[tuple[float, float]] = deque()
        self._received = 0  # samples in, silence for media-time gaps included
        self._next_media: int | None = None
        self._peaks_db = [BAND_PEAK_FLOOR_DB] * 3
        self._flux_mean = 0.0
        self._novelty_peak = 0.0
        self._onset = 0.0
        size = round(TEMPO_WINDOW_SECONDS * rate / HOP)
        self._envelope = np.zeros(size, np.float64)  # the novelty per hop, newest last
        self._hop_seconds = HOP / rate
        self._tempo_every = round(TEMPO_EVERY_SECONDS / self._hop_seconds)
        self._tempo_min = round(TEMPO_MIN_SECONDS / self._hop_seconds)
        self._bpms = np.arange(BPM_RANGE[0], BPM_RANGE[1] + BPM_STEP / 2, BPM_STEP)
        self._prior = np.exp(-0.5 * (np.log2(self._bpms / BPM_PRIOR) / BPM_PRIOR_OCTAVES) ** 2)
        periods = 60.0 / self._bpms / self._hop_seconds
        lags = periods[:, None] * np.arange(1, HARMONICS + 1)[None, :]
        self._lag_below = np.floor(lags).astype(np.intp)  # linear interpolation, its indices found once
        self._lag_fraction = lags - self._lag_below
        self.tempo: Tempo | None = None
        self._snapshot: dict[str, float | None] = dict(SILENT)
        self._values = (0.0, 0.0, 0.0, 0.0, 0.0)

    def snapshot(self) -> dict[str, float | None]:
        """The latest values (a dict of its own; `beat` at the time of the last hop)."""
        return self._snapshot

    def time_of(self, position: int) -> float | None:
        """When sample `position` of the sound was due, on the clock of the arrivals (None before any)."""
        if not self._lags:
            return None
        return self._lags[0][1] + position / self.rate

    def write(self, samples: np.ndarray, arrival: float, media_time: float | None = None) -> None:
        """`samples` (frames x channels, int16) that arrived at `arrival`, their first at `media_time` (seconds on
        the publisher's clock) if known: a forward gap in media time is analysed as silence."""
        if media_time is not None:
            media = round(media_time * self.rate)
            gap = media - self._next_media if self._next_media is not None else 0
            if MIN_GAP_SECONDS * self.rate <= gap <= JUMP_SECONDS * self.rate:  # as the delay line does
                self._silence(gap)
            self._next_media = media + len(samples)
        mono = samples.mean(axis=1, dtype=np.float32) * np.float32(1 / 32768)
        self._received += len(mono)
        lag = arrival - self._received / self.rate
        while self._lags and self._lags[-1][1] >= lag:
            self._lags.pop()
        self._lags.append((arrival, lag))
        while self._lags[0][0] < arrival - ANCHOR_SECONDS:
            self._lags.popleft()
        self._feed(mono)

    def advance(self, now: float, hold_seconds: float = 0.1) -> None:
        """No sound came in: once the last was due more than `hold_seconds` before `now`, the values read as
        silence (the tempo stays, its phase going on with time)."""
        due = self.time_of(self._received)
        if due is not None and now - due > hold_seconds and any(self._values):
            self._values = (0.0, 0.0, 0.0, 0.0, 0.0)
            self._publish(now)

    # ---- the analysis ----

    def _silence(self, count: int) -> None:
        """`count` samples of silence, the hops past the first frame's worth in closed form (all zeros then)."""
        self._received += count
        flushed = min(count, FRAME + 2 * HOP - len(self._pending))  # then the last frame holds only zeros
        self._feed(np.zeros(flushed, np.float32))
        hops, rest = divmod(count - flushed, HOP)
        if hops:
            seconds = hops * self._hop_seconds
            self._peaks_db = [max(p - PEAK_FALL_DB_PER_S * seconds, BAND_PEAK_FLOOR_DB) for p in self._peaks_db]
            self._flux_mean *= math.exp(-seconds / FLUX_MEAN_SECONDS)
            self._novelty_peak *= ONSET_PEAK_FALL_PER_S**seconds
            self._onset *= math.exp(-seconds / ONSET_DECAY_SECONDS)
            self._push_envelope(np.zeros(min(hops, len(self._envelope))))
            before, self._hops = self._hops, self._hops + hops
            if self._hops >= self._tempo_min and before // self._tempo_every != self._hops // self._tempo_every:
                self._estimate_tempo()
            self._values = (0.0, 0.0, 0.0, 0.0, self._onset)
            self._publish(self.time_of(self._hops * HOP))
        self._pending = np.concatenate((self._pending, np.zeros(rest, np.float32)))

    def _feed(self, mono: np.ndarray) -> None:
        data = np.concatenate((self._pending, mono)) if len(self._pending) else mono
        count = len(data) // HOP
        if count == 0:
            self._pending = data
            return
        buffer = np.concatenate((self._tail, data[: count * HOP]))
        self._tail, self._pending = buffer[-FRAME:], data[count * HOP :]
        frames = np.lib.stride_tricks.sliding_window_view(buffer, FRAME)[HOP::HOP] * self._window
        # 1. Level: the frames' mean square (window-weighted), as dBFS of a sine (+3 dB).
        mean_square = np.einsum("ij,ij->i", frames, frames) / self._window_power
        # 2. Bands: the power spectrum summed over each band's bins, on the same scale (Parseval).
        first, *_, last = self._bins
        power = np.abs(np.fft.rfft(frames, axis=1)[:, first:last]) ** 2
        bands = np.add.reduceat(power, [0, self._bins[1] - first, self._bins[2] - first], axis=1)
        bands *= 2.0 / (FRAME * self._window_power)
        # 3. Spectral flux: the rise of the log-compressed amplitudes of third-octave bands (a full-scale sine's
        # is 1). Per bin, steady noise's own frame-to-frame scatter rose as much as a kick (-40 dBFS noise: 41 at
        # p99, a kick at -6 dBFS: 53); summed over a band's bins it averages out.
        thirds = np.add.reduceat(power, self._flux_edges, axis=1) * (4.0 / (FRAME * self._window_power))
        logs = np.log1p(np.sqrt(thirds) * FLUX_GAMMA)
        rises = np.diff(logs, axis=0, prepend=self._previous_log[None, :])
        self._previous_log = logs[-1]
        flux = np.maximum(rises, 0.0).sum(axis=1)
        # 4. Per hop, in order: the peaks, the onset envelope, the tempo's novelty curve.
        novelties = np.empty(count)
        for i in range(count):
            novelties[i] = self._hop(float(mean_square[i]), bands[i].tolist(), float(flux[i]))
        self._push_envelope(np.maximum(novelties - ENVELOPE_FLOOR, 0.0))
        before, self._hops = self._hops, self._hops + count
        if self._hops >= self._tempo_min and before // self._tempo_every != self._hops // self._tempo_every:
            self._estimate_tempo()
        self._publish(self.time_of(self._hops * HOP))

    def _hop(self, mean_square: float, bands: list[float], flux: float) -> float:
        dt = self._hop_seconds
        level = _unit((_db(mean_square) - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB)
        values = []
        for i, energy in enumerate(bands):
            db = _db(energy)
            self._peaks_db[i] = max(db, self._peaks_db[i] - PEAK_FALL_DB_PER_S * dt, BAND_PEAK_FLOOR_DB)
            values.append(_unit(1.0 - (self._peaks_db[i] - db) / BAND_RANGE_DB))
        novelty = max(flux - self._flux_mean, 0.0)
        self._flux_mean += (flux - self._flux_mean) * (dt / FLUX_MEAN_SECONDS)
        self._novelty_peak = max(novelty, self._novelty_peak * ONSET_PEAK_FALL_PER_S**dt)
        hit = novelty / max(self._novelty_peak, ONSET_FLOOR) if novelty > 0 else 0.0
        self._onset = max(hit, self._onset * math.exp(-dt / ONSET_DECAY_SECONDS))
        self._values = (level, values[0], values[1], values[2], self._onset)
        return novelty

    def _push_envelope(self, values: np.ndarray) -> None:
        count = len(values)
        self._envelope[:-count] = self._envelope[count:]
        self._envelope[-count:] = values

    def _estimate_tempo(self) -> None:
        """The autocorrelation's best period (with the prior), then the phase whose pulse train best meets the
        recent onsets; kept while confident, with hysteresis."""
        size = min(self._hops, len(self._envelope))
        envelope = self._envelope[-size:]
        centred = envelope - envelope.mean()
        spectrum = np.fft.rfft(centred, 2 * size)
        autocorrelation = np.fft.irfft(spectrum.real**2 + spectrum.imag**2)[:size]
        if autocorrelation[0] <= 1e-12:
            self.tempo = None
            return
        autocorrelation /= autocorrelation[0]
        padded = np.zeros(len(self._envelope) + 1)  # lags past the history read 0
        padded[:size] = autocorrelation
        below, fraction = self._lag_below, self._lag_fraction
        scores = (padded[below] * (1 - fraction) + padded[below + 1] * fraction).mean(axis=1)
        weights = self._prior
        if self.tempo is not None:
            # Holding the tempo held: a 174 BPM track's 87 scored as well and took over at 8 s without it.
            weights = weights * np.where(np.abs(self._bpms / self.tempo.bpm - 1) < HOLD_SPAN, HOLD_BONUS, 1.0)
        best = int(np.argmax(scores * weights))
        # The prior picks the peak, not where in it: its top is the scores' own, not pulled towards 120.
        while 0 < best < len(scores) - 1 and max(scores[best - 1], scores[best + 1]) > scores[best]:
            best += 1 if scores[best + 1] > scores[best - 1] else -1
        confidence = float(scores[best] - np.median(scores))
        held = self.tempo is not None
        if confidence < (TEMPO_LEAVE if held else TEMPO_ENTER):
            self.tempo = None
            return
        bpm = float(self._bpms[best]) + _vertex(scores, best) * BPM_STEP
        period = 60.0 / bpm / self._hop_seconds  # hops
        offsets = np.arange(0.0, period, PHASE_STEP)
        beats = np.arange(int((size - 1) / period))
        positions = (size - 1) - offsets[:, None] - period * beats[None, :]
        below = positions.astype(np.intp)  # positions are >= 0: truncation is floor
        fraction = positions - below
        pulses = envelope[below] * (1 - fraction) + envelope[np.minimum(below + 1, size - 1)] * fraction
        fits = pulses @ PHASE_RECENCY ** beats.astype(np.float64)
        at = int(np.argmax(fits))
        offset = offsets[at] + _vertex(fits, at) * PHASE_STEP
        last_hop_time = self.time_of(self._hops * HOP)
        assert last_hop_time is not None
        beat_time = last_hop_time - offset * self._hop_seconds - ONSET_DELAY_SECONDS
        index = 0
        if self.tempo is not None:
            index = self.tempo.beat_index + round((beat_time - self.tempo.beat_time) / (60.0 / bpm))
        self.tempo = Tempo(bpm, beat_time, index, confidence)

    def _publish(self, now: float | None) -> None:
        level, low, mid, high, onset = self._values
        tempo = self.tempo
        self._snapshot = {
            "level": round(level, 3),
            "low": round(low, 3),
            "mid": round(mid, 3),
            "high": round(high, 3),
            "onset": round(onset, 3),
            "bpm": round(tempo.bpm, 1) if tempo else None,
            "beat": round(tempo.phase_at(now), 3) if tempo and now is not None else None,
        }


def _db(mean_square: float) -> float:
    """dBFS of a mean square, a full-scale sine's (0.5) reading 0."""
    return 10.0 * math.log10(2.0 * mean_square) if mean_square > 1e-20 else -math.inf


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _vertex(values: np.ndarray, at: int) -> float:
    """Where the parabola through `values[at-1:at+2]` peaks, relative to `at` (-0.5..0.5; 0 at an edge)."""
    if at == 0 or at == len(values) - 1:
        return 0.0
    left, centre, right = values[at - 1], values[at], values[at + 1]
    curvature = left - 2 * centre + right
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0
