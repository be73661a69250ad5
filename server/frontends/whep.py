"""WHEP egress: viewers (OBS's WHEP source, players, a second machine) receive a stream's stylised video.

`POST /whep/{stream}` with a recvonly offer → 201, the answer, and `Location: /whep/{stream}/{id}`; `DELETE` on
that Location ends the viewer. Viewers share the stream's encoder: a new one costs packetising, not an encode.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..media.peers import OfferError
from ..registry import StreamError, StreamRegistry
from .http_sdp import SDP_TYPE, HttpError, answer_created, error_response, read_offer


def whep_routes(registry: StreamRegistry) -> list[Route]:
    async def view(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": "POST, OPTIONS", "Accept-Post": SDP_TYPE})
        try:
            offer = await read_offer(request)
            viewer, answer = await registry.view(request.path_params["stream"], offer)
        except (HttpError, StreamError) as error:
            return error_response(error.status, error.code, error.message)
        except OfferError as error:
            return error_response(400, error.code, error.message)
        return answer_created(answer, f"/whep/{request.path_params['stream']}/{viewer.id}")

    async def resource(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": "DELETE, OPTIONS"})
        try:
            stream = registry.get(request.path_params["stream"])
        except StreamError as error:
            return error_response(error.status, error.code, error.message)
        if not await stream.remove_viewer(request.path_params["viewer"], "it left (DELETE)"):
            return error_response(404, "no_such_resource", "no such WHEP viewer on this stream")
        return Response(status_code=200)

    return [
        Route("/whep/{stream}", view, methods=["POST", "OPTIONS"]),
        Route("/whep/{stream}/{viewer}", resource, methods=["DELETE", "OPTIONS"]),
    ]
