"""Drift of instances from the inventory (scripts/drift): playbooks/drift.yml compares, this reads its report.

Each item is one key: where (env file, unit file, `release`, the unit's state), key, change (added: only on
the instance, removed: only in the inventory, changed), desired and live values (secrets: ********).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fleetdeck import playbooks
from fleetdeck.errors import FleetdeckError

DRIFTED = 2  # exit status when any instance drifted


def collect(env: Path, limit: str | None = None) -> dict[str, list[dict] | None]:
    """instance -> drift items (None: the instance could not be compared)."""
    with tempfile.TemporaryDirectory(prefix="fleetdeck-drift-") as tmp:
        report = Path(tmp) / "drift.json"
        proc, _ = playbooks.run(env, "drift.yml", "-e", f"drift_report_file={report}",
                                *(["--limit", limit] if limit else []))
        if not report.exists():
            raise FleetdeckError(f"playbooks/drift.yml failed (rc {proc.returncode}) before reporting:\n"
                                 f"{(proc.stdout + proc.stderr)[-2000:]}")
        return json.loads(report.read_text())


def table(results: dict[str, list[dict] | None]) -> list[tuple[str, ...]]:
    rows = [("INSTANCE", "WHERE", "KEY", "CHANGE", "INVENTORY", "LIVE")]
    for host, items in sorted(results.items()):
        if items is None:
            rows.append((host, "-", "-", "NOT COMPARED", "-", "unreachable or failed"))
        elif not items:
            rows.append((host, "-", "-", "none", "-", "-"))
        rows += [(host, i["where"], i["key"], i["change"], _shown(i["desired"]), _shown(i["live"]))
                 for i in items or []]
    return rows


def drifted(results: dict[str, list[dict] | None]) -> bool:
    return any(items is None or items for items in results.values())


def _shown(value: str | None) -> str:
    return "-" if value is None else value.replace("\n", " | ")
