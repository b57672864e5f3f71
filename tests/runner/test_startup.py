"""Every start-up refusal rule of docs/runner.md, through the real `fleetdeck-runner` entry point: exit
status 2 and a message naming the rule. No test hosts. Also the token rules' promise that random tokens
pass."""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
import subprocess

import pytest
from fleetdeck.service import secret_rules
from fleetdeck.service.config import ConfigError, from_env
from werkzeug.security import check_password_hash

from tests.playbook import BIN
from tests.runner.service import make_local_env

URLSAFE = string.ascii_letters + string.digits + "-_"
GOOD = "Q3k9-vT2x_Lm8pW4zR7nY1bC6dF0hJ5s"


def tokens(*entries: dict) -> dict[str, str]:
    return {"FLEETDECK_RUNNER_TOKENS": json.dumps(list(entries))}


def token(value, name="ci") -> dict[str, str]:
    return tokens({"name": name, "token": value, "scopes": ["read"]})


def sha256(value: str) -> dict[str, str]:
    return tokens({"name": "ci", "sha256": hashlib.sha256(value.encode()).hexdigest(), "scopes": ["read"]})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Configuration is refused before a store is opened: these tests need no second store."""
    return make_local_env(tmp_path_factory.mktemp("runner"))


def refuse(env, change: dict[str, str | None], args=(), stdin: str | None = None) -> str:
    """Run the entry point with `change` applied (None removes a variable): exit 2, its stderr."""
    full = {**os.environ, **env.env, **change}
    full = {k: v for k, v in full.items() if v is not None}
    proc = subprocess.run(
        [str(BIN / "fleetdeck-runner"), *args], env=full, input=stdin, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    return proc.stderr


RULES = [
    # (rule as docs/runner.md names it, environment change, text of the refusal)
    ("no-tokens", {"FLEETDECK_RUNNER_TOKENS": None}, "no tokens"),
    ("no-tokens", {"FLEETDECK_RUNNER_TOKENS": ""}, "no tokens"),
    ("tokens-json", {"FLEETDECK_RUNNER_TOKENS": "[{"}, "tokens: not JSON"),
    ("tokens-list", {"FLEETDECK_RUNNER_TOKENS": "[]"}, "need a non-empty JSON list"),
    ("tokens-list", {"FLEETDECK_RUNNER_TOKENS": '{"name": "ci"}'}, "tokens: need a JSON list"),
    ("token-name", tokens({"token": GOOD, "scopes": ["read"]}), "tokens[0]: needs a name"),
    (
        "token-name",
        tokens(
            {"name": "a", "token": GOOD, "scopes": ["read"]}, {"name": "a", "token": GOOD[::-1], "scopes": ["read"]}
        ),
        "duplicate name 'a'",
    ),
    ("token-scopes", tokens({"name": "ci", "token": GOOD, "scopes": []}), "scopes must be a non-empty list"),
    ("token-scopes", tokens({"name": "ci", "token": GOOD, "scopes": ["root"]}), "unknown scope 'root'"),
    ("token-value", tokens({"name": "ci", "scopes": ["read"]}), "needs `token` or a 64-hex-digit `sha256`"),
    ("token-value", tokens({"name": "ci", "sha256": "abc", "scopes": ["read"]}), "64-hex-digit"),
    ("token-value", token(12345678901234567890123456789012345), "`token` must be a string"),
    ("empty", token(""), "rule empty"),
    ("empty", token("   "), "rule empty"),
    ("empty", token("\u2003\u2003\u3000"), "rule empty"),
    ("not-b64token", token(f"{GOOD} x"), "rule not-b64token"),
    ("not-b64token", token(f"\u00a0{GOOD}"), "rule not-b64token"),
    ("not-b64token", token(f"{GOOD}\u00e9"), "rule not-b64token"),
    ("too-short", token("Q3k9-vT2x_Lm8pW4"), "rule too-short: 16 characters, at least 32"),
    ("low-variety", token("x" * 40), "rule low-variety"),
    ("low-variety", token("changeme" * 5), "rule low-variety"),
    ("repeated-pattern", token("adminadminadmin-Xk29fj3LqP0zR8tq9"), "rule repeated-pattern: 'admin' 3 times"),
    ("repeated-pattern", token("Tr0ub4dor3Tr0ub4dor3Tr0ub4dor3xyz"), "rule repeated-pattern"),
    ("predictable", token("please-change-this-secret-value-now"), "rule predictable: 'please', 'change'"),
    ("predictable", token("correct-horse-battery-staple-is-great"), "rule predictable"),
    ("predictable", token("yrettab-esroh-tcerroc-elpats-taerg"), "rule predictable"),
    ("predictable", token("c0rr3ct-h0rs3-b4tt3ry-st4pl3-gr34t"), "rule predictable"),
    ("predictable", token("qwertyuiopasdfghjklzxcvbnm123456"), "rule predictable"),
    ("predictable", token("abcdefghijklmnopqrstuvwxyz012345"), "rule predictable"),
    ("weak-hash", sha256(""), "rule weak-hash: it is the sha256 of ''"),
    ("weak-hash", sha256("\u2003"), "rule weak-hash"),
    ("weak-hash", sha256("password"), "rule weak-hash: it is the sha256 of 'password'"),
    (
        "duplicate",
        tokens({"name": "a", "token": GOOD, "scopes": ["read"]}, {"name": "b", "token": GOOD, "scopes": ["admin"]}),
        "token 'b' is refused by rule duplicate: the same token as 'a'",
    ),
    ("secret-rules", {"FLEETDECK_HOOK_SECRET": "short-secret"}, "FLEETDECK_HOOK_SECRET is refused by rule too-short"),
    ("secret-rules", {"FLEETDECK_HOOK_SECRET": " \u2003 "}, "FLEETDECK_HOOK_SECRET is refused by rule empty"),
    (
        "secret-rules",
        {"FLEETDECK_HUB_URL": "http://127.0.0.1:9/x", "FLEETDECK_HUB_SECRET": "secret" * 6},
        "FLEETDECK_HUB_SECRET is refused by rule",
    ),
    ("secret-file", {"FLEETDECK_HOOK_SECRET_FILE": "/nonexistent/hook-secret"}, "cannot read /nonexistent/hook-secret"),
    ("hub-secret", {"FLEETDECK_HUB_URL": "http://127.0.0.1:9/x"}, "without FLEETDECK_HUB_SECRET"),
    ("inventory", {"FLEETDECK_INVENTORY": None}, "FLEETDECK_INVENTORY is not set"),
    ("database-url", {"FLEETDECK_DATABASE_URL": "mysql://runner@db/fleetdeck"}, "must be a postgresql:// URL"),
    ("database-url", {"FLEETDECK_DATABASE_URL": "postgresql://u:pw@db/x?no_such_option=1"},
     "FLEETDECK_DATABASE_URL: not a valid PostgreSQL connection URL"),
    ("numbers", {"FLEETDECK_RUNNER_CONNECTIONS": "many"}, "FLEETDECK_RUNNER_CONNECTIONS: not a number"),
    ("numbers", {"FLEETDECK_RUNNER_MAX_CONCURRENT": "0"}, "FLEETDECK_RUNNER_MAX_CONCURRENT: must be a positive"),
    ("numbers", {"FLEETDECK_RUNNER_CANCEL_GRACE": "nan"}, "FLEETDECK_RUNNER_CANCEL_GRACE: must be a positive"),
    ("numbers", {"FLEETDECK_HOOK_WINDOW": "inf"}, "FLEETDECK_HOOK_WINDOW: must be a positive"),
    ("numbers", {"FLEETDECK_REPLICA_TIMEOUT": "0"}, "FLEETDECK_REPLICA_TIMEOUT: must be a positive"),
    ("tag-pattern", {"FLEETDECK_HOOK_TAG_PATTERN": "refs/tags/(v"}, "not a regular expression"),
    ("tag-pattern", {"FLEETDECK_HOOK_TAG_PATTERN": r"^refs/tags/v\d+$"}, "needs a group"),
    ("console-users", {"FLEETDECK_CONSOLE_USERS": json.dumps([{"name": "ops", "password_hash": "hunter2",
                                                                "scopes": ["read"]}])},
     "password_hash must be a werkzeug scrypt or pbkdf2 hash"),
    ("console-users", {"FLEETDECK_CONSOLE_USERS": "{"}, "FLEETDECK_CONSOLE_USERS: not JSON"),
    ("execution-nodes", {"FLEETDECK_EXECUTION_NODES": json.dumps([{"name": "eu-1"}])},
     "FLEETDECK_EXECUTION_NODES: node 'eu-1': host is required"),
    ("execution-nodes", {"FLEETDECK_EXECUTION_NODES": "[{"}, "FLEETDECK_EXECUTION_NODES: not JSON"),
    ("execution-nodes", {"FLEETDECK_EXECUTION_NODES": json.dumps([{"name": "eu 1", "host": "10.0.0.1"}])},
     "node 'eu 1': name must be"),
    ("execution-nodes", {"FLEETDECK_EXECUTION_NODES": json.dumps([{"name": "eu-1", "host": "h", "hostname": "h"}])},
     "node 'eu-1': unknown field(s) hostname"),
    ("execution-nodes", {"FLEETDECK_EXECUTION_NODES": json.dumps([{"name": "eu-1", "host": "h", "port": "22"}])},
     "node 'eu-1': port must be an integer from 1 to 65535"),
    ("execution-nodes", {"FLEETDECK_EXECUTION_NODES": json.dumps([{"name": "eu-1", "host": "h"}])},
     "node 'eu-1': known_hosts"),
    ("execution-nodes", {"FLEETDECK_EXECUTION_NODES": json.dumps([{"name": "eu-1", "host": "h",
                                                                   "identity_file": "/nonexistent/key"}])},
     "node 'eu-1': identity_file /nonexistent/key is not a readable file"),
    ("console-users", {"FLEETDECK_CONSOLE_USERS": json.dumps([{"name": "ops", "password_hash": "scrypt:1$a$b",
                                                                "scopes": ["root"]}])},
     "scopes must be a non-empty list"),
]


FIRST = {}
for _rule in RULES:
    FIRST.setdefault(_rule[0], _rule)


@pytest.mark.parametrize(("rule", "change", "message"), FIRST.values(), ids=list(FIRST))
def test_the_runner_refuses_to_start(env, rule, change, message):
    stderr = refuse(env, change)
    assert "fleetdeck-runner: refusing to start:" in stderr and message in stderr, stderr


@pytest.mark.parametrize(
    ("rule", "change", "message"), RULES, ids=[f"{r[0]}-{i}" for i, r in enumerate(RULES)]
)
def test_more_examples_of_each_rule(env, rule, change, message):
    """The same rules in-process (`from_env` is what the entry point calls), for more examples per rule."""
    full = {k: v for k, v in {**env.env, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as refused:
        from_env(full)
    assert message in str(refused.value)


def test_an_unreadable_secret_file_is_named(env, tmp_path):
    binary = tmp_path / "secret"
    binary.write_bytes(b"\xff\xfe" * 20)
    assert "is not UTF-8 text" in refuse(env, {"FLEETDECK_HOOK_SECRET_FILE": str(binary)})


def test_hash_token_applies_the_same_rules(env):
    assert "rule predictable" in refuse(env, {}, ["hash-token"], stdin="please-change-this-secret-value-now\n")
    good = subprocess.run(
        [str(BIN / "fleetdeck-runner"), "hash-token"], input=f"{GOOD}\n", capture_output=True, text=True, timeout=60
    )
    assert good.returncode == 0 and good.stdout.strip() == hashlib.sha256(GOOD.encode()).hexdigest()


def test_hash_password_applies_the_rules_and_makes_a_werkzeug_hash(env):
    assert "rule too-short" in refuse(env, {}, ["hash-password"], stdin="hunter2\n")
    made = subprocess.run([str(BIN / "fleetdeck-runner"), "hash-password"], input=f"{GOOD}\n", capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0 and made.stdout.startswith("scrypt:")
    assert check_password_hash(made.stdout.strip(), GOOD) and GOOD not in made.stdout


def test_unknown_arguments_are_a_usage_error(env):
    assert "usage: fleetdeck-runner" in refuse(env, {}, ["serve"])


def test_every_rule_is_in_the_docs(repo):
    documented = (repo / "docs" / "runner.md").read_text()
    for rule in {r[0] for r in RULES}:
        assert f"`{rule}`" in documented, rule


@pytest.mark.parametrize(("alphabet", "length"), [(URLSAFE, 43), (URLSAFE, 32), ("0123456789abcdef", 32)])
def test_random_tokens_pass_the_rules(alphabet, length):
    """What `secrets.token_urlsafe(32)`, `token_urlsafe(24)` and `token_hex(16)` make, from a seeded
    generator so that the test is repeatable: none of 300 is refused."""
    generator = random.Random(f"{alphabet}{length}")  # noqa: S311 - repeatable on purpose
    values = ["".join(generator.choices(alphabet, k=length)) for _ in range(300)]
    assert [(v, p) for v in values if (p := secret_rules.problem(v, bearer=True))] == []
