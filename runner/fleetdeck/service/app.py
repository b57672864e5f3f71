"""Application factory: wires settings, store, catalog, executor, hub callbacks and the blueprints."""

from __future__ import annotations

import logging

from flask import Flask, request

from fleetdeck import vault

from . import api, console, console_session, errors, health, hooks, imports, provisioning
from .catalog import Catalog
from .config import Settings, from_env
from .context import Service
from .executor import Executor, kill_leftovers
from .hub import HubNotifier
from .metrics import Metrics
from .probe import Probes
from .store import open_store
from .streams import StreamSlots

log = logging.getLogger("fleetdeck.runner")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or from_env()
    store = open_store(settings)
    interrupted = store.recover(settings.replica_id)
    if interrupted:
        log.warning(
            "marked %d run(s) interrupted after a restart: %s", len(interrupted), ", ".join(interrupted)
        )
        kill_leftovers(interrupted)
    catalog = Catalog.load(settings.catalog, settings.project_dir)
    log.info("actions available: %s", ", ".join(sorted(catalog.actions)) or "none")
    if catalog.missing:
        log.warning(
            "actions hidden, playbook missing: %s",
            ", ".join(f"{n} ({p})" for n, p in sorted(catalog.missing.items())),
        )
    password_file = vault.password_file()
    if not password_file.is_file():
        log.warning("no vault password file at %s: vaulted variables cannot be read", password_file)
    metrics = Metrics()
    hub = (
        HubNotifier(store, settings.hub_url, settings.hub_secret, settings.hub_attempts, settings.hub_backoff)
        if settings.hub_url
        else None
    )

    def finished(run: dict) -> None:
        if hub:  # first: it writes to the store, and the executor retries this when the store is full
            hub.run_finished(run)
        metrics.finished(run)
        app.extensions["fleetdeck"].probes.forget(run["instances"])
        provisioning.finished(app.extensions["fleetdeck"], run)
        imports.finished(app.extensions["fleetdeck"], run)

    executor = Executor(
        settings, store, catalog, password_file if password_file.is_file() else None, finished
    )
    metrics.queue_depth.set_function(executor.queue_depth)
    metrics.running.set_function(executor.running)
    metrics.leases.set_function(lambda: len(store.leases()))
    metrics.missing_playbooks.set(len(catalog.missing))

    app = Flask("fleetdeck.service")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes, TOKENS=settings.tokens, JSON_SORT_KEYS=False
    )
    app.extensions["fleetdeck"] = Service(
        settings,
        store,
        catalog,
        executor,
        metrics,
        password_file if password_file.is_file() else None,
        hub,
        StreamSlots(settings.max_streams_per_token),
        Probes(settings.inventory, password_file if password_file.is_file() else None,
               (settings.hook_secret, settings.hub_secret)),
    )
    errors.register(app)

    @app.before_request
    def no_intake_while_stopping():
        if executor.stopping and request.method != "GET":
            raise errors.ApiError(503, "shutting_down", "the runner is stopping; retry when it is back")

    console_session.configure(app)
    for blueprint in (api.bp, hooks.bp, health.bp, console.bp):
        app.register_blueprint(blueprint)
    return app
