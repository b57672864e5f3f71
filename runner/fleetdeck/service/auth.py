"""Bearer tokens: sha256-hashed in the config, compared in constant time; scopes as config.SCOPES says."""

from __future__ import annotations

import functools
import hashlib
import hmac

from flask import current_app, g, request

from .config import Token
from .errors import ApiError

# HTTP's optional whitespace around a header value's parts; str.strip() would also eat Unicode spaces,
# and a token of only U+2003 would then be the empty token.
OWS = " \t"


def authenticate(tokens: tuple[Token, ...], header: str | None) -> Token | None:
    """The token of `Authorization: Bearer <token>` (scheme in any case), compared exactly as sent but for
    surrounding spaces and tabs; an empty token never matches."""
    scheme, _, credentials = (header or "").strip(OWS).partition(" ")
    presented = credentials.strip(OWS)
    if scheme.lower() != "bearer" or not presented:
        return None
    try:
        # WSGI hands header values over decoded as latin-1: this gives back the bytes as sent.
        presented_digest = hashlib.sha256(presented.encode("latin-1")).hexdigest()
    except UnicodeEncodeError:  # not from a real HTTP request
        return None
    found = None
    for token in tokens:  # no early exit: the time taken does not depend on which token matched
        if hmac.compare_digest(presented_digest, token.sha256):
            found = token
    return found


def allows(token: Token, scope: str) -> bool:
    if "admin" in token.scopes or scope in token.scopes:
        return True
    return scope.startswith("run:") and bool({"run:*", "operate"} & token.scopes)


def require(scope_for):
    """Decorator: 401 without a valid token, 403 when the token lacks the scope.

    `scope_for` is a scope string, or a function of the request returning one (run:<action> needs the body).
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            token = authenticate(current_app.config["TOKENS"], request.headers.get("Authorization"))
            if token is None:
                raise ApiError(
                    401,
                    "unauthenticated",
                    "a valid bearer token is required",
                    headers={"WWW-Authenticate": 'Bearer realm="fleetdeck-runner"'},
                )
            g.token = token
            scope = scope_for if isinstance(scope_for, str) else scope_for()
            if not allows(token, scope):
                raise ApiError(403, "forbidden", f"token {token.name!r} lacks scope {scope!r}")
            return view(*args, **kwargs)

        return wrapper

    return decorate
