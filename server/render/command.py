"""`lcmlive render FOLDER`: its flags, the model the recording names (or another), and the loop from input.mkv's
frames and sound to the master MP4, with a progress bar and a one-line summary."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.audio.stream  # the submodules named below: `import av` does not bind them for a type checker
import av.container
import av.video.stream
import torch
from tqdm import tqdm

from pipelines import ModelComponents, load_model, resolve_device

from ..engine import reserve_a_core_for_media
from .folder import INPUT, Recording, read_recording
from .master import MasterWriter
from .replay import ReplayedStream

MASTER = "master.mp4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="a recording's folder (input.mkv, events.jsonl)")
    parser.add_argument("--out", type=Path, help=f"the MP4 to write (default: FOLDER/{MASTER})")
    parser.add_argument("--model", help="preset name or local diffusers folder (default: the recording's model)")
    parser.add_argument(
        "--size",
        type=int,
        help="the pictures' longest side in pixels, rounded to a multiple of 64 (default: the largest size the show "
        "ran at live)",
    )
    parser.add_argument("--steps", type=int, help="denoising steps per frame (default: the recorded params' steps)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument(
        "--lora-dir", type=Path, help="the style LoRAs' folder, for a show that used styles (default: the recording's)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the summary line still comes)")


@dataclass
class RenderSummary:
    path: Path
    frames: int  # pictures written: every input frame that decoded
    live_frames: int  # of those, how many the live path ran
    seconds: float  # the show's time from the first picture to the last
    size: tuple[int, int]
    steps: int
    model: str
    wall_seconds: float
    sound: bool
    notes: list[str] = field(default_factory=list)  # what came up while rendering (the folder's own come before)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def line(self) -> str:
        sound = ", sound copied" if self.sound else ", no sound"
        return (
            f"rendered {self.frames} frames ({self.seconds:.1f} s of show, {self.live_frames} ran live) at "
            f"{self.size[0]}x{self.size[1]}, {self.steps} steps on {self.model} in {self.wall_seconds:.1f} s "
            f"({self.fps:.2f} fps){sound}: {self.path}"
        )


def main(args: argparse.Namespace) -> int:
    recording = read_recording(args.folder)
    for note in recording.notes:
        print(f"lcmlive render: {note}", file=sys.stderr)
    components = load_recorded_model(recording, args.model, args.device, args.lora_dir)
    # On a CPU the model leaves a core to decoding and x264, as the live engine does (and so runs the live
    # path's thread count): on the 2-core dev CPU, busy, 60 frames at 256 px took 15.9 s on one thread, 85.2 on two.
    threads_before = torch.get_num_threads()
    reserve_a_core_for_media(components.device)
    try:
        # Two renders of a folder give the same pictures: on CUDA that needs cuDNN's deterministic algorithms (the
        # CPU's are).
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True):
            summary = render(
                recording,
                args.out or recording.folder / MASTER,
                components,
                side=args.size,
                steps=args.steps,
                progress=not args.quiet,
            )
    finally:
        torch.set_num_threads(threads_before)  # run in-process (tests), the caller keeps its own threads
    for note in summary.notes:
        print(f"lcmlive render: {note}", file=sys.stderr)
    print(summary.line())
    return 0


def load_recorded_model(
    recording: Recording, model: str | None = None, device: str = "auto", lora_dir: Path | None = None
) -> ModelComponents:
    """The model the show ran (its ControlNet kinds, tiny VAE and styles), or `model` with the same parts; in
    the recorded dtype when the device is of the recorded kind, else the device's own."""
    header = recording.header
    resolved = resolve_device(device)
    dtype = None
    recorded_device = str(header.get("device", ""))
    recorded_dtype = getattr(torch, str(header.get("dtype", "")), None)
    if model is None and isinstance(recorded_dtype, torch.dtype) and recorded_device.startswith(resolved.type):
        dtype = recorded_dtype
    name = model or header.get("model") or header.get("preset")
    if not isinstance(name, str):
        raise ValueError(f"{recording.folder}/events.jsonl: the header names no model; give one with --model")
    if lora_dir is None and header.get("lora_dir"):
        lora_dir = Path(header["lora_dir"])
    return load_model(
        name,
        device=resolved,
        dtype=dtype,
        controlnet=header.get("controlnet") or None,
        tiny_vae=bool(header.get("tiny_vae", False)),
        lora_dir=lora_dir,
    )


def render(
    recording: Recording,
    out: Path,
    components: ModelComponents,
    side: int | None = None,
    steps: int | None = None,
    progress: bool = False,
) -> RenderSummary:
    """Every frame of the recording's input, in order, through `components` into the MP4 `out`, with its sound."""
    if side is not None and side < 64:
        raise ValueError(f"--size {side} is too small: the model's sizes are multiples of 64")
    started = time.perf_counter()
    stream = ReplayedStream(components, recording, side, steps)
    notes: list[str] = []
    bar = tqdm(total=recording.video.packets, unit="frame", desc="render", file=sys.stderr, disable=not progress)
    with av.open(str(recording.input_path)) as container, bar:
        video = container.streams.video[0]
        time_base = video.time_base
        assert time_base is not None  # read_recording refuses a video stream without one
        sound = container.streams.audio[0] if container.streams.audio else None
        writer = MasterWriter(out, stream.picture_size, time_base, recording.video.first_pts, sound)
        try:
            for item in _input(container, video, sound, notes):
                if isinstance(item, av.Packet):
                    writer.add_sound(item)
                    continue
                pts = item.pts
                assert pts is not None  # _input passes only frames with one
                t = float(pts * time_base)
                writer.add_picture(stream.render(item, t), pts)
                bar.update()
            writer.close()
        except BaseException:
            writer.discard()
            raise
    notes += stream.notes
    return RenderSummary(
        path=out,
        frames=writer.pictures,
        live_frames=stream.live_frames,
        seconds=writer.duration,
        size=stream.picture_size,
        steps=stream.pipeline.params.steps,
        model=components.model_id,
        wall_seconds=time.perf_counter() - started,
        sound=writer.sound_packets > 0,
        notes=notes,
    )


def _input(
    container: av.container.InputContainer,
    video: av.video.stream.VideoStream,
    sound: av.audio.stream.AudioStream | None,
    notes: list[str],
) -> Iterator[av.VideoFrame | av.Packet]:
    """input.mkv's camera frames, decoded, and its sound packets, as they lie in the file; a file cut short ends
    where it can no longer be read (told in `notes`)."""
    packets = container.demux(*[s for s in (video, sound) if s is not None])
    frames = 0
    while True:
        try:
            packet = next(packets)
            items = packet.decode() if packet.stream is video else [packet]
        except StopIteration:
            return
        except av.FFmpegError as error:
            notes.append(f"{INPUT} cannot be read past frame {frames} ({error}): the master ends there")
            return
        for item in items:
            if isinstance(item, av.VideoFrame):
                if item.pts is None:
                    continue
                frames += 1
                yield item
            elif isinstance(item, av.Packet):  # the sound's, passed on undecoded
                yield item
