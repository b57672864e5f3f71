"""Provisioning on a real test host through the real runner (gunicorn), driven and watched in a real browser
(Debian's chromium through chromium-driver and selenium): create an instance with the console's new-instance
form (bad input first: field errors next to the fields, nothing written), watch its deploy log live to the end,
see its probed health and running version on the fleet page, preview then apply a configure, upgrade it as the
canary and watch the canary view and the version matrix, hold it, decommission it (final backup, app stopped and
disabled, out of the inventory, vault archived encrypted); then create it again over the API with an
Idempotency-Key (replayed, a different body refused). A form without its CSRF token is refused. Screenshots of
each page go to docs/console/."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
import yaml
from fleetdeck import vault
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.security import generate_password_hash

from tests.playbook import REPO
from tests.refapp.build import build
from tests.runner.service import Server, free_port, wait_until

FLEET_SIZE = 1
pytestmark = pytest.mark.fleet
SHOTS = REPO / "docs" / "console"
PASSWORD = secrets.token_urlsafe(18)
NAME = "web1"


class ConsoleEnv:
    """What tests.runner.service.Server needs, for an environment that starts with no instance."""

    def __init__(self, fleet, base: Path):
        self.dir = base
        self.inventory = base / "inventory" / "prod"
        self.backups = base / "backups"
        dist = base / "dist"
        build(dist, None)
        (self.inventory / "group_vars").parent.mkdir(parents=True)
        shutil.copytree(REPO / "inventory" / "example" / "group_vars", self.inventory / "group_vars")
        overrides = yaml.safe_load((REPO / "tests/fleet_overrides.yml").read_text())
        # The OS baseline has its own tests (test_deploy.py); here only the app is deployed, to keep this short.
        baseline_off = {f"common_{part}_enabled": False for part in (
            "deploy_user", "packages", "firewall", "fail2ban", "unattended_upgrades", "ssh_hardening")}
        (self.inventory / "group_vars/all/test.yml").write_text(yaml.safe_dump(
            {**overrides, **baseline_off, "app_artifact_controller_dir": str(dist), "app_artifact_base_url": ""}))
        (self.inventory / "hosts.yml").write_text("all: {}\n")
        self.password_file = base / "vault-pass"
        vault.bootstrap(self.password_file)
        self.tokens = {"admin": secrets.token_urlsafe(32)}
        users = [{"name": "ops", "password_hash": generate_password_hash(PASSWORD),
                  "scopes": ["read", "operate", "provision"]}]
        self.env = {**fleet.ansible_env(), "FLEETDECK_VAULT_PASSWORD_FILE": str(self.password_file),
                    "FLEETDECK_AUDIT_LOG": str(base / "audit.log"), "FLEETDECK_BACKUP_STORE": str(self.backups),
                    "FLEETDECK_RUNNER_TOKENS": json.dumps([{"name": "hub", "token": self.tokens["admin"],
                                                            "scopes": ["admin"]}]),
                    "FLEETDECK_CONSOLE_USERS": json.dumps(users),
                    "FLEETDECK_PROJECT_DIR": str(REPO), "FLEETDECK_INVENTORY": str(self.inventory),
                    "FLEETDECK_RUNNER_DATA_DIR": str(base / "data")}


@pytest.fixture(scope="module")
def server(fleet, tmp_path_factory):
    server = Server(ConsoleEnv(fleet, tmp_path_factory.mktemp("console")), free_port())
    server.base = server.base.replace("127.0.0.1", "localhost")  # a secure context for the Secure cookie
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=ChromeService(executable_path="/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


# While a page reloads, Chrome answers a query on it with a stale element or, between the two documents, an
# "unhandled inspector error"; both are WebDriverExceptions, which waits across a reload retry.
RELOADING = WebDriverException


def shot(browser, name: str, whole: bool = False) -> None:
    """The window as it is, or (`whole`) the whole page: the window is made as tall as the page for it."""
    SHOTS.mkdir(exist_ok=True)
    size = browser.get_window_size()
    if whole:
        browser.set_window_size(size["width"], browser.execute_script("return document.body.scrollHeight") + 150)
    browser.save_screenshot(str(SHOTS / f"{name}.png"))
    browser.set_window_size(size["width"], size["height"])


def finished_run(browser, timeout: float) -> str:
    """Wait on a run page until its live log has ended; the run's final status."""
    WebDriverWait(browser, timeout, ignored_exceptions=RELOADING).until(
        lambda b: b.find_element(By.ID, "log").get_attribute("data-finished") == "yes")
    return browser.find_element(By.ID, "status").text


def confirm(browser, expected: str) -> None:
    alert = WebDriverWait(browser, 5).until(expected_conditions.alert_is_present())
    assert expected in alert.text, alert.text
    alert.accept()


def fill(browser, **fields: str) -> None:
    for field, value in fields.items():
        box = browser.find_element(By.ID, f"field-{field}")
        box.clear()
        box.send_keys(value)


def heading(browser, starts: str, timeout: float = 60) -> None:
    """Wait for the page a click leads to: the old page's elements go stale meanwhile."""
    WebDriverWait(browser, timeout, ignored_exceptions=RELOADING).until(
        lambda b: b.find_element(By.TAG_NAME, "h1").text.startswith(starts))


def eventually(browser, predicate, timeout: float = 60) -> None:
    """Reload the page until `predicate` holds (a probe the page did not wait for shows on a later load)."""
    def holds(b) -> bool:
        try:
            if predicate(b):
                return True
        except RELOADING:  # a missing element included
            pass
        b.refresh()
        return False

    WebDriverWait(browser, timeout, poll_frequency=2).until(holds)


def row(browser, table: str, name: str):
    return browser.find_element(By.CSS_SELECTOR, f'#{table} tr[data-instance="{name}"]')


def test_create_through_the_form_and_watch_the_deploy_live(server, browser, fleet):
    browser.get(f"{server.base}/ui/")
    assert "/ui/sign-in" in browser.current_url
    shot(browser, "sign-in")
    browser.find_element(By.ID, "name").send_keys("ops")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    assert "No instances" in browser.find_element(By.ID, "fleet").text

    hosts = (server.env.inventory / "hosts.yml").read_text()
    browser.find_element(By.ID, "new-instance").click()
    fill(browser, name="Web 1", domain="nodot", address="10.0.0.999")
    browser.find_element(By.ID, "create").click()
    for field, words in (("name", "lowercase letter"), ("domain", "single label"),
                         ("address", "neither an IPv4/IPv6")):
        error = browser.find_element(By.ID, f"error-{field}")
        assert words in error.text, error.text
        # next to its field: the element right before the message is the field's own label
        label = error.find_element(By.XPATH, "preceding-sibling::*[1]")
        assert label.find_element(By.ID, f"field-{field}")
    assert browser.find_element(By.ID, "field-domain").get_attribute("value") == "nodot"
    shot(browser, "new-instance")
    assert (server.env.inventory / "hosts.yml").read_text() == hosts

    fill(browser, name=NAME, domain="web1.example.test", address=fleet.hosts[0].address, features="beta")
    browser.find_element(By.ID, "field-canary").click()
    browser.find_element(By.ID, "create").click()
    heading(browser, f"deploy on {NAME}")  # the run page
    WebDriverWait(browser, 120).until(lambda b: "TASK [" in b.find_element(By.ID, "log").text)
    assert browser.find_element(By.ID, "status").text in ("queued", "running")  # it is live, not a replay
    shot(browser, "run-live")
    assert finished_run(browser, 600) == "successful"
    # The page reloads at the end: the hosts table comes with it, the log replays from the event stream after.
    WebDriverWait(browser, 30, ignored_exceptions=RELOADING).until(
        lambda b: NAME in b.find_element(By.ID, "hosts").text and "PLAY RECAP" in b.find_element(By.ID, "log").text)
    shot(browser, "run")

    [deploy] = server.call("GET", "/v1/runs?action=deploy")[1]["runs"]
    assert (deploy["operator"], deploy["source"], deploy["target"]) == ("console:ops", "console", NAME)
    inventory = server.env.inventory
    assert fleet.hosts[0].address in (inventory / "known_hosts").read_text()
    assert (inventory / "host_vars" / NAME / "vault.yml").read_bytes().startswith(b"$ANSIBLE_VAULT;")
    shown = server.call("GET", f"/v1/instances/{NAME}")[1]
    assert shown["features"] == ["beta"] and shown["canary"] is True, shown
    health = json.loads(fleet.ssh(fleet.hosts[0], "curl -s http://127.0.0.1:8080/health").stdout)
    assert health["version"] == "1.0.0"

    browser.get(f"{server.base}/ui/")  # the deploy's end dropped the stale probe: this page probes afresh
    eventually(browser, lambda b: row(b, "fleet", NAME).find_element(By.CSS_SELECTOR, ".health .badge").text
               == "healthy")
    fleet_row = row(browser, "fleet", NAME)
    assert fleet_row.find_element(By.CSS_SELECTOR, ".badge").text == "ok"
    assert fleet_row.find_element(By.CSS_SELECTOR, ".running").text == "1.0.0"
    assert " ago" in fleet_row.find_element(By.CSS_SELECTOR, ".health").text
    assert row(browser, "versions", NAME).text == f"{NAME} ●○"
    listed = server.call("GET", "/v1/instances?running_version=1.0.0")[1]["instances"]
    assert [(i["name"], i["health"]["healthy"], i["health"]["version"]) for i in listed] == [(NAME, True, "1.0.0")]
    shot(browser, "fleet")


def test_preview_then_configure(server, browser):
    browser.get(f"{server.base}/ui/instances/{NAME}")
    ages = browser.find_element(By.ID, "secret-ages").text
    assert "app_api_token" in ages and "unknown" not in ages and "OVERDUE" not in ages, ages  # rotated at creation
    eventually(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#health .badge").text == "healthy")
    assert "1.0.0" in browser.find_element(By.ID, "release-history").text
    browser.find_element(By.CSS_SELECTOR, "#action option[value=configure]").click()
    browser.find_element(By.ID, "preview").click()  # a preview asks nothing: it changes nothing
    heading(browser, f"configure (preview) on {NAME}")
    assert finished_run(browser, 300) == "successful"
    browser.refresh()
    browser.find_element(By.ID, "apply-button").click()
    confirm(browser, "1 instance")
    heading(browser, f"configure on {NAME}")
    assert finished_run(browser, 300) == "successful"
    runs = server.call("GET", "/v1/runs?action=configure")[1]["runs"]
    assert [r["check"] for r in runs] == [False, True] and all(r["operator"] == "console:ops" for r in runs)


def test_canary_upgrade_shows_in_the_canary_view_and_the_version_matrix(server, browser):
    browser.get(f"{server.base}/ui/instances/{NAME}")
    browser.find_element(By.CSS_SELECTOR, "#action option[value=upgrade]").click()
    browser.find_element(By.ID, "app_version").send_keys("1.1.0")
    browser.find_element(By.ID, "run").click()
    confirm(browser, "1 instance")
    run_page = WebDriverWait(browser, 60).until(lambda b: "/ui/runs/" in b.current_url and b.current_url)
    browser.get(f"{server.base}/ui/")
    rollout = browser.find_element(By.CSS_SELECTOR, ".rollout")
    assert "upgrade to 1.1.0" in rollout.text
    canary = rollout.find_element(By.CSS_SELECTOR, f'tr[data-instance="{NAME}"]').text
    assert "canary" in canary and "pending" in canary, canary
    shot(browser, "fleet-rollout")
    browser.get(run_page)
    assert finished_run(browser, 600) == "successful"

    browser.get(f"{server.base}/ui/")
    assert browser.find_element(By.ID, "no-rollout")
    eventually(browser, lambda b: row(b, "fleet", NAME).find_element(By.CSS_SELECTOR, ".running").text == "1.1.0")
    assert row(browser, "versions", NAME).text == f"{NAME} ●○"  # 1.0.0 left the matrix: no instance has it
    browser.get(f"{server.base}/ui/instances/{NAME}")
    [backup] = (server.env.backups / NAME).iterdir()  # the upgrade backed the instance up first
    backups = browser.find_element(By.ID, "backups").text
    assert backup.name in backups and "none in" not in backups, backups
    assert "never" not in browser.find_element(By.ID, "last-backup").text
    history = browser.find_element(By.ID, "release-history").text.splitlines()
    assert history[1].startswith("1.1.0 1.0.0"), history
    shot(browser, "instance", whole=True)


def test_a_missing_csrf_token_is_refused(server, browser):
    before = (server.env.inventory / "hosts.yml").read_text()
    browser.get(f"{server.base}/ui/instances/{NAME}")
    browser.execute_script("document.querySelector('#settings input[name=csrf_token]').remove()")
    browser.find_element(By.ID, "hold-box").click()
    browser.find_element(By.ID, "save-settings").click()
    confirm(browser, "1 instance")
    WebDriverWait(browser, 30, ignored_exceptions=RELOADING).until(
        lambda b: "csrf_failed" in b.find_element(By.TAG_NAME, "body").text)
    assert (server.env.inventory / "hosts.yml").read_text() == before


def test_hold_then_decommission(server, browser, fleet):
    browser.get(f"{server.base}/ui/instances/{NAME}")
    browser.find_element(By.ID, "hold-box").click()
    browser.find_element(By.ID, "hold-reason").send_keys("customer freeze")
    browser.find_element(By.ID, "save-settings").click()
    confirm(browser, "1 instance")
    assert "+rollout_hold: true" in browser.find_element(By.ID, "diff").text
    assert browser.find_element(By.ID, "state").text == "held"
    browser.find_element(By.ID, "decommission-button").click()
    confirm(browser, "Decommission 1 instance")
    assert finished_run(browser, 600) == "successful"
    WebDriverWait(browser, 10, ignored_exceptions=RELOADING).until(
        lambda b: NAME in b.find_element(By.ID, "hosts").text)  # reloaded with the per-host results
    assert "console:ops (console)" in browser.find_element(By.CSS_SELECTOR, ".facts").text
    shot(browser, "decommission")

    assert server.call("GET", f"/v1/instances/{NAME}")[0] == 404
    inventory = server.env.inventory
    assert NAME not in (inventory / "hosts.yml").read_text() and not (inventory / "host_vars" / NAME).exists()
    [archived] = (inventory / ".archive").glob(f"{NAME}-*/host_vars/vault.yml")
    assert archived.read_bytes().startswith(b"$ANSIBLE_VAULT;")
    assert fleet.hosts[0].address not in (inventory / "known_hosts").read_text()
    assert list((server.env.backups / NAME).iterdir()), "no final backup in the store"
    host = fleet.hosts[0]
    assert fleet.ssh(host, "systemctl is-enabled refapp", check=False).stdout.strip() in ("disabled", "")
    assert fleet.ssh(host, "systemctl is-active refapp", check=False).stdout.strip() == "inactive"
    assert fleet.ssh(host, "test -e /opt/refapp", check=False).returncode == 1
    browser.get(f"{server.base}/ui/")
    assert "No instances" in browser.find_element(By.ID, "fleet").text
    assert os.path.getsize(server.log) > 0


def test_create_over_the_api_honours_the_idempotency_key(server, fleet):
    body = {"name": NAME, "domain": "web1.example.test", "address": fleet.hosts[0].address}
    key = {"Idempotency-Key": "create-web1"}
    status, created = server.call("POST", "/v1/instances", body, headers=key)
    assert status == 202 and created["run"]["action"] == "deploy", created
    try:
        again = server.call("POST", "/v1/instances", body, headers=key)
        assert again[0] == 200 and again[1]["run"]["id"] == created["run"]["id"], again
        other = server.call("POST", "/v1/instances", {**body, "name": "web2"}, headers=key)
        assert other[0] == 409 and other[1]["error"]["code"] == "idempotency_conflict", other
        assert "web2" not in (server.env.inventory / "hosts.yml").read_text()
    finally:  # the host is not deployed a second time: that was shown above through the console
        server.call("POST", f"/v1/runs/{created['run']['id']}/cancel")
        wait_until(lambda: server.call("GET", f"/v1/runs/{created['run']['id']}")[1]["status"] not in
                   ("queued", "waiting", "running"), timeout=120)
