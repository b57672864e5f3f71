# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""DNS records kept in sync through a provider's HTTP API, touching only the records fleetdeck owns.

Records are handled as rrsets: (name, type) -> (ttl, sorted contents); names are lower-case, absolute and
without the trailing dot. A name is owned by an owner (an instance) when the zone holds the TXT record
C(_fleetdeck.<name>) with the content C("fleetdeck-owner=<owner>"); fleetdeck then manages that name's
A and AAAA records and nothing else. A provider reads a zone's rrsets and applies a list of changes in one
request the provider executes all or nothing (PowerDNS: one PATCH of the zone, Cloudflare: one batch).
"""

from __future__ import annotations

import json
import urllib.error
from urllib.parse import quote

from ansible.module_utils.urls import open_url

MARKER_PREFIX = "_fleetdeck."
MARKER_TEXT = "fleetdeck-owner="
MANAGED_TYPES = ("A", "AAAA")
MARKER_TTL = 300
ERROR_BODY_LIMIT = 300


class DnsError(Exception):
    """A request that cannot be carried out; the message says which zone, record or answer."""


def canonical(name):
    return name.rstrip(".").lower()


def marker_name(name):
    return MARKER_PREFIX + name


def marker_content(owner):
    return f'"{MARKER_TEXT}{owner}"'


def owner_of(rrsets, name):
    """The owner a name's marker names, or None."""
    marker = rrsets.get((marker_name(name), "TXT"))
    for content in marker[1] if marker else ():
        text = content.strip('"')
        if text.startswith(MARKER_TEXT):
            return text[len(MARKER_TEXT):]
    return None


def plan(rrsets, desired, owner, zone):
    """The changes that make the zone hold DESIRED for OWNER: [(name, type, ttl, contents)], empty contents
    meaning delete. DESIRED maps (name, type) -> (ttl, contents); the owner's names not in it are removed.

    Raises DnsError naming every record it would have to take from someone else, before anything changes.
    """
    conflicts = []
    for name, rtype in sorted(desired):
        if not (name == zone or name.endswith("." + zone)):
            conflicts.append(f"{name} is not in zone {zone}")
            continue
        holder = owner_of(rrsets, name)
        if holder is None and (name, rtype) in rrsets:
            conflicts.append(f"{name} {rtype} exists and is not owned by fleetdeck (no {marker_name(name)} TXT "
                             "marker)")
        elif holder not in (None, owner):
            conflicts.append(f"{name} is owned by {holder}")
    if conflicts:
        raise DnsError(f"zone {zone}: refusing to touch records fleetdeck does not own for {owner}: "
                       + "; ".join(conflicts))

    changes = []
    wanted_names = {key[0] for key in desired}
    owned_names = {name[len(MARKER_PREFIX):] for name, rtype in rrsets
                   if rtype == "TXT" and name.startswith(MARKER_PREFIX)
                   and owner_of(rrsets, name[len(MARKER_PREFIX):]) == owner}
    for name in sorted(wanted_names):
        for rtype in MANAGED_TYPES:
            want = desired.get((name, rtype))
            have = rrsets.get((name, rtype))
            if want and (not have or have[0] != want[0] or have[1] != sorted(want[1])):
                changes.append((name, rtype, want[0], sorted(want[1])))
            elif not want and have and name in owned_names:
                changes.append((name, rtype, have[0], []))
        if name not in owned_names:
            changes.append((marker_name(name), "TXT", MARKER_TTL, [marker_content(owner)]))
    for name in sorted(owned_names - wanted_names):
        changes += [(name, rtype, rrsets[(name, rtype)][0], []) for rtype in MANAGED_TYPES if (name, rtype) in rrsets]
        changes.append((marker_name(name), "TXT", MARKER_TTL, []))
    return changes


def http(method, url, headers, body=None, what="", timeout=30):
    """JSON request: (status, decoded body or None). HTTP errors and no answer raise DnsError naming WHAT."""
    data = json.dumps(body).encode() if body is not None else None
    try:
        with open_url(url, method=method, data=data, timeout=timeout, follow_redirects="none",
                      headers={"Accept": "application/json", "Content-Type": "application/json", **headers}) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw.strip() else None)
    except urllib.error.HTTPError as e:
        try:
            raw = e.read()
        except OSError:
            raw = b""
        return e.code, _decode(raw)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DnsError(f"{what}: no answer from {url.split('?')[0]} ({getattr(e, 'reason', e)})") from None


def _decode(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")[:ERROR_BODY_LIMIT]


def describe(body):
    """The provider's own words for an error answer."""
    if isinstance(body, dict):
        if body.get("error"):
            return str(body["error"])[:ERROR_BODY_LIMIT]
        errors = body.get("errors") or []
        return "; ".join(str(e.get("message", e)) for e in errors)[:ERROR_BODY_LIMIT] or "no reason given"
    return str(body or "no reason given")[:ERROR_BODY_LIMIT]


class PowerDNS:
    """The PowerDNS Authoritative HTTP API (/api/v1), X-API-Key authentication."""

    name = "powerdns"

    def __init__(self, api_url, api_key, server_id="localhost", timeout=30):
        self.base = api_url.rstrip("/") + f"/api/v1/servers/{quote(server_id, safe='')}"
        self.headers = {"X-API-Key": api_key}
        self.timeout = timeout

    def _zone_url(self, zone):
        return f"{self.base}/zones/{quote(zone + '.', safe='')}"

    def read(self, zone):
        status, body = http("GET", self._zone_url(zone), self.headers, what=f"zone {zone}", timeout=self.timeout)
        if status in (404, 422):
            raise DnsError(f"zone {zone} does not exist on the PowerDNS server ({describe(body)})")
        if status != 200:
            raise DnsError(f"zone {zone}: PowerDNS answered HTTP {status} reading it ({describe(body)})")
        return {(canonical(r["name"]), r["type"]): (r["ttl"], sorted(x["content"] for x in r["records"]))
                for r in body.get("rrsets", []) if r.get("records")}

    def apply(self, zone, changes):
        rrsets = []
        for name, rtype, ttl, contents in changes:
            rrset = {"name": name + ".", "type": rtype}
            if contents:
                rrset.update(changetype="REPLACE", ttl=ttl,
                             records=[{"content": c, "disabled": False} for c in contents])
            else:
                rrset["changetype"] = "DELETE"
            rrsets.append(rrset)
        status, body = http("PATCH", self._zone_url(zone), self.headers, {"rrsets": rrsets}, what=f"zone {zone}",
                            timeout=self.timeout)
        if status not in (200, 204):
            raise DnsError(f"zone {zone}: PowerDNS answered HTTP {status} to the change, which it applies all or "
                           f"nothing ({describe(body)})")


class Cloudflare:
    """The Cloudflare v4 API: zones looked up by name, records changed through one atomic batch request."""

    name = "cloudflare"
    PAGE = 1000

    def __init__(self, api_url, api_key, timeout=30):
        self.base = (api_url or "https://api.cloudflare.com/client/v4").rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout = timeout
        self.ids = {}  # (name, type) -> {content: record id}, from the last read
        self.zone_id = None

    def _get(self, path, what):
        status, body = http("GET", self.base + path, self.headers, what=what, timeout=self.timeout)
        if status != 200 or not isinstance(body, dict) or not body.get("success"):
            raise DnsError(f"{what}: Cloudflare answered HTTP {status} ({describe(body)})")
        return body

    def read(self, zone):
        found = self._get(f"/zones?name={quote(zone)}", f"zone {zone}")["result"]
        if not found:
            raise DnsError(f"zone {zone} does not exist in the Cloudflare account")
        self.zone_id = found[0]["id"]
        rrsets, self.ids, page = {}, {}, 1
        while True:
            body = self._get(f"/zones/{self.zone_id}/dns_records?per_page={self.PAGE}&page={page}", f"zone {zone}")
            for record in body["result"]:
                key = (canonical(record["name"]), record["type"])
                ttl, contents = rrsets.get(key, (record["ttl"], []))
                rrsets[key] = (ttl, sorted([*contents, record["content"]]))
                self.ids.setdefault(key, {})[record["content"]] = record["id"]
            if page >= body.get("result_info", {}).get("total_pages", 1):
                return rrsets
            page += 1

    def apply(self, zone, changes):
        deletes, posts = [], []
        for name, rtype, ttl, contents in changes:
            deletes += [{"id": record_id} for record_id in self.ids.get((name, rtype), {}).values()]
            posts += [{"name": name, "type": rtype, "content": c, "ttl": ttl, **({"proxied": False}
                       if rtype in MANAGED_TYPES else {})} for c in contents]
        status, body = http("POST", f"{self.base}/zones/{self.zone_id}/dns_records/batch", self.headers,
                            {"deletes": deletes, "posts": posts}, what=f"zone {zone}", timeout=self.timeout)
        if status != 200 or not isinstance(body, dict) or not body.get("success"):
            raise DnsError(f"zone {zone}: Cloudflare answered HTTP {status} to the change batch, which it applies "
                           f"all or nothing ({describe(body)})")


def provider(name, api_url, api_key, server_id="localhost", timeout=30):
    if name == "powerdns":
        return PowerDNS(api_url, api_key, server_id, timeout)
    return Cloudflare(api_url, api_key, timeout)
