"""`lcmlive render`: a recording folder (written here with PyAV in the recorder's format, docs/recording-format.md)
replayed frame by frame on the tiny model into an MP4 master: every frame at its time, the sound, the params and
modulations as they ran, determinism, and folders that are short or not recordings at all."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_recording import seconds

from pipelines import StreamPipeline, params_model_for
from pipelines.batch import stylise_batch
from pipelines.synthetic import moving_pattern
from server.cli import main as lcmlive
from server.render import RecordingError, read_recording, render
from server.render.replay import ReplayedStream, Timeline

MS = Fraction(1, 1000)
CAMERA = (128, 64)
FRAMES = 10
TIMES = [round(0.2 + 0.07 * i + 0.013 * (i % 3), 3) for i in range(FRAMES)]  # a camera's uneven arrivals
DROPPED = {3, 6}  # frames the live path never ran: no frame line
CHANGE_T = round((TIMES[5] + TIMES[6]) / 2, 4)  # a prompt change between frames 5 and 6, faded over 0.1 s
PACING = {"target_fps": 30.0, "max_resolution": 128, "min_resolution": 128, "similarity_skip": 0.0}
LIVE_STRENGTH = {i: round(0.5 + 0.02 * i, 4) if i < 6 else round(0.6 + 0.02 * (i - 5), 4) for i in range(FRAMES)}


def write_input(path: Path, pictures: list[np.ndarray], times: list[float], sound_seconds: float = 0.0) -> None:
    """input.mkv as the recorder writes it: H.264 (crf 16, ultrafast, zerolatency) at pts = arrival in ms, and
    Opus 48 kHz stereo in 20 ms packets on the same clock."""
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", options={"crf": "16", "preset": "ultrafast", "tune": "zerolatency"})
        video.width, video.height = pictures[0].shape[1], pictures[0].shape[0]
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = MS
        sound = container.add_stream("libopus", rate=48000, layout="stereo") if sound_seconds else None
        for picture, t in zip(pictures, times, strict=True):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), MS
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            samples = np.arange(round(48000 * sound_seconds)) / 48000
            tone = (0.3 * np.sin(2 * np.pi * 440 * samples)).astype(np.float32)
            for start in range(0, len(tone) - 959, 960):
                chunk = np.repeat(tone[None, start : start + 960], 2, axis=0)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = 48000, start, Fraction(1, 48000)
                container.mux(sound.encode(frame))
            container.mux(sound.encode())


def write_events(path: Path, events: list[dict], torn: str = "") -> None:
    path.write_text("".join(json.dumps(event) + "\n" for event in events) + torn)


def header(params: dict) -> dict:
    return {
        "type": "header",
        "version": "0.1.0",
        "model": "tiny",
        "preset": "the toy",
        "device": "cpu",
        "dtype": "float32",
        "controlnet": [],
        "styles": [],
        "stream": "cam",
        "started": "2026-01-02T03:04:05.678Z",
        "params": params,
    }


def start_params(tiny) -> dict:
    params = params_model_for(tiny)().as_dict()
    modulation = {"param": "strength", "source": "level", "amount": 0.4, "smooth_ms": 0.0}
    return {**params, "prompt": "watercolor", "seed": 7, "strength": 0.5, "modulations": [modulation], **PACING}


def show_events(tiny) -> list[dict]:
    """The show: strength modulated per frame, a prompt change with a fade between frames 5 and 6, two frames
    dropped (one of them the first after the change), and a clean end."""
    params = start_params(tiny)
    changed = {**params, "prompt": "neon night", "strength": 0.6, "transition_s": 0.1}
    events = [header(params)]
    for i, t in enumerate(TIMES):
        if i == 6:
            events.append({"type": "params", "t": CHANGE_T, "wall": "…", "front_end": "rest", "params": changed})
        if i not in DROPPED:
            frame = {"type": "frame", "t": t, "size": list(CAMERA), "modulated": {"strength": LIVE_STRENGTH[i]}}
            events.append({**frame, "sound": {"level": 0.1}})
    events.append({"type": "end", "t": TIMES[-1] + 0.05, "reason": "stopped"})
    return events


def camera(count: int = FRAMES) -> list[np.ndarray]:
    return [moving_pattern(*CAMERA, 4 * i) for i in range(count)]


@pytest.fixture(scope="module")
def show(tiny, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recordings") / "cam-20260102T030405Z"
    folder.mkdir()
    write_input(folder / "input.mkv", camera(), TIMES, sound_seconds=TIMES[-1] + 0.2)
    write_events(folder / "events.jsonl", show_events(tiny))
    (folder / "recording.json").write_text(json.dumps({"id": folder.name, "frames": FRAMES}))
    return folder


def decoded_input(folder: Path) -> list[tuple[float, av.VideoFrame]]:
    with av.open(str(folder / "input.mkv")) as container:
        return [(seconds(frame), frame) for frame in container.decode(video=0)]


def decoded_pictures(path: Path) -> tuple[list[float], list[np.ndarray]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [seconds(f) for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def by_hand(tiny, folder: Path, with_change: bool = True) -> list[np.ndarray]:
    """The pictures the show should give, written out from what this test recorded: the params and strength of
    each frame (a dropped frame: the last frame's push on the params in force), the fade's clock."""
    model = params_model_for(tiny)
    params = start_params(tiny)
    changed = {**params, "prompt": "neon night", "strength": 0.6, "transition_s": 0.1}
    clock = Clock()
    pipeline = StreamPipeline(tiny, params=model.validated(model_only(model, params)), clock=clock)
    strength = dict(LIVE_STRENGTH)
    strength[3] = LIVE_STRENGTH[2]  # base 0.5 unchanged: frame 2's value
    strength[6] = 0.6 + (LIVE_STRENGTH[5] - 0.5)  # frame 5's push on the new base
    pictures = []
    for i, (t, frame) in enumerate(decoded_input(folder)):
        if i == 6 and with_change:
            clock.now = CHANGE_T
            pipeline.apply(pipeline.params_model.validated(model_only(model, changed)))
        clock.now = t
        rgb = frame.to_ndarray(format="rgb24", width=CAMERA[0], height=CAMERA[1])
        request = pipeline.prepare(rgb, CAMERA, CAMERA, {"strength": round(strength[i], 6)})
        pictures.append(stylise_batch([request])[0].numpy())
    return pictures


def model_only(model, params: dict) -> dict:
    return {name: value for name, value in params.items() if name in model.model_fields}


@pytest.mark.slow
def test_each_frame_runs_with_the_params_and_modulated_values_it_had_live(tiny, show):
    recording = read_recording(show)
    assert recording.notes == []
    stream = ReplayedStream(tiny, recording)
    replayed = [stream.render(frame, t) for t, frame in decoded_input(show)]
    assert len(replayed) == FRAMES and stream.live_frames == FRAMES - len(DROPPED)
    expected = by_hand(tiny, show)
    for i, (mine, theirs) in enumerate(zip(replayed, expected, strict=True)):
        assert np.array_equal(mine, theirs), f"frame {i}"
    # The change is in the picture from its frame on (measured 40-95 apart), so the equality above tells it.
    unchanged = by_hand(tiny, show, with_change=False)
    assert all(np.array_equal(a, b) for a, b in zip(replayed[:6], unchanged[:6], strict=True))
    assert min(np.abs(a.astype(int) - b).mean() for a, b in zip(replayed[6:], unchanged[6:], strict=True)) > 20


@pytest.fixture(scope="module")
def master(tiny, show) -> tuple[Path, object]:
    out = show / "master.mp4"
    return out, render(read_recording(show), out, tiny)


@pytest.mark.slow
def test_the_master_holds_every_input_frame_at_its_own_time_with_the_sound(tiny, show, master):
    out, summary = master
    assert (summary.frames, summary.live_frames, summary.size, summary.sound) == (FRAMES, FRAMES - 2, CAMERA, True)
    with av.open(str(out)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (video.codec_context.width, video.codec_context.height) == CAMERA
        assert sound.codec_context.name == "opus"
        samples = sum(frame.samples for frame in container.decode(sound))
    times, pictures = decoded_pictures(out)
    assert times == pytest.approx([t - TIMES[0] for t in TIMES], abs=1e-3)  # its own uneven timing, from 0
    # The sound from the first picture on: the input's 1.17 s less the 0.2 s before it (Opus's 20 ms packets).
    assert samples / 48_000 == pytest.approx(TIMES[-1] + 0.2 - TIMES[0], abs=0.03)
    # The pictures are the replay's, as far as H.264 keeps them.
    stream = ReplayedStream(tiny, read_recording(show))
    replayed = [stream.render(frame, t) for t, frame in decoded_input(show)]
    loss = [np.abs(p.astype(int) - r).mean() for p, r in zip(pictures, replayed, strict=True)]
    assert max(loss) < 2.5, loss  # measured 1.5-1.9 a frame: crf 17, and 4:2:0 halves the colour's resolution


def test_two_renders_of_a_folder_decode_to_the_same_pictures(tiny, show, master):
    again = render(read_recording(show), show / "again.mp4", tiny)
    assert again.frames == FRAMES
    first, second = decoded_pictures(master[0])[1], decoded_pictures(show / "again.mp4")[1]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_folder_cut_by_a_crash_renders_what_it_holds(tiny, show, tmp_path):
    folder = tmp_path / "cam-20260102T030405Z"
    folder.mkdir()
    data = (show / "input.mkv").read_bytes()
    (folder / "input.mkv").write_bytes(data[: len(data) * 2 // 3])  # mid-cluster: no end, no cues
    lines = (show / "events.jsonl").read_text().splitlines(keepends=True)
    (folder / "events.jsonl").write_text("".join(lines[:8]) + lines[8][: len(lines[8]) // 2])  # torn last line
    with av.open(str(folder / "input.mkv")) as container:
        readable = sum(1 for _ in container.decode(video=0))
    assert 0 < readable < FRAMES
    recording = read_recording(folder)
    assert any("last line is cut off" in note for note in recording.notes)
    assert any("did not end cleanly" in note for note in recording.notes)
    summary = render(recording, folder / "master.mp4", tiny)
    assert summary.frames == readable == len(decoded_pictures(folder / "master.mp4")[1])


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({}, "input.mkv and events.jsonl missing"),
        ({"input.mkv": b"x"}, "events.jsonl missing"),
        ({"events.jsonl": b'{"type": "frame", "t": 0}\n', "input.mkv": b"x"}, "does not start with a header"),
        ({"events.jsonl": b'{"type": "header"}\n', "input.mkv": b"x"}, 'has no "params"'),
        ({"events.jsonl": b'{"type": "header", "params": {}}\n', "input.mkv": b"not a video"}, "cannot be read"),
        ({"events.jsonl": b'{"type": "header", "params": {}}\nnot json\n{}\n', "input.mkv": b"x"}, "line 2 is not"),
    ],
)
def test_a_folder_that_is_not_a_recording_says_what_is_missing(tmp_path, files, words):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(RecordingError, match=words):
        read_recording(tmp_path)


def test_the_command_says_what_is_missing_in_one_line(tmp_path, capsys):
    assert lcmlive(["render", str(tmp_path / "nowhere")]) == 2
    assert lcmlive(["render", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"lcmlive: {tmp_path / 'nowhere'} is not a folder (give a recording's folder, e.g. recordings/cam-20260101T…Z)",
        f"lcmlive: {tmp_path} is not a recording: input.mkv and events.jsonl missing (a recording folder holds "
        "input.mkv, events.jsonl and, after a clean end, recording.json)",
    ]


def test_the_command_renders_larger_with_more_steps_and_shows_its_progress(tiny, tmp_path, capsys):
    params = {**start_params(tiny), "modulations": []}
    times = TIMES[:3]
    write_input(tmp_path / "input.mkv", camera(3), times)
    frames = [{"type": "frame", "t": t, "size": list(CAMERA), "modulated": {}, "sound": None} for t in times]
    write_events(tmp_path / "events.jsonl", [header(params), *frames])
    out = tmp_path / "big.mp4"
    assert (
        lcmlive(["render", str(tmp_path), "--out", str(out), "--size", "256", "--steps", "3", "--device", "cpu"]) == 0
    )
    printed = capsys.readouterr()
    assert "render: 100%" in printed.err and "3/3" in printed.err  # tqdm's bar, to stderr
    assert "did not end cleanly" in printed.err  # no end line: told
    summary = printed.out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("rendered 3 frames") and "256x128, 3 steps on tiny" in summary[0]
    assert summary[0].endswith(f"no sound: {out}")
    times_out, pictures = decoded_pictures(out)
    assert len(pictures) == 3 and pictures[0].shape == (128, 256, 3)
    assert not list(tmp_path.glob(".*partial*"))


def test_a_change_applies_from_the_frame_the_live_path_ran_next_if_that_came_first(tmp_path):
    # The engine applies a change between frames: the frame waiting then arrived before the change's t, and its
    # line follows the change's. A change with no frame line after it applies from its t.
    times = [1.0, 1.001, 1.04, 1.1, 1.2]  # the first two in one burst: 1 ms apart
    write_input(tmp_path / "input.mkv", camera(len(times)), times)
    change = {"type": "params", "params": {"prompt": "neon"}}
    events = [header({}), *[{"type": "frame", "t": t, "size": [128, 64]} for t in times[:2]], {**change, "t": 1.05}]
    events += [{"type": "frame", "t": 1.04, "size": [128, 64]}, {**change, "t": 1.15}]
    write_events(tmp_path / "events.jsonl", events)
    recording = read_recording(tmp_path)
    assert [(c.t, c.applies_from) for c in recording.changes] == [(1.05, 1.04), (1.15, 1.15)]
    timeline = Timeline(recording.changes, recording.frames)
    replayed = [timeline.until(t) for t in times]
    assert [[c.t for c in changes] for changes, _ in replayed] == [[], [], [1.05], [], [1.15]]
    # Each frame line is its input frame's; the frames the live path dropped have none.
    assert [event and event.t for _, event in replayed] == [1.0, 1.001, 1.04, None, None]
