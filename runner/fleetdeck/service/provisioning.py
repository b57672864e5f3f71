"""Instances over the API: create (add-instance's code, then a deploy run), read, change settings and
decommission (a `decommission` run, then the instance leaves the inventory). Every run starts through runs.py;
every inventory change goes through fleetdeck.scaffold / fleetdeck.instance_edit, as the CLI's do."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from fleetdeck import age, hostkeys, instance_edit, inventory, scaffold, validate, vault
from fleetdeck.errors import FleetdeckError, Refused

from . import runs
from .context import Service
from .errors import ApiError

CREATE_FIELDS = {"name": str, "domain": str, "address": str, "tier": int, "canary": bool, "features": list,
                 "version": str, "port": int}
CREATE_REQUIRED = ("name", "domain", "address")
CHECKS = {"name": validate.instance_name, "domain": validate.domain, "address": validate.address,
          "tier": validate.tier, "version": validate.version, "port": validate.port, "features": validate.features,
          "hold_reason": instance_edit.hold_reason, "env_file": validate.env_file}
CHANGE_FIELDS = {"tier": int, "canary": bool, "features": list, "hold": bool, "hold_reason": str}
RECENT = 10
# The facts the drift and compliance roles leave on each instance, read back from those actions' runs.
DRIFT_FACT, COMPLIANCE_FACT = "drift_items", "compliance_checks"
creating = threading.Lock()  # one creation at a time: the idempotency check and the write go together


def field_errors(body: dict, fields: dict[str, type], required: tuple[str, ...]) -> dict[str, str]:
    errors = {f: f"{f}: unknown field; allowed: {', '.join(fields)}" for f in body if f not in fields}
    errors |= {f: f"{f}: required" for f in required if f not in body}
    for field, kind in fields.items():
        value = body.get(field)
        if field not in body or field in errors:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            errors[field] = f"{field}: must be {_kind(kind)}"
        elif field in CHECKS:
            try:
                CHECKS[field](value)
            except Refused as exc:
                errors[field] = f"{field}: {exc}"
    return errors


def _kind(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list"}[kind]


def refuse(errors: dict[str, str]) -> None:
    if errors:
        raise ApiError(422, "invalid_field", "; ".join(errors.values()), field=next(iter(errors)), fields=errors)


def create(svc: Service, body: dict, operator: str, idempotency_key: str | None) -> tuple[dict, dict, bool]:
    """(instance, deploy run, created); with the key of an earlier identical request, that request's answer."""
    if "deploy" not in svc.catalog.actions:
        raise ApiError(404, "action_unavailable", "the runner's catalog has no deploy action: cannot provision")
    refuse(field_errors(body, CREATE_FIELDS, CREATE_REQUIRED))
    with creating:
        if idempotency_key is not None:
            earlier = runs.replay(svc, operator, idempotency_key, body)
            if earlier is not None:
                return instance(svc, body["name"]), earlier, False
        try:
            scaffold.add_instance(svc.settings.inventory, body["name"], body["domain"], body["address"],
                                  tier=body.get("tier", 1), canary=body.get("canary", False),
                                  version=body.get("version", "1.0.0"), port=body.get("port", 22),
                                  features=tuple(body.get("features", ())))
        except Refused as exc:
            raise ApiError(409, "instance_exists", f"name: {exc}", field="name") from None
        except hostkeys.Unreachable as exc:
            raise ApiError(422, "host_unreachable", f"address: {exc}", field="address",
                           fields={"address": str(exc)}) from None
        except FleetdeckError as exc:  # the environment itself is in the way (secret catalog, interrupted rekey)
            raise ApiError(503, "inventory_unavailable", f"cannot add to the inventory: {exc}") from None
        svc.store.audit(operator, "instance.created", None,
                        {"instance": body["name"], **{k: v for k, v in body.items() if k != "name"}})
        started = runs.start(svc, {"action": "deploy", "target": body["name"]}, operator=operator, source="api",
                             idempotency_key=idempotency_key, fingerprint=body)
    return instance(svc, body["name"]), started.run, True


def listing(svc: Service, filters: dict[str, str]) -> list[dict]:
    inv = runs.load_inventory(svc)
    rows = [_row(svc, inv, name) for name in inv.hosts()]
    for key, value in filters.items():
        rows = [r for r in rows if str(r[key]).lower() == value.lower()]
    return rows


def instance(svc: Service, name: str) -> dict:
    inv = runs.load_inventory(svc)
    if name not in inv.hosts():
        raise ApiError(404, "unknown_instance", f"no instance {name!r} in the inventory")
    return _row(svc, inv, name)


def detail(svc: Service, name: str) -> dict:
    row = instance(svc, name)
    recent = svc.store.instance_runs(name, RECENT)
    releases = [{"version": r["params"].get("app_version"), "action": r["action"], "finished": r["finished"]}
                for r in recent if r["status"] == "successful" and not r["check"]
                and r["action"] in ("deploy", "upgrade", "update_binary", "rollback", "canary_upgrade")]
    return {**row, "recent_runs": recent, "releases": releases, **_secret_ages(svc, name),
            "audit": svc.store.audit_about("instance.", name, RECENT)}


def _secret_ages(svc: Service, name: str) -> dict:
    """Each catalog secret's age (from the vault's rotation times; never a value), or why it is unknown."""
    try:
        if svc.password_file is None:
            raise FleetdeckError("the runner has no vault password file")
        rows = age.secret_ages(runs.load_inventory(svc), vault.read_password(svc.password_file),
                               datetime.now(UTC), [name])
    except FleetdeckError as exc:
        return {"secret_ages": [], "secret_ages_error": str(exc)}
    return {"secret_ages": [{"secret": r.secret, "age_days": r.age_days, "rotate_every_days": r.rotate_every_days,
                             "overdue": r.overdue} for r in rows], "secret_ages_error": None}


def _row(svc: Service, inv: inventory.Inventory, name: str) -> dict:
    settings = inv.public_vars(name)
    groups = inv.groups()
    recent = svc.store.instance_runs(name, 50)
    last = recent[0] if recent else None
    backup = next((r for r in recent if r["action"] == "backup" and r["status"] == "successful"
                   and not r["check"]), None)
    held = bool(settings.get("rollout_hold"))
    return {
        "name": name,
        "domain": settings.get("app_domain"),
        "address": settings.get("ansible_host"),
        "tier": next((t for t, g in inventory.TIER_GROUPS.items() if name in groups.get(g, [])), None),
        "canary": name in groups.get(inventory.CANARY_GROUP, []),
        "features": settings.get("app_features", []),
        "pinned_version": settings.get("app_version"),
        "hold": {"held": held, "reason": settings.get("rollout_hold_reason")} if held else None,
        "groups": [g for g, hosts in groups.items() if name in hosts and g != "all"],
        "leased_by": svc.store.leases().get(name),
        "state": _state(last, held),
        "last_run": {k: last[k] for k in ("id", "action", "status", "check", "finished")} if last else None,
        "last_backup_age_seconds": round(time.time() - backup["finished"]) if backup else None,
        "drift": _last_drift(svc, name),
    }


def _last_drift(svc: Service, name: str) -> dict | None:
    """The instance's drifted keys in the newest drift run (items None: it was not compared); no values."""
    last = svc.store.last_fact(name, "drift", DRIFT_FACT)
    if last is None:
        return None
    run, items = last
    return {"run_id": run["id"], "finished": run["finished"],
            "items": None if items is None else [{k: i[k] for k in ("where", "key", "change")} for i in items]}


def compliance(svc: Service, name: str) -> dict | None:
    """The instance's checks in the newest compliance run (checks None: it was not checked)."""
    instance(svc, name)
    last = svc.store.last_fact(name, "compliance", COMPLIANCE_FACT)
    if last is None:
        return None
    run, checks = last
    return {"run_id": run["id"], "finished": run["finished"], "status": run["status"], "checks": checks}


def _state(last: dict | None, held: bool) -> str:
    """ok / warning / down / pending / held, from the instance's last run and its hold."""
    if held:
        return "held"
    if last is None or last["status"] in runs.ACTIVE:
        return "pending"
    host = last["hosts"] if isinstance(last["hosts"], dict) else {}
    if last["status"] == "successful":
        return "ok"
    if any(h.get("unreachable") for h in host.values()):
        return "down"
    return "warning"


def change(svc: Service, name: str, body: dict, operator: str) -> dict:
    """Apply a PATCH; the instance afterwards and the diff recorded in the audit trail."""
    refuse(field_errors(body, CHANGE_FIELDS, ()))
    if not body:
        raise ApiError(422, "invalid_field", f"nothing to change; send one of {', '.join(CHANGE_FIELDS)}")
    instance(svc, name)
    wanted = instance_edit.Change(tier=body.get("tier"), canary=body.get("canary"), features=body.get("features"),
                                  hold=body.get("hold"), hold_reason=body.get("hold_reason"))
    try:
        diff = instance_edit.change(svc.settings.inventory, name, wanted)
    except Refused as exc:  # a reason without a hold
        raise ApiError(422, "invalid_field", str(exc), field="hold_reason") from None
    except FleetdeckError as exc:
        raise ApiError(409, "inventory_conflict", str(exc)) from None
    if diff:
        svc.store.audit(operator, "instance.changed", None, {"instance": name, "change": body, "diff": diff})
    return {"instance": instance(svc, name), "diff": diff}


def decommission(svc: Service, name: str, keep_data: bool, operator: str) -> dict:
    """Start the decommission run (final backup, app stopped and disabled, data removed unless kept);
    the instance leaves the inventory when it succeeds (finished())."""
    instance(svc, name)
    active = svc.store.instance_runs(name, 1, active=True)
    if active:
        raise ApiError(409, "instance_busy", f"instance {name} has an active run ({active[0]['id']}, "
                       f"{active[0]['action']}); wait for it or cancel it", run_id=active[0]["id"])
    started = runs.start(svc, {"action": "decommission", "target": name,
                               "params": {"app_decommission_keep_data": keep_data}},
                         operator=operator, source="api")
    svc.store.audit(operator, "instance.decommission_started", started.run["id"],
                    {"instance": name, "keep_data": keep_data})
    return started.run


def finished(svc: Service, run: dict) -> None:
    """After a decommission run: a successful one takes the instance out of the inventory, vault archived."""
    if run["action"] != "decommission" or run["check"]:
        return
    name = run["target"]
    if run["status"] != "successful":
        svc.store.audit("runner", "instance.decommission_failed", run["id"], {"instance": name,
                                                                               "status": run["status"]})
        return
    try:
        archive, diff = instance_edit.remove(svc.settings.inventory, name)
    except (FleetdeckError, OSError) as exc:  # before hosts.yml is replaced, nothing of the inventory changed
        svc.store.audit("runner", "instance.decommission_failed", run["id"], {"instance": name, "error": str(exc)})
        return
    svc.store.audit("runner", "instance.decommissioned", run["id"],
                    {"instance": name, "archive": str(archive), "diff": diff})
