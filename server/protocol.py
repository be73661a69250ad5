"""The WebSocket protocol of DESIGN.md: parsing client messages, and the error codes the server sends."""

from __future__ import annotations

import json
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024


class ProtocolError(Exception):
    """A client message the server rejects; becomes `{"type": "error", "code": ..., "message": ...}`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_message(self) -> dict[str, str]:
        return error_message(self.code, self.message)


def error_message(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def parse_client_message(text: str | None, data: bytes | None) -> dict[str, Any]:
    """A client message as a dict with a string `type`, or a ProtocolError saying what was wrong."""
    if text is None:
        size = len(data or b"")
        raise ProtocolError("binary_not_supported", f"binary messages are not part of the protocol ({size} bytes)")
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            "message_too_large", f"message is {len(text.encode())} bytes; the limit is {MAX_MESSAGE_BYTES}"
        )
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as error:  # also nesting too deep and numbers of over 4300 digits
        raise ProtocolError("malformed_json", f"message is not valid JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_message", 'a message must be a JSON object with a string "type"')
    return message
