"""What the HTTP front ends share: a body read up to the size limit and errors as JSON; for WHIP and WHEP, the SDP
offer and the 201 answer."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from pipelines import ParamsError

from ..protocol import MAX_MESSAGE_BYTES
from ..registry import OfferError, StreamError
from ..scenes import SceneBookUnavailable

SDP_TYPE = "application/sdp"


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


def refusing_as_json(handler: Handler) -> Handler:
    """`handler` with its refusals answered as JSON, and OPTIONS answered from the route's methods (WHIP and WHEP
    say that POST takes SDP). The refusals: HttpError and StreamError as they say; OfferError, the client's offer, a
    400; ParamsError `422 {"errors": [...]}`; SceneBookUnavailable (the board under replicas, restarting) a 503."""

    @functools.wraps(handler)
    async def handle(request: Request) -> Response:
        if request.method == "OPTIONS":
            methods = ", ".join(sorted(request.scope["route"].methods - {"HEAD"}))
            headers = {"Allow": methods, **({"Accept-Post": SDP_TYPE} if "POST" in methods else {})}
            return Response(status_code=204, headers=headers)
        try:
            return await handler(request)
        except (HttpError, StreamError) as error:
            return error_response(error.status, error.code, error.message)
        except OfferError as error:
            return error_response(400, error.code, error.message)
        except ParamsError as error:
            return JSONResponse({"errors": error.as_list()}, status_code=422)
        except SceneBookUnavailable as error:
            return error_response(503, "scenes_unavailable", str(error))

    return handle


async def read_offer(request: Request) -> str:
    """The request's SDP offer; HttpError for the wrong content type, a body too large, or not text."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != SDP_TYPE:
        raise HttpError(415, "bad_content_type", f"send the offer as {SDP_TYPE}, not {content_type or 'nothing'}")
    body = await read_body(request, "offer_too_large", "the offer")
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise HttpError(400, "bad_sdp", "the offer is not UTF-8 text") from None


async def read_body(request: Request, too_large: str, what: str) -> bytes:
    """The request's body, read in chunks; HttpError 413 `too_large` as soon as it is over MAX_MESSAGE_BYTES.

    A declared Content-Length over the limit is refused before a byte is read, a chunked body at the first chunk
    past it: the rest is never held (uvicorn drops it as it arrives, and the connection stays usable).
    """
    refusal = HttpError(413, too_large, f"{what} is over the limit of {MAX_MESSAGE_BYTES} bytes")
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:  # not a number: uvicorn refuses such a request before the app sees it
        declared = 0
    if declared > MAX_MESSAGE_BYTES:
        raise refusal
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_MESSAGE_BYTES:
                raise refusal
    except ClientDisconnect:  # gone mid-body: nobody reads this answer, but nothing may escape as a traceback
        raise HttpError(400, "incomplete_body", f"the client left before the end of {what}") from None
    return bytes(body)


def answer_created(answer: str, location: str) -> Response:
    """201 with the SDP answer and the resource's URL (RFC 9725 section 4.2)."""
    return Response(answer, status_code=201, media_type=SDP_TYPE, headers={"Location": location})
