"""Starting, reading and cancelling runs: the one path for every caller (the HTTP API, the git webhook,
and whatever comes next). Callers hand over a run request as a JSON-like dict and get back the run or an
ApiError; each refusal has one code and one status wherever it comes from.

Checks, in order: the request's fields, the action (catalog), its parameters (the action's JSON Schema),
the flags, the target (inventory), its execution node (nodes.py: one for all its instances, or none;
none for a local_only action), then one store transaction for the idempotency key and the leases.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass

from fleetdeck import inventory
from fleetdeck.errors import FleetdeckError

from . import nodes
from .catalog import Action
from .context import Service
from .errors import ApiError
from .store import ACTIVE, FINISHED, IdempotencyConflict, LeaseConflict

FIELDS = ("action", "target", "params", "check", "wait")
REQUIRED = ("action", "target")
MAX_IDEMPOTENCY_KEY = 200
SHOWN = 200  # characters of a caller's value repeated in a message


@dataclass(frozen=True)
class Started:
    run: dict
    created: bool  # False when an idempotency key named a run started earlier


def start(
    svc: Service,
    request: dict,
    *,
    operator: str,
    source: str,
    idempotency_key: str | None = None,
    fingerprint: dict | None = None,
) -> Started:
    """Validate a run request, record the run with its leases (unless it waits for them) and submit it.

    With an idempotency key (scoped to the operator): the same key and the same request give back the run
    the first one started, a different request with that key is refused; concurrent requests included.
    `fingerprint` is what "the same request" means when the caller's request was not the run request
    (POST /v1/instances: its body).
    """
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise ApiError(
            400, "unknown_field", f"unknown field(s) {_clip(', '.join(unknown))}; allowed: {', '.join(FIELDS)}"
        )
    missing = [f for f in REQUIRED if f not in request]
    if missing:
        raise ApiError(400, "missing_field", f"required field(s) missing: {', '.join(missing)}")
    action = _action(svc, request["action"])
    params = request.get("params", {})
    if not isinstance(params, dict):
        raise ApiError(422, "invalid_params", "params must be a JSON object", errors=["params: not an object"])
    errors = action.parameter_errors(params)
    if errors:
        raise ApiError(422, "invalid_params", _clip("; ".join(errors), 500), errors=[_clip(e) for e in errors])
    check, wait = (_flag(request, name) for name in ("check", "wait"))
    wait = wait and action.leases  # nothing to wait for without a lease
    target = request["target"]
    instances = _instances(svc, action, target)
    node = _execution_node(svc, instances)
    if node and action.local_only:
        raise ApiError(422, "local_only_action", _clip(
            f"{action.name} runs only on this runner, and the target's instances run on execution node {node}: "
            f"{action.local_only}; run it from a runner without that node", 1000), action=action.name, node=node)
    idempotency = None
    if idempotency_key is not None:
        idempotency = (operator, idempotency_key, digest(idempotency_key, fingerprint or request))

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
        "node": node,
    }
    try:
        run_id, created = svc.store.create_run(run, take_leases=action.leases and not wait, idempotency=idempotency)
    except IdempotencyConflict as conflict:
        raise _idempotency_conflict(idempotency_key, conflict.run_id) from None
    except LeaseConflict as conflict:
        raise ApiError(
            409,
            "instance_busy",
            f'{conflict}; retry later or send "wait": true',
            instance=conflict.instance,
            holder=conflict.holder,
        ) from None
    if created:
        svc.executor.submit(run_id)
    return Started(svc.store.get_run(run_id), created)


def digest(idempotency_key: str, request: dict) -> str:
    """The request's digest kept with its idempotency key; 400 for a key of the wrong length."""
    if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
        )
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def replay(svc: Service, operator: str, idempotency_key: str, request: dict) -> dict | None:
    """The run an earlier request with this key started (None if none did); 409 if it was another request."""
    seen = svc.store.idempotent_run(operator, idempotency_key)
    if seen is None:
        return None
    if seen[0] != digest(idempotency_key, request):
        raise _idempotency_conflict(idempotency_key, seen[1])
    return svc.store.get_run(seen[1])


def _idempotency_conflict(idempotency_key: str, run_id: str) -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        f"Idempotency-Key {_shown(idempotency_key)} was used with a different request (run {run_id})",
        run_id=run_id,
    )


def get(svc: Service, run_id: str) -> dict:
    run = svc.store.get_run(run_id)
    if run is None:
        raise ApiError(404, "unknown_run", f"no run {_shown(run_id)}")
    return run


def listing(svc: Service, filters: dict[str, str], limit: int, cursor: int | None) -> tuple[list[dict], int | None]:
    """Newest first: a page of at most `limit` runs older than `cursor`, and the cursor of the next page."""
    if "status" in filters and filters["status"] not in (*ACTIVE, *FINISHED):
        raise ApiError(400, "invalid_filter", f"status must be one of {', '.join((*ACTIVE, *FINISHED))}")
    runs = svc.store.list_runs(filters, limit + 1, cursor)
    page = runs[:limit]
    return page, page[-1]["seq"] if len(runs) > limit else None


def cancel(svc: Service, run_id: str, operator: str) -> dict:
    """Ask an active run to stop (a queued or waiting one ends at once); 409 when it is not active."""
    run = get(svc, run_id)
    if run["status"] in FINISHED or not svc.executor.cancel(run_id):
        raise ApiError(409, "not_active", f"run {run_id} is {run['status']}, nothing to cancel")
    svc.store.audit(operator, "run.cancel_requested", run_id, {})
    return svc.store.get_run(run_id)


def scope(action: object) -> str:
    """The token scope that may start (and cancel) runs of `action`."""
    return f"run:{action}" if isinstance(action, str) else "run:*"


def _action(svc: Service, name: object) -> Action:
    if not isinstance(name, str):
        raise ApiError(422, "invalid_field", "action must be a string (an action name)")
    action = svc.catalog.actions.get(name)
    if action is not None:
        return action
    if name in svc.catalog.missing:
        raise ApiError(
            404,
            "action_unavailable",
            f"action {name!r} is in the catalog but its playbook {svc.catalog.missing[name]} is not in the "
            "project yet",
        )
    raise ApiError(
        404,
        "unknown_action",
        f"unknown action {_shown(name)}; available: {', '.join(sorted(svc.catalog.actions))}",
    )


def _flag(request: dict, name: str) -> bool:
    value = request.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_field", f"{name} must be true or false")
    return value


def load_inventory(svc: Service) -> inventory.Inventory:
    """The runner's inventory, or 503 naming the file when an operator left it broken."""
    try:
        return inventory.load(svc.settings.inventory)
    except FleetdeckError as exc:
        raise ApiError(503, "inventory_unavailable", f"the runner's inventory cannot be read: {exc}") from None


def _instances(svc: Service, action: Action, target: object) -> list[str]:
    """A target is an exact inventory name: a host (instance), a group, or `all` (the fleet)."""
    if not isinstance(target, str):
        raise ApiError(422, "invalid_field", "target must be a string (an inventory host or group name)")
    inv = load_inventory(svc)
    groups = inv.groups()
    if target == "all":
        kind, instances = "fleet", groups["all"]
    elif target in groups:
        kind, instances = "group", groups[target]
    elif target in inv.hosts():
        kind, instances = "instance", [target]
    else:
        raise ApiError(
            422, "unknown_target", f"target {_shown(target)} is neither a host nor a group of the inventory"
        )
    if kind not in action.targets:
        raise ApiError(
            422,
            "target_not_allowed",
            f"{action.name} may target {', '.join(action.targets)}; {target!r} is a {kind}",
        )
    if not instances:
        raise ApiError(422, "empty_target", f"group {target!r} has no hosts")
    return instances


def _execution_node(svc: Service, instances: list[str]) -> str | None:
    """The execution node the instances name (None: this runner); 422 when they name several or an unknown one."""
    try:
        return nodes.select(svc.settings.execution_nodes, load_inventory(svc), instances)
    except nodes.NodeRefused as refused:
        raise ApiError(422, refused.code, _clip(str(refused), 1000), nodes=refused.nodes) from None
    except FleetdeckError as exc:
        raise ApiError(503, "inventory_unavailable", f"the runner's inventory cannot be read: {exc}") from None


def _shown(value: str) -> str:
    return _clip(repr(value))


def _clip(text: str, limit: int = SHOWN) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
