"""POST /v1/imports: take over a hand-installed instance with scripts/import-instance's code.

In-process, like POST /v1/instances: fleetdeck.takeover.adopt() reads the instance over SSH and writes it
into the inventory (nothing on the server changes). Its backup and the takeover proof are then runs of the
`backup` and `configure` (check mode) actions, started through runs.py with source `import`: when the backup
run succeeds, finished() starts the check run, and the check run's changed count decides, as on the command
line (takeover.proof_failure); the verdict is an audit record (`instance.takeover_proven` or
`instance.takeover_failed`) on the instance.
"""

from __future__ import annotations

from fleetdeck import hostkeys, takeover
from fleetdeck.errors import Exists, FleetdeckError, Refused

from . import provisioning, runs
from .context import Service
from .errors import ApiError

FIELDS = {"name": str, "domain": str, "address": str, "tier": int, "port": int, "env_file": str, "backup": bool}
REQUIRED = ("name", "domain", "address")
SOURCE = "import"


def start(svc: Service, body: dict, operator: str, idempotency_key: str | None) -> tuple[dict, dict, bool]:
    """(instance, first run, created); with the key of an earlier identical request, that request's answer."""
    backup = body.get("backup", True)
    needed = ["configure", *(["backup"] if backup is True else [])]
    missing = [a for a in needed if a not in svc.catalog.actions]
    if missing:
        raise ApiError(404, "action_unavailable", f"the runner's catalog has no {' or '.join(missing)} action: "
                       "cannot import")
    provisioning.refuse(provisioning.field_errors(body, FIELDS, REQUIRED))
    with provisioning.creating:
        if idempotency_key is not None:
            earlier = runs.replay(svc, operator, idempotency_key, body)
            if earlier is not None:
                return provisioning.instance(svc, body["name"]), earlier, False
        try:
            report = takeover.adopt(svc.settings.inventory, body["name"], body["address"], body["domain"],
                                    tier=body.get("tier", 1), port=body.get("port", 22),
                                    env_file=body.get("env_file"))
        except Exists as exc:
            raise ApiError(409, "instance_exists", f"name: {exc}", field="name") from None
        except hostkeys.Unreachable as exc:
            raise ApiError(422, "host_unreachable", f"address: {exc}", field="address",
                           fields={"address": str(exc)}) from None
        except takeover.ReadError as exc:
            raise ApiError(422, "not_importable", f"{exc.field}: {exc}", field=exc.field,
                           fields={exc.field: str(exc)}) from None
        except Refused as exc:  # the live env files cannot be mapped as they are
            raise ApiError(422, "not_importable", f"env_file: {exc}", field="env_file",
                           fields={"env_file": str(exc)}) from None
        except FleetdeckError as exc:  # the environment itself is in the way (secret catalog, interrupted rekey)
            raise ApiError(503, "inventory_unavailable", f"cannot add to the inventory: {exc}") from None
        svc.store.audit(operator, "instance.imported", None, {"instance": body["name"], "report": report,
                                                               **{k: v for k, v in body.items() if k != "name"}})
        request = {"action": "backup", "target": body["name"]} if backup else _check_request(body["name"])
        started = runs.start(svc, request, operator=operator, source=SOURCE, idempotency_key=idempotency_key,
                             fingerprint=body)
    return provisioning.instance(svc, body["name"]), started.run, True


def _check_request(name: str) -> dict:
    return {"action": "configure", "target": name, "check": True}


def finished(svc: Service, run: dict) -> None:
    """After an import's backup run: start its check run. After its check run: record the verdict."""
    if run["source"] != SOURCE:
        return
    name = run["target"]
    if run["action"] == "backup":
        if run["status"] != "successful":
            _verdict(svc, run, "instance.takeover_failed", f"the backup before the takeover ended {run['status']}; "
                     f"{name} is in the inventory: back it up and run configure in check mode again")
            return
        try:
            runs.start(svc, _check_request(name), operator=run["operator"], source=SOURCE)
        except ApiError as exc:  # e.g. another run took the instance meanwhile
            _verdict(svc, run, "instance.takeover_failed", f"the takeover check could not start: {exc.message}")
    elif run["action"] == "configure" and run["check"]:
        changed = (run["hosts"].get(name) or {}).get("changed")
        failure = (f"the takeover check ended {run['status']}" if run["status"] != "successful" or changed is None
                   else takeover.proof_failure(name, svc.settings.inventory, changed))
        if failure:
            _verdict(svc, run, "instance.takeover_failed", failure)
        else:
            _verdict(svc, run, "instance.takeover_proven", "configure --check changes nothing: taken over as it runs")


def _verdict(svc: Service, run: dict, what: str, message: str) -> None:
    svc.store.audit("runner", what, run["id"], {"instance": run["target"], "message": message})
