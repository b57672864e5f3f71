"""Probes and metadata: /healthz (liveness, open), /readyz (open), /metrics (read scope), /v1/openapi.json."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleetdeck import inventory

from .auth import require
from .context import service

bp = Blueprint("health", __name__)
OPENAPI = Path(__file__).with_name("openapi.json")


def ansible_playbook() -> str | None:
    return shutil.which(
        "ansible-playbook", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    )


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    svc = service()
    checks = {}
    try:
        svc.store.ping()
        checks["store"] = {"ok": True}
    except Exception as exc:
        checks["store"] = {"ok": False, "detail": type(exc).__name__}
    try:
        checks["inventory"] = {"ok": True, "hosts": len(inventory.load(svc.settings.inventory).hosts())}
    except Exception as exc:
        checks["inventory"] = {"ok": False, "detail": str(exc)}
    password_file = svc.password_file
    checks["vault_password_file"] = {
        "ok": bool(password_file and password_file.is_file()),
        "path": str(password_file) if password_file else None,
    }
    checks["ansible"] = {"ok": ansible_playbook() is not None}
    ready = all(c["ok"] for c in checks.values())
    checks["catalog"] = {
        "ok": True,
        "actions": sorted(svc.catalog.actions),
        "missing_playbooks": svc.catalog.missing,
    }
    return jsonify({"ready": ready, "checks": checks}), 200 if ready else 503


@bp.get("/metrics")
@require("read")
def metrics():
    return Response(generate_latest(service().metrics.registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/v1/openapi.json")
def openapi():
    return jsonify(json.loads(OPENAPI.read_text()))
