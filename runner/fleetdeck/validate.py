"""Input rules for instances; each check returns the canonical value or raises Refused naming the rule."""

from __future__ import annotations

import ipaddress
import re

from fleetdeck.errors import Refused
from fleetdeck.inventory import RESERVED_NAMES, TIER_GROUPS

NAME_RE = re.compile(r"[a-z][a-z0-9-]*")
LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# The one definition of an app version, MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]. Written to mean the same as a
# JSON Schema (ECMA-262) pattern and in Python: the action catalog (service/actions.yml) and the app role's
# preflight (roles/app/vars/main.yml) carry it verbatim, and tests/test_definitions.py holds them to it.
VERSION_PATTERN = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
VERSION_RE = re.compile(VERSION_PATTERN)
FEATURE_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


def instance_name(name: str) -> str:
    if len(name) > 63:
        raise Refused(f"NAME {name!r} is {len(name)} characters long; at most 63 are allowed")
    if not NAME_RE.fullmatch(name):
        raise Refused(f"NAME {name!r} must start with a lowercase letter and contain only lowercase "
                      "letters, digits and '-'")
    if name in RESERVED_NAMES:
        raise Refused(f"NAME {name!r} is a reserved group name ({', '.join(sorted(RESERVED_NAMES))})")
    return name


def domain(value: str) -> str:
    """An RFC 1123 fully qualified domain name, lowercased, without a trailing dot."""
    fqdn = value.lower().removesuffix(".")
    problem = _dns_name_problem(fqdn)
    if problem is None and "." not in fqdn:
        problem = "it has a single label; a fully qualified name has at least two (app.example.com)"
    if problem:
        raise Refused(f"DOMAIN {value!r} is not a fully qualified domain name: {problem}")
    return fqdn


def address(value: str) -> str:
    """An IPv4 or IPv6 address (canonical form) or a DNS name (lowercased)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.lower().removesuffix(".")
    problem = _dns_name_problem(name)
    if problem:
        raise Refused(f"ADDRESS {value!r} is neither an IPv4/IPv6 address nor a DNS name: {problem}")
    return name


def tier(value: int) -> int:
    if value not in TIER_GROUPS:
        raise Refused(f"tier {value!r} must be one of {', '.join(map(str, TIER_GROUPS))}")
    return value


def version(value: str) -> str:
    if not VERSION_RE.fullmatch(value):
        raise Refused(f"version {value!r} is not MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD] (e.g. 1.4.2)")
    return value


def features(value: object) -> list[str]:
    """Feature flag names (app_features), sorted, each once."""
    if not isinstance(value, list | tuple) or not all(isinstance(f, str) and FEATURE_RE.fullmatch(f) for f in value):
        raise Refused(f"features {value!r} must be a list of names of lowercase letters, digits and '_' "
                      "(e.g. new_ui), each starting with a letter")
    return sorted(set(value))


def env_file(value: str) -> str:
    """An absolute path on the instance, without whitespace or control characters."""
    if not value.startswith("/") or len(value) > 4096 or any(c.isspace() or not c.isprintable() for c in value):
        raise Refused(f"env file {value!r} must be an absolute path without whitespace or control characters")
    return value


def port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise Refused(f"port {value} is outside 1-65535")
    return value


def _dns_name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name) > 253:
        return f"it is {len(name)} characters long; at most 253 are allowed"
    for label in name.split("."):
        if not LABEL_RE.fullmatch(label):
            return (f"label {label!r} must be 1-63 letters, digits or '-', "
                    "not starting or ending with '-'")
    if name.rsplit(".", 1)[-1].isdigit():
        return "its last label is all digits (an IP address must have 4 valid octets)"
    return None
