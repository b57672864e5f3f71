# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""What a healthy instance answers on its health endpoint; shared by the health_check and soak modules.

Healthy means: the HTTP status code is the expected one (200), the body is a JSON object whose C(status)
is the expected one (V(ok)), whose C(version) is the expected version when one is given, and whose
C(database), when the app reports it, is V(reachable).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error

from ansible.module_utils.urls import open_url

HEALTHY_STATUS_CODE = 200
HEALTHY_STATUS = "ok"
HEALTHY_DATABASE = "reachable"
BODY_LIMIT = 2048
DETAIL_LIMIT = 8


def request(url, timeout, headers=None, validate_certs=True):
    """One GET: (status_code, raw body, None), or (-1, None, error phrase) when there was no answer.

    A malformed URL raises ValueError: retrying will not make it better.
    """
    try:
        with open_url(url, headers=headers or {}, timeout=timeout, validate_certs=validate_certs) as resp:
            return resp.status, resp.read(), None
    except urllib.error.HTTPError as e:
        try:
            return e.code, e.read(), None
        except (OSError, http.client.HTTPException):
            return e.code, b"", None
    except ValueError:
        raise
    except Exception as e:  # pylint: disable=broad-exception-caught # open_url raises ansible's own errors too
        return -1, None, describe_error(e, timeout)


def describe_error(exc, timeout):
    """One short phrase for a request that produced no HTTP answer."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, socket.gaierror):
        return f"name resolution failed ({reason.strerror})"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({reason})"
    return " ".join(str(reason).split()) or type(reason).__name__


def parse_body(raw):
    """The body as JSON if it is JSON, else as text trimmed to BODY_LIMIT characters."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text[:BODY_LIMIT]


def is_healthy(code, body, expected_version=None, status_code=HEALTHY_STATUS_CODE, status=HEALTHY_STATUS):
    if code != status_code or not isinstance(body, dict) or body.get("status") != status:
        return False
    if "database" in body and body["database"] != HEALTHY_DATABASE:
        return False
    return expected_version is None or str(body.get("version")) == expected_version


def _short(value):
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def describe_answer(code, body, expected_version=None):
    """An HTTP answer in words, e.g. 'HTTP 503, status=failing, version=1.2.0, database=unreachable'."""
    if not isinstance(body, dict):
        if not body:
            return f"HTTP {code}, empty body"
        return f"HTTP {code}, body is not a JSON object: {_short(body)!r}"
    words = [f"HTTP {code}", f"status={_short(body['status'])}" if "status" in body else "no status"]
    version = f"version={_short(body['version'])}" if "version" in body else "no version"
    words.append(f"{version} (expected {expected_version})" if expected_version is not None else version)
    # Other scalar fields, one level of nesting deep (e.g. {"checks": {"database": "unreachable"}}).
    details = []
    for key, value in body.items():
        if key in ("status", "version"):
            continue
        items = value.items() if isinstance(value, dict) else [(key, value)]
        details.extend(f"{k}={_short(v)}" for k, v in items if not isinstance(v, (dict, list)))
    if len(details) > DETAIL_LIMIT:
        details = [*details[:DETAIL_LIMIT], f"{len(details) - DETAIL_LIMIT} more"]
    return ", ".join(words + details)
