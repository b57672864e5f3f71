"""The parts of one running service, kept on its Flask app (`app.extensions["fleetdeck"]`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from .catalog import Catalog
from .config import Settings
from .executor import Executor
from .hub import HubNotifier
from .metrics import Metrics
from .probe import Probes
from .store import Store
from .streams import StreamSlots


@dataclass
class Service:
    settings: Settings
    store: Store
    catalog: Catalog
    executor: Executor
    metrics: Metrics
    password_file: Path | None
    hub: HubNotifier | None
    streams: StreamSlots
    probes: Probes


def service() -> Service:
    return current_app.extensions["fleetdeck"]
