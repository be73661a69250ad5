"""The WebSocket protocol of DESIGN.md: parsing client messages, the error codes the server sends, and the strict
JSON rule (`parse_json`) that REST bodies are read by."""

from __future__ import annotations

import json
import math
import sys
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


def parse_json(data: str | bytes) -> Any:
    """A JSON value as RFC 8259 has it (UTF-8 text, finite numbers, strings of whole characters), or ProtocolError
    `malformed_json`.

    Python's `json.loads` takes more (NaN and Infinity, 1e400 as inf, a lone surrogate escaped as "\\ud800", which
    no UTF-8 response can carry back) and fails in ways of its own: ValueError on an integer of over 4300 digits,
    RecursionError on deep nesting. Every one of these is the sender's malformed JSON, never the server's failure.
    """
    try:
        text = data.decode() if isinstance(data, bytes) else data
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
        _check_strings(value)
    except (ValueError, RecursionError) as error:  # UnicodeError and JSONDecodeError are ValueErrors too
        raise ProtocolError("malformed_json", f"not valid JSON: {error}") from None
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > sys.get_int_max_str_digits() > 0:
        raise ValueError(f"an integer of {digits} digits is too long")
    return int(text)


def _check_strings(value: Any) -> None:
    """ValueError for a string (key or value) that is not Unicode text; a loop, as nesting may be deep."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError as error:
                lone = item[error.start]
                raise ValueError(f"the string escape \\u{ord(lone):04x} is a lone surrogate, not a character") from None
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())


def parse_client_message(text: str | None, data: bytes | None) -> dict[str, Any]:
    """A client message as a dict with a string `type`, or a ProtocolError saying what was wrong."""
    if text is None:
        size = len(data or b"")
        raise ProtocolError("binary_not_supported", f"binary messages are not part of the protocol ({size} bytes)")
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            "message_too_large", f"message is {len(text.encode())} bytes; the limit is {MAX_MESSAGE_BYTES}"
        )
    message = parse_json(text)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_message", 'a message must be a JSON object with a string "type"')
    return message
