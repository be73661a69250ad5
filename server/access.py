"""Who may use the server: the host names it answers to, the token, and the web origins whose pages may drive it.
One gate for every route.

Without an Origin check any web page the user visits could open the socket from the user's own browser and use the
GPU (a token is off by default on localhost). Browsers always send Origin on WebSockets and on state-changing
requests; OBS, curl and Python clients send none and are not browsers' victims, so no Origin passes.

The Origin check alone is not enough: a page served from a name that its owner then points at 127.0.0.1 (DNS
rebinding) sends a Host and an Origin that match each other, and was seen listing, changing and controlling streams.
So a Host that is a name must be one this server was told it is served as: `localhost` and `*.localhost` (browsers
resolve those to this machine themselves), `--allow-host` names, the hosts of `--allow-origin` origins. An IP
literal cannot be rebound and passes, as does a request with no Host at all (HTTP/1.0 tools; browsers always send
one).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

# Methods that only read: a foreign page may not change anything, and CORS already keeps it from reading.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def offered_token(headers: Headers, query: QueryParams) -> str | None:
    header = headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return query.get("token")


def token_matches(offered: str | None, token: str | None) -> bool:
    if not token:
        return True
    return offered is not None and hmac.compare_digest(offered.encode(), token.encode())


ANY_HOST = "*"


def host_name(host: str) -> str:
    """The name or address in a Host header, without its port and trailing dot, in lower case."""
    if host.startswith("["):  # an IPv6 literal: [::1]:8000
        return host[1:].split("]", 1)[0].lower()
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".").lower()


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is not part of the address
    except ValueError:
        return False
    return True


def allowed_host_names(allow_hosts: Iterable[str], allow_origins: Iterable[str]) -> frozenset[str]:
    """The names a Host may carry besides localhost: `--allow-host` names and the hosts of `--allow-origin`."""
    names = {name.rstrip(".").lower() for name in allow_hosts}
    names.update(host_name(urlsplit(origin).netloc) for origin in allow_origins)
    return frozenset(names)


def host_allowed(name: str, allowed: frozenset[str]) -> bool:
    """Whether a Host naming `name` is this server: an IP literal, localhost, or an allowed name (`.example.com`
    allows example.com and every name below it)."""
    if ANY_HOST in allowed or is_ip_literal(name) or name == "localhost" or name.endswith(".localhost"):
        return True
    return name in allowed or any(
        entry.startswith(".") and (name == entry[1:] or name.endswith(entry)) for entry in allowed
    )


def same_origin(origin: str, scope: Scope, headers: Headers) -> bool:
    scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
    return origin == f"{scheme}://{headers.get('host', '')}"


class AccessGate:
    """ASGI middleware: refuses host names it is not served as, foreign origins (unless allowed) and, with a token
    set, requests without it.

    Pages and their scripts are open (they hold nothing secret; the page passes `?token=` on to what it calls);
    everything that serves data or changes state needs the token. Refusals on a socket are sent as a protocol
    error and a 1008 close, so the page can show why; over HTTP they are 401/403 with a JSON message.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        allow_origins: Iterable[str],
        open_paths: tuple[str, ...],
        allow_hosts: Iterable[str] = (),
    ):
        self.app = app
        self.token = token
        self.allow_origins = frozenset(allow_origins)
        self.allow_hosts = allowed_host_names(allow_hosts, self.allow_origins)
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await _refuse_socket(receive, send, *refusal)
        else:
            await _refuse_request(send, *refusal)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        # Every path, the pages included: a rebinding page would otherwise be served from this machine.
        host = headers.get("host")
        if host is not None and not host_allowed(host_name(host), self.allow_hosts):
            name = host_name(host)
            message = (
                f"this server is not served as {name!r}: a page under a name the server does not know may be a DNS "
                f"rebinding attack; start it with --allow-host {name} if that name is yours"
            )
            return 403, "forbidden_host", message
        origin = headers.get("origin")
        changes_state = scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS
        if (
            changes_state
            and origin is not None
            and origin not in self.allow_origins
            and not same_origin(origin, scope, headers)
        ):
            return 403, "forbidden_origin", f"pages from {origin} may not use this server (see --allow-origin)"
        path = scope["path"]
        if self.token and not any(path == p or path.startswith(p + "/") for p in self.open_paths):
            query = QueryParams(scope.get("query_string", b""))
            if not token_matches(offered_token(headers, query), self.token):
                message = "missing or wrong token: add ?token=... to the page URL or send Authorization: Bearer"
                return 401, "unauthorized", message
        return None


async def _refuse_request(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse_socket(receive: Receive, send: Send, status: int, code: str, message: str) -> None:
    # Accept first, then refuse with a message: a rejected handshake looks like "server down" to a browser.
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"type": "error", "code": code, "message": message})})
    await send({"type": "websocket.close", "code": 1008})
