#!/usr/bin/python
# Copyright: fleetdeck contributors
# MIT License (see galaxy.yml)

"""Keep one owner's DNS records in a zone in sync through a provider's API."""

from __future__ import annotations

DOCUMENTATION = r"""
module: dns_records
short_description: Keep an instance's DNS records in sync, touching only records it owns
description:
  - Makes the zone O(zone) hold exactly the A/AAAA records of O(names) pointing to O(addresses) for O(owner)
    (O(state=present)), or none of the owner's records (O(state=absent)), through the provider's HTTP API.
  - A name belongs to an owner when the zone holds the TXT record C(_fleetdeck.<name>) with the content
    C("fleetdeck-owner=<owner>"); the module writes that marker with the records and manages only the A and
    AAAA records of names it owns. A record at a listed name that exists without the owner's marker is never
    changed; the module fails naming it.
  - All changes of one call go to the provider as one request it applies all or nothing (PowerDNS - one PATCH
    of the zone; Cloudflare - one batch request), so an error answer leaves the zone as it was.
version_added: "0.1.0"
author:
  - fleetdeck maintainers (@fleetdeck)
options:
  provider:
    description: DNS provider API.
    type: str
    required: true
    choices: [powerdns, cloudflare]
  api_url:
    description:
      - Base URL of the API; for PowerDNS the webserver address (C(http://127.0.0.1:8081)), for Cloudflare
        empty means C(https://api.cloudflare.com/client/v4).
    type: str
    default: ""
  api_key:
    description: PowerDNS API key (C(X-API-Key)) or Cloudflare API token (C(Authorization - Bearer)).
    type: str
    required: true
  server_id:
    description: PowerDNS server id.
    type: str
    default: localhost
  zone:
    description: The zone's name, without the trailing dot.
    type: str
    required: true
  owner:
    description: Who owns the records (the instance's name).
    type: str
    required: true
  names:
    description: The owner's names (absolute, in O(zone)) with O(state=present); ignored with O(state=absent).
    type: list
    elements: str
    default: []
  addresses:
    description: Addresses every name points to; IPv4 ones make its A record, IPv6 ones its AAAA record.
    type: list
    elements: str
    default: []
  ttl:
    description: Time to live of the records, in seconds.
    type: int
    default: 300
  state:
    description:
      - C(present) - the owner's records are exactly those of O(names) and O(addresses).
      - C(absent) - none of the owner's records are left.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description: Seconds to wait for each API answer.
    type: float
    default: 30
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Publish the instance's names
  fleetdeck.lifecycle.dns_records:
    provider: powerdns
    api_url: http://127.0.0.1:8081
    api_key: "{{ vault_dns_api_key }}"
    zone: example.com
    owner: acme
    names: [acme.example.com, api.acme.example.com]
    addresses: [192.0.2.10]
  delegate_to: localhost
"""

RETURN = r"""
changes:
  description: The rrsets set or deleted (deleted ones with no contents), markers included.
  returned: always
  type: list
  elements: dict
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils.dns import DnsError, canonical, plan, provider


def desired(names, addresses, ttl):
    """(name, type) -> (ttl, contents) for every name; ValueError names an address that is not one."""
    by_type = {}
    for address in addresses:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"addresses: {address!r} is not an IPv4 or IPv6 address") from None
        by_type.setdefault("A" if parsed.version == 4 else "AAAA", []).append(str(parsed))
    if names and not by_type:
        raise ValueError("addresses is empty: the names need at least one address")
    return {(canonical(name), rtype): (ttl, sorted(contents)) for name in names for rtype, contents in by_type.items()}


def main():
    module = AnsibleModule(
        argument_spec={
            "provider": {"type": "str", "required": True, "choices": ["powerdns", "cloudflare"]},
            "api_url": {"type": "str", "default": ""},
            "api_key": {"type": "str", "required": True, "no_log": True},
            "server_id": {"type": "str", "default": "localhost"},
            "zone": {"type": "str", "required": True},
            "owner": {"type": "str", "required": True},
            "names": {"type": "list", "elements": "str", "default": []},
            "addresses": {"type": "list", "elements": "str", "default": []},
            "ttl": {"type": "int", "default": 300},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "timeout": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )
    p = module.params
    zone = canonical(p["zone"])
    api = provider(p["provider"], p["api_url"], p["api_key"], p["server_id"], p["timeout"])
    try:
        wanted = desired(p["names"], p["addresses"], p["ttl"]) if p["state"] == "present" else {}
        changes = plan(api.read(zone), wanted, p["owner"], zone)
        if changes and not module.check_mode:
            api.apply(zone, changes)
    except (DnsError, ValueError) as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=bool(changes), changes=[
        {"name": name, "type": rtype, "ttl": ttl, "content": contents} for name, rtype, ttl, contents in changes])


if __name__ == "__main__":
    main()
