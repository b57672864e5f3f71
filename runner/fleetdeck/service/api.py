"""/v1: runs, their events (JSON pages and Server-Sent Events), cancel, actions, instances."""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context

from fleetdeck import inventory

from .auth import require
from .errors import ApiError
from .store import ACTIVE, FINISHED, LeaseConflict
from .targets import resolve

bp = Blueprint("v1", __name__, url_prefix="/v1")
RUN_FIELDS = {"action", "target", "params", "check", "wait"}
FILTERS = ("action", "status", "target")
SSE_KEEPALIVE = 15.0


def service():
    return current_app.extensions["fleetdeck"]


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return body


def _run_scope() -> str:
    body = request.get_json(silent=True)
    action = body.get("action") if isinstance(body, dict) else None
    return f"run:{action}" if isinstance(action, str) else "run:*"


@bp.post("/runs")
@require(_run_scope)
def create_run():
    svc = service()
    body = _body()
    unknown = sorted(set(body) - RUN_FIELDS)
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(RUN_FIELDS))}",
        )
    name = body.get("action")
    action = svc.catalog.actions.get(name) if isinstance(name, str) else None
    if action is None:
        hint = " (its playbook is not in the project yet)" if name in svc.catalog.missing else ""
        raise ApiError(
            404 if isinstance(name, str) else 400,
            "unknown_action",
            f"unknown action {name!r}{hint}; available: {', '.join(sorted(svc.catalog.actions))}",
        )
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise ApiError(422, "invalid_params", "params must be a JSON object")
    errors = action.parameter_errors(params)
    if errors:
        raise ApiError(422, "invalid_params", "; ".join(errors), errors=errors)
    for flag in ("check", "wait"):
        if not isinstance(body.get(flag, False), bool):
            raise ApiError(422, "invalid_field", f"{flag} must be true or false")
    instances = resolve(svc.settings.inventory, action, body.get("target"))

    key = request.headers.get("Idempotency-Key")
    idempotency = None
    if key is not None:
        if not 1 <= len(key) <= 200:
            raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 200 characters")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        earlier = svc.store.idempotent_run(g.token.name, key)
        if earlier:
            if earlier[0] != digest:
                raise ApiError(
                    409,
                    "idempotency_conflict",
                    f"Idempotency-Key {key!r} was used with a different body (run {earlier[1]})",
                    run_id=earlier[1],
                )
            return _run_response(svc.store.get_run(earlier[1]), 200)
        idempotency = (g.token.name, key, digest)

    run = launch(
        action,
        body["target"],
        instances,
        params,
        check=body.get("check", False),
        wait=body.get("wait", False),
        operator=g.token.name,
        source="api",
        idempotency=idempotency,
    )
    return _run_response(run, 202)


def launch(
    action,
    target: str,
    instances: list[str],
    params: dict,
    *,
    check: bool,
    wait: bool,
    operator: str,
    source: str,
    idempotency: tuple[str, str, str] | None = None,
) -> dict:
    """Record a run (taking its leases unless it waits for them) and hand it to the executor."""
    svc = service()
    run = {
        "id": str(uuid.uuid4()),
        "action": action.name,
        "target": target,
        "params": params,
        "check": check,
        "instances": instances,
        "operator": operator,
        "source": source,
        "status": "waiting" if wait else "queued",
        "created": time.time(),
    }
    try:
        svc.store.create_run(run, take_leases=not wait, idempotency=idempotency)
    except LeaseConflict as conflict:
        raise ApiError(
            409,
            "instance_busy",
            f'{conflict}; retry later or send "wait": true',
            instance=conflict.instance,
            holder=conflict.holder,
        ) from None
    svc.executor.submit(run["id"])
    return svc.store.get_run(run["id"])


def _run_response(run: dict, status: int):
    response = jsonify(run)
    response.status_code = status
    response.headers["Location"] = f"/v1/runs/{run['id']}"
    return response


@bp.get("/runs")
@require("read")
def list_runs():
    filters = {k: request.args[k] for k in FILTERS if k in request.args}
    if "status" in filters and filters["status"] not in (*ACTIVE, *FINISHED):
        raise ApiError(400, "invalid_filter", f"status must be one of {', '.join((*ACTIVE, *FINISHED))}")
    limit = _int_arg("limit", 50, 1, 500)
    before = _int_arg("cursor", None, 1, None)
    runs = service().store.list_runs(filters, limit + 1, before)
    page = runs[:limit]
    return jsonify({"runs": page, "next_cursor": page[-1]["seq"] if len(runs) > limit else None})


def _int_arg(name: str, default, low: int, high: int | None):
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_argument", f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise ApiError(400, "invalid_argument", f"{name} must be between {low} and {high or 'any'}")
    return value


def _get_run(run_id: str) -> dict:
    run = service().store.get_run(run_id)
    if run is None:
        raise ApiError(404, "unknown_run", f"no run {run_id!r}")
    return run


@bp.get("/runs/<run_id>")
@require("read")
def get_run(run_id: str):
    return jsonify(_get_run(run_id))


@bp.post("/runs/<run_id>/cancel")
@require(lambda: _cancel_scope(request.view_args["run_id"]))
def cancel_run(run_id: str):
    svc = service()
    run = _get_run(run_id)
    if run["status"] in FINISHED or not svc.executor.cancel(run_id):
        raise ApiError(409, "not_active", f"run {run_id} is {run['status']}, nothing to cancel")
    svc.store.audit(g.token.name, "run.cancel_requested", run_id, {})
    return jsonify(svc.store.get_run(run_id)), 202


def _cancel_scope(run_id: str) -> str:
    """Cancelling needs the scope that could have started the run."""
    run = service().store.get_run(run_id)
    return f"run:{run['action']}" if run else "run:*"


@bp.get("/runs/<run_id>/events")
@require("read")
def run_events(run_id: str):
    _get_run(run_id)
    store = service().store
    if request.accept_mimetypes.best_match(["application/json", "text/event-stream"]) != "text/event-stream":
        after = _int_arg("after", 0, 0, None)
        limit = _int_arg("limit", 200, 1, 1000)
        events = store.events(run_id, after, limit)
        return jsonify({"events": events, "next_after": events[-1]["seq"] if len(events) == limit else None})
    last = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    if not last.isdigit():
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be an event number")
    slots, token = service().streams, g.token.name
    if not slots.take(token):
        raise ApiError(
            429,
            "too_many_streams",
            f"token {token!r} has {slots.per_token} event streams open already (FLEETDECK_RUNNER_MAX_STREAMS);"
            " close one, or read the events as JSON pages",
            headers={"Retry-After": "5"},
        )
    response = Response(
        stream_with_context(_sse(run_id, int(last))),
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


@bp.get("/instances")
@require("read")
def list_instances():
    svc = service()
    inv = inventory.load(svc.settings.inventory)
    groups = inv.groups()
    leases = svc.store.leases()
    return jsonify(
        {
            "instances": [
                {
                    "name": host,
                    "groups": [g for g, hosts in groups.items() if host in hosts and g != "all"],
                    "vars": _public(inv.public_vars(host)),
                    "leased_by": leases.get(host),
                }
                for host in inv.hosts()
            ]
        }
    )


def _public(variables: dict) -> dict:
    """host_vars main.yml holds no vault values, but `vault_*` references to them are not shown either."""
    return {k: v for k, v in variables.items() if not k.startswith("vault_")}
