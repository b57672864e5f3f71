"""The console through Flask's test client, without test hosts: sign-in, the session cookie's flags, idle
expiry, CSRF on every form, scopes deciding buttons and actions, security headers, field errors of the
new-instance form, and no secret on any page. In a real browser on real hosts: test_console_browser.py."""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest
from werkzeug.security import generate_password_hash

from tests.runner.service import in_process, make_local_env, wait_until

PASSWORDS = {"ops": secrets.token_urlsafe(16), "viewer": secrets.token_urlsafe(16)}
SCOPES = {"ops": ["read", "operate", "provision"], "viewer": ["read"]}
HTTPS = "https://localhost"


@pytest.fixture(scope="module")
def env(runner_store, tmp_path_factory):
    runner_env = make_local_env(tmp_path_factory.mktemp("console"), runner_store)
    runner_env.env["FLEETDECK_CONSOLE_USERS"] = json.dumps([
        {"name": n, "password_hash": generate_password_hash(p, method="scrypt"), "scopes": SCOPES[n]}
        for n, p in PASSWORDS.items()])
    with in_process(runner_env):
        yield runner_env


def signed_in(app, name: str):
    client = app.test_client()
    page = client.get("/ui/sign-in", base_url=HTTPS)
    response = client.post("/ui/sign-in", base_url=HTTPS, data={
        "name": name, "password": PASSWORDS[name], "csrf_token": csrf(page.get_data(as_text=True))})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_sign_in_sets_a_strict_cookie_and_pages_need_it(app):
    client = app.test_client()
    assert client.get("/ui/", base_url=HTTPS).headers["Location"].startswith("/ui/sign-in")
    page = client.get("/ui/sign-in", base_url=HTTPS)
    wrong = client.post("/ui/sign-in", base_url=HTTPS,
                        data={"name": "ops", "password": "not-it", "csrf_token": csrf(page.get_data(as_text=True))})
    assert wrong.status_code == 401 and "wrong password" in wrong.get_data(as_text=True)
    client = signed_in(app, "ops")
    cookie = client.get_cookie("fleetdeck_console", domain="localhost", path="/ui")
    assert cookie.secure and cookie.http_only and cookie.same_site == "Strict"
    fleet = client.get("/ui/", base_url=HTTPS)
    assert fleet.status_code == 200 and "local-1" in fleet.get_data(as_text=True)


def test_every_page_has_a_strict_csp_and_denies_frames(app):
    client = signed_in(app, "ops")
    for path in ("/ui/sign-in", "/ui/", "/ui/instances/local-1", "/ui/new"):
        response = client.get(path, base_url=HTTPS)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, path
        assert response.headers["X-Frame-Options"] == "DENY" and response.headers["Cache-Control"] == "no-store"
        html = response.get_data(as_text=True)
        assert "<script>" not in html and not re.search(r"\son[a-z]+=", html), "no inline script (CSP)"


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(app, env):
    client = signed_in(app, "ops")
    main = env.inventory / "host_vars" / "local-1" / "main.yml"
    before = main.read_text()
    for token in (None, "forged"):
        data = {"tier": "1", "hold": "on"} | ({"csrf_token": token} if token else {})
        refused = client.post("/ui/instances/local-1/settings", base_url=HTTPS, data=data)
        assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "csrf_failed"
    assert main.read_text() == before
    signed_out = client.post("/ui/sign-out", base_url=HTTPS, data={})
    assert signed_out.status_code == 400, "signing out is a form too"


def test_an_idle_session_expires(app):
    client = signed_in(app, "ops")
    with client.session_transaction(base_url=HTTPS) as session:
        session["seen"] = time.time() - app.extensions["fleetdeck"].settings.console_idle - 1
    assert client.get("/ui/", base_url=HTTPS).headers["Location"].startswith("/ui/sign-in")
    page = client.get("/ui/instances/local-1", base_url=HTTPS)
    assert page.status_code == 302, "the expired session was cleared, not renewed"


def test_scopes_decide_the_buttons_and_the_actions(app, env):
    viewer = signed_in(app, "viewer")
    page = viewer.get("/ui/instances/local-1", base_url=HTTPS).get_data(as_text=True)
    assert 'id="actions"' not in page and 'id="decommission"' not in page and 'id="new-instance"' not in page
    token = csrf(page)
    refused = viewer.post("/ui/instances/local-1/decommission", base_url=HTTPS, data={"csrf_token": token})
    assert refused.status_code == 403
    refused = viewer.post("/ui/instances/local-1/runs", base_url=HTTPS,
                          data={"csrf_token": token, "action": "configure"})
    assert refused.status_code == 403
    assert viewer.get("/ui/new", base_url=HTTPS).status_code == 403
    ops_page = signed_in(app, "ops").get("/ui/instances/local-1", base_url=HTTPS).get_data(as_text=True)
    assert 'id="decommission"' in ops_page and 'id="settings"' in ops_page


def test_settings_form_writes_the_hold_and_shows_the_diff(app, env):
    client = signed_in(app, "ops")
    token = csrf(client.get("/ui/instances/local-2", base_url=HTTPS).get_data(as_text=True))
    saved = client.post("/ui/instances/local-2/settings", base_url=HTTPS, data={
        "csrf_token": token, "tier": "1", "features": "", "hold": "on", "hold_reason": "audit week"})
    assert saved.status_code == 302
    page = client.get("/ui/instances/local-2", base_url=HTTPS).get_data(as_text=True)
    assert "+rollout_hold: true" in page and "held: audit week" in page


def test_new_instance_form_shows_errors_next_to_the_fields(app, env):
    client = signed_in(app, "ops")
    token = csrf(client.get("/ui/new", base_url=HTTPS).get_data(as_text=True))
    hosts = (env.inventory / "hosts.yml").read_text()
    answer = client.post("/ui/new", base_url=HTTPS, data={
        "csrf_token": token, "name": "Bad Name", "domain": "nodot", "address": "10.0.0.1", "tier": "1"})
    page = answer.get_data(as_text=True)
    # The local test catalog has no deploy action: the form says so rather than writing anything.
    assert answer.status_code == 422 and "no deploy action" in page
    assert (env.inventory / "hosts.yml").read_text() == hosts


def test_run_page_streams_the_log_and_previews_offer_to_apply(app, env):
    client = signed_in(app, "ops")
    run = client.post("/v1/runs", json={"action": "ping", "target": "local-3", "check": True},
                      headers=env.auth("admin")).get_json()
    wait_until(lambda: client.get(f"/v1/runs/{run['id']}", headers=env.auth()).get_json()["status"] == "successful")
    page = client.get(f"/ui/runs/{run['id']}", base_url=HTTPS).get_data(as_text=True)
    assert 'id="apply"' in page and "local-3" in page
    stream = client.get(f"/ui/runs/{run['id']}/events", base_url=HTTPS, headers={"Accept": "text/event-stream"})
    text = stream.get_data(as_text=True)
    assert "event: runner_on_skipped" in text and "event: end" in text  # a command is skipped in check mode
    resumed = client.get(f"/ui/runs/{run['id']}/events", base_url=HTTPS,
                         headers={"Accept": "text/event-stream", "Last-Event-ID": "2"}).get_data(as_text=True)
    assert "id: 1\n" not in resumed and "id: 3\n" in resumed
    assert app.test_client().get(f"/ui/runs/{run['id']}/events", base_url=HTTPS).status_code == 401


def test_no_secret_on_any_page(app, env):
    client = signed_in(app, "ops")
    client.post("/v1/runs", json={"action": "ping", "target": "testfleet"}, headers=env.auth("admin"))
    runs = client.get("/v1/runs", headers=env.auth()).get_json()["runs"]
    wait_until(lambda: all(client.get(f"/v1/runs/{r['id']}", headers=env.auth()).get_json()["status"]
                           not in ("queued", "running") for r in runs))
    pages = ["/ui/sign-in", "/ui/", "/ui/new", *(f"/ui/instances/{h}" for h in env.secrets),
             *(f"/ui/runs/{r['id']}" for r in runs)]
    bodies = [client.get(p, base_url=HTTPS).get_data() for p in pages]
    bodies += [client.get(f"/ui/runs/{r['id']}/events", base_url=HTTPS).get_data() for r in runs]
    values = [*env.secrets.values(), *env.tokens.values(), *PASSWORDS.values(),
              env.password_file.read_text()]
    assert len(bodies) >= 8
    for value in values:
        assert not any(value.encode() in body for body in bodies)


def test_fleet_and_instance_pages_show_the_probe_the_matrix_and_the_backups(app, env):
    client = signed_in(app, "ops")
    page = client.get("/ui/", base_url=HTTPS).get_data(as_text=True)
    # The local hosts have no pinned host key: the probe says so, in the health cell, with its age.
    assert "known_hosts does not exist" in page and "unreachable" in page and " ago</small>" in page
    assert 'id="versions"' in page and 'id="no-rollout"' in page and 'id="canary"' in page
    instance = client.get("/ui/instances/local-1", base_url=HTTPS).get_data(as_text=True)
    assert 'id="health"' in instance and 'id="running-version"' in instance
    assert 'id="backups"' in instance and "none in the controller" in instance and 'id="release-history"' in instance


def test_fleet_page_shows_the_last_drift_and_the_instance_page_links_the_compliance_report(app, env):
    client = signed_in(app, "viewer")
    assert client.get("/ui/instances/local-2/compliance", base_url=HTTPS).get_data(as_text=True).count(
        'id="no-report"') == 1
    for action in ("drift", "compliance"):
        run = client.post("/v1/runs", json={"action": action, "target": "testfleet"},
                          headers=env.auth("admin")).get_json()
        wait_until(lambda r=run: client.get(f"/v1/runs/{r['id']}", headers=env.auth()).get_json()["status"]
                   == "successful")
    fleet = client.get("/ui/", base_url=HTTPS).get_data(as_text=True)
    cells = dict(re.findall(r'data-instance="([^"]+)">.*?<td class="drift">(.*?)</td>', fleet, re.S))
    assert ">1 key(s)</a>" in cells["local-1"] and "REFAPP_LOG_LEVEL changed" in cells["local-1"]
    assert ">none</a>" in cells["local-2"]
    assert client.get("/v1/instances/local-1", headers=env.auth()).get_json()["drift"]["items"] == [
        {"where": "/etc/refapp/refapp.env", "key": "REFAPP_LOG_LEVEL", "change": "changed"}]
    instance = client.get("/ui/instances/local-2", base_url=HTTPS).get_data(as_text=True)
    assert 'href="/ui/instances/local-2/compliance" id="compliance-link"' in instance
    report = client.get("/ui/instances/local-2/compliance", base_url=HTTPS).get_data(as_text=True)
    rows = re.findall(r'<tr class="result-(\w+)"><td>(.*?)</td><td>.*?</td><td>(.*?)</td></tr>', report)
    assert rows == [("fail", "firewall (UFW)", "inactive"), ("pass", "last backup", "2.0 h ago (limit 26 h)"),
                    ("warn", "leaky", "********")]
    assert env.secrets["local-2"] not in report
    assert client.get("/v1/instances/local-2/compliance", headers=env.auth()).get_json()["compliance"]["checks"][0] \
        == {"check": "firewall (UFW)", "status": "fail", "reason": "inactive"}
