"""WHEP egress: viewers (OBS's WHEP source, players, a second machine) receive a stream's stylised video.

`POST /whep/{stream}` with a recvonly offer → 201, the answer, and `Location: /whep/{stream}/{id}`; `DELETE` on
that Location ends the viewer. Viewers share the stream's encoder: a new one costs packetising, not an encode.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..registry import StreamRegistry
from .http_sdp import HttpError, answer_created, read_offer, refusing_as_json


def whep_routes(registry: StreamRegistry) -> list[Route]:
    @refusing_as_json
    async def view(request: Request) -> Response:
        offer = await read_offer(request)
        name = request.path_params["stream"]
        viewer, answer = await registry.add_viewer(name, offer)
        return answer_created(answer, f"/whep/{name}/{viewer.id}")

    @refusing_as_json
    async def resource(request: Request) -> Response:
        stream = registry.get(request.path_params["stream"])
        if not await stream.remove_viewer(request.path_params["viewer"], "it left (DELETE)"):
            raise HttpError(404, "no_such_resource", "no such WHEP viewer on this stream")
        return Response(status_code=200)

    return [
        Route("/whep/{stream}", view, methods=["POST", "OPTIONS"]),
        Route("/whep/{stream}/{viewer}", resource, methods=["DELETE", "OPTIONS"]),
    ]
