"""The page's WebSocket `/ws`: publish a camera as a named stream (signaling, params, stats), or control one.

`/ws?stream=NAME` publishes under NAME (a generated name without it); `/ws?stream=NAME&role=control` attaches to a
stream that is publishing, sends no offer, and gets the params echo and the stats. Closing a publishing socket
ends its stream. The protocol is in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipelines import ParamsError

from ..protocol import ProtocolError, error_message, parse_client_message
from ..registry import OfferError, StreamError, StreamRegistry
from ..streams import Stream

log = logging.getLogger(__name__)

ROLES = ("publish", "control")


class PageSocket:
    """One page's socket. A publisher reserves its stream's name when it opens and owns the stream it starts;
    a controller attaches to a stream and leaves it running when it goes."""

    def __init__(self, websocket: WebSocket, registry: StreamRegistry, role: str, name: str) -> None:
        self.websocket = websocket
        self.registry = registry
        self.role = role
        self.name = name
        self.stream: Stream | None = None
        self._send_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._answering = False  # an offer came in time and is being answered

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):  # the client may be gone mid-send
                    await self.websocket.send_text(json.dumps(message))

    async def run(self) -> None:
        """Until the socket closes, the stream ends, or a publisher's offer does not come in time."""
        await self.send({"type": "stream", "name": self.name, "role": self.role, "urls": stream_urls(self.name)})
        if self.stream is not None:  # a controller, attached when it was admitted
            await self.send({"type": "params", **self.stream.effective()})
        tasks = {
            asyncio.create_task(self._receive_loop(), name=f"ws-{self.name}-{self.role}-receive"),
            asyncio.create_task(self._closed.wait(), name=f"ws-{self.name}-{self.role}-closed"),
        }
        # The deadline only watches: when it passes after the offer it returns, and that must not end the session
        # (it closes the socket itself when no offer came).
        watchers = set()
        if self.role == "publish":
            watchers.add(asyncio.create_task(self._offer_deadline(), name=f"ws-{self.name}-offer-deadline"))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks | watchers:
                task.cancel()
            await asyncio.gather(*tasks, *watchers, return_exceptions=True)

    async def close(self, code: int = 1000) -> None:
        """Leave the stream (ending it if this socket publishes it) and close the socket. Idempotent."""
        self._closed.set()
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.listeners.discard(self)
            if self.role == "publish":
                await stream.end("publisher_left", "the publishing page closed its connection")
        elif self.role == "publish":
            self.registry.release(self.name)
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code)

    async def end(self, code: str, message: str) -> None:
        """Tell the page why, then close (its stream ended, the server shuts down, a timeout)."""
        await self.send(error_message(code, message))
        await self.close(1001 if code == "shutting_down" else 1008)

    async def _offer_deadline(self) -> None:
        timeout = self.registry.config.offer_timeout
        await asyncio.sleep(timeout)
        if self.stream is None and not self._answering:
            await self.end("offer_timeout", f"no offer within {timeout:g} s; the stream's slot is given back")

    async def _receive_loop(self) -> None:
        while True:
            try:
                raw = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if raw["type"] == "websocket.disconnect":
                return
            try:
                message = parse_client_message(raw.get("text"), raw.get("bytes"))
                await self._handle(message)
            except ProtocolError as error:
                await self.send(error.as_message())
            except Exception:
                log.exception("stream %s: a %s socket's message failed", self.name, self.role)
                await self.end("internal_error", "the server failed on this message (see its log)")
                return
            if self.stream is not None and self.stream.ended.is_set():
                return

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "offer":
            await self._on_offer(message)
        elif kind == "params":
            await self._on_params(message)
        else:
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected 'offer' or 'params'")

    async def _on_offer(self, message: dict[str, Any]) -> None:
        if self.role == "control":
            raise ProtocolError("not_publisher", "a control socket sends no offer; open /ws?stream=NAME to publish")
        if self.stream is not None:
            raise ProtocolError("already_offered", "this session already has a peer connection; open a new socket")
        self._answering = True
        try:
            # Whatever came is checked as an offer: missing, it is an empty one.
            stream, answer = await self.registry.publish(self.name, "page", message.get("sdp", ""), listener=self)
        except (OfferError, StreamError) as error:
            # The name stays this socket's: a page may send another offer (an offer aiortc read but cannot answer,
            # found by fuzzing, is refused like any bad offer).
            raise ProtocolError(error.code, error.message) from None
        finally:
            self._answering = False
        self.stream = stream
        await self.send({"type": "answer", "sdp": answer})
        await self.send({"type": "params", **stream.effective()})

    async def _on_params(self, message: dict[str, Any]) -> None:
        stream = self.stream
        if stream is None:
            raise ProtocolError("no_session", "send an offer before params: parameters belong to a running stream")
        changes = message.get("params")
        if not isinstance(changes, dict):
            raise ProtocolError("bad_params", 'a params message needs an object "params"')
        try:
            await stream.set_params(changes, front_end="websocket")
        except ParamsError as error:
            await self.send(error_message("bad_params", str(error)))
            # Nothing changed: the effective params again, so a client can put back what it showed.
            await self.send({"type": "params", **stream.effective()})


def stream_urls(name: str) -> dict[str, str]:
    """Where a stream can be watched and steered (paths on this server)."""
    return {"view": f"/view/{name}", "control": f"/control/{name}", "whep": f"/whep/{name}"}


async def page_socket(websocket: WebSocket, registry: StreamRegistry, sockets: set[PageSocket]) -> None:
    """The `/ws` endpoint (token and origin were checked by the access gate)."""
    await websocket.accept()
    role = websocket.query_params.get("role", "publish")
    name = websocket.query_params.get("stream") or None
    try:
        if role not in ROLES:
            raise ProtocolError("bad_role", f"role must be one of {', '.join(ROLES)}; got {role!r}")
        if role == "control":
            if name is None:
                raise ProtocolError("no_such_stream", "a control socket names its stream: /ws?stream=NAME&role=control")
            connection = PageSocket(websocket, registry, role, name)
            # Admitted and attached in one step: nothing awaits between the count and the add.
            connection.stream = registry.add_controller(name, connection)
        else:
            connection = PageSocket(websocket, registry, role, registry.reserve(name))
    except (ProtocolError, StreamError) as error:
        await websocket.send_text(json.dumps(error_message(error.code, error.message)))
        await websocket.close(code=1013 if error.code in ("server_full", "controllers_full") else 1008)
        return
    sockets.add(connection)
    try:
        await connection.run()
    finally:
        sockets.discard(connection)
        await connection.close()
