"""Python WHIP publisher and WHEP viewer: aiortc peers that talk to the server as OBS and a WHEP player would.

Used by the tests, `lcmlive bench --viewers` and `lcmlive soak`. HTTP goes through urllib in a worker thread:
a handful of requests per session do not justify an HTTP client dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from .loopback import LoopbackRecord, SyntheticCamera, consume_frames, wait_for_frames
from .tone import ToneTrack

HTTP_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: str


NOT_POSTED = HttpReply(0, {}, "")  # a client's reply before it has posted its offer


async def http(method: str, url: str, body: str | None = None, token: str | None = None, **headers: str) -> HttpReply:
    """One HTTP request in a worker thread; error statuses are returned, not raised."""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body.encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)

    def send() -> HttpReply:
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                return HttpReply(response.status, _lower(response.headers), response.read().decode())
        except urllib.error.HTTPError as error:
            return HttpReply(error.code, _lower(error.headers), error.read().decode())

    return await asyncio.to_thread(send)


def _lower(headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


async def post_sdp(url: str, sdp: str, token: str | None = None) -> HttpReply:
    return await http("POST", url, sdp, token, **{"Content-Type": "application/sdp"})


def prefer_codec(transceiver, mime_type: str) -> None:
    """Offer only `mime_type` (with its RTX), as OBS offers H.264 alone."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in codecs if c.mimeType.lower() == mime_type.lower()]
    transceiver.setCodecPreferences(chosen + [c for c in codecs if c.mimeType.lower() == "video/rtx"])


class WhipPublisher:
    """Publishes a synthetic camera to `POST /whip/{stream}` as OBS does: H.264 only plus Opus, sendonly, bundle,
    no trickle. `async with WhipPublisher(url) as publisher:`; leaving the block sends DELETE.

    The sound is silence, or a sine of `tone_hz` (`audio=False`: no audio m-line). `camera` and `sound` replace
    the synthetic camera and the sound with tracks of the caller's (`lcmlive bench --av`'s flashing card and beep)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        width: int = 256,
        height: int = 256,
        codec: str = "video/H264",
        audio: bool = True,
        still: bool = False,
        tone_hz: float | None = None,
        camera: MediaStreamTrack | None = None,
        sound: MediaStreamTrack | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.camera = camera if camera is not None else SyntheticCamera(width, height, still)
        self.sound = sound
        self.codec = codec
        self.audio = audio
        self.tone_hz = tone_hz
        self.reply = NOT_POSTED
        self.location: str | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def __aenter__(self) -> WhipPublisher:
        reply = await self.publish()
        if reply.status != 201:
            await self.pc.close()
            raise RuntimeError(f"WHIP refused: {reply.status} {reply.body}")
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def publish(self) -> HttpReply:
        """Send the offer; on 201 apply the answer. Returns the server's reply whatever it is."""
        prefer_codec(self.pc.addTransceiver(self.camera, direction="sendonly"), self.codec)
        if self.audio:
            sound = self.sound
            if sound is None:
                sound = ToneTrack(self.tone_hz) if self.tone_hz is not None else AudioStreamTrack()
            self.pc.addTransceiver(sound, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.reply = await post_sdp(self.url, self.pc.localDescription.sdp, self.token)
        if self.reply.status == 201:
            self.location = urllib.parse.urljoin(self.url, self.reply.headers["location"])
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.reply.body, type="answer"))
        return self.reply

    async def close(self) -> int | None:
        """DELETE the session (if it was created) and close the peer connection; returns DELETE's status."""
        status = None
        if self.location is not None:
            with contextlib.suppress(OSError):  # the server may be gone already
                status = (await http("DELETE", self.location, token=self.token)).status
            self.location = None
        await self.pc.close()
        return status


class WhepViewer:
    """Watches a stream over `POST /whep/{stream}` and records what arrives. `async with WhepViewer(url) as v:`.

    With `audio`, the offer also receives sound; `sound` records each decoded audio frame as it arrives (arrival
    time, samples x channels)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        codec: str | None = None,
        sample_every: int = 5,
        audio: bool = False,
    ) -> None:
        self.url = url
        self.token = token
        self.codec = codec
        self.sample_every = sample_every
        self.audio = audio
        self.record = LoopbackRecord()
        self.sound: list[tuple[float, np.ndarray]] = []
        self.reply = NOT_POSTED
        self.location: str | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> WhepViewer:
        reply = await self.view()
        if reply.status != 201:
            await self.pc.close()
            raise RuntimeError(f"WHEP refused: {reply.status} {reply.body}")
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def view(self) -> HttpReply:
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        if self.codec is not None:
            prefer_codec(transceiver, self.codec)
        if self.audio:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                consume = record_sound(track, self.sound)
            else:
                consume = consume_frames(track, self.record, self.sample_every)
            self._tasks.append(asyncio.create_task(consume, name=f"whep-consume-{track.kind}"))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.reply = await post_sdp(self.url, self.pc.localDescription.sdp, self.token)
        if self.reply.status == 201:
            self.location = urllib.parse.urljoin(self.url, self.reply.headers["location"])
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.reply.body, type="answer"))
        return self.reply

    async def wait_for_frames(self, count: int, timeout: float) -> None:
        await wait_for_frames(self.record, count, timeout)

    async def close(self) -> int | None:
        status = None
        if self.location is not None:
            with contextlib.suppress(OSError):  # the server may be gone already
                status = (await http("DELETE", self.location, token=self.token)).status
            self.location = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        return status


async def record_sound(track, sound: list[tuple[float, np.ndarray]]) -> None:
    """Receive an audio track until it ends: each decoded frame's arrival time and samples (samples x channels)."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        sound.append((time.monotonic(), frame.to_ndarray().reshape(-1, frame.layout.nb_channels)))


async def run_clients(args) -> dict:
    """Publish over WHIP, or watch over WHEP with `--count` viewers, for `--seconds`; what arrived."""
    if args.role == "whip":
        camera = SyntheticCamera(args.size, args.size)
        async with WhipPublisher(args.url, token=args.token, camera=camera):
            await asyncio.sleep(args.seconds)
            return {"sent": camera.sent}
    viewers = [WhepViewer(args.url, token=args.token) for _ in range(args.count)]
    try:
        for viewer in viewers:
            await viewer.__aenter__()
        await asyncio.sleep(args.seconds)
        return {"received": [len(viewer.record.arrivals) for viewer in viewers]}
    finally:
        for viewer in viewers:
            await viewer.close()


def main() -> None:
    """`python -m server.bench.rtc_clients whip|whep URL ...`: clients in a process of their own, JSON out."""
    import argparse
    import json

    from ..media.ice import restrict_ice_to_loopback

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("role", choices=("whip", "whep"))
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("--size", type=int, default=256, help="whip: the camera's side")
    parser.add_argument("--count", type=int, default=1, help="whep: how many viewers")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    restrict_ice_to_loopback()
    print(json.dumps(asyncio.run(run_clients(args))))


if __name__ == "__main__":
    main()
