"""A stream's video encoder: VP8 or H.264 through PyAV, one frame in, one `av.Packet` out, keyframes on request.

aiortc encodes once per `RTCRtpSender`, so N viewers of a stream would cost N encodes; its sender also accepts
packets that are already encoded and only packetises them. A stream therefore encodes here, once per codec in
use, and every viewer's sender sends the same packets (see feed.py).
"""

from __future__ import annotations

import fractions
import os

import av
import av.video.frame  # the submodules the annotations and PictureType name: `import av` does not bind them
from av import VideoFrame

from ..config import DEFAULT_BITRATE_KBPS

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

# What WebRTC calls each codec (the mimeType of the negotiated codec) and the FFmpeg encoder that makes it.
ENCODERS = {"video/VP8": "libvpx", "video/H264": "libx264"}


def _options(codec: str, bitrate: int) -> dict[str, str]:
    if codec == "video/VP8":
        # Real-time libvpx: no look-ahead (a frame leaves as soon as it is encoded), fastest speed setting,
        # constant bitrate with a 1 s buffer, as browsers' own real-time VP8 encoders do.
        return {
            "deadline": "realtime",
            "cpu-used": "-6",
            "lag-in-frames": "0",
            "bufsize": str(bitrate),
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "static-thresh": "1",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
        }
    # zerolatency: no B-frames and no frame delay. forced-idr: a requested keyframe is an IDR picture with its
    # SPS/PPS, which a viewer that joins mid-stream can start decoding from (a plain I picture is not enough).
    return {"tune": "zerolatency", "preset": "ultrafast", "forced-idr": "1", "level": "31"}


class VideoEncoder:
    """Encodes one codec's frames. Not thread-safe: one caller at a time (the stream's feed)."""

    def __init__(self, codec: str, bitrate_kbps: int = DEFAULT_BITRATE_KBPS) -> None:
        if codec not in ENCODERS:
            raise ValueError(f"no encoder for {codec}; supported: {', '.join(ENCODERS)}")
        self.codec = codec
        self.bitrate = bitrate_kbps * 1000
        self._context: av.VideoCodecContext | None = None

    def encode(self, frame: VideoFrame, keyframe: bool = False) -> av.Packet | None:
        """The frame's packet (pts in the 90 kHz clock), or None if the encoder produced nothing for it."""
        if self._context is not None and (frame.width, frame.height) != (self._context.width, self._context.height):
            self._context = None  # a new size starts a new stream of pictures with a keyframe
        if self._context is None:
            self._context = self._open(frame.width, frame.height)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        packets = self._context.encode(frame)
        if not packets:
            return None
        # Real-time settings give one packet per frame; join them should an encoder ever split one.
        packet = packets[0] if len(packets) == 1 else av.Packet(b"".join(bytes(p) for p in packets))
        packet.pts, packet.time_base = frame.pts, VIDEO_TIME_BASE
        return packet

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        context = av.CodecContext.create(ENCODERS[self.codec], "w")
        assert isinstance(context, av.VideoCodecContext)  # a video encoder's context
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.bit_rate = self.bitrate
        context.time_base = VIDEO_TIME_BASE
        context.framerate = fractions.Fraction(30, 1)
        context.gop_size = 3000  # keyframes when a viewer asks (join, loss), not on a timer
        context.options = _options(self.codec, self.bitrate)
        if self.codec == "video/H264":
            context.profile = "Baseline"  # constrained baseline is what every WebRTC H.264 decoder takes
        # One thread up to 640x480 (measured: a 256-pixel VP8 frame takes ~3 ms on one core), more for larger.
        context.thread_count = max(1, min((os.cpu_count() or 1) - 1, width * height // (640 * 480) + 1))
        return context
