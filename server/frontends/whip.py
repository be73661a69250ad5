"""WHIP ingest (RFC 9725): OBS, GStreamer or a browser publishes a camera as a named stream.

`POST /whip/{stream}` with an SDP offer → 201, the answer, and `Location: /whip/{stream}/{id}`; `DELETE` on that
Location ends the stream. No trickle and no ICE restart: the offer carries its candidates and the answer all of
ours, so PATCH is refused (405). Audio (OBS always sends Opus) becomes the stream's sound, passed on to viewers.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..registry import StreamRegistry
from .http_sdp import HttpError, answer_created, read_offer, refusing_as_json

log = logging.getLogger(__name__)


def whip_routes(registry: StreamRegistry) -> list[Route]:
    @refusing_as_json
    async def publish(request: Request) -> Response:
        offer = await read_offer(request)
        name = registry.reserve(request.path_params["stream"])
        try:
            stream, answer = await registry.publish(name, "whip", offer)
        finally:
            registry.release(name)  # a no-op once the stream is live
        log.info("stream %s: WHIP publisher connected", name)
        return answer_created(answer, f"/whip/{name}/{stream.id}")

    @refusing_as_json
    async def resource(request: Request) -> Response:
        stream = registry.get(request.path_params["stream"])
        if stream.source_kind != "whip" or stream.id != request.path_params["resource"]:
            raise HttpError(404, "no_such_resource", "no such WHIP session on this stream")
        await stream.end("publisher_left", "the WHIP publisher ended its session")
        return Response(status_code=200)

    return [
        Route("/whip/{stream}", publish, methods=["POST", "OPTIONS"]),
        Route("/whip/{stream}/{resource}", resource, methods=["DELETE", "OPTIONS"]),
    ]
