"""Peer connections as the server makes them: offers checked, no STUN, the DTLS server role, every one counted.

Every front end that takes an offer (the page's socket, WHIP, WHEP) goes through `PeerConnections`, so a bad offer
gets the same answer everywhere and `/health` can show that none is left behind.
"""

from __future__ import annotations

import asyncio
import logging

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.exceptions import InvalidStateError

from . import jitter
from .ice import end_consent_checks_of_closed_connections

log = logging.getLogger(__name__)

# What aiortc can decode and encode, and what a stream's outputs send (its sound is Opus alone: sound.py).
VIDEO_CODECS = ("video/VP8", "video/H264")
OUTPUT_CODECS = {"video": VIDEO_CODECS, "audio": ("audio/opus",)}
KEYFRAME_REQUEST_WAIT_SECONDS = 10.0


class OfferError(Exception):
    """An offer the server cannot answer; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def all_bundled(description: aiortc_sdp.SessionDescription) -> bool:
    """Whether one BUNDLE group of the offer names every m-line."""
    mids = {media.rtp.muxId for media in description.media}
    return any(group.semantic == "BUNDLE" and mids <= set(group.items) for group in description.group)


def check_offer(sdp: str, sends_video: bool) -> aiortc_sdp.SessionDescription:
    """The parsed offer, or an OfferError saying what is wrong with it.

    `sends_video`: the offerer publishes a camera (its video m-line sends); otherwise it views (it receives).
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("bad_sdp", "the offer is empty: send an SDP offer")
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
        str(description)  # aiortc writes the offer back on every read of pc.remoteDescription
    except Exception as error:  # aiortc raises ValueError, KeyError, IndexError ... for malformed SDP
        raise OfferError("bad_sdp", f"the offer's SDP could not be read: {error!r}") from None
    if not sdp.lstrip().startswith("v=0") or not description.media:
        raise OfferError("bad_sdp", "the offer is not an SDP offer with media sections (it must start with v=0)")
    check_transport(description)
    video = [media for media in description.media if media.kind == "video" and media.port != 0]
    if not video:
        kinds = ", ".join(sorted({media.kind for media in description.media})) or "none"
        raise OfferError("no_video", f"the offer has no video m-line (it has: {kinds}); send the camera as video")
    wanted = ("sendonly", "sendrecv") if sends_video else ("recvonly", "sendrecv")
    if not any(media.direction in wanted for media in video):
        what = "send video (sendonly or sendrecv)" if sends_video else "receive video (recvonly or sendrecv)"
        raise OfferError("bad_direction", f"the offer's video m-line is {video[0].direction}; it must {what}")
    offered = [codec.mimeType for media in video for codec in media.rtp.codecs]
    if not any(codec.lower() in {c.lower() for c in VIDEO_CODECS} for codec in offered):
        names = ", ".join(sorted(set(offered))) or "none"
        message = f"the offer's video codecs ({names}) are not supported: offer VP8 or H.264"
        raise OfferError("unsupported_codec", message)
    return description


def check_transport(description: aiortc_sdp.SessionDescription) -> None:
    """What aiortc accepts in an offer but fails on later: a media section without DTLS fingerprint or ICE
    credentials (an AssertionError in a task of its own once ICE ends), two sections with one mid (or none)."""
    mids = [media.rtp.muxId for media in description.media]
    if len(set(mids)) < len(mids):
        raise OfferError("bad_sdp", "each media section of the offer needs an a=mid of its own")
    for group in description.group:
        missing = [mid for mid in group.items if mid not in mids]
        if group.semantic == "BUNDLE" and missing:
            raise OfferError(
                "bad_sdp", f"a=group:BUNDLE names mids no media section has: {', '.join(map(str, missing))}"
            )
    for media in description.media:
        if media.port == 0:
            continue
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferError("bad_sdp", f"the offer's {media.kind} section has no DTLS fingerprint (a=fingerprint)")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            message = f"the offer's {media.kind} section has no ICE credentials (a=ice-ufrag and a=ice-pwd)"
            raise OfferError("bad_sdp", message)


class PeerConnections:
    """Makes, answers and closes the server's peer connections, and knows how many are open."""

    def __init__(self) -> None:
        self._open: set[RTCPeerConnection] = set()
        end_consent_checks_of_closed_connections()
        end_connects_of_closed_connections()

    def __len__(self) -> int:
        return len(self._open)

    async def accept(self, sdp: str, sends_video: bool) -> RTCPeerConnection:
        """A new peer connection with `sdp` as its remote offer; OfferError if the offer will not do."""
        description = check_offer(sdp, sends_video)
        # No STUN/TURN: aiortc's default asks a public STUN server, which a LAN or localhost setup never needs.
        # Max-bundle when the offer bundles every m-line (browsers and OBS do): under aiortc's "balanced", a second
        # m-line of a kind (the studio's microphone, then its sound back) was answered on a transport of its own,
        # c=0.0.0.0 port 9, before BUNDLE moved the first one, and its sender never started.
        policy = RTCBundlePolicy.MAX_BUNDLE if all_bundled(description) else RTCBundlePolicy.BALANCED
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=policy))
        self._open.add(pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except asyncio.CancelledError:  # the caller is going away: this connection is nobody's
            await self.close(pc)
            raise
        except Exception as error:
            await self.close(pc)
            raise OfferError("bad_sdp", f"the offer could not be applied: {error!r}") from None
        for transceiver in pc.getTransceivers():  # before any packet: frames leave aiortc as soon as complete
            jitter.install(transceiver.receiver, transceiver.kind)
        return pc

    async def answer(self, pc: RTCPeerConnection) -> str:
        """Make and apply the answer (with every track the caller added); returns its SDP."""
        _take_dtls_server_role(pc)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except asyncio.CancelledError:
            await self.close(pc)
            raise
        except Exception as error:
            await self.close(pc)
            raise OfferError("bad_sdp", f"could not answer the offer: {error!r}") from None
        return pc.localDescription.sdp

    async def close(self, pc: RTCPeerConnection) -> None:
        self._open.discard(pc)
        try:
            await pc.close()
        except Exception as error:  # a connection made from a broken offer may fail to close; it is dropped anyway
            log.warning("closing a peer connection failed: %r", error)


def end_connects_of_closed_connections() -> None:
    """Process-wide and idempotent: a peer connection closed while it connects ends its connecting quietly.

    aiortc 1.x connects in a task of its own that nobody awaits (`RTCPeerConnection.__connect`), one transport after
    another; closed meanwhile (a WHIP DELETE right after its POST), the next transport's start raises
    InvalidStateError("RTCIceTransport is closed"), logged as "Task exception was never retrieved" with a traceback
    (seen in `tests/test_admission.py`'s burst of publishers on a loaded machine). A connection still open that
    fails to connect raises as before.
    """
    original = RTCPeerConnection._RTCPeerConnection__connect  # pyright: ignore[reportAttributeAccessIssue]: name-mangled
    if getattr(original, "__module__", None) == __name__:  # already the one below
        return

    async def connect(self: RTCPeerConnection) -> None:
        try:
            await original(self)
        except InvalidStateError:
            if self.signalingState != "closed":  # set first thing by close(), before its transports stop
                raise
            log.info("a peer connection was closed while it connected")

    RTCPeerConnection._RTCPeerConnection__connect = connect  # pyright: ignore[reportAttributeAccessIssue]: as above


def _take_dtls_server_role(pc: RTCPeerConnection) -> None:
    """Answer `a=setup:passive` when the offer leaves the DTLS role to us (`actpass`).

    As DTLS client, aiortc offers ECDHE-ECDSA cipher suites only; a publisher with an RSA certificate (GStreamer's
    webrtcbin by default) then fails the handshake with "no shared cipher". As DTLS server aiortc presents its own
    ECDSA certificate, which browsers, OBS and GStreamer all accept. aiortc has no public setting for this.
    """
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is not None and transport._role == "auto":
            transport._set_role("server")


def negotiated_codec(pc: RTCPeerConnection, transceiver: RTCRtpTransceiver) -> str | None:
    """The codec the answer chose for `transceiver` (what its sender will send), e.g. "video/VP8" or "audio/opus";
    None if it is not one the stream's outputs send."""
    description = aiortc_sdp.SessionDescription.parse(pc.localDescription.sdp)
    for media in description.media:
        if media.rtp.muxId == transceiver.mid:
            codecs = [c.mimeType for c in media.rtp.codecs if c.mimeType.lower() != "video/rtx"]
            known = OUTPUT_CODECS.get(transceiver.kind, ())
            return next((c for c in known for n in codecs[:1] if n.lower() == c.lower()), None)
    return None


def offered_transceivers(pc: RTCPeerConnection, kind: str, sends: bool) -> list[RTCRtpTransceiver]:
    """The transceivers of `kind` whose offered m-line sends (`sends`: the offerer's camera, microphone) or
    receives (where the offerer wants our video), in m-line order."""
    wanted = ("sendonly", "sendrecv") if sends else ("recvonly", "sendrecv")
    offer = aiortc_sdp.SessionDescription.parse(pc.remoteDescription.sdp)
    directions = {media.rtp.muxId: media.direction for media in offer.media}
    return [t for t in pc.getTransceivers() if t.kind == kind and t.mid is not None and directions.get(t.mid) in wanted]


async def request_keyframe(receiver: RTCRtpReceiver) -> None:
    """Ask the publisher for a keyframe (RTCP PLI) as soon as its first packets show its SSRC.

    A decoder can only start at a keyframe; an encoder that began before the connection was up (OBS) would
    otherwise leave the stream black until its next scheduled one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KEYFRAME_REQUEST_WAIT_SECONDS
    while loop.time() < deadline:
        sources = receiver.getSynchronizationSources()
        if sources:
            await receiver._send_rtcp_pli(sources[0].source)
            return
        await asyncio.sleep(0.1)
