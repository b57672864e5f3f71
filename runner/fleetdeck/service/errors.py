"""One JSON error shape for every 4xx/5xx: {"error": {"code", "message", ...details}}."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .store import StoreUnavailable

log = logging.getLogger("fleetdeck.runner")


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
        code = (exc.name or "error").lower().replace(" ", "_")
        message = "request body too large" if exc.code == 413 else exc.description
        return ApiError(exc.code or 500, code, message).response()
