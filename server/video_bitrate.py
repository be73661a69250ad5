"""Video bitrate for aiortc's encoders: its VP8 default (500 kbps) visibly blurs a 512-pixel picture."""

from __future__ import annotations

from aiortc.codecs import h264, vpx

DEFAULT_START_KBPS = 2500
DEFAULT_MAX_KBPS = 6000


def configure_video_bitrate(start_kbps: int = DEFAULT_START_KBPS, max_kbps: int = DEFAULT_MAX_KBPS) -> None:
    """Set the bitrate aiortc's VP8 and H.264 encoders start at and may reach under receiver feedback (REMB).

    aiortc reads these module constants when an encoder is made and whenever feedback moves the target, and offers
    no per-connection setting, so they are process-wide: call once at start-up.
    """
    if not 100 <= start_kbps <= max_kbps:
        raise ValueError(f"video bitrate: need 100 <= start ({start_kbps}) <= max ({max_kbps}) kbps")
    for codec in (vpx, h264):
        codec.DEFAULT_BITRATE = start_kbps * 1000
        codec.MAX_BITRATE = max_kbps * 1000
        codec.MIN_BITRATE = min(codec.MIN_BITRATE, codec.DEFAULT_BITRATE)
