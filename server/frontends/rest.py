"""REST control for Stream Decks, Companion and curl: streams (list, read, change params, end) and scenes.

`PATCH /streams/{stream}` goes through the same validation as the page's socket and is echoed to every socket on
the stream; a refused change is `422 {"errors": [{"param": ..., "message": ...}]}` and changes nothing.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipelines import ParamsError

from ..protocol import ProtocolError, parse_json
from ..registry import StreamError, StreamRegistry
from ..scenes import SceneBookUnavailable, Scenes
from .http_sdp import HttpError, error_response, read_body


def rest_routes(registry: StreamRegistry, scenes: Scenes) -> list[Route]:
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
        changes = await _json_object(request)
        if isinstance(changes, Response):
            return changes
        try:
            effective = await stream.set_params(changes, front_end="rest")
        except ParamsError as error:
            return JSONResponse({"errors": error.as_list()}, status_code=422)
        return JSONResponse(effective)

    async def list_scenes(request: Request) -> Response:
        try:
            listed = await scenes.all()
        except SceneBookUnavailable as error:
            return error_response(503, "scenes_unavailable", str(error))
        return JSONResponse({"scenes": [scene.as_dict() for scene in listed]})

    async def scene(request: Request) -> Response:
        """PUT: save a stream's current params as the scene; POST .../recall: apply the scene to a stream."""
        body = await _json_object(request, empty_is_object=True)  # the stream may come in the query alone
        if isinstance(body, Response):
            return body
        try:
            # The stream in the query too: behind the Ray Serve proxy, only the URL reaches the router.
            stream = registry.get(request.query_params.get("stream") or body.get("stream"))
        except StreamError as error:
            return error_response(error.status, error.code, error.message)
        name = request.path_params["scene"]
        if request.method == "PUT":
            try:
                saved = await scenes.store(name, stream.effective()["params"])
            except SceneBookUnavailable as error:
                return error_response(503, "scenes_unavailable", str(error))
            except (ValueError, OSError) as error:  # a bad name, a cap, the file: nothing changed
                return error_response(422, "bad_scene", str(error))
            return JSONResponse(saved.as_dict())
        try:
            chosen = await scenes.find(name)
        except KeyError as error:
            return error_response(404, "no_such_scene", str(error.args[0]))
        except SceneBookUnavailable as error:
            return error_response(503, "scenes_unavailable", str(error))
        try:
            return JSONResponse(await stream.set_params(chosen.params, front_end="rest"))
        except ParamsError as error:
            return JSONResponse({"errors": error.as_list()}, status_code=422)

    return [
        Route("/streams", list_streams),
        Route("/streams/{stream}", one_stream, methods=["GET", "PATCH", "DELETE"]),
        Route("/scenes", list_scenes),
        Route("/scenes/{scene}", scene, methods=["PUT"]),
        Route("/scenes/{scene}/recall", scene, methods=["POST"]),
    ]


async def _json_object(request: Request, empty_is_object: bool = False) -> dict | Response:
    """The request's JSON object body, or the error response to send instead: 413 over the size limit, 400 for
    anything that is not JSON (the socket's `malformed_json`), 422 for JSON that is not an object.

    `empty_is_object`: no body at all reads as `{}`."""
    try:
        body = await read_body(request, "message_too_large", "the body")
        value = {} if empty_is_object and not body else parse_json(body)
    except HttpError as error:
        return error_response(error.status, error.code, error.message)
    except ProtocolError as error:
        return error_response(400, error.code, f"the body is {error.message}")
    if not isinstance(value, dict):
        return JSONResponse({"errors": [{"param": None, "message": "send a JSON object"}]}, status_code=422)
    return value
