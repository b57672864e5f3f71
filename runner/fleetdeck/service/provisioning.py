"""Instances over the API: create (add-instance's code, then a deploy run), read, change settings and
decommission (a `decommission` run, then the instance leaves the inventory). Every run starts through runs.py;
every inventory change goes through fleetdeck.scaffold / fleetdeck.instance_edit, as the CLI's do."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from fleetdeck import age, hostkeys, instance_edit, inventory, scaffold, validate, vault
from fleetdeck.errors import FleetdeckError, Refused

from . import runs
from .context import Service
from .errors import ApiError
from .probe import Probe

CREATE_FIELDS = {"name": str, "domain": str, "address": str, "tier": int, "canary": bool, "features": list,
                 "version": str, "port": int}
CREATE_REQUIRED = ("name", "domain", "address")
CHECKS = {"name": validate.instance_name, "domain": validate.domain, "address": validate.address,
          "tier": validate.tier, "version": validate.version, "port": validate.port, "features": validate.features,
          "hold_reason": instance_edit.hold_reason, "env_file": validate.env_file}
CHANGE_FIELDS = {"tier": int, "canary": bool, "features": list, "hold": bool, "hold_reason": str}
RECENT = 10
MANIFEST_TIME = "%Y-%m-%dT%H:%M:%SZ"  # finished_at in a backup's manifest.json (roles/backup/templates/backup.sh.j2)
ROLLOUTS = ("canary_upgrade", "upgrade", "update_binary")  # the actions that move instances to a new version
creating = threading.Lock()  # one creation at a time: the idempotency check and the write go together
# The facts the drift and compliance roles leave on each instance, read back from those actions' runs.
DRIFT_FACT, COMPLIANCE_FACT = "drift_items", "compliance_checks"


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


def create(svc: Service, body: dict, operator: str, idempotency_key: str | None,
           source: str = "api") -> tuple[dict, dict, bool]:
    """(instance, deploy run, created); with the key of an earlier identical request, that request's answer.
    `source`: where the request came from (api, console), recorded on the run."""
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
        started = runs.start(svc, {"action": "deploy", "target": body["name"]}, operator=operator, source=source,
                             idempotency_key=idempotency_key, fingerprint=body)
    return instance(svc, body["name"]), started.run, True


def listing(svc: Service, filters: dict[str, str]) -> list[dict]:
    inv = runs.load_inventory(svc)
    probes = svc.probes.results(inv, inv.hosts())
    rows = [_row(svc, inv, name, probes[name]) for name in inv.hosts()]
    for key, value in filters.items():
        rows = [r for r in rows if str(r[key]).lower() == value.lower()]
    return rows


def instance(svc: Service, name: str) -> dict:
    """The instance's row with its last probe as it is (a write answers without waiting for a probe)."""
    return _row(svc, *_probed(svc, name, wait=False))


def _probed(svc: Service, name: str, wait: bool) -> tuple[inventory.Inventory, str, Probe | None]:
    inv = runs.load_inventory(svc)
    if name not in inv.hosts():
        raise ApiError(404, "unknown_instance", f"no instance {name!r} in the inventory")
    return inv, name, svc.probes.results(inv, [name], wait=wait)[name]


def detail(svc: Service, name: str) -> dict:
    inv, _, probe = _probed(svc, name, wait=True)
    row = _row(svc, inv, name, probe)
    recent = svc.store.instance_runs(name, RECENT)
    releases = [{"version": r["params"].get("app_version"), "action": r["action"], "finished": r["finished"]}
                for r in recent if r["status"] == "successful" and not r["check"]
                and r["action"] in ("deploy", "upgrade", "update_binary", "rollback", "canary_upgrade")]
    return {**row, "recent_runs": recent, "releases": releases,
            "release_history": list(reversed(probe.history[-RECENT:])) if probe else [],
            **_backups(svc, name), **_secret_ages(svc, name), "audit": svc.store.audit_about("instance.", name, RECENT)}


def rollouts(svc: Service, rows: list[dict]) -> list[dict]:
    """Active rollout runs, each instance it covers with its canary membership and where it is: the probed
    version against the run's target, and the run's result for it once there is one."""
    active = [r for status in runs.ACTIVE for r in svc.store.list_runs({"status": status}, 50, None)
              if r["action"] in ROLLOUTS]
    by_name = {row["name"]: row for row in rows}
    shown = []
    for run in active:
        target = run["params"].get("app_version")
        hosts = run["hosts"] if isinstance(run["hosts"], dict) else {}
        members = [by_name[n] for n in run["instances"] if n in by_name]
        shown.append({"run": run, "version": target, "instances": [
            {"name": m["name"], "canary": m["canary"], "state": m["state"], "running_version": m["running_version"],
             "progress": hosts.get(m["name"], {}).get("result")
             or ("on the target" if target and m["running_version"] == target else "not yet")}
            for m in sorted(members, key=lambda m: not m["canary"])]})
    return shown


def _backups(svc: Service, name: str) -> dict:
    """The instance's backups in the controller's store, newest first, from their manifests (never a value)."""
    rows, errors = [], []
    for row in _manifests(svc, name):
        (rows if isinstance(row, dict) else errors).append(row)
    return {"backups": rows, "backups_error": errors[0] if errors else None}


def _manifests(svc: Service, name: str) -> Iterator[dict | str]:
    """Each backup's row, newest first, or why its manifest cannot be read; read one at a time."""
    for manifest in sorted((svc.settings.backup_store / name).glob("*/manifest.json"), reverse=True):
        try:
            data = json.loads(manifest.read_text())
            yield {"id": data["id"], "app_version": data.get("app_version"), "finished_at": data.get("finished_at"),
                   "size_bytes": sum(p.get("size", 0) for p in data.get("parts", {}).values())}
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            yield f"{manifest}: unreadable manifest ({type(exc).__name__}: {exc})"


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


def _row(svc: Service, inv: inventory.Inventory, name: str, probe: Probe | None) -> dict:
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
        "running_version": probe.version if probe else None,
        "health": probe.public(time.time()) if probe else None,
        "hold": {"held": held, "reason": settings.get("rollout_hold_reason")} if held else None,
        "groups": [g for g, hosts in groups.items() if name in hosts and g != "all"],
        "leased_by": svc.store.leases().get(name),
        "state": _state(last, held, probe, settings.get("app_version")),
        "last_run": {k: last[k] for k in ("id", "action", "status", "check", "finished")} if last else None,
        "last_backup_age_seconds": _last_backup_age(svc, name, backup),
        "drift": _last_drift(svc, name),
    }


def _last_backup_age(svc: Service, name: str, backup_run: dict | None) -> int | None:
    """Seconds since the newest backup: in the controller's store (also those an upgrade took first), or of a
    backup run (with backup_store_enabled false the store has none)."""
    times = [backup_run["finished"]] if backup_run else []
    for backup in (row for row in _manifests(svc, name) if isinstance(row, dict)):
        try:
            times.append(datetime.strptime(backup["finished_at"] or "", MANIFEST_TIME).replace(tzinfo=UTC).timestamp())
            break
        except ValueError:  # unfinished, or not written by the backup role: its time is not trusted
            continue
    return round(time.time() - max(times)) if times else None


def _state(last: dict | None, held: bool, probe: Probe | None, pinned: str | None) -> str:
    """held (on its release by rollout_hold); pending (a run is active, or nothing is known yet); down (SSH or
    the app's health fails); warning (healthy, but its last run failed or it runs another version than the
    pinned one); ok."""
    if held:
        return "held"
    if (last is not None and last["status"] in runs.ACTIVE) or (probe is None and last is None):
        return "pending"
    if probe is not None:
        if not probe.healthy:
            return "down"
        failed = last is not None and last["status"] != "successful"
        return "warning" if failed or (pinned and probe.version != pinned) else "ok"
    hosts = last["hosts"] if isinstance(last["hosts"], dict) else {}
    if last["status"] == "successful":
        return "ok"
    if any(h.get("unreachable") for h in hosts.values()):
        return "down"
    return "warning"


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


def decommission(svc: Service, name: str, keep_data: bool, operator: str, source: str = "api") -> dict:
    """Start the decommission run (final backup, app stopped and disabled, data removed unless kept);
    the instance leaves the inventory when it succeeds (finished()). `source`: api or console."""
    instance(svc, name)
    active = svc.store.instance_runs(name, 1, active=True)
    if active:
        raise ApiError(409, "instance_busy", f"instance {name} has an active run ({active[0]['id']}, "
                       f"{active[0]['action']}); wait for it or cancel it", run_id=active[0]["id"])
    started = runs.start(svc, {"action": "decommission", "target": name,
                               "params": {"app_decommission_keep_data": keep_data}},
                         operator=operator, source=source)
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
