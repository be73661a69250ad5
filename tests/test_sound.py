"""Sound: a WHIP publisher's tone reaches WHEP viewers that offer audio, delayed by the picture's latency; the delay
line follows a latency change by stretching (no jump, no reordering); streams and viewers without sound as before."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from server.bench.rtc_clients import WhepViewer, WhipPublisher, http
from server.media.delayline import (
    CATCH_UP_SECONDS,
    DEAD_BAND_SECONDS,
    MAX_FAST_STRETCH,
    MAX_STRETCH,
    SAMPLE_RATE,
    START_HOLD_SECONDS,
    DelayLine,
)
from server.media.ice import restrict_ice_to_loopback

from conftest import LiveServer

TIMEOUT = 60
TONE_HZ = 440.0
PACKET = 960  # 20 ms at 48 kHz, as the sound feed reads


@pytest.fixture(autouse=True, scope="module")
def loopback_ice():
    restrict_ice_to_loopback()


@pytest.fixture(scope="module")
def studio():
    server = LiveServer()
    yield server
    output = server.stop()
    assert "Traceback" not in output, output


# ---- the delay line, on a simulated clock ----


def run_line(line: DelayLine, targets, seconds: float, jitter: float = 0.015) -> tuple[np.ndarray, list[float]]:
    """Write a ramp (channel 0: sample index / 32) in 20 ms chunks that arrive up to `jitter` late, and read a
    packet every 20 ms with the target `targets(t)`; returns what was read and the delay of each packet."""
    rng = np.random.default_rng(0)
    out, delays = [], []
    for tick in range(round(seconds / 0.02)):
        now = 100.0 + tick * 0.02
        first = tick * PACKET
        index = first + np.arange(PACKET)
        ramp = np.stack([index // 32, np.zeros_like(index)], axis=1).astype(np.int16)
        line.write(ramp, arrival=now + rng.uniform(0, jitter), media_time=first / SAMPLE_RATE)
        out.append(line.read(PACKET, now, targets(tick * 0.02)))
        delays.append(line.delay)
    return np.concatenate(out), delays


def test_the_delay_follows_a_latency_change_by_stretching_without_jumps_or_reordering():
    line = DelayLine()

    def latency(t: float) -> float | None:
        if t < 5:
            return 0.300
        if t < 9:
            return 0.450  # the model slowed: 150 ms more
        if t < 12:
            return None  # no picture leaves: the sound goes on at the last delay
        return 0.250

    out, delays = run_line(line, latency, seconds=16)
    delays_ms = np.array([np.nan if delay is None else delay for delay in delays]) * 1000
    at = lambda t: delays_ms[round(t / 0.02)]  # noqa: E731

    # Silence while the first latencies are the warm-up's, then the sound starts at the delay of that moment.
    held = round(START_HOLD_SECONDS / 0.02)
    assert not out[: held * PACKET].any() and np.isnan(delays_ms[:held]).all()
    assert out[held * PACKET : (held + 2) * PACKET].any()
    assert abs(at(4.9) - 300) <= DEAD_BAND_SECONDS * 1000, at(4.9)  # left alone inside the dead band
    # Each packet moves the delay by at most its stretch: 1/16 (1.25 ms) within CATCH_UP_SECONDS x 1/16 = 37.5 ms of
    # the target, more when further, never more than MAX_FAST_STRETCH (5 ms).
    steps = np.abs(np.diff(delays_ms[held:]))
    distance = np.abs(
        delays_ms[held + 1 :] - np.array([latency(i * 0.02) or 0.450 for i in range(held + 1, 800)]) * 1000
    )
    assert steps.max() <= PACKET * MAX_FAST_STRETCH / SAMPLE_RATE * 1000 + 0.05
    near = distance < CATCH_UP_SECONDS * MAX_STRETCH * 1000 - 2
    assert steps[near].max() <= PACKET * MAX_STRETCH / SAMPLE_RATE * 1000 + 0.05
    # 150 ms: within EBU R37's 40 ms "early" limit in 1.2 s, then gliding in.
    assert abs(at(5 + 1.2) - 450) < 40, at(6.2)
    assert abs(at(5 + 3.9) - 450) < 1.5, at(8.9)
    assert abs(at(11.9) - 450) < 1.5, at(11.9)  # held while no latency came
    assert abs(at(15.9) - 250) < 5, at(15.9)  # 200 ms down: gliding in by 15.9 s
    # The samples keep their order and nothing is skipped: the ramp never falls and never rises by more than one
    # step (it rises 1/32 a sample; stretched, 17/512). The first packet fades in from silence.
    ramp = out[(held + 1) * PACKET :, 0].astype(np.int32)
    assert np.diff(ramp).min() >= 0 and np.diff(ramp).max() <= 1
    assert line.underruns == 0 and line.jumps == 0


def test_a_large_latency_jump_is_caught_up_within_two_seconds():
    """The model 2x slower at 2 fps: the latency 400 ms up at once; R37's -40 ms is reached within 2 s."""
    line = DelayLine()
    _, delays = run_line(line, lambda t: 0.200 if t < 5 else 0.600, seconds=8)
    delays_ms = np.array([np.nan if delay is None else delay for delay in delays]) * 1000
    assert abs(delays_ms[round(7.0 / 0.02)] - 600) < 40, delays_ms[round(7.0 / 0.02)]
    assert line.underruns == 0 and line.jumps == 0


def test_in_its_first_seconds_the_sound_restarts_at_a_far_latency_instead_of_gliding():
    """The warm-up's latency still falling after the hold: the sound starts again there, faded in."""
    line = DelayLine()
    out, delays = run_line(line, lambda t: 0.300 if t < 2.0 else 0.120, seconds=4)
    assert abs(delays[round(2.1 / 0.02)] - 0.120) < 0.005, delays[round(2.1 / 0.02)]
    assert line.jumps == 0 and line.underruns == 0
    # The restart fades in: its packet starts at silence.
    restart = round(2.0 / 0.02) * PACKET
    assert not out[restart : restart + 1].any()


def test_the_delay_covers_the_sound_s_own_jitter_when_the_picture_is_quicker():
    """A picture latency of 5 ms under 30 ms of arrival jitter: the sound waits for its samples, no underrun."""
    line = DelayLine()
    _, delays = run_line(line, lambda t: 0.005, seconds=6, jitter=0.030)
    assert line.underruns == 0, line.underruns
    assert 0.025 < delays[-1] < 0.045, delays[-1]


def test_a_gap_in_the_publishers_sound_is_kept_as_silence_in_place():
    """Opus DTX sends nothing while quiet: what comes after a gap keeps its place, the delay does not move."""
    line = DelayLine(start_hold_seconds=0)
    tone = np.full((PACKET, 2), 1000, np.int16)
    delays, out = [], []
    for tick in range(150):
        now = tick * 0.02
        if not 50 <= tick < 60:  # 200 ms not sent
            line.write(tone, arrival=now, media_time=tick * 0.02)
        out.append(line.read(PACKET, now, 0.1))
        delays.append(line.delay)
    assert max(delays[1:]) - min(delays[1:]) < 1e-9
    silent = [i for i, packet in enumerate(out) if not packet.any()]
    # The delay counts from when a sample was due: its packet's arrival less the rest of the packet after it. The
    # first sample of each packet leaves 80 ms after its packet came. Silent: the first 80 ms (nothing that old
    # yet), the gap 80 ms later, and nothing else.
    assert silent == [*range(4), *range(54, 64)], silent


# ---- through the server ----


def dominant_frequency(samples: np.ndarray) -> float:
    """The strongest frequency of `samples` (mono float), to a fraction of a Hz (parabolic peak interpolation)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = int(np.argmax(spectrum[1:-1])) + 1
    left, middle, right = np.log(spectrum[peak - 1 : peak + 2])
    shift = 0.5 * (left - right) / (left - 2 * middle + right)
    return (peak + shift) * SAMPLE_RATE / len(samples)


def level(samples: np.ndarray) -> float:
    """RMS as a share of full scale."""
    return float(np.sqrt(np.mean((samples.astype(np.float64) / 32768) ** 2)))


async def wait_until(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return value


@pytest.mark.slow
@pytest.mark.serial  # the delay against the latency, frames against seconds: real-time checks
async def test_a_whep_viewer_hears_the_publishers_tone_and_a_video_viewer_sees_as_before(studio):
    whip, whep = f"{studio.url}/whip/tone", f"{studio.url}/whep/tone"
    async with (
        WhipPublisher(whip, tone_hz=TONE_HZ),
        WhepViewer(whep, audio=True) as listener,
        WhepViewer(whep) as watcher,
    ):
        assert "m=audio" in listener.reply.body and "a=sendonly" in listener.reply.body.split("m=audio")[1]
        heard = lambda: [s for _, s in listener.sound if level(s) > 0.05]  # noqa: E731
        await wait_until(lambda: len(heard()) >= 150, "3 s of sound")  # from the first picture out on
        await watcher.wait_for_frames(5, timeout=TIMEOUT)
        await listener.wait_for_frames(5, timeout=TIMEOUT)
        # The last 3 s, mono, in 0.2 s blocks. A block is stretched, by at most MAX_STRETCH, while the delay
        # glides after the latency, and a glide may last seconds after the stream starts: one run here heard
        # 467.5 Hz (the full stretch) for all 3 s, another 427-467 Hz; in CI two of three 0.4 s blocks fell in
        # glides (449.6, 456.6 Hz). So the publisher's tone, within the stretch, in every block.
        sound = np.concatenate(heard()[-150:]).astype(np.float64).mean(axis=1)
        frequencies = [dominant_frequency(block) for block in np.split(sound, 15)]
        loudness = level(sound)
        print(f"received: {np.round(frequencies, 2)} Hz at RMS {loudness:.3f} of full scale")
        assert all(abs(f - TONE_HZ) < TONE_HZ * MAX_STRETCH + 3 for f in frequencies), frequencies
        assert loudness > 0.1, loudness  # sent mono at 0.3 of full scale: 0.15 RMS a channel once stereo
        assert not watcher.sound  # its offer had no audio m-line

        # The sound's delay follows the picture's latency (each a median or mean over about a second).
        pairs = []
        for _ in range(4):
            await asyncio.sleep(1.1)
            stats = studio.get_json("/streams/tone")["stats"]
            pairs.append((stats["latency_ms"], stats["sound_delay_ms"]))
        print("latency ms, sound delay ms:", pairs)
        assert all(delay is not None for _, delay in pairs), pairs
        assert np.median([abs(latency - delay) for latency, delay in pairs]) < 60, pairs
        metrics = await http("GET", f"{studio.url}/metrics")
        assert 'lcmlive_sound_delay_seconds{stream="tone"}' in metrics.body


@pytest.mark.slow
async def test_a_stream_without_sound_answers_an_audio_viewer_with_no_audio_track(studio):
    whip, whep = f"{studio.url}/whip/mute", f"{studio.url}/whep/mute"
    async with WhipPublisher(whip, audio=False), WhepViewer(whep, audio=True) as listener:
        assert "a=inactive" in listener.reply.body.split("m=audio")[1]
        await listener.wait_for_frames(5, timeout=TIMEOUT)
        assert not listener.sound
        await asyncio.sleep(1.1)
        assert studio.get_json("/streams/mute")["stats"]["sound_delay_ms"] is None
