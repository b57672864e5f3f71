"""A request body as a JSON object, or a 4xx that says what is wrong with it."""

from __future__ import annotations

import json
import math

from flask import Request

from .errors import ApiError

MAX_DEPTH = 32


def json_object(request: Request, what: str = "the body") -> dict:
    """The body as a dict: 415 unless the content type is JSON; 400 for what `json` would choke on
    later (bad syntax or encoding, NaN and infinite numbers, lone surrogates that SQLite cannot store,
    nesting deep enough to hit the recursion limit when serialised again) and for a non-object."""
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{what} must be sent as Content-Type: application/json (got {request.mimetype or 'none'})",
        )
    raw = request.get_data(cache=True)
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "invalid_json", f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise ApiError(400, "invalid_json", f"{what} is not valid UTF-8 JSON: {exc}") from None
    _check(value, what)
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_body", f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _check(value: object, what: str) -> None:
    """Iteratively, so that checking cannot itself run out of stack."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, "invalid_json", f"{what} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            pending.extend((k, depth) for k in item)
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ApiError(400, "invalid_json", f"{what} holds a number JSON cannot represent ({item})")
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise ApiError(400, "invalid_json", f"{what} holds a lone surrogate (\\ud800-\\udfff)") from None
