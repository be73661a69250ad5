"""Receive buffers that hand a publisher's frames on as soon as they are complete, instead of aiortc's, which wait.

aiortc's video buffer hands a frame to the decoder only when the next frame's first packet arrives: every camera
frame reached the engine one frame interval late (33 ms at 30 fps, 400 ms at 2.5 fps). Its audio buffer holds
four packets (80 ms) before the first leaves. The sound and the picture were held by different amounts, so a
sound delayed by the picture's measured latency came out 320-420 ms early at 2-2.5 fps (`lcmlive bench --av`,
tiny at 256 px on the 2-core CPU). Here a video frame leaves when the packet with the RTP marker bit (the last of
an H.264 access unit or a VP8 frame) completes it, and an audio packet (one Opus frame) leaves when it is next in
sequence; a lost audio packet is given up once `LOSS_PACKETS` later ones are in (the delay line keeps its place
as silence). Waiting for a lost video packet stays as aiortc does it (NACK may bring it; else a keyframe).

This replaces a private attribute of aiortc's `RTCRtpReceiver` (pyproject pins aiortc to the minor version that
was read); `install` checks the attribute is there and leaves aiortc's buffer alone, with a warning, if not.

The video buffer also notes when each frame was complete (its last packet's arrival): `completed_at` gives it to
the pump, which sees the frame only once decoded, for the latency's first stage.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque

from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

# 60 ms: a packet that far out of order is later than any reordering seen on a LAN; waiting longer for it holds
# back every packet behind it.
LOSS_PACKETS = 3
AUDIO_CAPACITY = 16  # aiortc's own sizes
VIDEO_CAPACITY = 512
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
# Frames whose completion is remembered: more than the decoder ever holds back (it passes each frame on at once).
COMPLETED_FRAMES = 32
# The video buffers installed, by their receiver's track (what the pump holds).
_video_buffers: weakref.WeakKeyDictionary[MediaStreamTrack, PromptVideoBuffer] = weakref.WeakKeyDictionary()


class PromptVideoBuffer(JitterBuffer):
    """A video frame leaves when its marker packet arrives with every packet before it since the last frame."""

    def __init__(self) -> None:
        super().__init__(capacity=VIDEO_CAPACITY, is_video=True)
        # (frame handed on, time.monotonic() then). The receiver rewrites each frame's timestamp to the decoded
        # frame's pts right after taking it, so the frame found here by that pts is the decoded frame's.
        self._completed: deque[tuple[JitterFrame, float]] = deque(maxlen=COMPLETED_FRAMES)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is not None:
            self._completed.append((frame, time.monotonic()))
        return pli, frame

    def completed_at(self, pts: int) -> float | None:
        """When the frame that decoded to `pts` was complete (and forget it and those before); None if unknown."""
        for index, (frame, at) in enumerate(self._completed):
            if frame.timestamp == pts:
                for _ in range(index + 1):
                    self._completed.popleft()
                return at
        return None

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets: list[RtpPacket] = []
        assert self._origin is not None  # aiortc sets it with the first packet, before it removes frames
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None  # a gap: wait for it (a NACK may bring it)
            if packets and packet.timestamp != packets[0].timestamp:
                # A frame that ended without its marker (that packet lost and the next frame begun): hand it on
                # as aiortc would have.
                self.remove(count)
                return _frame(packets)
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return _frame(packets)
        return None


class PromptAudioBuffer(JitterBuffer):
    """Each audio packet leaves when it is next in sequence; a missing one is skipped once LOSS_PACKETS later
    ones have come."""

    def __init__(self) -> None:
        super().__init__(capacity=AUDIO_CAPACITY)
        self.lost = 0

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        for _ in range(self.capacity):
            assert self._origin is not None  # aiortc sets it with the first packet, before it removes frames
            packet = self._packets[self._origin % self.capacity]
            if packet is not None:
                self.remove(1)
                return _frame([packet])
            waiting = sum(p is not None for p in self._packets)
            if waiting < LOSS_PACKETS:
                return None
            self.remove(1)  # given up on: the packets after it go on
            self.lost += 1
        return None


def _frame(packets: list[RtpPacket]) -> JitterFrame:
    return JitterFrame(data=b"".join(packet._data for packet in packets), timestamp=packets[0].timestamp)  # type: ignore[attr-defined]


def install(receiver: RTCRtpReceiver, kind: str) -> bool:
    """Give `receiver` (of a publisher's `kind` track) the buffer above, before its first packet; False if this
    aiortc has no such attribute (its own buffer stays)."""
    if not hasattr(receiver, _ATTRIBUTE):
        log.warning("aiortc's receiver has no %s: its own (later) receive buffer stays", _ATTRIBUTE)
        return False
    if kind == "video":
        buffer = PromptVideoBuffer()
        if receiver.track is not None:  # a remote track, made by the remote description (peers.py applies it first)
            _video_buffers[receiver.track] = buffer
    else:
        buffer = PromptAudioBuffer()
    setattr(receiver, _ATTRIBUTE, buffer)
    return True


def completed_at(track: MediaStreamTrack, pts: int | None) -> float | None:
    """When the camera frame `track` decoded with `pts` had all its packets (time.monotonic()); None where the
    track has no buffer of ours or the frame is not known."""
    buffer = _video_buffers.get(track)
    return buffer.completed_at(pts) if buffer is not None and pts is not None else None
