"""The console's sign-in: werkzeug password hashes from the configuration, Flask's signed session cookie
(Secure, HttpOnly, SameSite=Strict), a per-session CSRF token required on every form, idle expiry, and the
security headers of every page (strict Content-Security-Policy, frame denial)."""

from __future__ import annotations

import hmac
import secrets
import time

from flask import Flask, abort, current_app, g, redirect, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from .config import ConsoleUser
from .errors import ApiError

CSRF_FIELD = "csrf_token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# A hash to compare against when the user name is unknown, so that the answer takes as long either way.
_UNKNOWN_USER = generate_password_hash(secrets.token_urlsafe(16), method="scrypt")


def configure(app: Flask) -> None:
    """Session cookies for the console; the key is new at each start (a restart signs everyone out)."""
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="fleetdeck_console",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/ui",
    )


def sign_in(users: tuple[ConsoleUser, ...], name: str, password: str) -> ConsoleUser | None:
    user = next((u for u in users if u.name == name), None)
    valid = check_password_hash(user.password_hash if user else _UNKNOWN_USER, password)
    if not (user and valid):
        return None
    session.clear()
    session.update(user=user.name, csrf=secrets.token_urlsafe(32), seen=time.time())
    return user


def current_user(users: tuple[ConsoleUser, ...], idle: float) -> ConsoleUser | None:
    """The signed-in user, or None (no session, idle for longer than `idle` seconds, or no longer configured)."""
    name, seen = session.get("user"), session.get("seen", 0)
    user = next((u for u in users if u.name == name), None)
    if user is None or time.time() - seen > idle:
        session.clear()
        return None
    session["seen"] = time.time()
    return user


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    """Every POST of the console carries the session's token; 400 in the API's error shape if not."""
    sent = request.form.get(CSRF_FIELD, "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        raise ApiError(400, "csrf_failed", "the form's CSRF token is missing or stale; reload the page and retry")


def require_user():
    """before_request of the console: pages need a user, except sign-in and static files."""
    if request.endpoint in ("console.sign_in", "console.static"):
        if request.method == "POST":
            check_csrf()
        return None
    settings = current_app.extensions["fleetdeck"].settings
    g.user = current_user(settings.console_users, settings.console_idle)
    if g.user is None:
        if request.method == "POST" or request.endpoint == "console.run_events":
            abort(401)
        return redirect(url_for("console.sign_in", next=request.path))
    if request.method == "POST":
        check_csrf()
    return None


def security_headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.endpoint or request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response
