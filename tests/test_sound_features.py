"""Sound features on synthetic signals fed as a publisher's sound arrives (20 ms chunks, jittered arrivals): tempo and
beat phase of click tracks, silence, kicks, hi-hats, a steady tone, gaps; the values are read as replaced dicts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from server.media.sound_features import SOURCES, SoundFeatures, Tempo

RATE = 48_000
CHUNK = 960  # 20 ms, as Opus packets decode
START = 1000.0  # the monotonic time of the first sample


def kick(amplitude: float = 0.5) -> np.ndarray:
    """A kick drum: a 60 Hz sine decaying over 40 ms."""
    t = np.arange(int(0.15 * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * 60 * t) * np.exp(-t / 0.04)


def hihat(amplitude: float = 0.3) -> np.ndarray:
    """A hi-hat: white noise, high-passed (a second difference), decaying over 10 ms."""
    noise = np.random.default_rng(7).standard_normal(int(0.05 * RATE))
    return amplitude * np.diff(noise, n=2, prepend=[0, 0]) / 4 * np.exp(-np.arange(len(noise)) / RATE / 0.01)


def placed(seconds: float, times: np.ndarray, sound: np.ndarray) -> np.ndarray:
    signal = np.zeros(int(seconds * RATE))
    for t in times:
        start = round(t * RATE)
        signal[start : start + len(sound)] += sound[: len(signal) - start]
    return signal


def stereo16(signal: np.ndarray) -> np.ndarray:
    mono = np.round(np.clip(signal, -1, 1) * 32767).astype(np.int16)
    return np.repeat(mono[:, None], 2, axis=1)


def feed(features: SoundFeatures, signal: np.ndarray, start: float = START, jitter: float = 0.0, seed: int = 0):
    """Write `signal` in 20 ms chunks, each arriving when its last sample is due plus up to `jitter` (seconds);
    yield each chunk's arrival after writing it."""
    rng = np.random.default_rng(seed)
    samples = stereo16(signal)
    for at in range(0, len(samples) - CHUNK + 1, CHUNK):
        arrival = start + (at + CHUNK) / RATE + rng.uniform(0.0, jitter)
        features.write(samples[at : at + CHUNK], arrival)
        yield arrival


def run(features: SoundFeatures, signal: np.ndarray, **kwargs) -> list[dict]:
    return [features.snapshot() for _ in feed(features, signal, **kwargs)]


@pytest.mark.parametrize("bpm", [120.0, 97.0, 140.0])
def test_click_track_tempo_and_beats_locked(bpm: float):
    """bpm within 1 after 8 s and predicted beats within 50 ms of the clicks, with arrivals jittered by up to
    30 ms; 97 and 140 are far enough from the prior (120) to show it is not the answer."""
    period = 60.0 / bpm
    clicks = np.arange(0.25, 12.0, period)
    grid = 0.25 + period * np.arange(100)  # the clicks' grid, on past the track's end
    features = SoundFeatures()
    errors = []
    for arrival in feed(features, placed(12.0, clicks, kick()), jitter=0.03):
        if arrival - START < 8.0:
            continue
        snapshot = features.snapshot()
        assert snapshot["bpm"] is not None and abs(snapshot["bpm"] - bpm) < 1.0, snapshot
        tempo = features.tempo
        assert tempo is not None
        for every in (1, 4):
            predicted = tempo.next_beat(arrival, every)
            assert arrival < predicted <= arrival + every * tempo.period + 1e-9
            errors.append(np.min(np.abs(START + grid - predicted)))
        assert snapshot["beat"] is not None and 0.0 <= snapshot["beat"] < 1.0
    assert len(errors) > 100
    assert max(errors) < 0.050, f"beats off by up to {max(errors) * 1000:.1f} ms"


def snare(amplitude: float = 0.3) -> np.ndarray:
    """A snare: noise and a 190 Hz tone decaying over 50 ms."""
    t = np.arange(int(0.12 * RATE)) / RATE
    noise = np.random.default_rng(5).standard_normal(len(t))
    return amplitude * (0.6 * noise + np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.05)


@pytest.mark.parametrize("bpm", [128.0, 174.0])
def test_drum_pattern_locks_to_the_beats(bpm: float):
    """Kick on 1 and 3, snare on 2 and 4, hats on the eighths, under a swelling bass and a wavering tone: the beats
    are found, not the off-beat hats; 174 BPM stays 174 once found though its half (87) is nearer the prior."""
    period = 60.0 / bpm
    beats = 0.3 + period * np.arange(200)
    played = beats[beats < 12.0]
    t = np.arange(12 * RATE) / RATE
    music = (
        placed(12.0, played[0::2], kick(0.6))
        + placed(12.0, played[1::2], snare())
        + placed(12.0, played + period / 2, hihat(0.2))
        + placed(12.0, played, hihat(0.1))
        + 0.05 * np.sin(2 * np.pi * 110 * t) * (1 + np.sin(2 * np.pi * t / (4 * period)))
        + 0.03 * np.sin(2 * np.pi * 440 * t + 3 * np.sin(2 * np.pi * 0.3 * t))
    )
    features = SoundFeatures()
    errors = []
    for arrival in feed(features, music, jitter=0.02):
        if arrival - START >= 8.0:
            tempo = features.tempo
            assert tempo is not None and abs(tempo.bpm - bpm) < 1.0, tempo
            errors.append(np.min(np.abs(START + beats - tempo.next_beat(arrival))))
    assert max(errors) < 0.050, f"beats off by up to {max(errors) * 1000:.1f} ms"


def test_bars_land_on_every_fourth_beat():
    tempo = Tempo(bpm=120.0, beat_time=10.0, beat_index=2, confidence=1.0)
    assert tempo.phase_at(10.25) == pytest.approx(0.5)
    assert tempo.next_beat(10.1) == pytest.approx(10.5)
    assert tempo.next_beat(10.0) == pytest.approx(10.5)  # after now, not at it
    assert tempo.next_beat(10.1, every=4) == pytest.approx(11.0)  # index 4
    assert tempo.next_beat(11.2, every=4) == pytest.approx(13.0)  # index 8
    assert tempo.next_beat(9.0) == pytest.approx(9.5)  # before the anchor too


def test_silence_reads_zero_and_no_tempo():
    snapshots = run(SoundFeatures(), np.zeros(6 * RATE))
    assert snapshots[-1] == {"level": 0.0, "low": 0.0, "mid": 0.0, "high": 0.0, "onset": 0.0, "bpm": None, "beat": None}
    assert set(SOURCES) <= set(snapshots[-1])


def test_faint_noise_is_not_blown_up():
    """Hiss (a quiet room through a microphone) is not raised to 1 by the bands' own peaks: the floors hold."""
    rng = np.random.default_rng(1)
    late = run(SoundFeatures(), rng.standard_normal(4 * RATE) * 10 ** (-75 / 20))[50:]
    for source in ("level", "low", "mid", "high"):
        assert max(s[source] for s in late) == 0.0, source
    assert max(s["onset"] for s in late) < 0.05
    late = run(SoundFeatures(), rng.standard_normal(4 * RATE) * 10 ** (-60 / 20))[50:]
    for source in ("low", "mid", "high"):
        assert max(s[source] for s in late) < 0.4, source
    assert max(s["onset"] for s in late) < 0.2
    assert late[-1]["bpm"] is None


def test_random_hits_have_no_tempo():
    """Kicks at random (Poisson) times: the confidence gate keeps bpm None, so the click tracks' bpm is earned."""
    times = np.cumsum(np.random.default_rng(3).exponential(0.3, 60))
    snapshots = run(SoundFeatures(), placed(12.0, times[times < 11.8], kick()))
    assert all(s["bpm"] is None and s["beat"] is None for s in snapshots)
    assert max(s["onset"] for s in snapshots) == 1.0  # they were heard


def test_kick_raises_low_and_onset_not_high():
    snapshots = run(SoundFeatures(), placed(1.0, np.array([0.5]), kick()))
    before, hit = snapshots[20:24], snapshots[25:30]
    assert max(s["low"] for s in before) == 0.0 and max(s["onset"] for s in before) == 0.0
    assert max(s["low"] for s in hit) > 0.9
    assert max(s["onset"] for s in hit) > 0.9
    assert max(s["high"] for s in hit) < 0.2


def test_hihat_raises_high_more_than_low():
    snapshots = run(SoundFeatures(), placed(1.0, np.array([0.5]), hihat()))
    hit = snapshots[25:30]
    assert max(s["high"] for s in hit) > 0.9
    assert max(s["low"] for s in hit) < 0.2
    assert max(s["onset"] for s in hit) > 0.9


def test_quiet_kicks_still_move_the_low_band():
    """Kicks at -46 dBFS: the band reads against its own peak, so it still swings."""
    snapshots = run(SoundFeatures(), placed(4.0, np.arange(0.25, 4.0, 0.5), kick(0.005)))
    lows = [s["low"] for s in snapshots[50:]]
    assert max(lows) > 0.5
    assert min(lows) == 0.0


def test_steady_tone_level_and_onset_falls_back():
    """A -20 dBFS tone reads 2/3 on the -60..0 dBFS scale; its attack is an onset that falls back within a
    second."""
    t = np.arange(3 * RATE) / RATE
    snapshots = run(SoundFeatures(), 0.1 * np.sin(2 * np.pi * 440 * t))
    assert max(s["onset"] for s in snapshots[:5]) > 0.5
    for s in snapshots[10:]:
        assert s["level"] == pytest.approx(2 / 3, abs=0.01)
    assert max(s["onset"] for s in snapshots[50:]) < 0.05
    assert snapshots[-1]["mid"] == 1.0 and snapshots[-1]["low"] == 0.0  # 440 Hz is in the mid band
    assert snapshots[-1]["bpm"] is None


def test_media_time_gap_is_silence_and_beats_go_on():
    """A publisher that sends nothing while quiet (Opus DTX): the gap in media time is analysed as silence (the
    values fall) and the beat grid is kept across it, its times still on the arrival clock."""
    period = 0.5
    clicks = np.arange(0.25, 10.0, period)
    samples = stereo16(placed(10.0, clicks, kick()))
    features = SoundFeatures()
    for at in range(0, 8 * RATE, CHUNK):
        features.write(samples[at : at + CHUNK], START + (at + CHUNK) / RATE, media_time=at / RATE)
    assert features.tempo is not None
    resume = 9 * RATE  # a second with no packets
    features.write(samples[resume : resume + CHUNK], START + (resume + CHUNK) / RATE, media_time=resume / RATE)
    after_gap = features.snapshot()
    assert after_gap["low"] == 0.0 and after_gap["onset"] is not None and after_gap["onset"] < 0.01
    tempo = features.tempo
    assert tempo is not None and abs(tempo.bpm - 120.0) < 1.0
    predicted = tempo.next_beat(START + 9.3)
    assert np.min(np.abs(START + clicks - predicted)) < 0.050


def test_advance_reads_silence_when_nothing_comes():
    features = SoundFeatures()
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(5 * RATE) / RATE)
    *_, last = feed(features, placed(5.0, np.arange(0.25, 5.0, 0.5), kick()) + tone)
    features.advance(last + 0.05)
    level = features.snapshot()["level"]
    assert level is not None and level > 0.0  # within the hold: a late packet is not silence
    features.advance(last + 0.3)
    snapshot = features.snapshot()
    assert snapshot["level"] == snapshot["low"] == snapshot["onset"] == 0.0
    assert snapshot["bpm"] is not None


def test_snapshot_is_replaced_never_changed():
    """The engine's thread reads it while the loop writes: a dict it holds never changes under it."""
    features = SoundFeatures()
    samples = stereo16(placed(1.0, np.array([0.3]), kick()))
    held = features.snapshot()
    copy = dict(held)
    for at in range(0, RATE - CHUNK + 1, CHUNK):
        features.write(samples[at : at + CHUNK], START + (at + CHUNK) / RATE)
    assert held == copy
    assert features.snapshot() is not held


def test_uneven_chunks_read_the_same():
    """Chunk lengths do not matter: hops are cut from the stream, not from the chunks."""
    signal = stereo16(placed(2.0, np.arange(0.25, 2.0, 0.5), kick()) + placed(2.0, np.array([1.1]), hihat()))
    even, uneven = SoundFeatures(), SoundFeatures()
    for at in range(0, len(signal), CHUNK):
        even.write(signal[at : at + CHUNK], START + (at + CHUNK) / RATE)
    cuts = np.cumsum(np.random.default_rng(2).integers(1, 1500, 200))
    cuts = [0, *cuts[cuts < len(signal)], len(signal)]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        uneven.write(signal[a:b], START + b / RATE)
    assert uneven.snapshot() == even.snapshot()


def test_cost_per_chunk_printed():
    """The cost per 20 ms chunk on the event loop, printed (timings are not asserted: they are flaky on shared
    CPUs). Measured on the 2-core dev CPU: see the module's docstring."""
    rng = np.random.default_rng(0)
    signal = placed(20.0, np.arange(0.25, 20.0, 60 / 124), kick()) + rng.standard_normal(20 * RATE) * 0.02
    samples = stereo16(signal)
    features = SoundFeatures()
    costs = []
    for at in range(0, len(samples) - CHUNK + 1, CHUNK):
        begin = time.perf_counter()
        features.write(samples[at : at + CHUNK], START + (at + CHUNK) / RATE)
        costs.append(time.perf_counter() - begin)
    costs_ms = np.array(costs[50:]) * 1000
    median, p95 = np.median(costs_ms), np.percentile(costs_ms, 95)
    print(f"\nsound features per 20 ms chunk: median {median:.3f} ms, p95 {p95:.3f} ms")
    assert features.snapshot()["bpm"] is not None
