"""Filter plugins: direct calls, plus one real playbook run that checks batch_plan against Ansible's
own batching and evaluates every filter through the collection loader."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.fleetdeck.lifecycle.plugins.filter.lifecycle import (
    FilterModule,
    batch_plan,
    hmac_sha256,
    redact,
    release_rings,
    release_summary,
    sha256_for,
)
from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import cli_env


@pytest.mark.parametrize(
    ("count", "serial", "expected"),
    [
        (10, None, [10]),
        (10, [], [10]),
        (10, 3, [3, 3, 3, 1]),
        (10, "3", [3, 3, 3, 1]),
        (10, "25%", [2, 2, 2, 2, 2]),
        (10, [1, "25%", "100%"], [1, 2, 7]),
        (10, [1, 2], [1, 2, 2, 2, 2, 1]),
        (3, "10%", [1, 1, 1]),  # rounds down to 0, then at least 1
        (3, "0%", [1, 1, 1]),
        (10, 0, [10]),
        (10, -1, [10]),
        (10, [2, 0], [2, 8]),
        (2, 5, [2]),
        (0, 3, []),
    ],
)
def test_batch_plan(count, serial, expected):
    assert batch_plan(count, serial) == expected


@pytest.mark.parametrize(("count", "serial"), [("many", 1), (10, "abc"), (10, "12.5%"), (10, [1, None])])
def test_batch_plan_rejects_invalid_input(count, serial):
    with pytest.raises(AnsibleFilterError):
        batch_plan(count, serial)


HOSTVARS = {
    "acme": {"group_names": ["canary", "fleet", "tier2"], "fleetdeck_tier": 2},
    "globex": {"group_names": ["fleet", "tier2"], "fleetdeck_tier": 2, "fleetdeck_labels": {"channel": "early"}},
    "initech": {"group_names": ["fleet", "tier1"], "fleetdeck_tier": 1, "fleetdeck_labels": {"channel": "early"}},
    "umbrella": {"group_names": ["fleet", "tier1", "eu"], "fleetdeck_tier": 1},
    "hooli": {"group_names": ["fleet", "tier2"], "fleetdeck_tier": "2"},
    "wonka": {"group_names": ["fleet", "tier2"], "fleetdeck_tier": 2},
}
HOSTS = ["wonka", "umbrella", "initech", "hooli", "globex", "acme"]  # play order


def test_release_rings_in_order_first_match_wins():
    rings = [{"name": "early", "labels": {"channel": "early"}, "tier": 2}, {"name": "eu", "group": "eu"},
             {"name": "tier1", "tier": 1}, {"name": "nobody", "group": "absent"}]
    plan = release_rings(HOSTS, HOSTVARS, rings, "50%")
    assert plan["rings"] == [
        {"name": "canary", "hosts": ["acme"], "soak": True},
        {"name": "early", "hosts": ["globex"], "soak": True},  # initech has the label but tier 1
        {"name": "eu", "hosts": ["umbrella"], "soak": True},
        {"name": "tier1", "hosts": ["initech"], "soak": True},
        {"name": "rest", "hosts": ["wonka", "hooli"], "soak": False},  # nobody is empty: left out
    ]
    assert plan["hosts"] == ["acme", "globex", "umbrella", "initech", "wonka", "hooli"]
    assert plan["serial"] == [1, 1, 1, 1, 1, 1]  # 50% of the 2 in rest


@pytest.mark.parametrize(
    ("hosts", "rings", "batches", "serial"),
    [
        (HOSTS, None, None, [1, 5]),  # no rings: canary, then the rest in one batch
        (HOSTS, [], [1, "100%"], [1, 1, 4]),
        (HOSTS, [{"name": "t2", "tier": 2}], "25%", [1, 3, 1, 1]),  # tier "2" matches 2
        (["acme"], [{"name": "t2", "tier": 2}], 1, [1]),
        ([], [{"name": "t2", "tier": 2}], 1, []),
    ],
)
def test_release_rings_serial_matches_the_ring_sizes(hosts, rings, batches, serial):
    plan = release_rings(hosts, HOSTVARS, rings, batches)
    assert plan["serial"] == serial
    assert sum(serial) == len(plan["hosts"]) == len(hosts)
    soaked = [ring for ring in plan["rings"] if ring["soak"]]
    assert [len(ring["hosts"]) for ring in soaked] == serial[:len(soaked)]


@pytest.mark.parametrize(
    ("rings", "message"),
    [
        ({"name": "early"}, "rollout_rings: expected a list of rings, got dict"),
        (["early"], "rollout_rings[0]: expected a mapping"),
        ([{"tier": 1}], "rollout_rings[0]: name: None is not a ring name"),
        ([{"name": "Early-1", "tier": 1}], "rollout_rings[0]: name: 'Early-1' is not a ring name"),
        ([{"name": "rest", "tier": 1}], "rollout_rings[0]: name: rest is used twice or reserved"),
        ([{"name": "a", "tier": 1}, {"name": "a", "tier": 2}], "rollout_rings[1]: name: a is used twice"),
        ([{"name": "a", "teir": 1}], "rollout_rings[0] (a): unknown key teir (a ring selects by group, tier, labels)"),
        ([{"name": "a"}], "rollout_rings[0] (a): selects nothing"),
        ([{"name": "a", "labels": "early"}], "rollout_rings[0] (a): labels: expected a mapping"),
    ],
)
def test_release_rings_refuses_bad_definitions_naming_the_ring(rings, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        release_rings(HOSTS, HOSTVARS, rings)


def test_release_rings_names_a_host_with_bad_labels():
    hostvars = HOSTVARS | {"wonka": {"group_names": ["fleet"], "fleetdeck_labels": ["early"]}}
    with pytest.raises(AnsibleFilterError, match=re.escape("wonka: fleetdeck_labels: expected a mapping")):
        release_rings(HOSTS, hostvars, [{"name": "early", "labels": {"channel": "early"}}])


def test_redact_text_and_url_encoded_forms():
    text = "postgres://app:p@ss w0rd@db/app?password=p%40ss+w0rd&x=p%40ss%20w0rd"
    assert redact(text, ["p@ss w0rd"]) == "postgres://app:********@db/app?password=********&x=********"


def test_redact_recurses_and_keeps_structure():
    data = {"cmd": "login s3cret", "env": [{"TOKEN": "s3cret"}, ("a", "b s3cret")], "port": 5432,
            "s3cret": None}
    assert redact(data, ["s3cret"]) == {
        "cmd": "login ********",
        "env": [{"TOKEN": "********"}, ["a", "b ********"]],
        "port": 5432,
        "s3cret": None,
    }


def test_redact_ignores_empty_secrets_and_masks_longest_first():
    assert redact("abc abcdef", ["", None, "abc", "abcdef"]) == "******** ********"
    assert redact("nothing to hide", []) == "nothing to hide"
    assert redact("pin 1234", 1234) == "pin ********"


def test_release_summary_rows_sorted():
    facts = {
        "web2": {"current": "1.2.0", "previous": "1.1.0", "history": [
            {"version": "1.1.0", "at": "2025-01-01T10:00:00Z"},
            {"version": "1.2.0", "at": "2025-02-01T10:00:00Z", "by": "alice"},
        ]},
        "web1": {"current": "1.0.0", "previous": None, "history": []},
        "web3": None,
    }
    assert release_summary(facts) == [
        {"instance": "web1", "current": "1.0.0", "previous": None, "last_change": None},
        {"instance": "web2", "current": "1.2.0", "previous": "1.1.0", "last_change": "2025-02-01T10:00:00Z"},
        {"instance": "web3", "current": None, "previous": None, "last_change": None},
    ]


def test_release_summary_from_hostvars_like_mapping():
    hostvars = {"b": {"fleetdeck_release": {"current": "2"}}, "a": {"other": 1}}
    assert release_summary(hostvars, "fleetdeck_release") == [
        {"instance": "a", "current": None, "previous": None, "last_change": None},
        {"instance": "b", "current": "2", "previous": None, "last_change": None},
    ]
    with pytest.raises(AnsibleFilterError):
        release_summary(["not", "a", "mapping"])


def test_filter_module_exposes_all_filters():
    filters = {"batch_plan", "release_rings", "redact", "release_summary", "hmac_sha256", "sha256_for"}
    assert set(FilterModule().filters()) == filters


PLAYBOOK = """
- hosts: fleet
  gather_facts: false
  serial: {serial}
  tasks:
    - name: record the real batch size
      ansible.builtin.shell: "echo {{{{ ansible_play_batch | length }}}} >> {out}/batches"
      delegate_to: localhost
      run_once: true

- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        dest: "{out}/filters.json"
        content: >-
          {{{{ {{
            "plan": groups.fleet | length | fleetdeck.lifecycle.batch_plan({serial}),
            "redacted": {{"url": "https://u:pa ss@h/", "list": ["pa ss"]}}
                        | fleetdeck.lifecycle.redact(["pa ss"]),
            "rows": hostvars | fleetdeck.lifecycle.release_summary("release")
          }} | to_json }}}}
"""


@pytest.mark.parametrize("serial", ['[1, "25%", "100%"]', '"30%"', "4"])
def test_filters_in_a_real_playbook(tmp_path, serial):
    hosts = "\n".join(f"h{i:02d}" for i in range(10))
    (tmp_path / "inventory").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        f"[fleet]\n{hosts}\n"
        f"[fleet:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n"
        'release={"current": "1.0", "history": [{"version": "1.0", "at": "2025-03-01T00:00:00Z"}]}\n'
    )
    (tmp_path / "play.yml").write_text(PLAYBOOK.format(serial=serial, out=tmp_path))
    env = cli_env(ANSIBLE_CONFIG=str(tmp_path / "none.cfg"))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventory", "play.yml"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    real_batches = [int(line) for line in (tmp_path / "batches").read_text().split()]
    result = json.loads((tmp_path / "filters.json").read_text())
    assert result["plan"] == real_batches
    assert result["redacted"] == {"url": "https://u:********@h/", "list": ["********"]}
    assert len(result["rows"]) == 11  # the ten fleet hosts and localhost
    assert result["rows"][0] == {"instance": "h00", "current": "1.0", "previous": None,
                                 "last_change": "2025-03-01T00:00:00Z"}
    assert result["rows"][-1]["instance"] == "localhost"


def test_hmac_sha256_matches_the_standard_library():
    import hashlib
    import hmac

    expected = hmac.new(b"shared", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert hmac_sha256("1700000000.{}", "shared") == expected
    with pytest.raises(AnsibleFilterError, match="the key is empty"):
        hmac_sha256("message", "")


SUM = "ab" * 32


@pytest.mark.parametrize("text", [
    f"{SUM}  app-1.0.tar.gz\n",
    f"{SUM} *app-1.0.tar.gz\n",
    f"{SUM}  ./app-1.0.tar.gz\r\n",
    f"SHA256 (app-1.0.tar.gz) = {SUM.upper()}\n",
    f"{'cd' * 32}  app-0.9.tar.gz\n{SUM}  app-1.0.tar.gz\n",  # a SHA256SUMS file of several artifacts
])
def test_sha256_for_reads_the_line_naming_the_artifact(text):
    assert sha256_for(text, "app-1.0.tar.gz") == SUM


@pytest.mark.parametrize(("text", "message"), [
    (f"{SUM}  app-0.9.tar.gz\n", "dist/app-1.0.tar.gz.sha256 is for app-0.9.tar.gz, not for app-1.0.tar.gz"),
    (f"{SUM}  dist/app-1.0.tar.gz\n", "is for dist/app-1.0.tar.gz, not for app-1.0.tar.gz"),
    (f"{SUM}\n", "dist/app-1.0.tar.gz.sha256: no properly formatted SHA256 checksum line"),
    ("", "no properly formatted SHA256 checksum line"),
    (f"{SUM[:-1]}  app-1.0.tar.gz\n", "no properly formatted SHA256 checksum line"),
    (f"{SUM}  app-1.0.tar.gz\n{'cd' * 32}  app-1.0.tar.gz\n", "gives app-1.0.tar.gz 2 different sha256 sums"),
])
def test_sha256_for_refuses_a_file_that_does_not_name_the_artifact(text, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        sha256_for(text, "app-1.0.tar.gz", "dist/app-1.0.tar.gz.sha256")
