"""What this build of refapp is: its version and the schema level it needs.

build.py writes release.json next to this module; a source checkout has none
and runs as a development build that expects every migration it carries.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from refapp import db


@dataclass(frozen=True)
class Release:
    version: str
    schema: int
    faults: tuple[str, ...] = ()  # deliberate defects of this build (see server.py)


def current() -> Release:
    manifest = Path(__file__).with_name("release.json")
    if manifest.exists():
        data = json.loads(manifest.read_text())
        return Release(version=data["version"], schema=int(data["schema"]), faults=tuple(data.get("faults", ())))
    shipped = db.migrations()
    return Release(version="0.0.0+source", schema=shipped[-1].number if shipped else 0)
