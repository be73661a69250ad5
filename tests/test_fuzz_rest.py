"""Hostile REST bodies and fuzzed REST requests against a live server, with the socket fuzz tests' fixtures.

Every body that is not JSON is `400 malformed_json`, one over the limit `413 message_too_large` (refused at the limit,
the rest never waited for), JSON that is not an object `422`; no route ever answers 5xx or drops the connection, the
bystander keeps its frames, and the server logs no traceback.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any
from urllib.parse import quote, unquote

import pytest
import test_fuzz
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_fuzz import (
    BYSTANDER,
    COUNTS,
    FUZZ,
    REPLY_TIMEOUT,
    Draw,
    json_values,
    log_failures,
    params_changes,
    sized,
    texts,
    to_json,
    wait_for_health,
)

from server.bench.loopback import LoopbackClient
from server.protocol import MAX_MESSAGE_BYTES

from conftest import LiveServer

# The socket fuzz tests' fixtures, shared by name (pytest finds a fixture wherever a test's module holds it): one
# server of this module's own, its loop thread, the bystander and its check, the served schema.
loop, server, bystander, bystander_keeps_streaming, schema = (
    test_fuzz.loop,
    test_fuzz.server,
    test_fuzz.bystander,
    test_fuzz.bystander_keeps_streaming,
    test_fuzz.schema,
)

# Measured on the 2-core dev machine, shared with other test runs (load 5-9): a REST example takes 2-50 ms (a PATCH
# the engine applies up to 300 ms); the fuzz tests 7-10 s each, the file 42-46 s with the server's start and streams.
BODY_EXAMPLES = 200
ROUTE_EXAMPLES = 300
TARGET = "target"  # the stream the fuzz changes; the bystander is never named in a request
NOT_JSON = {
    "40 000 [": b"[" * 40_000,
    "a 5000-digit integer": b'{"seed": ' + b"9" * 5000 + b"}",
    "NaN": b'{"strength": NaN}',
    "Infinity": b'{"strength": Infinity}',
    "-Infinity": b'{"guidance_scale": -Infinity}',
    "1e400": b'{"strength": 1e400}',
    "a lone surrogate": b'{"prompt": "\\ud800"}',
    "a lone surrogate as a name": b'{"\\udc00": 1}',
    "non-UTF-8 bytes": b'{"prompt": "caf\xe9"}',
    "UTF-16": '{"seed": 1}'.encode("utf-16"),
    "nothing": b"",
}
OVER_THE_LIMIT = [  # (method, path, content type, code)
    ("PATCH", f"/streams/{TARGET}", "application/json", "message_too_large"),
    ("PUT", f"/scenes/big?stream={TARGET}", "application/json", "message_too_large"),
    ("POST", "/whip/big", "application/sdp", "offer_too_large"),
]

with_bystander = pytest.mark.usefixtures("bystander_keeps_streaming")
pytestmark = [
    pytest.mark.slow,  # a live server and a bystander stream (23 s to start), hypothesis (CI, under load)
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


@pytest.fixture(scope="module")
def target(server, loop, bystander):
    """A second stream, the one REST requests change: the bystander is only watched."""
    client = LoopbackClient(server.ws_url, 64, 64, stream=TARGET)
    loop.run(client.__aenter__())
    loop.run(client.wait_for_frames(2, timeout=60))
    yield client
    loop.run(client.close())


@pytest.fixture(scope="module")
def baseline(server, bystander, target) -> dict:
    """/health with the bystander and the target: every test must leave the server so (overrides test_fuzz's)."""
    return wait_for_health(
        server, lambda health: health["streams"] == 2 and health["peer_connections"] == 2, what="to the two streams"
    )


# ---- HTTP ----


def call(server: LiveServer, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """One request on a connection of its own; the reply's status and JSON, or its text where it is not JSON (a
    dropped connection raises)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REPLY_TIMEOUT)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        reply = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(reply)
    except ValueError:
        return response.status, reply.decode(errors="replace")


def routed(path: str) -> bool:
    """Whether a route takes the path: a name that is empty or holds `/` (sent as %2F) matches none."""
    segments = path.split("?")[0].split("/")
    return segments[2] != "" and "/" not in unquote(segments[2])


def unfinished(server: LiveServer, method: str, path: str, content_type: str, chunked: bool) -> tuple[int, Any]:
    """A request whose body never ends: a Content-Length of 10 MB and no byte of it, or chunks one byte past the
    limit and no last chunk. Only a server that stops at the limit answers it."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REPLY_TIMEOUT)
    try:
        connection.putrequest(method, path)
        connection.putheader("Content-Type", content_type)
        connection.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", "10000000")))
        connection.endheaders()
        if chunked:
            for chunk in (b" " * (MAX_MESSAGE_BYTES // 2), b" " * (MAX_MESSAGE_BYTES // 2), b" "):
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def check_refusal(status: int, reply: Any, code: str | None = None) -> None:
    """A 4xx refusal as the REST routes send them: a code and a message, or (422) one error per param."""
    assert 400 <= status < 500, (status, reply)
    if status == 422 and "errors" in reply:
        assert reply["errors"] and all(isinstance(e["message"], str) and e["message"] for e in reply["errors"])
    else:
        assert isinstance(reply.get("code"), str) and reply["code"], reply
        assert isinstance(reply.get("message"), str) and reply["message"], reply
    if code is not None:
        assert reply.get("code") == code, (status, reply)


def what_the_body_is(body: bytes) -> str:
    """The oracle: `too_large`, `not_json` (RFC 8259: UTF-8, no NaN or Infinity, finite numbers, no lone
    surrogates, nesting Python can read), `not_an_object` or `object`; written apart from the server's parser."""
    if len(body) > MAX_MESSAGE_BYTES:
        return "too_large"
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=lambda name: float("nan"))
        # What goes out again must be JSON too: NaN, inf (from 1e400) and lone surrogates cannot.
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return "not_json"
    return "object" if isinstance(value, dict) else "not_an_object"


# ---- strategies ----


def nested(opening: str, depth: int, closed: bool) -> str:
    text = opening * depth
    return text + "]" * text.count("[") + "}" * text.count("{") if closed else text


# Depths that Python reads (here and in the server, whose stack is deeper) or that no stack holds: nothing between,
# where the two would disagree by the few frames the server's middleware adds.
nesting = st.builds(
    nested, st.sampled_from(["[", '{"a":']), st.integers(1, 100) | st.integers(2000, 10_000), st.booleans()
)
bad_bytes = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xfe\xff", b"NaN", b"1e400", b'"\\ud800"'])


@st.composite
def spoiled(draw: Draw, text: str) -> bytes:
    """JSON text cut short or with bytes slipped in."""
    body = text.encode()
    at = draw(st.integers(0, len(body)))
    return body[:at] if draw(st.booleans()) else body[:at] + draw(bad_bytes) + body[at:]


@st.composite
def near_the_limit(draw: Draw, objects: st.SearchStrategy[str]) -> bytes:
    """A JSON object padded with whitespace to a few bytes either side of the limit."""
    size = draw(st.integers(MAX_MESSAGE_BYTES - 8, MAX_MESSAGE_BYTES + 8))
    return sized(draw(objects), size, draw(st.sampled_from([" ", "\n", "\t"]))).encode()


def bodies(schema: dict) -> st.SearchStrategy[bytes]:
    """PATCH-like bodies: params changes (with NaN, huge numbers, lone surrogates), any JSON, deep nesting, spoiled
    JSON, bytes, sizes at the limit, and the named cases."""
    changes = params_changes(schema).map(to_json)
    return st.one_of(
        changes.map(str.encode),
        json_values.map(to_json).map(str.encode),
        nesting.map(str.encode),
        changes.flatmap(spoiled),
        st.binary(max_size=200),
        near_the_limit(changes),
        st.sampled_from(sorted(NOT_JSON.values())),
    )


def path_segment(names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A name as it goes into a URL: percent-encoded, lone surrogates and `/` included."""
    return names.map(lambda name: quote(name, safe="", errors="surrogatepass"))


stream_names = st.sampled_from([TARGET, "nobody", "x" * 65, "a b", "..", "%", "0"]) | texts.filter(
    lambda name: name not in (BYSTANDER, TARGET)
)
scene_names = st.sampled_from(["intro", "1", "99", "0", "-1", "x" * 65, "look-2"]) | texts


ROUTES = [
    "GET /streams",
    "GET /streams/{}",
    "PATCH /streams/{}",
    "DELETE /streams/{}",
    "GET /scenes",
    "PUT /scenes/{}",
    "POST /scenes/{}/recall",
]


@st.composite
def requests(draw: Draw, schema: dict) -> tuple[str, str, str, bytes | None]:
    """(route, method, path, body) for any REST route, with names, queries and bodies from anywhere."""
    route = draw(st.sampled_from(ROUTES))
    method, path = route.split()
    if path.startswith("/streams/"):
        # Never DELETE the target: the fuzz goes on steering it (ending a stream is test_rest.py's).
        names = stream_names.filter(lambda name: name != TARGET) if method == "DELETE" else stream_names
        path = path.format(draw(path_segment(names)))
    elif path.startswith("/scenes/"):
        query = draw(st.none() | path_segment(stream_names))
        path = path.format(draw(path_segment(scene_names))) + ("" if query is None else f"?stream={query}")
    if method in ("GET", "DELETE"):
        return route, method, path, None
    naming = st.builds(lambda name: to_json({"stream": name}).encode(), stream_names | json_values)
    return route, method, path, draw(bodies(schema) | naming)


# ---- the named cases ----


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_body_that_is_not_json_is_400_malformed_json(server, target, body):
    status, reply = call(server, "PATCH", f"/streams/{TARGET}", body)
    assert status == 400, reply
    check_refusal(status, reply, "malformed_json")


def test_a_scene_route_takes_its_stream_from_the_query_alone(server, target):
    status, saved = call(server, "PUT", f"/scenes/bare?stream={TARGET}", b"")
    assert status == 200 and saved["name"] == "bare", saved
    status, applied = call(server, "POST", f"/scenes/bare/recall?stream={TARGET}", b"")
    assert status == 200 and applied["params"]["prompt"] == saved["params"]["prompt"], applied


@pytest.mark.parametrize("route", ["PATCH /streams/target", "PUT /scenes/s", "POST /scenes/s/recall"])
def test_json_that_is_not_an_object_is_422(server, target, route):
    method, path = route.split()
    status, reply = call(server, method, f"{path}?stream={TARGET}", b"[1, 2]")
    assert status == 422 and reply == {"errors": [{"param": None, "message": "send a JSON object"}]}, reply


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("method", "path", "content_type", "code"), OVER_THE_LIMIT, ids=["patch", "scene", "whip"])
def test_a_body_over_the_limit_is_413_before_its_end(server, target, method, path, content_type, code, chunked):
    status, reply = unfinished(server, method, path, content_type, chunked)
    assert status == 413, reply
    check_refusal(status, reply, code)


def test_a_body_of_exactly_the_limit_is_read(server, target):
    body = sized('{"seed": 3}', MAX_MESSAGE_BYTES, " ").encode()
    assert len(body) == MAX_MESSAGE_BYTES
    status, reply = call(server, "PATCH", f"/streams/{TARGET}", body)
    assert status == 200 and reply["params"]["seed"] == 3, reply
    status, reply = call(server, "PATCH", f"/streams/{TARGET}", body + b" ")
    check_refusal(status, reply, "message_too_large")


@with_bystander
def test_a_client_that_leaves_mid_body_leaves_no_trace(server, target):
    for method, path, content_type, _ in OVER_THE_LIMIT:
        with socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_TIMEOUT) as sock:
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            sock.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode())
            sock.sendall(b'{"seed": ')
            time.sleep(0.2)  # the server is waiting for the rest when the connection goes
    assert call(server, "GET", f"/streams/{TARGET}")[0] == 200


# ---- the properties ----


@with_bystander
@settings(FUZZ, max_examples=BODY_EXAMPLES)
@given(data=st.data())
def test_every_patch_body_is_applied_or_refused_by_what_it_is(server, target, schema, data):
    body = data.draw(bodies(schema), label="body")
    kind = what_the_body_is(body)
    status, reply = call(server, "PATCH", f"/streams/{TARGET}", body)
    event(f"{kind}: HTTP {status}")
    if kind == "object" and status == 200:
        assert isinstance(reply["params"], dict) and isinstance(reply["notes"], list), reply
        return
    expected = {"too_large": (413, "message_too_large"), "not_json": (400, "malformed_json")}.get(kind, (422, None))
    assert (status, reply.get("code")) == expected, (kind, status, reply)
    check_refusal(status, reply)


@with_bystander
@settings(FUZZ, max_examples=ROUTE_EXAMPLES)
@given(data=st.data())
def test_every_rest_route_answers_4xx_or_2xx_as_json(server, target, schema, data):
    route, method, path, body = data.draw(requests(schema), label="request")
    event(route)
    status, reply = call(server, method, path, body)
    event(f"HTTP {status}")
    if status < 300:
        assert isinstance(reply, dict), reply
        return
    if not routed(path):  # Starlette's own answers: "Not Found", or a redirect away from a trailing slash
        # The name decoded ("%2F" is "/") may end the path in a slash, which Starlette redirects away from.
        assert status == 404 or status == 307 and unquote(path.split("?")[0]).endswith("/"), (status, reply)
        return
    check_refusal(status, reply)
    if status == 413 or reply.get("code") == "malformed_json":
        assert what_the_body_is(body or b"") == ("too_large" if status == 413 else "not_json"), (status, reply)


def test_after_the_rest_fuzz_every_count_returns_to_zero_and_no_task_died(server, loop, bystander, target):
    loop.run(target.close())
    loop.run(bystander.close())
    wait_for_health(server, lambda health: all(health[name] == 0 for name in COUNTS), what="to zero")
    server.stop()
    failures = log_failures(server.lines)
    assert not failures, failures
