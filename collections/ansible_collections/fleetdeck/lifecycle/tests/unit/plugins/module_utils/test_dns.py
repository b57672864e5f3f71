"""DNS sync without a network: the plan (ownership), and the PowerDNS and Cloudflare providers against
request/response shapes recorded from their documented APIs."""

import pytest
from ansible_collections.fleetdeck.lifecycle.plugins.module_utils import dns

ZONE = "example.com"
MARKER = '"fleetdeck-owner=acme"'
CF = "https://api.cloudflare.com/client/v4"
CF_ZONE_ID = "023e105f4ecef8ad9ca31a8372d0c353"


class Recorder:
    """Stands in for dns.http: records each request, answers the next recorded (status, body)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests = []

    def __call__(self, method, url, headers, body=None, what="", timeout=30):
        self.requests.append({"method": method, "url": url, "headers": headers, "body": body})
        return self.answers.pop(0)


@pytest.fixture
def api(monkeypatch):
    def install(*answers):
        recorder = Recorder(*answers)
        monkeypatch.setattr(dns, "http", recorder)
        return recorder
    return install


# --- the plan -------------------------------------------------------------------------------------------------

def test_a_new_name_gets_its_record_and_marker_and_other_records_stay():
    current = {(ZONE, "MX"): (3600, ["10 mail.example.com."])}
    changes = dns.plan(current, {("acme.example.com", "A"): (300, ["192.0.2.10"])}, "acme", ZONE)
    assert changes == [("acme.example.com", "A", 300, ["192.0.2.10"]),
                       ("_fleetdeck.acme.example.com", "TXT", 300, [MARKER])]


def test_records_as_desired_need_no_change():
    current = {("acme.example.com", "A"): (300, ["192.0.2.10"]),
               ("_fleetdeck.acme.example.com", "TXT"): (300, [MARKER])}
    assert dns.plan(current, {("acme.example.com", "A"): (300, ["192.0.2.10"])}, "acme", ZONE) == []


def test_owned_names_no_longer_wanted_and_owned_types_no_longer_wanted_are_removed():
    current = {("acme.example.com", "A"): (300, ["192.0.2.10"]),
               ("acme.example.com", "AAAA"): (300, ["2001:db8::10"]),
               ("acme.example.com", "MX"): (300, ["10 mail.example.com."]),
               ("_fleetdeck.acme.example.com", "TXT"): (300, [MARKER]),
               ("api.acme.example.com", "A"): (300, ["192.0.2.10"]),
               ("_fleetdeck.api.acme.example.com", "TXT"): (300, [MARKER])}
    changes = dns.plan(current, {("acme.example.com", "A"): (300, ["192.0.2.20"])}, "acme", ZONE)
    assert changes == [("acme.example.com", "A", 300, ["192.0.2.20"]),
                       ("acme.example.com", "AAAA", 300, []),
                       ("api.acme.example.com", "A", 300, []),
                       ("_fleetdeck.api.acme.example.com", "TXT", 300, [])]


def test_records_it_does_not_own_are_refused_all_at_once():
    current = {("acme.example.com", "A"): (300, ["203.0.113.1"]),
               ("api.acme.example.com", "A"): (300, ["192.0.2.99"]),
               ("_fleetdeck.api.acme.example.com", "TXT"): (300, ['"fleetdeck-owner=globex"'])}
    desired = {("acme.example.com", "A"): (300, ["192.0.2.10"]), ("api.acme.example.com", "A"): (300, ["192.0.2.10"]),
               ("acme.example.org", "A"): (300, ["192.0.2.10"])}
    with pytest.raises(dns.DnsError) as refused:
        dns.plan(current, desired, "acme", ZONE)
    assert str(refused.value) == (
        "zone example.com: refusing to touch records fleetdeck does not own for acme: acme.example.com A exists "
        "and is not owned by fleetdeck (no _fleetdeck.acme.example.com TXT marker); acme.example.org is not in "
        "zone example.com; api.acme.example.com is owned by globex")


def test_absent_removes_only_the_owners_records():
    current = {("acme.example.com", "A"): (300, ["192.0.2.10"]),
               ("_fleetdeck.acme.example.com", "TXT"): (300, [MARKER]),
               ("globex.example.com", "A"): (300, ["192.0.2.20"]),
               ("_fleetdeck.globex.example.com", "TXT"): (300, ['"fleetdeck-owner=globex"'])}
    assert dns.plan(current, {}, "acme", ZONE) == [("acme.example.com", "A", 300, []),
                                                   ("_fleetdeck.acme.example.com", "TXT", 300, [])]


# --- PowerDNS ---------------------------------------------------------------------------------------------------

PDNS_ZONE = {"id": "example.com.", "name": "example.com.", "kind": "Native", "serial": 2026120101, "rrsets": [
    {"name": "example.com.", "type": "SOA", "ttl": 3600, "comments": [], "records": [
        {"content": "ns1.example.com. hostmaster.example.com. 2026120101 10800 3600 604800 3600", "disabled": False}]},
    {"name": "acme.example.com.", "type": "A", "ttl": 300, "comments": [], "records": [
        {"content": "192.0.2.10", "disabled": False}]},
    {"name": "_fleetdeck.acme.example.com.", "type": "TXT", "ttl": 300, "comments": [], "records": [
        {"content": MARKER, "disabled": False}]},
]}


def test_powerdns_reads_the_zone_and_patches_rrsets_in_one_request(api):
    recorder = api((200, PDNS_ZONE), (204, None))
    provider = dns.provider("powerdns", "http://ns1:8081/", "key-1")
    current = provider.read(ZONE)
    assert current[("acme.example.com", "A")] == (300, ["192.0.2.10"])
    provider.apply(ZONE, [("acme.example.com", "A", 300, ["192.0.2.20"]), ("_fleetdeck.old.example.com", "TXT",
                                                                           300, [])])
    get, patch = recorder.requests
    assert get["method"] == "GET" and get["url"] == "http://ns1:8081/api/v1/servers/localhost/zones/example.com."
    assert get["headers"] == {"X-API-Key": "key-1"}
    assert patch["method"] == "PATCH" and patch["url"] == get["url"]
    assert patch["body"] == {"rrsets": [
        {"name": "acme.example.com.", "type": "A", "changetype": "REPLACE", "ttl": 300,
         "records": [{"content": "192.0.2.20", "disabled": False}]},
        {"name": "_fleetdeck.old.example.com.", "type": "TXT", "changetype": "DELETE"}]}


@pytest.mark.parametrize(("answer", "message"), [
    ((404, "Not Found"), "zone example.com does not exist on the PowerDNS server (Not Found)"),
    ((401, "Unauthorized"), "zone example.com: PowerDNS answered HTTP 401 reading it (Unauthorized)"),
])
def test_powerdns_read_errors_are_clear(api, answer, message):
    api(answer)
    with pytest.raises(dns.DnsError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        dns.provider("powerdns", "http://ns1:8081", "key-1").read(ZONE)


def test_powerdns_5xx_on_the_change_is_an_error_saying_nothing_was_applied(api):
    api((500, {"error": "Backend error: database is locked"}))
    with pytest.raises(dns.DnsError) as failed:
        dns.provider("powerdns", "http://ns1:8081", "key-1").apply(ZONE, [("acme.example.com", "A", 300, ["1.2.3.4"])])
    assert str(failed.value) == ("zone example.com: PowerDNS answered HTTP 500 to the change, which it applies all or "
                                 "nothing (Backend error: database is locked)")


# --- Cloudflare -------------------------------------------------------------------------------------------------

CF_ZONES = {"success": True, "errors": [], "messages": [],
            "result": [{"id": CF_ZONE_ID, "name": "example.com", "status": "active", "paused": False}],
            "result_info": {"page": 1, "per_page": 20, "count": 1, "total_count": 1, "total_pages": 1}}


def cf_record(record_id, name, rtype, content, ttl=300):
    return {"id": record_id, "zone_id": CF_ZONE_ID, "zone_name": ZONE, "name": name, "type": rtype,
            "content": content, "proxiable": rtype in ("A", "AAAA"), "proxied": False, "ttl": ttl, "comment": None,
            "tags": [], "created_on": "2026-11-01T10:00:00.000000Z", "modified_on": "2026-11-01T10:00:00.000000Z"}


def cf_records(records, page=1, total_pages=1):
    return {"success": True, "errors": [], "messages": [], "result": records,
            "result_info": {"page": page, "per_page": 1000, "count": len(records), "total_count": len(records),
                            "total_pages": total_pages}}


CF_BATCH_OK = {"success": True, "errors": [], "messages": [], "result": {"deletes": [], "posts": [], "patches": [],
                                                                         "puts": []}}


def test_cloudflare_reads_every_page_and_sends_the_changes_as_one_batch(api):
    recorder = api((200, CF_ZONES),
                   (200, cf_records([cf_record("r1", "acme.example.com", "A", "192.0.2.10")], 1, 2)),
                   (200, cf_records([cf_record("r2", "_fleetdeck.acme.example.com", "TXT", MARKER),
                                     cf_record("r3", "example.com", "MX", "mail.example.com")], 2, 2)),
                   (200, CF_BATCH_OK))
    provider = dns.provider("cloudflare", "", "token-1")
    current = provider.read(ZONE)
    assert current == {("acme.example.com", "A"): (300, ["192.0.2.10"]),
                       ("_fleetdeck.acme.example.com", "TXT"): (300, [MARKER]),
                       ("example.com", "MX"): (300, ["mail.example.com"])}
    changes = dns.plan(current, {("acme.example.com", "A"): (300, ["192.0.2.20"]),
                                 ("api.acme.example.com", "A"): (300, ["192.0.2.20"])}, "acme", ZONE)
    provider.apply(ZONE, changes)
    zones, page1, page2, batch = recorder.requests
    assert zones["url"] == f"{CF}/zones?name=example.com"
    assert page1["url"] == f"{CF}/zones/{CF_ZONE_ID}/dns_records?per_page=1000&page=1"
    assert page2["url"] == f"{CF}/zones/{CF_ZONE_ID}/dns_records?per_page=1000&page=2"
    assert {r["headers"]["Authorization"] for r in recorder.requests} == {"Bearer token-1"}
    assert batch["method"] == "POST" and batch["url"] == f"{CF}/zones/{CF_ZONE_ID}/dns_records/batch"
    assert batch["body"] == {
        "deletes": [{"id": "r1"}],
        "posts": [{"name": "acme.example.com", "type": "A", "content": "192.0.2.20", "ttl": 300, "proxied": False},
                  {"name": "api.acme.example.com", "type": "A", "content": "192.0.2.20", "ttl": 300, "proxied": False},
                  {"name": "_fleetdeck.api.acme.example.com", "type": "TXT", "content": MARKER, "ttl": 300}]}


def test_cloudflare_missing_zone_is_named(api):
    api((200, {"success": True, "errors": [], "messages": [], "result": [],
               "result_info": {"page": 1, "per_page": 20, "count": 0, "total_count": 0, "total_pages": 0}}))
    with pytest.raises(dns.DnsError, match=r"^zone example\.com does not exist in the Cloudflare account$"):
        dns.provider("cloudflare", "", "token-1").read(ZONE)


def test_cloudflare_errors_carry_its_message(api):
    api((403, {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}], "messages": [],
               "result": None}))
    with pytest.raises(dns.DnsError, match=r"^zone example\.com: Cloudflare answered HTTP 403 \(Authentication error"):
        dns.provider("cloudflare", "", "token-1").read(ZONE)


def test_cloudflare_5xx_on_the_batch_is_an_error_saying_nothing_was_applied(api):
    api((200, CF_ZONES), (200, cf_records([])),
        (502, {"success": False, "errors": [{"code": 1000, "message": "Bad gateway"}], "messages": [], "result": None}))
    provider = dns.provider("cloudflare", "", "token-1")
    provider.read(ZONE)
    with pytest.raises(dns.DnsError) as failed:
        provider.apply(ZONE, [("acme.example.com", "A", 300, ["192.0.2.10"])])
    assert str(failed.value) == ("zone example.com: Cloudflare answered HTTP 502 to the change batch, which it "
                                 "applies all or nothing (Bad gateway)")
