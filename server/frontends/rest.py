"""REST control for Stream Decks, Companion and curl: streams (list, read, change params, record, end) and scenes.

`PATCH /streams/{stream}` goes through the same validation as the page's socket and is echoed to every socket on
the stream; a refused change is `422 {"errors": [{"param": ..., "message": ...}]}` and changes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipelines import ParamsError

from ..protocol import ProtocolError, parse_json
from ..registry import StreamError, StreamRegistry
from ..scenes import Scenes
from ..streams import RECALL_AT
from .http_sdp import HttpError, read_body, refusing_as_json


def rest_routes(registry: StreamRegistry, scenes: Scenes) -> list[Route]:
    async def list_streams(request: Request) -> JSONResponse:
        return JSONResponse({"streams": [stream.summary() for stream in registry]})

    @refusing_as_json
    async def one_stream(request: Request) -> Response:
        stream = registry.get(request.path_params["stream"])
        if request.method == "GET":
            summary = {
                **stream.summary(),
                **stream.effective(),
                "sound": stream.sound_state(),
                "recording": stream.recording_state(),
            }
            return JSONResponse({**summary, "stats": stream.last_stats})
        if request.method == "DELETE":
            await stream.end("stopped", "stopped over REST")
            return JSONResponse({"ended": stream.name})
        changes = await _json_object(request)
        return JSONResponse(await stream.set_params(changes, front_end="rest"))

    @refusing_as_json
    async def recording(request: Request) -> Response:
        """POST: start recording the stream (201); DELETE: stop it (200, its summary)."""
        name = request.path_params["stream"]
        if request.method == "POST":
            return JSONResponse(await registry.start_recording(name), status_code=201)
        summary = await registry.stop_recording(name)
        return JSONResponse({key: summary[key] for key in ("id", "dir", "seconds", "frames", "bytes", "reason")})

    @refusing_as_json
    async def list_scenes(request: Request) -> Response:
        return JSONResponse({"scenes": [scene.as_dict() for scene in await scenes.all()]})

    @refusing_as_json
    async def scene(request: Request) -> Response:
        """PUT: save a stream's current params as the scene; POST .../recall: apply the scene to a stream."""
        body = await _json_object(request, empty_is_object=True)  # the stream may come in the query alone
        # The stream in the query too: behind the Ray Serve proxy, only the URL reaches the router.
        stream = registry.get(request.query_params.get("stream") or body.get("stream", ""))
        name = request.path_params["scene"]
        if request.method == "PUT":
            try:
                saved = await scenes.store(name, stream.effective()["params"])
            except (ValueError, OSError) as error:  # a bad name, a cap, the file: nothing changed
                raise HttpError(422, "bad_scene", str(error)) from None
            return JSONResponse(saved.as_dict())
        at = body.get("at", "now")
        if at not in RECALL_AT:
            raise HttpError(422, "bad_at", f'"at" is one of {", ".join(RECALL_AT)}, not {at!r}')
        try:
            chosen = await scenes.find(name)
        except KeyError as error:
            raise HttpError(404, "no_such_scene", str(error.args[0])) from None
        stream.check(chosen.params)  # refused now, not after waiting for the beat
        wait, note = stream.time_to(at)
        if wait:
            await asyncio.sleep(wait)
            if stream.ended.is_set():
                raise StreamError("no_such_stream", f"stream {stream.name} ended before the {at}")
        effective = await stream.set_params(chosen.params, front_end="rest", scene=chosen.name)
        return JSONResponse({**effective, "recall": {"at": at, "waited_ms": round(wait * 1000, 1), "note": note}})

    return [
        Route("/streams", list_streams),
        Route("/streams/{stream}", one_stream, methods=["GET", "PATCH", "DELETE"]),
        Route("/streams/{stream}/recording", recording, methods=["POST", "DELETE"]),
        Route("/scenes", list_scenes),
        Route("/scenes/{scene}", scene, methods=["PUT"]),
        Route("/scenes/{scene}/recall", scene, methods=["POST"]),
    ]


async def _json_object(request: Request, empty_is_object: bool = False) -> dict[str, Any]:
    """The request's JSON object body. Refused: over the size limit (HttpError 413), anything that is not JSON (400,
    the socket's `malformed_json`), JSON that is not an object (ParamsError, a 422 like a bad param).

    `empty_is_object`: no body at all reads as `{}`."""
    body = await read_body(request, "message_too_large", "the body")
    try:
        value = {} if empty_is_object and not body else parse_json(body)
    except ProtocolError as error:
        raise HttpError(400, error.code, f"the body is {error.message}") from None
    if not isinstance(value, dict):
        raise ParamsError([(None, "send a JSON object")])
    return value
