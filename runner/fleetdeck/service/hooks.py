"""Inbound git webhook: a signed tag push (Gitea or GitHub) starts a canary_upgrade of that tag.

Checks, in order: HMAC-SHA256 signature over the raw body (401), the push time in the signed payload
within the replay window (409), the delivery id never seen within twice that window (409).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import datetime

from flask import Blueprint, jsonify, request

from . import runs
from .body import json_object
from .context import service
from .errors import ApiError

bp = Blueprint("hooks", __name__, url_prefix="/v1/hooks")
HOOK_ACTION = "canary_upgrade"
# (signature header, prefix, delivery header, event header)
PROVIDERS = {
    "gitea": ("X-Gitea-Signature", "", "X-Gitea-Delivery", "X-Gitea-Event"),
    "github": ("X-Hub-Signature-256", "sha256=", "X-GitHub-Delivery", "X-GitHub-Event"),
}


def _verify(secret: str, body: bytes) -> tuple[str, str]:
    """(delivery id, event name) of a correctly signed request, else 401."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    for signature_header, prefix, delivery_header, event_header in PROVIDERS.values():
        signature = request.headers.get(signature_header)
        if signature is None:
            continue
        if not (signature.startswith(prefix) and hmac.compare_digest(signature[len(prefix) :], expected)):
            raise ApiError(401, "bad_signature", f"{signature_header} does not match the body")
        delivery = request.headers.get(delivery_header, "")
        if not 1 <= len(delivery) <= 200:
            raise ApiError(400, "missing_delivery", f"{delivery_header} is required")
        return delivery, request.headers.get(event_header, "")
    raise ApiError(401, "missing_signature", "X-Gitea-Signature or X-Hub-Signature-256 is required")


def _pushed_at(payload: dict) -> float:
    """GitHub sends repository.pushed_at (epoch seconds); Gitea's repository.updated_at is the push time."""
    repo = payload.get("repository")
    value = (repo.get("pushed_at") or repo.get("updated_at")) if isinstance(repo, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e11:
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ApiError(400, "missing_push_time", "payload has no repository.pushed_at or repository.updated_at")


@bp.post("/git")
def git_push():
    svc = service()
    settings = svc.settings
    if not settings.hook_secret:
        raise ApiError(404, "hooks_disabled", "inbound webhooks are not configured (FLEETDECK_HOOK_SECRET)")
    body = request.get_data()
    delivery, event = _verify(settings.hook_secret, body)
    if event == "ping":
        return jsonify({"ok": True})
    payload = json_object(request, "the payload")
    age = time.time() - _pushed_at(payload)
    if abs(age) > settings.hook_window:
        raise ApiError(
            409,
            "stale_delivery",
            f"push time is {age:.0f}s away from now "
            f"(window {settings.hook_window:.0f}s): refused as a possible replay",
        )
    if not svc.store.record_hook_delivery(delivery, 2 * settings.hook_window):
        raise ApiError(409, "replayed_delivery", f"delivery {delivery} was already received")
    match = re.fullmatch(settings.hook_tag_pattern, str(payload.get("ref", "")))
    if event not in ("push", "") or not match:
        return jsonify({"ignored": f"not a tag push matching {settings.hook_tag_pattern}"})
    run_request = {
        "action": HOOK_ACTION,
        "target": settings.hook_target,
        "params": {"app_version": match.group(1)},
        "wait": True,
    }
    started = runs.start(svc, run_request, operator="git-hook", source=f"hook:{delivery}")
    svc.store.link_hook_delivery(delivery, started.run["id"])
    return jsonify(started.run), 202
