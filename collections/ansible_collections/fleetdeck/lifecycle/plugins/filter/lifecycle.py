# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)
"""Filters for rolling upgrades, releases and status reporting: batch_plan, release_rings, redact,
release_summary, hmac_sha256, sha256_for."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

from ansible.errors import AnsibleFilterError
from ansible.utils.helpers import pct_to_int

MASK = "********"


def batch_plan(hosts_count, serial=None):
    """Batch sizes Ansible uses for ``hosts_count`` hosts and a play's ``serial`` value.

    Mirrors PlaybookExecutor._get_serialized_batches: percentages are of the total host count and
    at least 1, a value <= 0 (or no serial) means one batch with every host, and the last list item
    repeats until the hosts run out.
    """
    try:
        total = int(hosts_count)
    except (TypeError, ValueError) as e:
        raise AnsibleFilterError(f"batch_plan: host count must be an integer, got {hosts_count!r}") from e
    if serial is None or serial == "":
        items = []
    elif isinstance(serial, (list, tuple)):
        items = list(serial)
    else:
        items = [serial]
    items = items or [-1]

    plan = []
    remaining = total
    while remaining > 0:
        item = items[min(len(plan), len(items) - 1)]
        try:
            size = pct_to_int(item, total)
        except (TypeError, ValueError) as e:
            raise AnsibleFilterError(f"batch_plan: invalid serial value {item!r}") from e
        size = remaining if size <= 0 else min(size, remaining)
        plan.append(size)
        remaining -= size
    return plan


RING_SELECTORS = ("group", "tier", "labels")
_RING_NAME = re.compile(r"^[a-z0-9_]+$")


def _ring_definitions(rings):
    """The ring definitions of ``rollout_rings``, checked: a name and at least one known selector each."""
    if rings is None:
        return []
    if not isinstance(rings, (list, tuple)):
        raise AnsibleFilterError(f"rollout_rings: expected a list of rings, got {type(rings).__name__}")
    names = {"canary", "rest"}
    for index, ring in enumerate(rings):
        where = f"rollout_rings[{index}]"
        if not isinstance(ring, Mapping):
            raise AnsibleFilterError(f"{where}: expected a mapping like {{name: early, tier: 2}}, got {ring!r}")
        name = ring.get("name")
        if not isinstance(name, str) or not _RING_NAME.match(name):
            raise AnsibleFilterError(f"{where}: name: {name!r} is not a ring name (lowercase letters, digits, _)")
        if name in names:
            raise AnsibleFilterError(f"{where}: name: {name} is used twice or reserved (canary and rest are)")
        names.add(name)
        unknown = sorted(set(ring) - {"name", *RING_SELECTORS})
        if unknown:
            raise AnsibleFilterError(f"{where} ({name}): unknown key {', '.join(unknown)} "
                                     f"(a ring selects by {', '.join(RING_SELECTORS)})")
        if not any(key in ring for key in RING_SELECTORS):
            raise AnsibleFilterError(f"{where} ({name}): selects nothing; give {', '.join(RING_SELECTORS)}")
        if "labels" in ring and not (isinstance(ring["labels"], Mapping) and ring["labels"]):
            raise AnsibleFilterError(f"{where} ({name}): labels: expected a mapping of label to value")
    return rings


def _in_ring(ring, host, variables):
    """Whether the host's variables match every selector of the ring."""
    if "group" in ring and ring["group"] not in (variables.get("group_names") or []):
        return False
    if "tier" in ring and str(variables.get("fleetdeck_tier")) != str(ring["tier"]):
        return False
    if "labels" in ring:
        labels = variables.get("fleetdeck_labels") or {}
        if not isinstance(labels, Mapping):
            raise AnsibleFilterError(f"{host}: fleetdeck_labels: expected a mapping of label to value, got {labels!r}")
        return all(str(labels.get(key)) == str(value) for key, value in ring["labels"].items())
    return True


def release_rings(hosts, hostvars, rings=None, batches=None, canary_group="canary"):
    """The release rings of a canary upgrade, in order, and the play's host order and serial list for them.

    ``hosts`` (in play order) go to the first ring that selects them: the ``canary_group`` members to
    ``canary``, then each ring of ``rings`` (``{name, group, tier, labels}``; every given selector must
    match), the others to ``rest``. Canary and named rings are one batch each and soak; ``rest`` is split
    into batches by ``batches`` (a ``serial`` value, see batch_plan). Empty rings are left out.
    """
    rings = _ring_definitions(rings)
    hosts = list(hosts or [])
    members = {"canary": [], "rest": []} | {ring["name"]: [] for ring in rings}
    for host in hosts:
        variables = hostvars[host]
        if canary_group in (variables.get("group_names") or []):
            members["canary"].append(host)
            continue
        ring = next((ring["name"] for ring in rings if _in_ring(ring, host, variables)), "rest")
        members[ring].append(host)
    order = ["canary"] + [ring["name"] for ring in rings]
    plan = [{"name": name, "hosts": members[name], "soak": True} for name in order if members[name]]
    serial = [len(ring["hosts"]) for ring in plan]
    if members["rest"]:
        plan.append({"name": "rest", "hosts": members["rest"], "soak": False})
        serial += batch_plan(len(members["rest"]), batches)
    return {"rings": plan, "hosts": [host for ring in plan for host in ring["hosts"]], "serial": serial}


def _redact_text(text, needles):
    for needle in needles:
        text = text.replace(needle, MASK)
    return text


def _redact(data, needles):
    if isinstance(data, str):
        return _redact_text(data, needles)
    if isinstance(data, Mapping):
        return {key: _redact(value, needles) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_redact(item, needles) for item in data]
    return data


def redact(data, secrets):
    """Replace each non-empty secret, and its URL-encoded forms, by ``********`` in strings, dict values
    and list items, recursively. Dict keys and non-string scalars are left as they are."""
    if isinstance(secrets, (str, int, float)):
        secrets = [secrets]
    needles = set()
    for secret in secrets or []:
        if secret is None or str(secret) == "":
            continue
        secret = str(secret)
        needles.update((secret, quote(secret, safe=""), quote_plus(secret, safe="")))
    # Longest first, so a secret containing another secret is masked as a whole.
    return _redact(data, sorted(needles, key=len, reverse=True))


def release_summary(mapping, key=None):
    """Rows ``{instance, current, previous, last_change}`` sorted by instance.

    ``mapping`` maps an instance to its release fact ``{current, previous, history: [{version, at}]}``;
    with ``key`` it is hostvars-like and the release fact is read from ``mapping[instance][key]``.
    ``last_change`` is the latest ``at`` in the history (ISO 8601 timestamps sort as text).
    """
    if not isinstance(mapping, Mapping):
        raise AnsibleFilterError(f"release_summary: expected a mapping, got {type(mapping).__name__}")
    rows = []
    for instance in sorted(mapping):
        fact = mapping[instance]
        if key is not None:
            fact = fact.get(key) if isinstance(fact, Mapping) else None
        if not isinstance(fact, Mapping):
            fact = {}
        stamps = [str(entry["at"]) for entry in fact.get("history") or []
                  if isinstance(entry, Mapping) and entry.get("at")]
        rows.append({
            "instance": instance,
            "current": fact.get("current"),
            "previous": fact.get("previous"),
            "last_change": max(stamps, default=None),
        })
    return rows


def hmac_sha256(message, key):
    """Hex HMAC-SHA256 of a message, for signing outbound webhooks."""
    if not key:
        raise AnsibleFilterError("hmac_sha256: the key is empty")
    return hmac.new(str(key).encode(), str(message).encode(), hashlib.sha256).hexdigest()


# `sha256sum` lines: "<hex>  <name>" (text) or "<hex> *<name>" (binary); `sha256sum --tag`: "SHA256 (<name>) = <hex>".
_SHA256SUM_LINE = re.compile(r"^(?P<sum>[0-9a-fA-F]{64}) [ *](?P<name>.+)$"
                             r"|^SHA256 \((?P<tname>.+)\) = (?P<tsum>[0-9a-fA-F]{64})$")


def sha256_for(text, artifact, source="the checksum file"):
    """The sha256 that a ``sha256sum``-style checksum file gives for ``artifact``, as ``sha256sum -c`` reads it.

    The file must name the artifact: a bare hash, or a file naming only other files, is refused, so a
    checksum file that belongs to another artifact can never vouch for this one.
    """
    entries = {}
    for line in str(text).splitlines():
        match = _SHA256SUM_LINE.match(line.rstrip("\r"))
        if match:
            name = (match["name"] or match["tname"]).removeprefix("./")
            entries.setdefault(name, set()).add((match["sum"] or match["tsum"]).lower())
    if not entries:
        raise AnsibleFilterError(f"{source}: no properly formatted SHA256 checksum line ('<sha256>  <file name>')")
    if artifact not in entries:
        raise AnsibleFilterError(f"{source} is for {', '.join(sorted(entries))}, not for {artifact}; "
                                 "refusing to use it")
    if len(entries[artifact]) > 1:
        raise AnsibleFilterError(f"{source} gives {artifact} {len(entries[artifact])} different sha256 sums")
    return entries[artifact].pop()


class FilterModule:
    def filters(self):
        return {
            "batch_plan": batch_plan,
            "release_rings": release_rings,
            "redact": redact,
            "release_summary": release_summary,
            "hmac_sha256": hmac_sha256,
            "sha256_for": sha256_for,
        }
