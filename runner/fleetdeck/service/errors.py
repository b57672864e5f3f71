"""One JSON error shape for every 4xx/5xx: {"error": {"code", "message", ...details}}."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError

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

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        """Flask's and werkzeug's own errors (404, 405, 413, 500 ...) in the API's shape."""
        status = exc.code or 500
        if isinstance(exc, InternalServerError):
            # Flask has logged the cause; the answer does not repeat it (it may hold paths or values).
            message = "internal error; the runner's log has the details"
        else:
            message = "request body too large" if status == 413 else exc.description
        headers = {k: v for k, v in exc.get_headers() if k in KEPT_HEADERS}
        code = (exc.name or "error").lower().replace(" ", "_")
        return ApiError(status, code, message, headers).response()
