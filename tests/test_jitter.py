"""The publisher's receive buffers: a video frame leaves on its last packet, an audio packet when it is next; gaps
wait for a video packet and give up on a lost audio one; aiortc's receiver really takes them."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from server.media.jitter import LOSS_PACKETS, PromptAudioBuffer, PromptVideoBuffer, install


def packet(sequence: int, timestamp: int, marker: bool = False) -> RtpPacket:
    rtp = RtpPacket(payload_type=96, marker=int(marker), sequence_number=sequence, timestamp=timestamp)
    # The depayloaded bytes, as aiortc's receiver sets them: an attribute its RtpPacket does not declare.
    rtp._data = bytes([sequence % 256])  # pyright: ignore[reportAttributeAccessIssue]
    return rtp


def test_a_video_frame_leaves_with_its_marker_packet_not_with_the_next_frame():
    buffer = PromptVideoBuffer()
    assert buffer.add(packet(10, 3000))[1] is None
    assert buffer.add(packet(11, 3000))[1] is None
    frame = buffer.add(packet(12, 3000, marker=True))[1]
    assert frame is not None and frame.timestamp == 3000 and frame.data == bytes([10, 11, 12])
    # The next frame, its packets out of order: it waits for the one missing, then leaves whole.
    assert buffer.add(packet(14, 6000, marker=True))[1] is None
    frame = buffer.add(packet(13, 6000))[1]
    assert frame is not None and frame.data == bytes([13, 14])


def test_a_video_frame_whose_marker_was_lost_leaves_when_the_next_begins():
    buffer = PromptVideoBuffer()
    buffer.add(packet(1, 3000))
    buffer.add(packet(2, 3000))  # its marker packet (3) never comes: 3 is the next frame's first
    frame = buffer.add(packet(3, 6000))[1]
    assert frame is not None and frame.timestamp == 3000 and frame.data == bytes([1, 2])


def test_audio_packets_leave_at_once_and_a_lost_one_is_given_up_on():
    buffer = PromptAudioBuffer()
    for sequence, timestamp in ((100, 0), (101, 960)):
        frame = buffer.add(packet(sequence, timestamp, marker=sequence == 100))[1]
        assert frame is not None and frame.timestamp == timestamp
    # 102 is lost: the packets after it wait for it until LOSS_PACKETS are in, then go on in order.
    out = [buffer.add(packet(103 + i, 960 * (3 + i)))[1] for i in range(LOSS_PACKETS)]
    assert out[:-1] == [None] * (LOSS_PACKETS - 1)
    assert out[-1] is not None and out[-1].timestamp == 960 * 3 and buffer.lost == 1
    # Late, it is not played out of order.
    assert buffer.add(packet(102, 960 * 2))[1] is None


async def test_installed_on_aiortc_s_receivers():
    pc = RTCPeerConnection()
    try:
        video, audio = pc.addTransceiver("video").receiver, pc.addTransceiver("audio").receiver
        assert install(video, "video") and install(audio, "audio")
        # aiortc's private buffer, which install() replaces (name-mangled, so undeclared to a type checker).
        assert isinstance(video._RTCRtpReceiver__jitter_buffer, PromptVideoBuffer)  # pyright: ignore[reportAttributeAccessIssue]
        assert isinstance(audio._RTCRtpReceiver__jitter_buffer, PromptAudioBuffer)  # pyright: ignore[reportAttributeAccessIssue]
    finally:
        await pc.close()
