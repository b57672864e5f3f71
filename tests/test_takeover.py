"""Taking over a hand-installed instance on a real host and watching it: import-instance, drift, pull-config,
compliance, and the import through the runner's API.

Two fresh hosts get refapp installed by hand (tests/hand_install.sh: own paths, one env file with secrets, a
hand-written unit). Bad input is refused first with the environment untouched; the import of the first then
backs it up and proves `configure.yml --check --diff` changes nothing; a real configure run changes nothing
either. Then settings, the firewall and a service are changed on the host by hand and scripts/drift names
exactly those keys. The second host is imported with POST /v1/imports (the same code, its backup and check
as runner runs).
"""

import hashlib
import json
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from fleetdeck.service.config import PACKAGE_DIR

from tests.deployment import Deployment
from tests.playbook import REPO
from tests.refapp.build import artifact_name, build
from tests.runner.service import app_for, env_over, in_process, wait_until

FLEET_SIZE = 2
VERSION = "1.0.0"
LIVE_SECRETS = {"db": secrets.token_urlsafe(24), "token": secrets.token_urlsafe(36), "smtp": secrets.token_hex(16)}


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    """A bare environment (vault password only) next to a host with refapp installed by hand."""
    workdir = tmp_path_factory.mktemp("takeover")
    dist = workdir / "dist"
    build(dist, [VERSION])
    deployment = Deployment(fleet, workdir / "inventory" / "test", dist,
                            {**fleet.ansible_env(), "FLEETDECK_VAULT_PASSWORD_FILE": str(workdir / "vault-pass"),
                             "FLEETDECK_AUDIT_LOG": str(workdir / "audit.log"),
                             "FLEETDECK_BACKUP_STORE": str(workdir / "store")})
    deployment.script("bootstrap-vault", "-i", str(deployment.inventory))
    for host in fleet.hosts:
        subprocess.run(["scp", "-q", *fleet.ssh_args(), str(dist / artifact_name(VERSION)),
                        str(REPO / "tests" / "hand_install.sh"), f"root@{host.address}:/root/"], check=True)
        install = subprocess.run(["ssh", *fleet.ssh_args(), f"root@{host.address}",
                                  f"bash /root/hand_install.sh /root/{artifact_name(VERSION)} {VERSION}"],
                                 input="{db} {token} {smtp}\n".format(**LIVE_SECRETS), capture_output=True,
                                 text=True)
        assert install.returncode == 0, install.stderr
    deployment.instances["shop"] = fleet.hosts[0].address
    return deployment


def import_instance(env, *args, name="shop", address=None):
    return env.script("import-instance", name, address or env.fleet.hosts[0].address, "--domain", "shop.example.test",
                      *args, "-i", str(env.inventory), check=False)


def snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


def test_bad_input_is_refused_and_writes_nothing(env):
    unknown = import_instance(env, address=env.fleet.address(99))
    assert unknown.returncode == 1
    assert f"cannot reach {env.fleet.address(99)} port 22" in unknown.stderr
    unreadable = import_instance(env, "--env-file", "/etc/refapp/missing.env")
    assert unreadable.returncode == 1
    assert "cannot read env file /etc/refapp/missing.env: No such file or directory" in unreadable.stderr
    assert not env.inventory.exists()


def test_import_backs_up_and_proves_configure_changes_nothing(env):
    pid = env.main_pid("shop")
    result = import_instance(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shop: configure.yml --check --diff changes nothing" in result.stdout
    assert "shop: backed up" in result.stdout
    assert list((Path(env.env["FLEETDECK_BACKUP_STORE"]) / "shop").glob("*/manifest.json"))
    for value in LIVE_SECRETS.values():
        assert value not in result.stdout + result.stderr

    main = yaml.safe_load((env.inventory / "host_vars" / "shop" / "main.yml").read_text())
    assert main["app_version"] == VERSION
    assert main["app_settings"]["REFAPP_INSTANCE"] == "shop"
    assert main["app_settings"]["REFAPP_LOG_LEVEL"] == "WARNING"
    assert "REFAPP_FEATURES" not in main["app_settings"]  # the live file has none: none is added
    assert main["app_passthrough_settings"] == {"SHOP_SUPPORT_EMAIL": "ops@shop.example"}
    assert main["app_settings_file"] == main["app_secrets_file"] == "/etc/refapp/refapp.env"
    assert main["app_root"] == "/srv/refapp"
    text = (env.inventory / "host_vars" / "shop" / "main.yml").read_text()
    assert not any(value in text for value in LIVE_SECRETS.values())

    vault = env.secrets("shop")
    assert vault["vault_app_db_password"] == LIVE_SECRETS["db"]
    assert vault["vault_app_api_token"] == LIVE_SECRETS["token"]
    assert vault["vault_app_passthrough_secret_settings"] == {"SHOP_SMTP_PASSWORD": LIVE_SECRETS["smtp"]}
    assert "app_api_token" not in vault["vault_secrets_rotated_at"]  # imported: age unknown
    assert env.fleet.ssh(env.instances["shop"], "ssh-keygen -lf /etc/ssh/fleetdeck_host_ed25519_key.pub").stdout \
        .split()[1] in subprocess.run(["ssh-keygen", "-lf", str(env.inventory / "known_hosts")],
                                      capture_output=True, text=True).stdout

    configure = env.playbook("configure.yml")
    assert configure.rc == 0, configure.output
    assert configure.changed() == {"shop": 0}, configure.output
    assert env.main_pid("shop") == pid  # not restarted
    assert env.health("shop")["instance"] == "shop"


def test_duplicate_name_is_refused_and_the_environment_is_unchanged(env):
    before = snapshot(env.inventory)
    assert before
    duplicate = import_instance(env)
    assert duplicate.returncode == 2
    assert "instance 'shop' already exists" in duplicate.stderr
    assert snapshot(env.inventory) == before


def test_drift_names_the_keys_changed_by_hand_and_masks_secrets(env):
    # What the playbooks get with -e @tests/fleet_overrides.yml, for scripts/drift and the runner's runs too.
    (env.inventory / "group_vars" / "all" / "test.yml").write_text((REPO / "tests" / "fleet_overrides.yml").read_text())
    env.on("shop", "sed -i -e 's/^REFAPP_LOG_LEVEL=.*/REFAPP_LOG_LEVEL=DEBUG/' "
                   "-e 's/^SHOP_SMTP_PASSWORD=.*/SHOP_SMTP_PASSWORD=changed-by-hand/' /etc/refapp/refapp.env && "
                   "echo SHOP_NEW_FLAG=on >> /etc/refapp/refapp.env && systemctl disable --quiet fail2ban")
    result = env.script("drift", "--json", "-i", str(env.inventory), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    items = json.loads(result.stdout)["shop"]
    in_env = {i["key"]: i for i in items if i["where"] == "/etc/refapp/refapp.env"}
    assert sorted(in_env) == ["REFAPP_LOG_LEVEL", "SHOP_NEW_FLAG", "SHOP_SMTP_PASSWORD"]
    assert (in_env["REFAPP_LOG_LEVEL"]["change"], in_env["REFAPP_LOG_LEVEL"]["desired"],
            in_env["REFAPP_LOG_LEVEL"]["live"]) == ("changed", "WARNING", "DEBUG")
    assert in_env["SHOP_NEW_FLAG"]["change"] == "added"
    assert in_env["SHOP_SMTP_PASSWORD"] == {"where": "/etc/refapp/refapp.env", "key": "SHOP_SMTP_PASSWORD",
                                            "change": "changed", "secret": True,
                                            "desired": "********", "live": "********"}
    assert not [i for i in items if i["where"] == "release"]  # the installed version is the pinned one
    # the OS baseline never ran on the host: its firewall is off, without the role's rules
    ufw = {i["key"]: (i["change"], i["desired"], i["live"]) for i in items if i["where"] == "ufw"}
    assert ufw["Status"] == ("changed", "active", "inactive")
    assert ufw["Default incoming"] == ("removed", "deny", None)  # an inactive UFW names no policy
    assert ufw["ufw limit 22/tcp"] == ufw["ufw allow from 10.0.0.0/8 to any port 22 proto tcp"] == (
        "removed", "present", None)
    services = [i for i in items if i["where"] == "services"]
    assert services == [{"where": "services", "key": "fail2ban", "change": "changed", "secret": False,
                         "desired": "enabled", "live": "disabled"}]  # chrony: common_timesync_enabled is off
    assert "changed-by-hand" not in result.stdout + result.stderr
    assert not any(value in result.stdout + result.stderr for value in LIVE_SECRETS.values())


def test_pull_config_previews_then_adopts_the_live_values(env):
    keys = ("REFAPP_LOG_LEVEL", "SHOP_NEW_FLAG", "SHOP_SMTP_PASSWORD")
    before = snapshot(env.inventory)
    preview = env.script("pull-config", "shop", "--keys", *keys, "-i", str(env.inventory))
    assert "-  REFAPP_LOG_LEVEL: WARNING" in preview.stdout and '+  REFAPP_LOG_LEVEL: "DEBUG"' in preview.stdout
    assert '+  SHOP_NEW_FLAG: "on"' in preview.stdout
    assert "vault_app_passthrough_secret_settings.SHOP_SMTP_PASSWORD: ********" in preview.stdout
    assert "changed-by-hand" not in preview.stdout
    assert snapshot(env.inventory) == before  # a preview writes nothing

    pulled = env.script("pull-config", "shop", "--keys", *keys, "--yes", "-i", str(env.inventory))
    assert "shop: adopted REFAPP_LOG_LEVEL, SHOP_NEW_FLAG, SHOP_SMTP_PASSWORD" in pulled.stdout
    assert env.secrets("shop")["vault_app_passthrough_secret_settings"]["SHOP_SMTP_PASSWORD"] == "changed-by-hand"
    result = env.script("drift", "--json", "-i", str(env.inventory), check=False)
    items = json.loads(result.stdout)["shop"]
    assert not [i for i in items if i["where"] == "/etc/refapp/refapp.env"], items
    assert result.returncode == 2  # the hand-written unit still differs from the role's


def test_compliance_fails_exactly_the_checks_made_to_fail(env, tmp_path):
    # the parts of the OS baseline the checks judge
    baseline = env.playbook("deploy.yml", "--tags", "ssh,firewall,fail2ban,upgrades", "--limit", "shop")
    assert baseline.rc == 0, baseline.output
    drift = json.loads(env.script("drift", "--json", "--limit", "shop", "-i", str(env.inventory), check=False).stdout)
    assert not [i for i in drift["shop"] if i["where"] in ("ufw", "services")], drift  # the role's rules, enabled
    three_days_ago, two_days_ago = "$(( $(date +%s) - 3 * 86400 ))", "$(( $(date +%s) - 2 * 86400 ))"
    env.on("shop", "ufw disable && printf 'refapp_backup_last_success_timestamp_seconds %d\\n' "
                   f"{three_days_ago} > /var/lib/prometheus/node-exporter/refapp_backup.prom && printf "
                   "'refapp_restore_drill_last_attempt_success 1\\nrefapp_restore_drill_last_success_timestamp_seconds "
                   f"%d\\n' {two_days_ago} > /var/lib/prometheus/node-exporter/refapp_restore_drill.prom")
    result = env.playbook("compliance.yml", "-e", f"compliance_report_dir={tmp_path}", "--limit", "shop")
    assert result.rc == 0, result.output
    [json_report], [html_report] = tmp_path.glob("compliance-*.json"), tmp_path.glob("compliance-*.html")
    assert json_report.stem == html_report.stem
    checks = {c["check"]: c for c in json.loads(json_report.read_text())["instances"]["shop"]}
    assert {name for name, c in checks.items() if c["status"] == "fail"} == {"firewall (UFW)", "last backup"}, checks
    assert checks["firewall (UFW)"]["reason"] == "inactive"
    assert checks["last backup"]["reason"].startswith("72.")
    assert checks["app version"] == {"check": "app version", "status": "pass", "reason": "runs the pinned 1.0.0"}
    assert checks["SSH hardening"]["status"] == "pass"
    assert checks["secret age: app_api_token"]["status"] == "warn"  # imported: no rotation recorded
    assert (checks["restore drill"]["status"], checks["restore drill"]["reason"]) == (
        "pass", "last passed 2.0 d ago (limit 35 d)")
    assert (checks["central monitoring"]["status"], checks["central monitoring"]["reason"]) == (
        "warn", "tier 1; no central server in the inventory (group central)")
    html = html_report.read_text()
    assert '<td class="fail">FAIL</td><td>inactive</td>' in html.replace("\n", "")
    everything = result.output + json_report.read_text() + html
    assert not any(value in everything for value in LIVE_SECRETS.values())
    assert "changed-by-hand" not in everything


def test_import_through_the_api_backs_up_then_proves_the_takeover(env, tmp_path):
    address = env.fleet.hosts[1].address
    runner_env = env_over(tmp_path, env.inventory, Path(env.env["FLEETDECK_VAULT_PASSWORD_FILE"]), env.env,
                          catalog=PACKAGE_DIR / "actions.yml")
    with in_process(runner_env), app_for(runner_env) as app:
        client, auth = app.test_client(), runner_env.auth("provisioner")
        body = {"name": "shop2", "domain": "shop2.example.test", "address": address}
        unreadable = client.post("/v1/imports", json={**body, "env_file": "/etc/refapp/missing.env"}, headers=auth)
        assert unreadable.status_code == 422, unreadable.get_json()
        assert unreadable.get_json()["error"]["field"] == "env_file"
        assert "cannot read env file /etc/refapp/missing.env" in unreadable.get_json()["error"]["message"]
        assert not (env.inventory / "host_vars" / "shop2").exists()

        response = client.post("/v1/imports", json=body, headers={**auth, "Idempotency-Key": "import-shop2"})
        assert response.status_code == 202, response.get_json()
        answer = response.get_json()
        assert (answer["run"]["action"], answer["run"]["source"], answer["instance"]["pinned_version"]) == (
            "backup", "import", VERSION)
        replay = client.post("/v1/imports", json=body, headers={**auth, "Idempotency-Key": "import-shop2"})
        assert replay.status_code == 200 and replay.get_json()["run"]["id"] == answer["run"]["id"]

        def verdict():
            audit = client.get("/v1/instances/shop2", headers=auth).get_json()["audit"]
            return next((a for a in audit if a["what"] in ("instance.takeover_proven", "instance.takeover_failed")),
                        None)

        found = wait_until(verdict, timeout=900, interval=2)
        assert found["what"] == "instance.takeover_proven", found
        runs = client.get("/v1/runs?target=shop2", headers=auth).get_json()["runs"]
        assert [(r["action"], r["check"], r["status"]) for r in reversed(runs)] == [
            ("backup", False, "successful"), ("configure", True, "successful")]
        assert runs[0]["hosts"]["shop2"]["changed"] == 0
        assert env.secrets("shop2")["vault_app_db_password"] == LIVE_SECRETS["db"]
        served = json.dumps([answer, client.get("/v1/instances/shop2", headers=auth).get_json()])
        assert not any(value in served for value in LIVE_SECRETS.values())
    assert list((Path(env.env["FLEETDECK_BACKUP_STORE"]) / "shop2").glob("*/manifest.json"))
