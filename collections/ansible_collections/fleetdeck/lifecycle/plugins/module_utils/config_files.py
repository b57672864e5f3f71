# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Values of the configuration files fleetdeck compares key by key: the one parser of env files and of
systemd unit files (the app role's value-based writes and drift check, scripts/import-instance).

Env files (systemd EnvironmentFile): lines C(NAME=value); blank lines and lines starting with C(#) or C(;)
are ignored; C(export ) before a name is accepted. A value in double quotes has C(\\\\) and C(\\")
unescaped (as the role writes them), one in single quotes is taken literally, an unquoted one is stripped.
A later line wins over an earlier one.

Unit files: C(Section.Key) -> value; a key given several times (C(EnvironmentFile=)) keeps every value,
one per line, in order. Comments and blank lines are ignored, so order and comments never count as a change.
"""

from __future__ import annotations

import re

_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_UNIT_SECTION = re.compile(r"^\[([^\]]+)\]$")
_UNIT_LINE = re.compile(r"^([A-Za-z0-9_-]+)\s*=\s*(.*)$")


class ConfigFileError(ValueError):
    pass


def parse_env(text):
    """NAME -> value (str) of an env file's text; ConfigFileError names the first line that is not NAME=value."""
    values = {}
    for number, line in _lines(text):
        match = _ENV_LINE.match(line)
        if not match:
            raise ConfigFileError(f"line {number} is not NAME=value")
        values[match.group(1)] = _unquote(match.group(2).strip())
    return values


def parse_unit(text):
    """Section.Key -> value (str) of a systemd unit file's text."""
    values, section = {}, None
    for number, line in _lines(text):
        header = _UNIT_SECTION.match(line)
        match = _UNIT_LINE.match(line)
        if header:
            section = header.group(1)
        elif match and section:
            key = f"{section}.{match.group(1)}"
            values[key] = f"{values[key]}\n{match.group(2)}" if key in values else match.group(2)
        else:
            raise ConfigFileError(f"line {number} is neither [Section] nor Key=value in a section")
    return values


def _lines(text):
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and line[0] not in "#;":
            yield number, line


def _unquote(value):
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r'\\(.)', r"\1", value[1:-1])
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value
