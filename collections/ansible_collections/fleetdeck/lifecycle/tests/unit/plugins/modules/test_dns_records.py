"""The dns_records module's own checks, before and without a provider (the real PowerDNS runs in tests/test_dns.py)."""

from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import run_module

ARGS = {"provider": "powerdns", "api_url": "http://127.0.0.1:9", "api_key": "key-1", "zone": "example.com",
        "owner": "acme", "names": ["acme.example.com"]}


def test_an_address_that_is_not_one_is_named_before_the_provider_is_asked():
    rc, result = run_module("dns_records", **ARGS, addresses=["192.0.2.10", "acme.example.com"])
    assert rc == 1
    assert result["msg"] == "addresses: 'acme.example.com' is not an IPv4 or IPv6 address"


def test_a_provider_that_does_not_answer_is_named_and_the_key_is_not_shown():
    rc, result = run_module("dns_records", **ARGS, addresses=["192.0.2.10"])
    assert rc == 1
    assert result["msg"].startswith("zone example.com: no answer from "
                                    "http://127.0.0.1:9/api/v1/servers/localhost/zones/example.com. (")
    assert "key-1" not in str(result)
