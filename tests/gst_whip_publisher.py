"""A GStreamer WHIP publisher (RFC 9725) for tests: H.264 test video + Opus test audio through webrtcbin.

Run it with Debian's system Python, which has GStreamer's introspection bindings (not the project venv):

    /usr/bin/python3 tests/gst_whip_publisher.py WHIP_URL [--token T] [--seconds N] [--host-address A]

Debian packages it needs: gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
gstreamer1.0-plugins-ugly gstreamer1.0-nice gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 python3-gi.

It sends one offer with every candidate in it (no trickle ICE), sets the 201 answer, streams for N seconds, sends
DELETE to the session's Location and prints one JSON line on stdout. Exit status 0 when the answer was a 201 and
ICE + DTLS connected; 1 otherwise (the reason on stderr and in the JSON's "error").

libnice (GStreamer's ICE agent) never gathers loopback addresses on its own. When the WHIP URL's host is a loopback
address (or with --host-address), the agent is told its local addresses explicitly with
`nice_agent_add_local_address`, so it gathers host candidates there and only there.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

HTTP_TIMEOUT_S = 10.0
STEP_TIMEOUT_S = 10.0  # offer creation, ICE gathering, setting the answer
CONNECT_TIMEOUT_S = 15.0  # ICE + DTLS after the answer

PIPELINE = (
    "webrtcbin name=webrtc bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! "
    "queue max-size-buffers=2 leaky=downstream ! "
    "x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max=30 bitrate=600 ! "
    "video/x-h264,profile=constrained-baseline ! h264parse ! "
    "rtph264pay config-interval=-1 aggregate-mode=zero-latency ! "
    "application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000 ! webrtc. "
    "audiotestsrc is-live=true wave=sine freq=440 volume=0.2 ! audioconvert ! audioresample ! "
    "queue max-size-buffers=4 leaky=downstream ! opusenc bitrate=32000 ! rtpopuspay ! "
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! webrtc. "
)


class PublishError(Exception):
    pass


def _call(webrtc: Gst.Element, signal: str, *args) -> Gst.Structure | None:
    """Emit a webrtcbin action signal that takes a promise and wait for its reply, bounded (Gst.Promise.wait()
    has no timeout)."""
    done = threading.Event()
    promise = Gst.Promise.new_with_change_func(lambda _promise: done.set())
    webrtc.emit(signal, *args, promise)
    if not done.wait(STEP_TIMEOUT_S):
        promise.interrupt()
        raise PublishError(f"timed out waiting for {signal}")
    return promise.get_reply()


def _reply_error(reply: Gst.Structure | None) -> str | None:
    if reply is not None and reply.has_field("error"):
        return reply.get_value("error").message
    return None


def _is_loopback_host(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def _http(method: str, url: str, token: str | None, body: bytes | None = None) -> tuple[int, dict, bytes]:
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers or {}), error.read()


def _nice_agent(webrtc: Gst.Element) -> Nice.Agent:
    """webrtcbin's libnice agent. GStreamer 1.22 creates its GstWebRTCNice floating; the first Python wrapper
    sinks that floating reference and drops it with the wrapper, freeing the ICE agent under webrtcbin (a crash in
    gst_webrtc_ice_add_stream). Give the reference back with one g_object_ref on the first fetch."""
    ice = webrtc.get_property("ice-agent")
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gobject.g_object_ref.argtypes = [ctypes.c_void_p]
    gobject.g_object_ref.restype = ctypes.c_void_p
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    get_pointer.restype = ctypes.c_void_p
    gobject.g_object_ref(get_pointer(ice.__gpointer__, None))
    return ice.get_property("agent")


class Publisher:
    def __init__(self, host_addresses: list[str]) -> None:
        self.pipeline = Gst.parse_launch(PIPELINE)
        self.webrtc = self.pipeline.get_by_name("webrtc")
        self.negotiation_needed = threading.Event()
        self.gathering_done = threading.Event()
        self.connected = threading.Event()
        self.failed = threading.Event()
        self.ice_state = "new"
        self.connection_state = "new"
        self.webrtc.connect("on-negotiation-needed", lambda _w: self.negotiation_needed.set())
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering_state)
        self.webrtc.connect("notify::ice-connection-state", self._on_ice_state)
        self.webrtc.connect("notify::connection-state", self._on_connection_state)
        if host_addresses:
            agent = _nice_agent(self.webrtc)
            for host in host_addresses:
                address = Nice.Address.new()
                if not address.set_from_string(host):
                    raise PublishError(f"not an IP address: {host}")
                agent.add_local_address(address)

    def _on_gathering_state(self, webrtc, _pspec) -> None:
        if webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.gathering_done.set()

    def _on_ice_state(self, webrtc, _pspec) -> None:
        state = webrtc.get_property("ice-connection-state")
        self.ice_state = state.value_nick
        if state in (GstWebRTC.WebRTCICEConnectionState.FAILED, GstWebRTC.WebRTCICEConnectionState.CLOSED):
            self.failed.set()

    def _on_connection_state(self, webrtc, _pspec) -> None:
        state = webrtc.get_property("connection-state")
        self.connection_state = state.value_nick
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            self.connected.set()
        elif state in (GstWebRTC.WebRTCPeerConnectionState.FAILED, GstWebRTC.WebRTCPeerConnectionState.CLOSED):
            self.failed.set()

    def start(self) -> None:
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise PublishError("the pipeline would not start (missing GStreamer plugins?)")
        if not self.negotiation_needed.wait(STEP_TIMEOUT_S):
            raise PublishError("webrtcbin never asked for negotiation")
        for transceiver in self._transceivers():
            transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)

    def _transceivers(self) -> list:
        transceivers = []
        index = 0
        while True:
            transceiver = self.webrtc.emit("get-transceiver", index)
            if transceiver is None:
                return transceivers
            transceivers.append(transceiver)
            index += 1

    def create_offer(self) -> str:
        reply = _call(self.webrtc, "create-offer", None)
        if reply is None or not reply.has_field("offer"):
            raise PublishError(f"create-offer failed: {_reply_error(reply)}")
        reply = _call(self.webrtc, "set-local-description", reply.get_value("offer"))
        if _reply_error(reply):
            raise PublishError(f"set-local-description failed: {_reply_error(reply)}")
        if not self.gathering_done.wait(STEP_TIMEOUT_S):
            raise PublishError("ICE gathering did not complete")
        return self.webrtc.get_property("local-description").sdp.as_text()

    def set_answer(self, sdp_text: str) -> None:
        result, message = GstSdp.SDPMessage.new_from_text(sdp_text)
        if result != GstSdp.SDPResult.OK:
            raise PublishError("the answer is not valid SDP")
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        reply = _call(self.webrtc, "set-remote-description", answer)
        if _reply_error(reply):
            raise PublishError(f"set-remote-description failed: {_reply_error(reply)}")

    def check_bus(self) -> None:
        bus = self.pipeline.get_bus()
        while (message := bus.pop_filtered(Gst.MessageType.ERROR)) is not None:
            error, debug = message.parse_error()
            hint = ""
            if "dtls" in message.src.get_name():
                hint = (
                    " [DTLS handshake failed; GST_DEBUG='dtls*:4' shows OpenSSL's reason. 'no shared cipher' means the"
                    " answerer took the DTLS client role with ECDSA-only ciphers (aiortc's default for an actpass"
                    " offer) while GStreamer's certificate is RSA: the answerer must answer a=setup:passive]"
                )
            raise PublishError(f"pipeline error from {message.src.get_name()}: {error.message} ({debug}){hint}")

    def outbound_stats(self) -> dict:
        try:
            reply = _call(self.webrtc, "get-stats", None)
        except PublishError:
            return {}
        stats: dict = {}
        if reply is None:
            return stats

        for index in range(reply.n_fields()):
            value = reply.get_value(reply.nth_field_name(index))
            if not isinstance(value, Gst.Structure) or value.get_name() != "outbound-rtp":
                continue
            kind = value.get_value("kind") if value.has_field("kind") else f"ssrc {value.get_value('ssrc')}"
            stats[kind] = {
                field.replace("-", "_"): value.get_value(field)
                for field in ("packets-sent", "bytes-sent", "pli-count", "nack-count")
                if value.has_field(field)
            }
        return stats

    def stop(self) -> None:
        self.pipeline.set_state(Gst.State.NULL)


def publish(args: argparse.Namespace, report: dict) -> None:
    host = urllib.parse.urlsplit(args.url).hostname or ""
    host_addresses = list(args.host_address or [])
    if not host_addresses and _is_loopback_host(host):
        host_addresses = ["127.0.0.1"]
    report["host_addresses"] = host_addresses or "libnice default"

    started = time.monotonic()
    publisher = Publisher(host_addresses)
    try:
        publisher.start()
        offer = publisher.create_offer()
        report["offer_candidates"] = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
        try:
            status, headers, body = _http("POST", args.url, args.token, offer.encode())
        except OSError as error:
            raise PublishError(f"POST {args.url} failed: {error}") from error
        report["status"] = status
        if status != 201:
            raise PublishError(f"WHIP server answered {status}: {body.decode(errors='replace')[:2000]}")
        location = next((v for k, v in headers.items() if k.lower() == "location"), None)
        if location:
            report["location"] = urllib.parse.urljoin(args.url, location)
        publisher.set_answer(body.decode())

        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not publisher.connected.is_set():
            publisher.check_bus()
            if publisher.failed.is_set() or time.monotonic() > deadline:
                raise PublishError(
                    f"not connected: ICE {publisher.ice_state}, peer connection {publisher.connection_state}"
                )
            publisher.connected.wait(0.1)
        report["connected"] = True
        report["connect_s"] = round(time.monotonic() - started, 3)

        streaming_started = time.monotonic()
        end = streaming_started + args.seconds
        while (now := time.monotonic()) < end:
            publisher.check_bus()
            if publisher.failed.is_set():
                raise PublishError(f"connection lost: peer connection {publisher.connection_state}")
            time.sleep(min(0.1, end - now))
        report["seconds"] = round(time.monotonic() - streaming_started, 3)
        report["outbound"] = publisher.outbound_stats()
    finally:
        report["ice_state"] = publisher.ice_state
        report["connection_state"] = publisher.connection_state
        if report.get("location"):
            try:
                delete_status, _, _ = _http("DELETE", report["location"], args.token)
                report["delete_status"] = delete_status
            except OSError as error:
                report["delete_status"] = f"failed: {error}"
        publisher.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="WHIP endpoint URL")
    parser.add_argument("--token", help="Bearer token for the WHIP endpoint")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to stream once connected")
    parser.add_argument(
        "--host-address",
        action="append",
        help="local address for ICE host candidates (repeatable); default 127.0.0.1 for a loopback WHIP URL, "
        "else libnice's own choice (non-loopback interfaces)",
    )
    args = parser.parse_args()

    report: dict = {"ok": False, "status": None, "location": None, "connected": False, "seconds": 0.0}

    # Hard bound on the whole run, whatever GStreamer or the network does.
    limit = args.seconds + HTTP_TIMEOUT_S * 2 + STEP_TIMEOUT_S * 4 + CONNECT_TIMEOUT_S

    def watchdog() -> None:
        report["error"] = f"watchdog: no result after {limit:.0f} s"
        print(json.dumps(report), flush=True)
        print(f"gst_whip_publisher: {report['error']}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(limit, watchdog)
    timer.daemon = True
    timer.start()

    Gst.init(None)
    try:
        publish(args, report)
        report["ok"] = True
    except (PublishError, OSError, GLib.Error) as error:
        report["error"] = str(error)
        print(f"gst_whip_publisher: {error}", file=sys.stderr, flush=True)
    timer.cancel()
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
