"""/v1: runs, their events (JSON pages and Server-Sent Events), cancel, actions, instances (and their import)."""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from . import imports, provisioning, runs
from .auth import require
from .body import json_object
from .context import service
from .errors import ApiError
from .store import FINISHED

bp = Blueprint("v1", __name__, url_prefix="/v1")
FILTERS = ("action", "status", "target")
SSE_KEEPALIVE = 15.0
MAX_INT = 2**63 - 1  # SQLite's integers


def _run_request() -> dict:
    """The JSON body, parsed once: the scope check reads its action before the view does."""
    if "run_request" not in g:
        g.run_request = json_object(request)
    return g.run_request


@bp.post("/runs")
@require(lambda: runs.scope(_run_request().get("action")))
def create_run():
    started = runs.start(
        service(),
        _run_request(),
        operator=g.token.name,
        source="api",
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    response = jsonify(started.run)
    response.status_code = 202 if started.created else 200
    response.headers["Location"] = f"/v1/runs/{started.run['id']}"
    return response


@bp.get("/runs")
@require("read")
def list_runs():
    filters = {k: request.args[k] for k in FILTERS if k in request.args}
    page, next_cursor = runs.listing(
        service(), filters, _int_arg("limit", 50, 1, 500), _int_arg("cursor", None, 1, MAX_INT)
    )
    return jsonify({"runs": page, "next_cursor": next_cursor})


def _int_arg(name: str, default, low: int, high: int, raw: str | None = None):
    """Query argument `name` (or a header's value, `raw`) as an int in [low, high]; ASCII digits only
    (int() would also take "٣", "1_000" and " 7 ")."""
    raw = request.args.get(name) if raw is None else raw
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        raise ApiError(400, "invalid_argument", f"{name} must be an integer between {low} and {high}")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(400, "invalid_argument", f"{name} must be an integer between {low} and {high}")
    return value


@bp.get("/runs/<run_id>")
@require("read")
def get_run(run_id: str):
    return jsonify(runs.get(service(), run_id))


@bp.post("/runs/<run_id>/cancel")
@require(lambda: _cancel_scope(request.view_args["run_id"]))
def cancel_run(run_id: str):
    return jsonify(runs.cancel(service(), run_id, g.token.name)), 202


def _cancel_scope(run_id: str) -> str:
    """Cancelling needs the scope that could have started the run."""
    run = service().store.get_run(run_id)
    return runs.scope(run["action"] if run else None)


@bp.get("/runs/<run_id>/events")
@require("read")
def run_events(run_id: str):
    runs.get(service(), run_id)
    store = service().store
    if request.accept_mimetypes.best_match(["application/json", "text/event-stream"]) != "text/event-stream":
        after = _int_arg("after", 0, 0, MAX_INT)
        limit = _int_arg("limit", 200, 1, 1000)
        events = store.events(run_id, after, limit)
        return jsonify({"events": events, "next_after": events[-1]["seq"] if len(events) == limit else None})
    return event_stream(run_id, g.token.name)


def event_stream(run_id: str, holder: str) -> Response:
    """The run's events as Server-Sent Events from Last-Event-ID (or ?after=), counted against `holder`'s
    open streams (a token's, or a console user's)."""
    last = request.headers.get("Last-Event-ID")
    after = _int_arg("Last-Event-ID", 0, 0, MAX_INT, raw=last) if last else _int_arg("after", 0, 0, MAX_INT)
    slots, token = service().streams, holder
    if not slots.take(token):
        raise ApiError(
            429,
            "too_many_streams",
            f"{token!r} has {slots.per_token} event streams open already (FLEETDECK_RUNNER_MAX_STREAMS);"
            " close one, or read the events as JSON pages",
            headers={"Retry-After": "5"},
        )
    response = Response(
        stream_with_context(_sse(run_id, after)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.call_on_close(lambda: slots.release(token))  # the server closes every response it started
    return response


def _sse(run_id: str, after: int):
    svc = service()
    changed = svc.executor.changed
    yield "retry: 2000\n\n"
    while True:
        with changed:
            # Status before events: the executor stores a run's last events before it finishes the run.
            finished = svc.store.get_run(run_id)["status"] in FINISHED
            events = svc.store.events(run_id, after, 500)
            closed = svc.executor.closed
            idle = not events and not finished and not closed and not changed.wait(SSE_KEEPALIVE)
        if idle:
            yield ": keepalive\n\n"
        for event in events:
            after = event["seq"]
            yield f"id: {after}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
        if finished and not events:
            run = svc.store.get_run(run_id)
            yield f"event: end\ndata: {json.dumps({'status': run['status'], 'rc': run['rc']})}\n\n"
            return
        if closed and not events:  # the runner stopped and this run's end could not be recorded
            yield f"event: shutdown\ndata: {json.dumps({'status': svc.store.get_run(run_id)['status']})}\n\n"
            return


@bp.get("/actions")
@require("read")
def list_actions():
    catalog = service().catalog
    return jsonify(
        {
            "actions": [a.public() for a in catalog.actions.values()],
            "missing": [{"name": n, "playbook": p} for n, p in catalog.missing.items()],
        }
    )


INSTANCE_FILTERS = ("state", "tier", "canary", "pinned_version", "running_version")


@bp.get("/instances")
@require("read")
def list_instances():
    filters = {k: request.args[k] for k in INSTANCE_FILTERS if k in request.args}
    return jsonify({"instances": provisioning.listing(service(), filters)})


@bp.post("/instances")
@require("provision")
def create_instance():
    return _new_instance(*provisioning.create(
        service(), json_object(request), g.token.name, request.headers.get("Idempotency-Key")))


@bp.post("/imports")
@require("provision")
def import_instance():
    return _new_instance(*imports.start(
        service(), json_object(request), g.token.name, request.headers.get("Idempotency-Key")))


def _new_instance(instance: dict, run: dict, created: bool):
    """202 with the instance and its first run, or 200 when an Idempotency-Key replays it."""
    response = jsonify({"instance": instance, "run": run})
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/v1/instances/{instance['name']}"
    return response


@bp.get("/instances/<name>")
@require("read")
def get_instance(name: str):
    return jsonify(provisioning.detail(service(), name))


@bp.get("/instances/<name>/compliance")
@require("read")
def instance_compliance(name: str):
    return jsonify({"compliance": provisioning.compliance(service(), name)})


@bp.patch("/instances/<name>")
@require("provision")
def change_instance(name: str):
    return jsonify(provisioning.change(service(), name, json_object(request), g.token.name))


@bp.delete("/instances/<name>")
@require("provision")
def decommission_instance(name: str):
    keep = request.args.get("keep_data", "false")
    if keep not in ("true", "false"):
        raise ApiError(400, "invalid_argument", "keep_data must be true or false")
    run = provisioning.decommission(service(), name, keep == "true", g.token.name)
    return jsonify({"run": run}), 202
