"""backup.yml, restore.yml and the backup timer on real hosts: archives, manifests, metrics, retention, restore
after data loss, restore onto a fresh host, a damaged backup refused, a full disk failing cleanly; off-site
copies with restic to a backup server (isolation, retention, an unreachable server, a wrong password, a full
disk there) and a restore from off-site only onto a new host."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.deployment import Deployment

FLEET_SIZE = 5  # inst4: a freshly deployed, empty instance for the disaster-recovery test; host 5: backup server
INSTANCES = 4
FIRST = ("inst1", "inst2", "inst3")
ID_OLD = ("20200101T000000Z", "20200102T000000Z")  # planted to be pruned by retention
TOKEN = "set -a; . /opt/refapp/shared/config/secrets.env; set +a; "


@pytest.fixture(scope="module")
def deployment(fleet, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("backup")
    deployment = Deployment.create(fleet, workdir, instances=INSTANCES)
    add_backup_server(deployment, fleet.hosts[INSTANCES])
    result = deployment.playbook("backup_server.yml")
    assert result.rc == 0, result.output
    # All four at once (deploying inst4 later costs minutes); the OS baseline (common) is test_deploy's.
    result = deployment.playbook("deploy.yml", "--skip-tags", "common")
    assert result.rc == 0, result.output
    for instance in FIRST:
        for name in ("alpha", "beta", f"only-{instance}"):
            post(deployment, instance, name)
    return deployment


def add_backup_server(deployment, host):
    """The fleet's last host as the environment's backup server; every instance copies its backups there."""
    hosts_file = deployment.inventory / "hosts.yml"
    tree = yaml.safe_load(hosts_file.read_text())
    tree["all"]["children"]["backup_servers"] = {"hosts": {"backup1": {"ansible_host": host.address}}}
    hosts_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    pinned = [line for line in deployment.fleet.known_hosts.read_text().splitlines()
              if line.startswith(host.address + " ")]
    with (deployment.inventory / "known_hosts").open("a") as known_hosts:
        known_hosts.write("\n".join(pinned) + "\n")
    (deployment.inventory / "group_vars" / "all" / "backup.yml").write_text(yaml.safe_dump({
        "backup_offsite_enabled": True, "backup_offsite_server": "backup1", "backup_offsite_connect_timeout": 3,
        "backup_offsite_forget_args": ["--keep-last", "3"]}))
    deployment.instances["backup1"] = host.address


@pytest.fixture(scope="module")
def store(deployment) -> Path:
    return Path(deployment.env["FLEETDECK_BACKUP_STORE"])


def post(deployment, instance, name):
    answer = deployment.on(instance, f"{TOKEN} curl -sf -H \"Authorization: Bearer $REFAPP_API_TOKEN\" "
                                     f"-d '{{\"name\": \"{name}\"}}' http://127.0.0.1:8080/items")
    assert json.loads(answer)["name"] == name


def content(deployment, instance) -> dict:
    """What a restore must bring back: the rows and a checksum of every file of the data directory."""
    rows = deployment.on(instance, "runuser -u postgres -- psql -d refapp -Atc "
                                   "'select id, name, created_at from items order by id'")
    files = deployment.on(instance, "cd /opt/refapp/shared/data && find . -type f | sort | xargs -r sha256sum")
    owners = deployment.on(instance, "cd /opt/refapp/shared && stat -c '%U %a %n' data data/items 2>&1; true")
    return {"rows": rows, "files": files, "owners": owners}


def backups_on(deployment, instance) -> list[str]:
    return deployment.on(instance, "ls /var/backups/refapp").split()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_backup_of_every_instance_with_manifest_metrics_and_retention(deployment, store):
    for instance in FIRST:  # older backups, on the host and in the store, for retention to prune
        deployment.on(instance, "mkdir -p " + " ".join(f"/var/backups/refapp/{i}" for i in ID_OLD))
        for backup_id in ID_OLD:
            (store / instance / backup_id).mkdir(parents=True)
    pids = {i: deployment.main_pid(i) for i in FIRST}
    result = deployment.playbook("backup.yml", "--limit", ",".join(FIRST), "-e", "backup_keep=2",
                                 "-e", "backup_store_keep=2")
    assert result.rc == 0, result.output
    assert all(result.changed()[i] > 0 for i in FIRST)  # a backup run always makes a new backup
    for instance in FIRST:
        kept = backups_on(deployment, instance)
        assert len(kept) == 2 and kept[0] == ID_OLD[1] and kept[1] > ID_OLD[1], kept  # oldest pruned
        new = kept[1]
        assert sorted(p.name for p in (store / instance).iterdir()) == [ID_OLD[1], new]
        stored = store / instance / new
        manifest = json.loads((stored / "manifest.json").read_text())
        assert manifest["id"] == new and manifest["instance"] == instance
        assert manifest["app_version"] == deployment.health(instance)["version"]
        assert set(manifest["parts"]) == {"database.dump", "data.tar.gz"}
        for part, meta in manifest["parts"].items():
            assert sha256(stored / part) == meta["sha256"] and (stored / part).stat().st_size == meta["size"]
        host_sums = deployment.on(instance, f"cd /var/backups/refapp/{new} && sha256sum database.dump data.tar.gz")
        assert host_sums.split()[::2] == [manifest["parts"][p]["sha256"] for p in ("database.dump", "data.tar.gz")]
        assert (stored / "database.dump").read_bytes()[:5] == b"PGDMP"  # pg_dump custom format
        metrics = deployment.on(instance, "cat /var/lib/prometheus/node-exporter/refapp_backup.prom")
        values = dict(line.split() for line in metrics.splitlines() if not line.startswith("#"))
        assert int(values["refapp_backup_size_bytes"]) == sum(m["size"] for m in manifest["parts"].values())
        assert abs(float(values["refapp_backup_last_success_timestamp_seconds"])
                   - (store / instance / new).stat().st_mtime) < 300
        assert deployment.on(instance, "ls -A /var/backups/refapp | grep -c partial || true").strip() == "0"
    assert {i: deployment.main_pid(i) for i in FIRST} == pids  # the app kept serving


def test_check_mode_changes_nothing(deployment, store):
    before = {i: backups_on(deployment, i) for i in FIRST}
    stored = sorted(str(p) for p in store.rglob("*"))
    result = deployment.playbook("backup.yml", "--limit", ",".join(FIRST), "--check")
    assert result.rc == 0, result.output
    assert result.changed() == dict.fromkeys(FIRST, 0)
    assert {i: backups_on(deployment, i) for i in FIRST} == before
    assert sorted(str(p) for p in store.rglob("*")) == stored


def test_restore_after_data_loss_brings_back_rows_and_files(deployment):
    before = content(deployment, "inst1")
    assert before["rows"].count("\n") >= 2 and "items/" in before["files"]
    deployment.on("inst1", "runuser -u postgres -- psql -d refapp -c 'delete from items'"
                           " && rm -rf /opt/refapp/shared/data/items")
    assert content(deployment, "inst1")["rows"] == ""
    result = deployment.playbook("restore.yml", "--limit", "inst1")
    assert result.rc == 0, result.output
    assert content(deployment, "inst1") == before
    health = deployment.health("inst1")
    assert health["status"] == "ok" and health["database"] == "reachable"
    post(deployment, "inst1", "after-restore")  # writable again, through the app's own role
    leftovers = deployment.on("inst1", "ls -A /opt/refapp/shared; runuser -u postgres -- psql -Atc "
                                       "\"select datname from pg_database where datname like 'refapp%'\"")
    assert leftovers.split() == ["config", "data", "refapp"]


def test_damaged_backup_is_refused_before_touching_anything(deployment, store):
    latest = sorted((store / "inst3").iterdir())[-1]
    archive = latest / "data.tar.gz"
    original = archive.read_bytes()
    archive.write_bytes(original + b"x")
    pid, before = deployment.main_pid("inst3"), content(deployment, "inst3")
    try:
        result = deployment.playbook("restore.yml", "--limit", "inst3")
    finally:
        archive.write_bytes(original)
    assert result.rc != 0
    assert f"backup {latest.name} of inst3" in result.output and "is not intact" in result.output
    assert "data.tar.gz has sha256 " + hashlib.sha256(original + b"x").hexdigest() in result.output
    assert "nothing live was touched" in result.output
    assert deployment.main_pid("inst3") == pid and content(deployment, "inst3") == before
    missing = deployment.playbook("restore.yml", "--limit", "inst3", "-e", "backup=20991231T000000Z")
    assert missing.rc != 0 and "no backup 20991231T000000Z of inst3" in missing.output

    # A manifest that vouches for another backup (of inst2) is refused, like a .sha256 of another file.
    other = sorted((store / "inst2").iterdir())[-1]
    manifest = latest / "manifest.json"
    own = manifest.read_bytes()
    manifest.write_bytes((other / "manifest.json").read_bytes())
    for part in ("database.dump", "data.tar.gz"):
        (latest / part).rename(latest / f"{part}.own")
        (latest / part).write_bytes((other / part).read_bytes())
    try:
        foreign = deployment.playbook("restore.yml", "--limit", "inst3")
    finally:
        manifest.write_bytes(own)
        for part in ("database.dump", "data.tar.gz"):
            (latest / f"{part}.own").replace(latest / part)
    assert foreign.rc != 0
    assert f"its manifest is for backup {other.name} of inst2" in foreign.output, foreign.output
    assert deployment.main_pid("inst3") == pid and content(deployment, "inst3") == before


def test_backup_restored_onto_a_fresh_host(deployment):
    source = content(deployment, "inst2")
    assert content(deployment, "inst4")["rows"] == ""  # scaffolded and deployed, never used
    result = deployment.playbook("restore.yml", "--limit", "inst4", "-e", "backup_restore_from=inst2")
    assert result.rc == 0, result.output
    assert content(deployment, "inst4") == source
    health = deployment.health("inst4")
    assert health["status"] == "ok" and health["database"] == "reachable" and health["instance"] == "inst4"
    post(deployment, "inst4", "on-the-new-host")  # inst4's own token and database password work


def test_full_disk_fails_clearly_and_keeps_earlier_backups(deployment):
    host = "inst2"
    earlier = backups_on(deployment, host)
    sums = deployment.on(host, "cd /var/backups/refapp && find . -type f | sort | xargs -r sha256sum")
    metrics = deployment.on(host, "cat /var/lib/prometheus/node-exporter/refapp_backup.prom")
    # A tiny filesystem over the backup directory holding the earlier backups, then filled up.
    deployment.on(host, "cp -a /var/backups/refapp /tmp/earlier && mount -t tmpfs -o size=256k tmpfs "
                        "/var/backups/refapp && cp -a /tmp/earlier/. /var/backups/refapp/ && "
                        "(dd if=/dev/zero of=/var/backups/refapp/filler bs=4k 2>/dev/null || true)")
    try:
        result = deployment.playbook("backup.yml", "--limit", host)
        deployment.on(host, "rm /var/backups/refapp/filler")
        after = deployment.on(host, "cd /var/backups/refapp && find . -type f | sort | xargs -r sha256sum")
        listing = backups_on(deployment, host)
    finally:
        deployment.on(host, "umount /var/backups/refapp; rm -rf /tmp/earlier", check=False)
    assert result.rc != 0
    assert f"backup of {host} FAILED" in result.output and "No space left on device" in result.output
    assert "Nothing was recorded as a success" in result.output
    assert listing == earlier and after == sums
    assert deployment.on(host, "cat /var/lib/prometheus/node-exporter/refapp_backup.prom") == metrics
    assert deployment.health(host)["status"] == "ok"


SCRIPT = "/usr/local/sbin/refapp-backup"
REPOS = "/srv/fleetdeck-backups"
SFTP = ("sftp -b - -i /etc/refapp-backup/id_ed25519 -o UserKnownHostsFile=/etc/refapp-backup/known_hosts "
        "-o BatchMode=yes -o ConnectTimeout=3")


def metrics(deployment, instance, name="refapp_backup") -> dict[str, float]:
    text = deployment.on(instance, f"cat /var/lib/prometheus/node-exporter/{name}.prom")
    pairs = (line.split() for line in text.splitlines() if not line.startswith("#"))
    return {key: float(value) for key, value in pairs}


def snapshots(deployment, instance) -> list[str]:
    """The snapshot files of the instance's repository, as the backup server sees them."""
    return deployment.on("backup1", f"ls {REPOS}/backup-{instance}/repository/snapshots").split()


def test_offsite_copies_go_to_each_instances_own_encrypted_repository(deployment):
    server = deployment.instances["backup1"]
    for instance in FIRST:
        assert len(snapshots(deployment, instance)) >= 1
        offsite = metrics(deployment, instance, "refapp_backup_offsite")
        assert offsite["refapp_backup_offsite_last_attempt_success"] == 1
        assert offsite["refapp_backup_offsite_last_success_timestamp_seconds"] >= \
            metrics(deployment, instance)["refapp_backup_last_success_timestamp_seconds"]
    # Encrypted: the rows' names appear nowhere in the repositories' files.
    assert deployment.on("backup1", f"grep -rl only-inst1 {REPOS} | wc -l").strip() == "0"
    # inst1's key opens inst1's chroot (only its repository in it), never inst2's account or a shell.
    listing = deployment.on("inst1", f"echo 'ls -a /' | {SFTP} backup-inst1@{server}")
    assert "repository" in listing and "backup-inst2" not in listing
    escape = deployment.on("inst1", f"echo 'ls /../backup-inst2/repository' | {SFTP} backup-inst1@{server} 2>&1",
                           check=False)
    assert "not found" in escape.lower() or "no such file" in escape.lower(), escape
    foreign = deployment.on("inst1", f"echo 'ls /' | {SFTP} backup-inst2@{server} 2>&1; echo rc=$?", check=False)
    assert "Permission denied" in foreign and "rc=0" not in foreign, foreign
    shell = deployment.on("inst1", "ssh -i /etc/refapp-backup/id_ed25519 -o BatchMode=yes -o UserKnownHostsFile="
                                   f"/etc/refapp-backup/known_hosts backup-inst1@{server} id 2>&1; echo rc=$?",
                          check=False)
    assert "uid=" not in shell and "rc=0" not in shell, shell
    # Retention (forget --keep-last 3 --prune) after more copies made by the same script the timer runs.
    for _ in range(3):
        deployment.on("inst1", f"BACKUP_KEEP=7 {SCRIPT} run >/dev/null")
    assert len(snapshots(deployment, "inst1")) == 3
    assert deployment.on("inst1", f"BACKUP_KEEP=7 {SCRIPT} check 2>&1 | tail -1").strip() == "no errors were found"
    assert metrics(deployment, "inst1", "refapp_backup_check")["refapp_backup_offsite_check_last_attempt_success"] == 1


def test_timers_run_the_backup_and_the_restore_drill_on_the_inventory_schedule(deployment):
    host = "inst3"
    before, pid, live = backups_on(deployment, host), deployment.main_pid(host), content(deployment, host)
    started = float(deployment.on(host, "date +%s"))
    result = deployment.playbook("deploy.yml", "--tags", "backup", "--limit", host,
                                 "-e", "backup_schedule=*:*:0/10", "-e", "backup_drill_schedule=*:*:5/10",
                                 "-e", "backup_schedule_randomized_delay=0")
    assert result.rc == 0, result.output
    # Wait for a run of each timer (each oneshot service logs its result to the journal).
    for unit, done in (("refapp-backup", "copied off-site to"), ("refapp-backup-drill", "restore drill of backup")):
        deployment.on(host, f"for i in $(seq 90); do journalctl -u {unit}.service -o cat | grep -q '{done}' "
                            "&& break; sleep 1; done")
    journal = deployment.on(host, "journalctl -u refapp-backup.service -o cat")
    new = [b for b in backups_on(deployment, host) if b not in before]
    assert new and f"backup {new[0]} of {host}: /var/backups/refapp/{new[0]}" in journal, journal
    assert f"backup {new[0]} of {host} copied off-site" in journal
    assert metrics(deployment, host)["refapp_backup_last_success_timestamp_seconds"] >= started
    assert metrics(deployment, host, "refapp_backup_offsite")["refapp_backup_offsite_last_success_timestamp_seconds"] \
        >= started
    # The scheduled drill takes the latest backup from off-site (the instance's repository) and leaves the live
    # instance alone.
    drills = deployment.on(host, "journalctl -u refapp-backup-drill.service -o cat")
    assert f"of {host} passed: checksums verified, restored into refapp_drill" in drills, drills
    assert "restic" in drills or "restoring" in drills.lower(), drills  # fetched from the repository
    drill = metrics(deployment, host, "refapp_restore_drill")
    assert drill["refapp_restore_drill_last_attempt_success"] == 1
    assert drill["refapp_restore_drill_last_success_timestamp_seconds"] >= started
    # Back to the inventory's defaults: daily backups, weekly drills, with a randomized delay.
    result = deployment.playbook("deploy.yml", "--tags", "backup", "--limit", host)
    assert result.rc == 0, result.output
    deployment.on(host, "while systemctl show -p ActiveState --value refapp-backup.service "
                        "refapp-backup-drill.service | grep -q activating; do sleep 1; done")
    assert deployment.main_pid(host) == pid and content(deployment, host) == live
    timers = deployment.on(host, "systemctl show refapp-backup.timer refapp-backup-drill.timer -p TimersCalendar "
                                 "-p RandomizedDelayUSec -p ActiveState -p UnitFileState")
    assert "OnCalendar=*-*-* 00:00:00" in timers and "OnCalendar=Mon *-*-* 00:00:00" in timers, timers
    assert timers.count("RandomizedDelayUSec=1h") == 2
    assert timers.count("ActiveState=active") == 2 and timers.count("UnitFileState=enabled") == 2
    again = deployment.playbook("deploy.yml", "--tags", "backup", "--limit", host)
    assert again.rc == 0 and again.changed()[host] == 0, again.output


def test_a_scheduled_backup_and_a_restore_never_overlap(deployment):
    """Both go through the backup script's lock: a restore waits for a running timer backup (and restores
    it), a timer backup that fires during a restore waits until the restore has given the instance back."""
    host = "inst1"
    unit = "refapp-backup.service"  # what refapp-backup.timer starts
    # The timer's backup, held up in pg_dump by a lock on the items table for a few seconds.
    deployment.on(host, "systemd-run --unit=hold-items --collect runuser -u postgres -- psql -d refapp -c "
                        "'begin; lock table items in access exclusive mode; select pg_sleep(12); commit'")
    deployment.on(host, "sleep 1; systemctl start --no-block " + unit)
    deployment.on(host, "for i in $(seq 20); do flock -n /run/refapp-backup.lock true || break; sleep 0.5; done")
    assert deployment.on(host, f"systemctl is-active {unit}", check=False).strip() == "activating"
    restore = deployment.playbook("restore.yml", "--limit", host, "-e", "backup_source=host")
    assert restore.rc == 0, restore.output
    made = backups_on(deployment, host)[-1]
    assert f"backup {made} of {host}: " in deployment.on(host, f"journalctl -u {unit} -o cat")
    assert f"restored backup {made} of {host}" in " ".join(restore.output.split())  # the one the timer made

    since = deployment.on(host, "date +%s").strip()
    run = deployment.start("restore.yml", "--limit", host, "-e", "backup_source=host")
    deployment.on(host, "for i in $(seq 120); do test -e /var/lib/fleetdeck/lock.json && break; sleep 0.5; done")
    deployment.on(host, "systemctl start --no-block " + unit)
    restore = deployment.playbook_finished(run)
    assert restore.rc == 0, restore.output
    deployment.on(host, f"while systemctl show -p ActiveState --value {unit} | grep -q activating; do sleep 1; done")
    journal = deployment.on(host, f"journalctl -u {unit} --since @{since} -o cat")
    assert "the instance is held by" in journal and '"Restore instances from a backup"' in journal, journal
    assert "the scheduled backup waits until it is released" in journal
    switched = deployment.on(host, "date -u -d \"$(systemctl show -p ExecMainStartTimestamp --value refapp)\" "
                                   "+%Y%m%dT%H%M%SZ").strip()
    waited = backups_on(deployment, host)[-1]
    assert waited >= switched and f"backup {waited} of {host}: " in journal, (waited, switched, journal)
    assert deployment.health(host)["status"] == "ok"


def test_offsite_failures_keep_the_local_backup_and_earlier_snapshots(deployment):
    host = "inst1"
    server = next(h for h in deployment.fleet.hosts if h.address == deployment.instances["backup1"])
    kept = snapshots(deployment, host)
    offsite_before = metrics(deployment, host, "refapp_backup_offsite")
    local_before = backups_on(deployment, host)

    with deployment.fleet.unreachable(server):
        down = deployment.playbook("backup.yml", "--limit", host)
    assert down.rc != 0
    assert f"of {host} is complete on the instance and in the store, but its off-site copy FAILED" in down.output
    assert [b for b in backups_on(deployment, host) if b not in local_before]  # the local backup was made
    offsite = metrics(deployment, host, "refapp_backup_offsite")
    assert offsite["refapp_backup_offsite_last_attempt_success"] == 0  # alerted (FleetdeckBackupOffsiteFailing)
    assert offsite["refapp_backup_offsite_last_success_timestamp_seconds"] == \
        offsite_before["refapp_backup_offsite_last_success_timestamp_seconds"]
    assert snapshots(deployment, host) == kept  # nothing deleted

    wrong = deployment.playbook("backup.yml", "--limit", host, "-e", "backup_offsite_password=" + "w" * 32)
    assert wrong.rc != 0
    assert "does not accept this instance's password (vault_backup_offsite_password)" in wrong.output, wrong.output
    assert "w" * 32 not in wrong.output
    assert snapshots(deployment, host) == kept

    # The backup server's disk fills up during the upload: the copy fails, the earlier snapshots stay readable.
    repo = f"{REPOS}/backup-{host}/repository"
    deployment.on("backup1", f"cp -a {repo} /tmp/repo && mount -t tmpfs -o size=1m,mode=0700,"
                             f"uid=$(id -u backup-{host}) tmpfs {repo} && cp -a /tmp/repo/. {repo}/ && "
                             f"(dd if=/dev/zero of={repo}/filler bs=4k count=$(( $(stat -f -c %a {repo}) - 32 ))"
                             " 2>/dev/null; true)")
    deployment.on(host, "head -c 2000000 /dev/urandom > /opt/refapp/shared/data/blob")
    try:
        result = deployment.playbook("backup.yml", "--limit", host)  # password back to the vault's
        deployment.on("backup1", f"rm {repo}/filler")
        check = deployment.on(host, f"BACKUP_KEEP=7 {SCRIPT} check 2>&1; echo rc=$?", check=False)
        on_full = snapshots(deployment, host)
    finally:
        deployment.on("backup1", f"umount {repo}; rm -rf /tmp/repo", check=False)
        deployment.on(host, "rm -f /opt/refapp/shared/data/blob")
    assert result.rc != 0 and "off-site copy FAILED" in result.output
    assert on_full == kept and "no errors were found" in check and "rc=0" in check, check
    assert deployment.playbook("backup.yml", "--limit", host).rc == 0  # and copies work again
    assert metrics(deployment, host, "refapp_backup_offsite")["refapp_backup_offsite_last_attempt_success"] == 1


def test_restore_drill_proves_the_latest_backup_and_leaves_the_live_service_alone(deployment):
    host = "inst3"
    pid, before = deployment.main_pid(host), content(deployment, host)
    latest = backups_on(deployment, host)[-1]
    result = deployment.playbook("restore_drill.yml", "--limit", host)
    assert result.rc == 0, result.output
    assert f"restore drill of backup {latest} of {host} passed" in " ".join(result.output.split())
    assert "the app answered /health ok" in " ".join(result.output.split())
    drill = metrics(deployment, host, "refapp_restore_drill")
    assert drill["refapp_restore_drill_last_attempt_success"] == 1
    assert drill["refapp_restore_drill_last_success_timestamp_seconds"] > 0
    assert deployment.main_pid(host) == pid and content(deployment, host) == before
    leftovers = deployment.on(host, "ls -A /opt/refapp/shared; systemctl is-active refapp-restore-drill; "
                                    "runuser -u postgres -- psql -Atc \"select datname from pg_database "
                                    "where datname like 'refapp%'\"", check=False)
    assert leftovers.split() == ["config", "data", "inactive", "refapp"], leftovers


def test_restore_from_offsite_only_onto_a_new_host(deployment, tmp_path):
    """inst2's host and the controller's store are gone; a new host takes inst2's name and gets its data back."""
    assert deployment.playbook("backup.yml", "--limit", "inst2").rc == 0
    source = content(deployment, "inst2")
    old, new = deployment.instances["inst2"], deployment.instances["inst4"]
    main_yml = deployment.inventory / "host_vars" / "inst2" / "main.yml"
    original = main_yml.read_text()
    old_host = next(h for h in deployment.fleet.hosts if h.address == old)
    no_store = {"FLEETDECK_BACKUP_STORE": str(tmp_path / "empty-store")}
    try:
        main_yml.write_text(original.replace(f'ansible_host: "{old}"', f'ansible_host: "{new}"'))
        assert f'"{new}"' in main_yml.read_text()
        deployment.instances["inst2"] = new
        with deployment.fleet.unreachable(old_host):
            deployed = deployment.playbook("deploy.yml", "--skip-tags", "common", "--limit", "inst2", env=no_store)
            assert deployed.rc == 0, deployed.output
            restored = deployment.playbook("restore.yml", "--limit", "inst2", "-e", "backup_source=offsite",
                                           env=no_store)
        assert restored.rc == 0, restored.output
        assert not (tmp_path / "empty-store").exists()
        assert content(deployment, "inst2") == source
        health = deployment.health("inst2")
        assert health["status"] == "ok" and health["instance"] == "inst2"
        post(deployment, "inst2", "on-the-replacement")
        assert deployment.on("inst2", "ls -A /var/backups/refapp | grep -c restore || true").strip() == "0"
    finally:
        main_yml.write_text(original)
        deployment.instances["inst2"] = old
    refused = deployment.playbook("restore.yml", "--limit", "inst4", "-e", "backup_source=offsite",
                                  "-e", "backup_restore_from=inst1")
    assert refused.rc != 0 and "whose repository this one cannot read" in refused.output
