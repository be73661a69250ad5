"""REST control for Stream Decks, Companion and curl: list streams, read one, change its params, end it.

`PATCH /streams/{stream}` goes through the same validation as the page's socket and is echoed to every socket on
the stream; a refused change is `422 {"errors": [{"param": ..., "message": ...}]}` and changes nothing.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipelines import ParamsError

from ..protocol import MAX_MESSAGE_BYTES
from ..registry import StreamError, StreamRegistry
from .http_sdp import error_response


def rest_routes(registry: StreamRegistry) -> list[Route]:
    async def list_streams(request: Request) -> JSONResponse:
        return JSONResponse({"streams": [stream.summary() for stream in registry]})

    async def one_stream(request: Request) -> Response:
        try:
            stream = registry.get(request.path_params["stream"])
        except StreamError as error:
            return error_response(error.status, error.code, error.message)
        if request.method == "GET":
            return JSONResponse({**stream.summary(), **stream.effective(), "stats": stream.last_stats})
        if request.method == "DELETE":
            await stream.end("stopped", "stopped over REST")
            return JSONResponse({"ended": stream.name})
        body = await request.body()
        if len(body) > MAX_MESSAGE_BYTES:
            return error_response(413, "message_too_large", f"the body is over {MAX_MESSAGE_BYTES} bytes")
        try:
            changes = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return error_response(400, "malformed_json", f"the body is not JSON: {error}")
        if not isinstance(changes, dict):
            return JSONResponse({"errors": [{"param": None, "message": "send a JSON object of params"}]}, 422)
        try:
            effective = await stream.set_params(changes, front_end="rest")
        except ParamsError as error:
            return JSONResponse({"errors": error.as_list()}, status_code=422)
        return JSONResponse(effective)

    return [
        Route("/streams", list_streams),
        Route("/streams/{stream}", one_stream, methods=["GET", "PATCH", "DELETE"]),
    ]
