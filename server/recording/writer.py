"""A recording's files written as the show goes: one thread per file fed by a bounded queue, Matroska in short
clusters flushed per packet, so that a `kill -9` of the server loses about the last half second.

The muxer writes a cluster out when it closes it (it needs the cluster's size first): `cluster_time_limit` bounds
what a crash loses to 0.5 s, and `flush_packets` hands each write to the kernel at once (a killed process loses
nothing the kernel has). Measured here: a writer killed 3.3 s in left a file that decodes to 3.0 s.
"""

from __future__ import annotations

import collections
import fractions
import logging
import math
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import av.audio.stream  # the submodules named below: `import av` does not bind them for a type checker
import av.container
import av.video.frame
import av.video.stream
from av import AudioFrame, VideoFrame

log = logging.getLogger(__name__)

MILLISECONDS = fractions.Fraction(1, 1000)  # Matroska's own time base
SAMPLE_RATE = 48_000
SAMPLES = fractions.Fraction(1, SAMPLE_RATE)
MATROSKA_OPTIONS = {
    "cluster_time_limit": "500",
    "flush_packets": "1",
    # The muxer holds packets back to interleave its tracks, by default up to 10 s when one goes quiet (a muted
    # publisher): that much would be lost to a crash.
    "max_interleave_delta": "500000",
}
# High quality to re-render from, at the least CPU: ultrafast at crf 16 costs 0.43 ms of CPU a frame at 256x256,
# 1.55 ms at 640x480, 4.4 ms at 1280x720 (the copy included; the moving test pattern on the 2-core dev CPU): 1.3%,
# 5% and 13% of a core at 30 fps; 3.4, 11 and 31 MB a minute.
INPUT_VIDEO_OPTIONS = {"crf": "16", "preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"}
KEYFRAME_SECONDS = 1.0  # an IDR at least this often: a player or the renderer can start from any second
INPUT_SOUND_BITRATE = 128_000
# Sound that comes within this much of where the last packet ended continues it (network jitter); later is a gap.
SOUND_GAP_SECONDS = 0.1
PENDING_SOUND = 250  # 5 s of 20 ms packets held until the first picture opens the file (it sizes the video track)
_END = object()


class WriterThread:
    """A thread that handles items in order from a bounded queue. `put` never blocks: an item that finds the queue
    full is dropped and counted by its kind (its first element). After `handle` fails once, the rest of the items
    are dropped too and `error` says why; `finish` runs at the end either way."""

    def __init__(self, name: str, handle: Callable[[tuple], None], finish: Callable[[], None], capacity: int) -> None:
        self.error: BaseException | None = None
        self._handle = handle
        self._finish = finish
        self._queue: queue.Queue[Any] = queue.Queue(capacity)
        self._dropped: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()  # puts come from the event loop and the engine thread
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def dropped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: tuple) -> bool:
        """From any thread: queue `item` unless the queue is full (dropped, counted). Never blocks."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._count_drop(item[0])
            return False

    def close(self, last: tuple | None = None, timeout: float = 30.0) -> None:
        """Blocking (call from a worker thread): queue `last` (waiting for room), end the thread and wait for it."""
        if last is not None:
            self._queue.put(last, timeout=timeout)
        self._queue.put(_END, timeout=timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} did not finish within {timeout:g} s")

    def _count_drop(self, kind: str) -> None:
        with self._lock:
            self._dropped[kind] += 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self.error is not None:
                self._count_drop(item[0])
                continue
            try:
                self._handle(item)
            except Exception as error:  # a full disk, a codec failure: the recording stops (recorder.py watches)
                log.exception("%s failed", self._thread.name)
                self.error = error
        try:
            self._finish()
        except Exception as error:
            log.exception("%s could not finish its file", self._thread.name)
            self.error = self.error or error


def open_matroska(path: Path) -> av.container.OutputContainer:
    return av.open(str(path), "w", format="matroska", container_options=MATROSKA_OPTIONS)


def add_opus_track(container: av.container.OutputContainer, bit_rate: int) -> av.audio.stream.AudioStream:
    """An Opus track; its encoder, opened with the header, gives the track the OpusHead Matroska needs (also when
    the packets come from another encoder of the same settings, as the stream's sound does)."""
    stream = container.add_stream("libopus", rate=SAMPLE_RATE)
    context = stream.codec_context
    context.layout, context.format, context.bit_rate = "stereo", "s16", bit_rate
    context.options = {"application": "audio", "frame_duration": "20"}
    stream.time_base = MILLISECONDS
    return stream


class SoundClock:
    """Sample positions for sound on the recording's clock: continuous while it comes on time (network jitter is
    not a gap), a gap where it comes later than `SOUND_GAP_SECONDS` after the last one ended."""

    def __init__(self) -> None:
        self._next: int | None = None

    def place(self, t: float, samples: int) -> int:
        position = round(t * SAMPLE_RATE)
        if self._next is not None and position < self._next + SOUND_GAP_SECONDS * SAMPLE_RATE:
            position = self._next
        self._next = position + samples
        return position


class InputFile:
    """`input.mkv`: the camera frames as they arrived, encoded with libx264, and the sound as it came, in Opus."""

    def __init__(self, path: Path, sound: bool) -> None:
        self.path = path
        self.frames = 0
        self._sound = sound
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._size = (0, 0)
        self._last_pts = -1
        self._last_keyframe = -math.inf
        self._clock = SoundClock()
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        self._pending_sound: collections.deque[AudioFrame] = collections.deque(maxlen=PENDING_SOUND)

    def handle(self, item: tuple) -> None:
        kind, frame, t = item
        if kind == "video":
            self._picture(frame, t)
        else:
            self._sound_frame(frame, t)

    def _open(self, width: int, height: int) -> None:
        container = open_matroska(self.path)
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = video.codec_context.time_base = MILLISECONDS
        video.codec_context.gop_size = 10_000  # keyframes come by time (KEYFRAME_SECONDS), not by count
        video.codec_context.options = INPUT_VIDEO_OPTIONS
        self._audio = add_opus_track(container, INPUT_SOUND_BITRATE) if self._sound else None
        self._container, self._video, self._size = container, video, (width, height)
        while self._pending_sound:
            self._encode_sound(self._pending_sound.popleft())

    def _picture(self, frame: VideoFrame, t: float) -> None:
        if self._container is None:
            self._open(frame.width - frame.width % 2, frame.height - frame.height % 2)
        width, height = self._size
        # A frame of our own (converted in the same pass): the pump's is the engine thread's too, and setting its
        # timestamp and picture type while another thread encodes or converts it crashed PyAV here.
        pixels = frame.to_ndarray(format="yuv420p", width=width, height=height)
        frame = VideoFrame.from_ndarray(pixels, format="yuv420p")
        pts = max(round(t * 1000), self._last_pts + 1)
        self._last_pts = pts
        frame.pts, frame.time_base = pts, MILLISECONDS
        keyframe = t - self._last_keyframe >= KEYFRAME_SECONDS
        if keyframe:
            self._last_keyframe = t
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        assert self._video is not None and self._container is not None
        self._container.mux(self._video.encode(frame))
        self.frames += 1

    def _sound_frame(self, frame: AudioFrame, t: float) -> None:
        for converted in self._resampler.resample(frame):
            converted.pts = self._clock.place(t, converted.samples)
            converted.time_base = SAMPLES
            t += converted.samples / SAMPLE_RATE
            if self._container is None:
                self._pending_sound.append(converted)
            else:
                self._encode_sound(converted)

    def _encode_sound(self, frame: AudioFrame) -> None:
        if self._audio is not None and self._container is not None:
            self._container.mux(self._audio.encode(frame))

    def finish(self) -> None:
        if self._container is None:
            return
        assert self._video is not None
        self._container.mux(self._video.encode(None))
        if self._audio is not None:
            self._container.mux(self._audio.encode(None))
        self._container.close()


class OutputFile:
    """`output.mkv`: the stream's encoded packets as viewers get them (H.264, and Opus when it has sound), muxed as
    they are. The video track's size comes from decoding the first packet (an IDR: a viewer's track starts at one)."""

    def __init__(self, path: Path, sound: bool) -> None:
        self.path = path
        self.frames = 0
        self._sound = sound
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._probe: av.VideoCodecContext | None = None
        self._last_pts = {"video": -1, "audio": -1}
        self._pending_sound: collections.deque[tuple[bytes, float]] = collections.deque(maxlen=PENDING_SOUND)

    def handle(self, item: tuple) -> None:
        if item[0] == "video":
            _, data, keyframe, t = item
            if self._container is None and not self._open(data):
                return
            self._mux("video", data, t, keyframe)
            self.frames += 1
        else:
            _, data, t = item
            if self._container is None:
                self._pending_sound.append((data, t))
            else:
                self._mux("audio", data, t, True)

    def _open(self, first: bytes) -> bool:
        """Open the file at the first packet that decodes to a picture (whose size the track needs)."""
        if self._probe is None:
            probe = av.CodecContext.create("h264", "r")
            assert isinstance(probe, av.VideoCodecContext)  # a video codec's context
            self._probe = probe
        frames = self._probe.decode(av.Packet(first))
        if not frames:
            return False
        container = open_matroska(self.path)
        video = container.add_stream("h264")
        video.width, video.height = frames[0].width, frames[0].height
        video.time_base = MILLISECONDS
        self._audio = add_opus_track(container, 96_000) if self._sound else None
        self._container, self._video, self._probe = container, video, None
        while self._pending_sound:
            data, t = self._pending_sound.popleft()
            self._mux("audio", data, t, True)
        return True

    def _mux(self, kind: str, data: bytes, t: float, keyframe: bool) -> None:
        stream = self._video if kind == "video" else self._audio
        if stream is None or self._container is None:
            return
        pts = max(round(t * 1000), self._last_pts[kind] + 1)
        self._last_pts[kind] = pts
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = MILLISECONDS
        packet.stream = stream
        packet.is_keyframe = keyframe
        self._container.mux(packet)

    def finish(self) -> None:
        if self._container is not None:
            self._container.close()
