"""Fuzz: hypothesis sends random socket messages, params and SDP offers (page socket, WHIP, WHEP) to a live server.

Every input gets an error with a code and a message, or a normal answer; the socket that sent it stays usable; a
bystander that publishes throughout keeps receiving frames; no task dies unseen (the server's log is read at the
end); and every count on /health goes back to the bystander's own after each test and to zero at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server.bench.loopback import LoopbackClient, SyntheticCamera
from server.bench.rtc_clients import prefer_codec
from server.media.ice import restrict_ice_to_loopback
from server.protocol import MAX_MESSAGE_BYTES

from conftest import LiveServer

# Each example opens its own socket or HTTP session, so examples stay independent and shrink to a true reproducer.
# Measured on the 2-core dev machine: a socket example 0.06-0.15 s (an offer answered, a few messages), an HTTP one
# 0.01-0.02 s; with these counts the file takes 75-90 s, server start included.
SOCKET_EXAMPLES = 150
HTTP_EXAMPLES = 300
FUZZ = settings(
    max_examples=SOCKET_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the working tree; a failure prints its example
    # The bystander check is function-scoped on purpose: once per test, not per example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
REPLY_TIMEOUT = 30  # seconds; a reply takes well under one, but the machine may be busy with other work
BYSTANDER = "bystander"
# What the server answers to a mutated offer: HTTP statuses and socket error codes that say "not this offer".
SDP_REFUSALS = {400, 413}
OFFER_ERROR_CODES = {"bad_sdp", "no_video", "bad_direction", "unsupported_codec", "message_too_large"}
LOG_FAILURES = re.compile(r"Traceback|Task exception was never retrieved|Exception in callback|^(ERROR|CRITICAL) ")


class LoopThread:
    """An event loop in a thread of its own: the bystander streams on it while hypothesis runs examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


# ---- fixtures: one server, one loop, one bystander, real offers ----


@pytest.fixture(scope="module")
def loop():
    restrict_ice_to_loopback()
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def server():
    # Room for the streams of examples whose sockets are still closing on the server's side.
    live = LiveServer("--max-sessions", "16")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def bystander(server, loop):
    client = LoopbackClient(server.ws_url, 128, 128, stream=BYSTANDER)
    loop.run(client.__aenter__())
    loop.run(client.wait_for_frames(3, timeout=60))
    yield client
    loop.run(client.close())


@pytest.fixture(scope="module")
def baseline(server, bystander) -> dict:
    """/health with the bystander alone: every test must leave the server so."""
    return wait_for_health(
        server, lambda health: health["streams"] == 1 and health["peer_connections"] == 1, what="to the bystander"
    )


class Keyed(dict):
    """A fixture's dict that hypothesis's failure reports show by its keys alone."""

    def __repr__(self) -> str:
        return f"{{{', '.join(self)}}}"


@pytest.fixture(scope="module")
def offers(loop) -> Keyed:
    """Real aiortc offers: the page's (camera sent, picture received), OBS's over WHIP, a WHEP viewer's."""
    return Keyed(loop.run(make_offers()))


@pytest.fixture(scope="module")
def schema(server) -> Keyed:
    """The served JSON schema's properties: the oracle for params."""
    return Keyed(server.get_json("/params/schema")["properties"])


@pytest.fixture
def bystander_keeps_streaming(server, loop, bystander, baseline):
    """After each test: the bystander's stream was never ended or starved, no session was left behind, and the
    server logged no error."""
    start, seen, logged = time.monotonic(), len(bystander.record.arrivals), len(server.lines)
    yield
    assert server.process.poll() is None, "the server exited:\n" + "".join(server.lines[-50:])
    health = wait_for_health(server, lambda health: same_counts(health, baseline), what="back to the bystander alone")
    assert not bystander.record.errors, bystander.record.errors
    loop.run(bystander.wait_for_frames(seen + 3, timeout=30))
    arrivals = [start, *(t for t in bystander.record.arrivals if t >= start)]
    longest_gap = max(b - a for a, b in itertools.pairwise(arrivals))
    assert longest_gap < 10, f"the bystander got no frame for {longest_gap:.1f} s; {health}"
    failures = log_failures(server.lines[logged:])
    assert not failures, failures


async def make_offers() -> dict[str, str]:
    async def offer(build: Callable[[RTCPeerConnection], None]) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        build(pc)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    def page(pc: RTCPeerConnection) -> None:
        pc.addTransceiver(SyntheticCamera(64, 64, still=True), direction="sendrecv")

    def whip(pc: RTCPeerConnection) -> None:
        prefer_codec(pc.addTransceiver(SyntheticCamera(64, 64, still=True), direction="sendonly"), "video/H264")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")

    def whep(pc: RTCPeerConnection) -> None:
        pc.addTransceiver("video", direction="recvonly")

    return {"page": await offer(page), "whip": await offer(whip), "whep": await offer(whep)}


# ---- HTTP and /health ----

COUNTS = ("streams", "publishers", "viewers", "controllers", "sockets", "engine_clients", "peer_connections")


def same_counts(health: dict, baseline: dict) -> bool:
    return all(health[name] == baseline[name] for name in COUNTS)


def wait_for_health(server: LiveServer, condition: Callable[[dict], bool], what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = server.health()
        if condition(health):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never came {what}: {health}")
        time.sleep(0.2)


def log_failures(lines: list[str]) -> str:
    """The server's error lines and tracebacks (not its INFO lines), if any line says a task died or an error."""
    if not any(LOG_FAILURES.search(line) for line in lines):
        return ""
    return "".join(line for line in lines if not line.startswith("INFO "))


def post_offer(url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST raw bytes as application/sdp (rtc_clients.http sends text only; a fuzzed offer need not be UTF-8)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/sdp"})
    try:
        with urllib.request.urlopen(request, timeout=REPLY_TIMEOUT) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def delete(url: str) -> int:
    request = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=REPLY_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def check_sdp_reply(server: LiveServer, status: int, headers: dict[str, str], body: bytes) -> None:
    """A 201 with an answer (its resource then deleted), or a refusal as JSON with a code and a message."""
    event(f"HTTP {status}")
    if status == 201:
        assert headers["content-type"].startswith("application/sdp") and "location" in headers, headers
        assert body.startswith(b"v=0"), body[:200]
        assert delete(server.url + headers["location"]) == 200
        return
    assert status in SDP_REFUSALS, (status, body[:500])
    reply = json.loads(body)
    assert isinstance(reply.get("code"), str) and reply["code"], reply
    assert isinstance(reply.get("message"), str) and reply["message"], reply


# ---- the page's socket, driven by hand ----

probe_numbers = itertools.count()


class FuzzSocket:
    """A `/ws` socket that sends anything and reads the server's replies in order (stats are skipped)."""

    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, message: str | bytes) -> None:
        await self.ws.send(message)

    async def reply(self, before: list[dict] | None = None) -> dict:
        """The next message that is not stats; `before`: what came already, for the report if the socket closes."""
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), REPLY_TIMEOUT)
            except websockets.ConnectionClosed as closed:
                raise AssertionError(f"the server closed the socket ({closed.rcvd}) after {before or []}") from None
            message = json.loads(raw)
            assert isinstance(message, dict) and isinstance(message.get("type"), str), message
            if message["type"] != "stats":
                return message

    async def replies_to(self, message: str | bytes) -> list[dict]:
        """Everything the server answers to `message`: a probe follows it, and its own error ends the answer."""
        probe = f"fuzz-probe-{next(probe_numbers)}"
        await self.send(message)
        await self.send(json.dumps({"type": probe}))
        replies = []
        while True:
            reply = await self.reply(replies)
            if reply["type"] == "error" and reply["code"] == "unknown_type" and repr(probe) in reply["message"]:
                return replies
            replies.append(reply)

    async def offer(self, sdp: str) -> dict:
        """A valid offer: the answer, then the stream's effective params."""
        await self.send(json.dumps({"type": "offer", "sdp": sdp}))
        answer = await self.reply()
        assert answer["type"] == "answer" and answer["sdp"].startswith("v=0"), answer
        params = await self.reply()
        assert params["type"] == "params", params
        return params

    async def set_params(self, **params: Any) -> dict:
        replies = await self.replies_to(json.dumps({"type": "params", "params": params}))
        assert [reply["type"] for reply in replies] == ["params"], replies
        for name, value in params.items():
            assert replies[0]["params"][name] == value, replies
        return replies[0]


@contextlib.asynccontextmanager
async def fuzz_socket(server: LiveServer) -> AsyncIterator[FuzzSocket]:
    async with websockets.connect(server.ws_url, max_size=1 << 20) as ws:
        socket = FuzzSocket(ws)
        first = await socket.reply()
        assert first["type"] == "stream", first
        yield socket


def check_error(reply: dict, codes: set[str] | None = None) -> None:
    assert reply["type"] == "error", reply
    assert isinstance(reply.get("code"), str) and reply["code"], reply
    assert isinstance(reply.get("message"), str) and reply["message"], reply
    if codes is not None:
        assert reply["code"] in codes, reply


# ---- strategies: JSON, messages ----

Draw = Callable[[st.SearchStrategy[Any]], Any]  # what `st.composite` hands a strategy function


class RawNumber:
    """A JSON number written as is: Python cannot turn an int of over 4300 digits into text (nor the server back)."""

    def __init__(self, digits: str) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        sign = "-" if self.digits.startswith("-") else ""
        return f"RawNumber({sign!r} + '9' * {len(self.digits) - len(sign)})"


def is_strict_json(value: Any) -> bool:
    """Whether `value` written out is JSON as RFC 8259 has it: finite numbers that fit the parser (no RawNumber), and
    strings (keys too) of whole Unicode characters. The server refuses anything else as malformed_json."""
    if isinstance(value, dict):
        return all(is_unicode(key) and is_strict_json(child) for key, child in value.items())
    if isinstance(value, list):
        return all(is_strict_json(child) for child in value)
    if isinstance(value, str):
        return is_unicode(value)
    if isinstance(value, float):
        return math.isfinite(value)
    return not isinstance(value, RawNumber)


def to_json(value: Any) -> str:
    """`json.dumps` that writes RawNumbers as their digits (and NaN / Infinity as Python does)."""
    raws: list[str] = []

    def mark(item: Any) -> Any:
        if isinstance(item, RawNumber):
            raws.append(item.digits)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(item, dict):
            return {key: mark(child) for key, child in item.items()}
        if isinstance(item, list):
            return [mark(child) for child in item]
        return item

    text = json.dumps(mark(value))
    for index, digits in enumerate(raws):
        text = text.replace(f'"\\u0000raw{index}\\u0000"', digits)
    return text


# Characters as JSON can escape them: lone surrogates included.
any_char = st.characters(exclude_categories=())
texts = st.text(any_char, max_size=40)
huge_numbers = st.one_of(
    st.integers(min_value=2**53, max_value=10**400),
    st.builds(lambda sign, n: RawNumber(sign + "9" * n), st.sampled_from(["", "-"]), st.integers(4301, 5000)),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), texts, huge_numbers, st.just(-0.0), st.just(1e308)
)
json_values = st.recursive(
    json_scalars, lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5)
)


def sized(text: str, size: int, filler: str) -> str:
    """`text` padded with `filler` (whitespace outside a JSON value, anything inside a string) to `size` bytes."""
    missing = size - len(text.encode())
    return text + filler * max(missing // len(filler.encode()), 0)


@st.composite
def near_the_limit(draw: Draw) -> str:
    """A message of about the size limit, a few bytes under or over it."""
    size = draw(st.integers(MAX_MESSAGE_BYTES - 8, MAX_MESSAGE_BYTES + 8))
    kind = draw(st.sampled_from(["whitespace", "prompt", "offer"]))
    if kind == "whitespace":  # a valid params message, padded after its closing brace
        return sized('{"type": "params", "params": {}}', size, draw(st.sampled_from([" ", "\n"])))
    head = '{"type": "params", "params": {"prompt": "' if kind == "prompt" else '{"type": "offer", "sdp": "'
    filler = draw(st.sampled_from(["a", "\u00e9", "\u20ac"]))
    return sized(head, size - 3, filler) + '"}' + ("}" if kind == "prompt" else "")


@st.composite
def typed_messages(draw: Draw, offers: dict[str, str]) -> str:
    """Objects that look like protocol messages: a real or odd type, its fields of any type, and extra fields."""
    message = {"type": draw(st.sampled_from(["offer", "params"]) | texts | json_values)}
    if draw(st.booleans()):
        message["sdp"] = draw(st.sampled_from(list(offers.values())) | json_values)
    if draw(st.booleans()):
        message["params"] = draw(json_values | st.dictionaries(texts, json_values, max_size=4))
    message.update(draw(st.dictionaries(texts, json_values, max_size=3)))
    return to_json(message)


def socket_messages(offers: dict[str, str]) -> st.SearchStrategy[str | bytes]:
    deep = st.builds(lambda open_, depth: open_ * depth, st.sampled_from(["[", '{"a":']), st.integers(1, 40_000))
    return st.one_of(
        json_values.map(to_json),
        typed_messages(offers),
        st.text(max_size=40),  # a text frame is UTF-8: no lone surrogates here, unlike inside JSON strings
        st.binary(max_size=200),
        near_the_limit(),
        deep.map(lambda text: text + "]" * text.count("[") + "}" * text.count("{")),
        json_values.map(to_json).flatmap(lambda text: st.integers(0, len(text)).map(lambda cut: text[:cut])),
    )


# ---- strategies: params ----


def off_by_little(limit: float) -> st.SearchStrategy[float]:
    return st.sampled_from([math.nextafter(limit, -math.inf), limit, math.nextafter(limit, math.inf)])


def values_for(prop: dict) -> st.SearchStrategy[Any]:
    """Valid values of one schema property, values at and just past its limits, and wrong types."""
    if prop["type"] == "array":  # `modulations`: lists of entries, up to one past the limit
        return st.lists(values_for(prop["items"]) | json_values, max_size=prop.get("maxItems", 8) + 1)
    if prop["type"] == "object":  # an entry: its keys with their values, now and then one missing or unknown
        fields = {name: values_for(sub) for name, sub in prop["properties"].items()}
        return st.fixed_dictionaries({}, optional=fields) | st.fixed_dictionaries(
            {name: field for name, field in fields.items() if name in prop.get("required", ())},
            optional={"extra": json_values},
        )
    if prop["type"] == "string":
        fitting = st.sampled_from(prop["enum"]) if "enum" in prop else texts
        length = prop.get("maxLength", 2000)
        long = st.builds(lambda c, n: c * n, any_char, st.integers(length - 1, length + 1))
        return st.one_of(fitting, long, st.sampled_from(["NaN", "Infinity", "0.5", "", "IMG2IMG"]))
    low, high = prop["minimum"], prop["maximum"]
    if prop["type"] == "integer":
        step = prop.get("multipleOf", 1)
        fitting = st.integers(math.ceil(low / step), math.floor(high / step)).map(lambda n: n * step)
        edges = st.sampled_from([low - step, low, high, high + step, low + 1, high - 1, float(low), low + 0.5])
    else:
        fitting = st.floats(low, high)
        edges = off_by_little(low) | off_by_little(high) | st.sampled_from([int(low), int(high), -0.0])
    return st.one_of(fitting, edges, st.integers(), st.floats(), huge_numbers, st.sampled_from(["NaN", "inf", "1"]))


@st.composite
def params_changes(draw: Draw, schema: dict) -> dict[str, Any]:
    names = st.sampled_from(sorted(schema))
    changes = {}
    for name in draw(st.lists(names, max_size=4, unique=True)):
        changes[name] = draw(values_for(schema[name]) | json_values)
    if draw(st.integers(0, 4)) == 0:  # now and then a name the schema does not know
        unknown = texts | st.sampled_from(["Prompt", "steps ", "controlnet_scale", "__class__"])
        changes[draw(unknown.filter(lambda name: name not in schema))] = draw(json_values)
    return changes


def conforms(prop: dict, value: Any) -> bool:
    """Whether `value` is valid for a property of the served schema: the oracle, written from the schema alone."""
    if isinstance(value, RawNumber):
        return False  # thousands of digits: out of every range
    if prop["type"] == "array":
        items = prop["items"]
        return (
            isinstance(value, list)
            and len(value) <= prop.get("maxItems", math.inf)
            and all(conforms(items, item) for item in value)
        )
    if prop["type"] == "object":
        known = prop["properties"]
        return (
            isinstance(value, dict)
            and set(prop.get("required", ())) <= set(value)
            and (prop.get("additionalProperties", True) is not False or set(value) <= set(known))
            and all(name not in known or conforms(known[name], item) for name, item in value.items())
        )
    if prop["type"] == "string":
        if not isinstance(value, str) or len(value) > prop.get("maxLength", math.inf):
            return False
        # A lone surrogate (JSON can escape one) is not Unicode text (RFC 8259, section 8.2): refusing it is right.
        return is_unicode(value) and value in prop.get("enum", [value])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not (math.isfinite(value) and (prop["type"] == "number" or value.is_integer())):
        return False
    in_range = prop["minimum"] <= value <= prop["maximum"]
    return in_range and ("multipleOf" not in prop or value % prop["multipleOf"] == 0)


def is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def refused_by_schedule(after: dict, reply: dict) -> bool:
    """The rule the schema cannot state: in img2img, strength must leave at least one LCM step to run."""
    return after["mode"] == "img2img" and "strength" in reply["message"] and "steps" in reply["message"]


def expected_params(schema: dict, before: dict, changes: dict) -> dict | None:
    """The params after `changes`, or None where the server must refuse them all."""
    if any(name not in schema or not conforms(schema[name], value) for name, value in changes.items()):
        return None
    after = {**before, **changes}
    if after["min_resolution"] > after["max_resolution"]:
        return None
    return after


# ---- strategies: SDP ----

CODEC_NAMES = ["VP8", "H264", "VP9", "AV1", "H265", "opus", "PCMU", "rtx", "vp8", "", "X" * 300]
DIRECTIONS = ["sendrecv", "sendonly", "recvonly", "inactive", "sideways"]
KEY_LINES = (
    "a=fingerprint",
    "a=ice-ufrag",
    "a=ice-pwd",
    "a=candidate",
    "a=setup",
    "a=mid",
    "a=group",
    "a=rtpmap",
    "a=fmtp",
    "a=msid",
    "a=ssrc",
    "a=rtcp-mux",
    "m=",
    "c=",
    "o=",
    "v=",
)


def one_index(draw: Draw, lines: list[str]) -> int:
    return draw(st.integers(0, max(len(lines) - 1, 0)))


def delete_line(draw: Draw, lines: list[str]) -> list[str]:
    return lines[: (i := one_index(draw, lines))] + lines[i + 1 :]


def duplicate_line(draw: Draw, lines: list[str]) -> list[str]:
    return lines[: (i := one_index(draw, lines)) + 1] + lines[i:]


def swap_lines(draw: Draw, lines: list[str]) -> list[str]:
    i, j, lines = one_index(draw, lines), one_index(draw, lines), list(lines)
    if lines:
        lines[i], lines[j] = lines[j], lines[i]
    return lines


def move_lines(draw: Draw, lines: list[str]) -> list[str]:
    """A run of lines cut out and put back elsewhere."""
    start = one_index(draw, lines)
    end = draw(st.integers(start, len(lines)))
    rest = lines[:start] + lines[end:]
    at = draw(st.integers(0, len(rest)))
    return rest[:at] + lines[start:end] + rest[at:]


def drop_key_lines(draw: Draw, lines: list[str]) -> list[str]:
    prefix = draw(st.sampled_from(KEY_LINES))
    return [line for line in lines if not line.startswith(prefix)]


def change_codec(draw: Draw, lines: list[str]) -> list[str]:
    new = draw(st.sampled_from(CODEC_NAMES))
    return [
        re.sub(r"(?i)\b(VP8|H264|opus|rtx)\b", new, line) if line.startswith("a=rtpmap") else line for line in lines
    ]


def change_direction(draw: Draw, lines: list[str]) -> list[str]:
    new = draw(st.sampled_from(DIRECTIONS))
    return [f"a={new}" if line[2:] in DIRECTIONS else line for line in lines]


def change_number(draw: Draw, lines: list[str]) -> list[str]:
    """A port, payload type or other number replaced with an odd one."""
    i = one_index(draw, lines)
    new = draw(st.sampled_from(["0", "-1", "65536", "128", "99999999999999999999", "x", ""]))
    return [*lines[:i], re.sub(r"\d+", new, lines[i], count=1) if lines else "", *lines[i + 1 :]]


def insert_line(draw: Draw, lines: list[str]) -> list[str]:
    line = draw(st.sampled_from(["a=", "m=", "c=", "b=", ""])) + draw(texts)
    return lines[: (i := one_index(draw, lines))] + [line] + lines[i:]


def flip_characters(draw: Draw, lines: list[str]) -> list[str]:
    text = "\r\n".join(lines)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, max(len(text) - 1, 0)))
        text = text[:at] + draw(any_char) + text[at + 1 :]
    return text.split("\r\n")


def repeat_media(draw: Draw, lines: list[str]) -> list[str]:
    """A media section copied many times: many m-lines, one offer."""
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not starts:
        return lines
    section = lines[starts[0] : starts[1] if len(starts) > 1 else len(lines)]
    return lines + section * draw(st.integers(1, 12))


LINE_MUTATIONS = [
    delete_line,
    duplicate_line,
    swap_lines,
    move_lines,
    drop_key_lines,
    change_codec,
    change_direction,
    change_number,
    insert_line,
    flip_characters,
    repeat_media,
]


@st.composite
def mutated_sdp(draw: Draw, offers: dict[str, str]) -> bytes:
    """A real offer with its lines mutated, then its bytes: truncated, broken UTF-8, or random bytes instead."""
    lines = offers[draw(st.sampled_from(sorted(offers)))].split("\r\n")
    for mutation in draw(st.lists(st.sampled_from(LINE_MUTATIONS), max_size=4)):
        lines = mutation(draw, lines)
    body = draw(st.sampled_from(["\r\n", "\n", "\r"])).join(lines).encode("utf-8", "surrogatepass")
    ending = draw(st.sampled_from(["keep", "keep", "keep", "truncate", "bytes", "random", "oversize"]))
    if ending == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif ending == "bytes":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xfe\xff"])) + body[at:]
    elif ending == "random":
        body = draw(st.binary(max_size=500))
    elif ending == "oversize":
        body += b"a=x-padding:" + b"x" * MAX_MESSAGE_BYTES
    return body


# ---- the properties ----

with_bystander = pytest.mark.usefixtures("bystander_keeps_streaming")
# The bystander's aiortc, on the loop thread, draws from `random` while hypothesis generates examples here.
pytestmark = [
    pytest.mark.slow,  # hypothesis against a live server: 29-54 s a test (CI, under load)
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),  # of the long strings and numbers drawn
]

stream_numbers = itertools.count()


def next_stream_name() -> str:
    return f"fuzz-{next(stream_numbers)}"


def outcome(reply: dict) -> str:
    """How the server answered, for hypothesis's statistics (`--hypothesis-show-statistics`)."""
    return f"error {reply['code']}" if reply["type"] == "error" else reply["type"]


@with_bystander
@FUZZ
@given(data=st.data(), offered_first=st.booleans())
def test_every_socket_message_gets_an_answer_and_the_socket_stays_usable(server, loop, offers, data, offered_first):
    messages = data.draw(st.lists(socket_messages(offers), min_size=1, max_size=3), label="messages")
    for label in loop.run(socket_messages_are_answered(server, offers, messages, offered_first)):
        event(label)


async def socket_messages_are_answered(
    server: LiveServer, offers: Keyed, messages: list[str | bytes], offered_first: bool
) -> list[str]:
    outcomes = []
    async with fuzz_socket(server) as socket:
        offered = offered_first
        if offered:
            await socket.offer(offers["page"])
        for message in messages:
            replies = await socket.replies_to(message)
            assert replies, f"no answer to {message!r:.300}"
            first = replies[0]
            assert first["type"] in ("error", "params", "answer"), replies
            for reply in replies:
                if reply["type"] == "error":
                    check_error(reply)
            if first["type"] == "answer":
                assert not offered and [r["type"] for r in replies] == ["answer", "params"], replies
                offered = True
            outcomes.append(outcome(first))
        if offered:
            await socket.set_params(seed=7)
        else:
            await socket.offer(offers["page"])
    return outcomes


@with_bystander
@FUZZ
@given(data=st.data())
def test_params_are_applied_within_the_schema_or_refused_unchanged(server, loop, offers, schema, data):
    sequence = data.draw(st.lists(params_changes(schema), min_size=1, max_size=4), label="changes")
    for label in loop.run(params_are_checked(server, offers, schema, sequence)):
        event(label)


async def params_are_checked(server: LiveServer, offers: Keyed, schema: Keyed, sequence: list[dict]) -> list[str]:
    outcomes = []
    async with fuzz_socket(server) as socket:
        before = (await socket.offer(offers["page"]))["params"]
        assert set(before) == set(schema)
        for changes in sequence:
            message = to_json({"type": "params", "params": changes})
            replies = await socket.replies_to(message)
            assert replies, f"no answer to {message!r:.300}"
            outcomes.append(outcome(replies[0]))
            expected = expected_params(schema, before, changes)
            if len(message.encode()) > MAX_MESSAGE_BYTES:
                assert [r.get("code") for r in replies] == ["message_too_large"], replies
            elif not is_strict_json(changes):
                # NaN, Infinity, a lone surrogate, a number of over 4300 digits: not JSON, refused as a message.
                assert [r.get("code") for r in replies] == ["malformed_json"], (changes, replies)
            elif expected is None or replies[0]["type"] == "error" and refused_by_schedule(expected, replies[0]):
                assert [r["type"] for r in replies] == ["error", "params"], (changes, replies)
                check_error(replies[0], {"bad_params"})
                assert replies[1]["params"] == before, (changes, replies)
            else:
                assert [r["type"] for r in replies] == ["params"], (changes, replies)
                assert replies[0]["params"] == expected, (changes, replies)
                for name, value in replies[0]["params"].items():
                    assert conforms(schema[name], value), (name, value)
                before = replies[0]["params"]
    return outcomes


@with_bystander
@settings(FUZZ, max_examples=HTTP_EXAMPLES)
@given(data=st.data())
def test_whip_answers_every_offer_with_201_or_a_json_refusal(server, offers, data):
    body = data.draw(mutated_sdp(offers), label="body")
    check_sdp_reply(server, *post_offer(f"{server.url}/whip/{next_stream_name()}", body))


@with_bystander
@settings(FUZZ, max_examples=HTTP_EXAMPLES)
@given(data=st.data())
def test_whep_answers_every_offer_with_201_or_a_json_refusal(server, offers, data):
    body = data.draw(mutated_sdp(offers), label="body")
    check_sdp_reply(server, *post_offer(f"{server.url}/whep/{BYSTANDER}", body))


@with_bystander
@FUZZ
@given(data=st.data())
def test_socket_answers_every_offer_and_stays_usable(server, loop, offers, data):
    body = data.draw(mutated_sdp(offers), label="body")
    event(loop.run(socket_offer_is_answered(server, offers, body.decode("utf-8", "surrogateescape"))))


async def socket_offer_is_answered(server: LiveServer, offers: Keyed, sdp: str) -> str:
    async with fuzz_socket(server) as socket:
        replies = await socket.replies_to(json.dumps({"type": "offer", "sdp": sdp}))
        assert replies, "no answer to the offer"
        if replies[0]["type"] == "answer":
            assert [r["type"] for r in replies] == ["answer", "params"], replies
            await socket.set_params(seed=7)
        else:
            assert len(replies) == 1, replies
            # Bytes that are not UTF-8 reach the JSON as lone surrogates ("\udcff"): not JSON text at all.
            check_error(replies[0], OFFER_ERROR_CODES if is_unicode(sdp) else {"malformed_json"})
            await socket.offer(offers["page"])
    return outcome(replies[0])


def test_after_the_fuzz_every_count_returns_to_zero_and_no_task_died(server, loop, bystander, baseline):
    loop.run(bystander.close())
    wait_for_health(server, lambda health: all(health[name] == 0 for name in COUNTS), what="to zero")
    server.stop()
    failures = log_failures(server.lines)
    assert not failures, failures
