"""The fleet console under /ui: server-rendered pages over the same functions as the API (runs.py for every
run, provisioning.py for instances), the signed-in user's scopes deciding what it may do and which buttons
exist. Sign-in, CSRF and headers: console_session.py."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, g, redirect, render_template, request, session, url_for

from . import api, console_session, provisioning, runs
from .auth import allows
from .context import service
from .errors import ApiError

bp = Blueprint("console", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")
bp.before_request(console_session.require_user)
bp.after_request(console_session.security_headers)
# Actions the instance page offers, in this order, with the parameter each may take from the form.
INSTANCE_ACTIONS = {
    "configure": None,
    "upgrade": "app_version",
    "rollback": "app_rollback_version",
    "backup": None,
    "restore": "backup",
    "rotate_secrets": None,
    "restart_service": None,
}
FLEET_FILTERS = ("state", "tier", "canary")


@bp.app_context_processor
def helpers():
    return {"csrf_token": console_session.csrf_token, "may": _may, "user": g.get("user")}


@bp.app_template_filter("age")
def age(seconds: float | None) -> str:
    """A duration for people: 40 s, 12 min, 5.5 h, 3 d."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}" if unit == "h" else f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _may(scope: str) -> bool:
    return g.get("user") is not None and allows(g.user, scope)


def _operator() -> str:
    return f"console:{g.user.name}"


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    error = None
    if request.method == "POST":
        user = console_session.sign_in(service().settings.console_users, request.form.get("name", ""),
                                       request.form.get("password", ""))
        if user:
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/ui/") else url_for("console.fleet"))
        error = "unknown user or wrong password"
    return render_template("console/sign_in.html", error=error), 401 if error else 200


@bp.post("/sign-out")
def sign_out():
    session.clear()
    return redirect(url_for("console.sign_in"))


@bp.get("/")
def fleet():
    svc = service()
    filters = {k: request.args[k] for k in FLEET_FILTERS if request.args.get(k)}
    instances = provisioning.listing(svc, filters)
    versions = sorted({v for i in instances for v in (i["running_version"], i["pinned_version"]) if v},
                      key=_version_key)
    return render_template("console/fleet.html", instances=instances, filters=filters, versions=versions,
                           canary=[i for i in instances if i["canary"]],
                           rollouts=provisioning.rollouts(svc, instances))


def _version_key(version: str) -> tuple:
    """MAJOR.MINOR.PATCH numerically (validate.VERSION_PATTERN), pre-release and build text after."""
    core, _, rest = version.partition("-")
    return (*(int(p) if p.isdigit() else 0 for p in core.split("+")[0].split(".")), rest)


@bp.get("/instances/<name>")
def instance(name: str):
    svc = service()
    detail = provisioning.detail(svc, name)
    actions = {a: p for a, p in INSTANCE_ACTIONS.items() if a in svc.catalog.actions and _may(runs.scope(a))}
    return render_template("console/instance.html", i=detail, actions=actions,
                           message=session.pop("message", None), diff=session.pop("diff", None))


@bp.get("/instances/<name>/compliance")
def compliance(name: str):
    report = provisioning.compliance(service(), name)
    finished = report and datetime.fromtimestamp(report["finished"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    return render_template("console/compliance.html", name=name, report=report, finished=finished)


@bp.post("/instances/<name>/runs")
def start_run(name: str):
    action = request.form.get("action", "")
    if action not in INSTANCE_ACTIONS:
        raise ApiError(422, "invalid_field", f"action {action!r} is not offered on the instance page")
    if not _may(runs.scope(action)):
        raise ApiError(403, "forbidden", f"{g.user.name!r} lacks scope {runs.scope(action)!r}")
    param = INSTANCE_ACTIONS[action]
    params = {param: request.form[param]} if param and request.form.get(param) else {}
    started = _or_message(lambda: runs.start(
        service(), {"action": action, "target": name, "params": params,
                    "check": request.form.get("mode") == "preview"},
        operator=_operator(), source="console"))
    return redirect(url_for("console.run", run_id=started.run["id"])) if started else _back(name)


@bp.post("/instances/<name>/settings")
def change(name: str):
    _need("provision")
    form = request.form
    body = {"tier": int(form["tier"]) if form.get("tier", "").isdigit() else form.get("tier"),
            "canary": form.get("canary") == "on",
            "features": [f.strip() for f in form.get("features", "").split(",") if f.strip()],
            "hold": form.get("hold") == "on"}
    if body["hold"] and form.get("hold_reason"):
        body["hold_reason"] = form["hold_reason"]
    changed = _or_message(lambda: provisioning.change(service(), name, body, _operator()))
    if changed:
        session["message"] = "settings saved" if changed["diff"] else "nothing changed"
        session["diff"] = changed["diff"]
    return _back(name)


@bp.post("/instances/<name>/decommission")
def decommission(name: str):
    _need("provision")
    run = _or_message(lambda: provisioning.decommission(
        service(), name, request.form.get("keep_data") == "on", _operator(), source="console"))
    return redirect(url_for("console.run", run_id=run["id"])) if run else _back(name)


@bp.get("/runs/<run_id>")
def run(run_id: str):
    found = runs.get(service(), run_id)
    return render_template("console/run.html", run=found, finished=found["status"] not in runs.ACTIVE,
                           may_run=_may(runs.scope(found["action"])), message=session.pop("message", None))


@bp.get("/runs/<run_id>/events")
def run_events(run_id: str):
    runs.get(service(), run_id)
    return api.event_stream(run_id, _operator())


@bp.post("/runs/<run_id>/cancel")
def cancel(run_id: str):
    found = runs.get(service(), run_id)
    _need(runs.scope(found["action"]))
    _or_message(lambda: runs.cancel(service(), run_id, _operator()))
    return redirect(url_for("console.run", run_id=run_id))


@bp.post("/runs/<run_id>/apply")
def apply(run_id: str):
    """The real run of a preview (the same action, target and parameters, without check mode)."""
    preview = runs.get(service(), run_id)
    _need(runs.scope(preview["action"]))
    started = _or_message(lambda: runs.start(
        service(), {"action": preview["action"], "target": preview["target"], "params": preview["params"]},
        operator=_operator(), source="console"))
    return redirect(url_for("console.run", run_id=started.run["id"])) if started else _back(preview["target"])


@bp.route("/new", methods=["GET", "POST"])
def new_instance():
    _need("provision")
    values, errors, message = {}, {}, None
    if request.method == "POST":
        form = request.form
        values = {k: form.get(k, "").strip() for k in ("name", "domain", "address", "version", "features", "port")}
        body = {k: values[k] for k in ("name", "domain", "address") if values[k]}
        body |= {"tier": int(form.get("tier", "1")) if form.get("tier", "1").isdigit() else form.get("tier"),
                 "canary": form.get("canary") == "on"}
        if values["version"]:
            body["version"] = values["version"]
        if values["port"]:
            body["port"] = int(values["port"]) if values["port"].isdigit() else values["port"]
        if values["features"]:
            body["features"] = [f.strip() for f in values["features"].split(",") if f.strip()]
        try:
            _, started, _ = provisioning.create(service(), body, _operator(), None, source="console")
            return redirect(url_for("console.run", run_id=started["id"]))
        except ApiError as exc:
            errors = exc.details.get("fields") or ({exc.details["field"]: exc.message} if "field" in exc.details
                                                   else {})
            message = None if errors else exc.message
    return render_template("console/new.html", values=values, errors=errors, message=message), 422 if (
        errors or message) else 200


def _need(scope: str) -> None:
    if not _may(scope):
        raise ApiError(403, "forbidden", f"{g.user.name!r} lacks scope {scope!r}")


def _or_message(call):
    """The call's result, or None with its refusal kept for the instance page."""
    try:
        return call()
    except ApiError as exc:
        session["message"] = exc.message
        return None


def _back(name: str):
    return redirect(url_for("console.instance", name=name))
