"""What WHIP and WHEP share: an SDP offer read from an HTTP request, the 201 answer, and errors as JSON."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..protocol import MAX_MESSAGE_BYTES

SDP_TYPE = "application/sdp"


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def read_offer(request: Request) -> str:
    """The request's SDP offer; HttpError for the wrong content type, a body too large, or not text."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != SDP_TYPE:
        raise HttpError(415, "bad_content_type", f"send the offer as {SDP_TYPE}, not {content_type or 'nothing'}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MESSAGE_BYTES:
            raise HttpError(413, "offer_too_large", f"the offer is over the limit of {MAX_MESSAGE_BYTES} bytes")
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise HttpError(400, "bad_sdp", "the offer is not UTF-8 text") from None


def answer_created(answer: str, location: str) -> Response:
    """201 with the SDP answer and the resource's URL (RFC 9725 section 4.2)."""
    return Response(answer, status_code=201, media_type=SDP_TYPE, headers={"Location": location})
