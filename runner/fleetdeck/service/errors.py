"""One JSON error shape for every 4xx/5xx: {"error": {"code", "message", ...details}}."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed, NotFound

from .store import StoreUnavailable

log = logging.getLogger("fleetdeck.runner")

# Headers of werkzeug's own errors that still mean something on a JSON answer.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **details):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.details = (
            status,
            code,
            message,
            headers,
            details,
        )

    def response(self):
        body = jsonify({"error": {"code": self.code, "message": self.message, **self.details}})
        return body, self.status, self.headers or {}


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, lambda e: e.response())

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable):
        log.error("answered 503: %s", exc)
        message = f"the runner cannot record anything now ({exc.reason}); nothing was changed, retry later"
        return ApiError(503, "store_unavailable", message, headers={"Retry-After": "30"}).response()

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        """Flask's and werkzeug's own errors (404, 405, 413, 500 ...) in the API's shape."""
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k in KEPT_HEADERS}
        if isinstance(exc, InternalServerError):
            # Flask has logged the cause; the answer does not repeat it (it may hold paths or values).
            message = "internal error; the runner's log has the details"
        elif isinstance(exc, NotFound):
            message = "no such endpoint; the API is described at /v1/openapi.json"
        elif isinstance(exc, MethodNotAllowed):
            message = f"{request.method} is not allowed here; allowed: {headers.get('Allow', 'none')}"
        elif status == 413:
            message = "request body too large"
        else:
            message = exc.description or exc.name
        code = (exc.name or "error").lower().replace(" ", "_")
        return ApiError(status, code, message, headers).response()
