"""Inbound git webhooks (signature, replay) and outbound signed completion callbacks to a local hub.
No test hosts: the upgrade the hook starts is the test `ping` playbook on `ansible_connection: local` hosts."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.runner.service import app_for, in_process, make_local_env, wait_until

HOOK_SECRET = secrets.token_hex(24)
HUB_SECRET = secrets.token_hex(24)
JSON = "application/json"
RECEIVED: list[dict] = []  # what the hub was sent, each attempt


class Hub(BaseHTTPRequestHandler):
    """Answers 503 to the first attempt of each delivery, 204 afterwards; keeps what it received."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        first = not any(r["delivery"] == self.headers["X-Fleetdeck-Delivery"] for r in RECEIVED)
        RECEIVED.append(
            {
                "delivery": self.headers["X-Fleetdeck-Delivery"],
                "body": body,
                "timestamp": self.headers["X-Fleetdeck-Timestamp"],
                "signature": self.headers["X-Fleetdeck-Signature"],
            }
        )
        self.send_response(503 if first else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def env(runner_store, tmp_path_factory):
    with in_process(make_local_env(tmp_path_factory.mktemp("runner"), runner_store)) as runner_env:
        yield runner_env


@pytest.fixture(scope="module")
def app(env, hub):
    with app_for(
        env,
        FLEETDECK_HOOK_SECRET=HOOK_SECRET,
        FLEETDECK_HOOK_TARGET="testfleet",
        FLEETDECK_HUB_URL=f"http://127.0.0.1:{hub.server_port}/runs",
        FLEETDECK_HUB_SECRET=HUB_SECRET,
        FLEETDECK_HUB_BACKOFF="0.2",
    ) as application:
        yield application


def push(tag: str, pushed_at: float | None = None) -> bytes:
    return json.dumps(
        {
            "ref": f"refs/tags/{tag}",
            "repository": {"full_name": "ops/app", "pushed_at": int(pushed_at or time.time())},
        }
    ).encode()


def github(body: bytes, delivery: str, secret: str = HOOK_SECRET) -> dict:
    return {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


def gitea(body: bytes, delivery: str) -> dict:
    return {
        "X-Gitea-Event": "push",
        "X-Gitea-Delivery": delivery,
        "Content-Type": "application/json",
        "X-Gitea-Signature": hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }


def run_count(client, env) -> int:
    return len(client.get("/v1/runs?limit=500", headers=env.auth()).get_json()["runs"])


def test_signed_tag_push_starts_a_canary_upgrade_and_the_hub_gets_a_signed_retried_callback(client, env, hub):
    body = push("v1.4.2")
    response = client.post("/v1/hooks/git", data=body, headers=github(body, "d-1"))
    assert response.status_code == 202, response.get_json()
    run = response.get_json()
    assert (run["action"], run["target"], run["params"]) == (
        "canary_upgrade",
        "testfleet",
        {"app_version": "1.4.2"},
    )
    assert run["operator"] == "git-hook" and run["source"] == "hook:d-1"

    attempts = wait_until(
        lambda: (lambda mine: mine if len(mine) >= 2 else None)(
            [r for r in RECEIVED if json.loads(r["body"])["run"]["id"] == run["id"]]
        ),
        timeout=90,
    )
    assert len(attempts) == 2 and attempts[0]["delivery"] == attempts[1]["delivery"]
    for attempt in attempts:
        expected = hmac.new(
            HUB_SECRET.encode(), attempt["timestamp"].encode() + b"." + attempt["body"], hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(attempt["signature"], f"sha256={expected}")
        assert abs(time.time() - int(attempt["timestamp"])) < 60
    assert json.loads(attempts[-1]["body"])["run"]["status"] == "successful"
    store = client.application.extensions["fleetdeck"].store
    [recorded] = wait_until(
        lambda: [c for c in store.callbacks(run_id=run["id"]) if c["state"] == "delivered"]
    )
    assert recorded["attempts"] == 2 and recorded["last_status"] == 204


def test_gitea_signature_is_accepted(client, env):
    body = push("2.0.0")
    response = client.post("/v1/hooks/git", data=body, headers=gitea(body, "gitea-1"))
    assert response.status_code == 202, response.get_json()


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        (lambda body: github(body, "bad-1", secret="wrong" * 8), 401, "bad_signature"),
        (lambda body: {"X-GitHub-Delivery": "none-1"}, 401, "missing_signature"),
        (
            lambda body: {
                **github(body, "x"),
                "X-Hub-Signature-256": github(body, "x")["X-Hub-Signature-256"][7:],
            },
            401,
            "bad_signature",
        ),
    ],
)
def test_bad_signatures_are_refused_and_nothing_runs(client, env, headers, status, code):
    before = run_count(client, env)
    body = push("v3.0.0")
    response = client.post("/v1/hooks/git", data=body, headers=headers(body))
    assert response.status_code == status and response.get_json()["error"]["code"] == code
    assert run_count(client, env) == before


def test_replayed_and_stale_deliveries_are_refused(client, env):
    body = push("v3.1.0")
    first = client.post("/v1/hooks/git", data=body, headers=github(body, "replay-1"))
    assert first.status_code == 202
    before = run_count(client, env)
    replay = client.post("/v1/hooks/git", data=body, headers=github(body, "replay-1"))
    assert replay.status_code == 409 and replay.get_json()["error"]["code"] == "replayed_delivery"
    stale = push("v3.1.1", pushed_at=time.time() - 3600)
    old = client.post("/v1/hooks/git", data=stale, headers=github(stale, "stale-1"))
    assert old.status_code == 409 and old.get_json()["error"]["code"] == "stale_delivery"
    assert run_count(client, env) == before


def test_non_tag_pushes_and_pings_start_nothing(client, env):
    before = run_count(client, env)
    branch = json.dumps({"ref": "refs/heads/main", "repository": {"pushed_at": int(time.time())}}).encode()
    assert "ignored" in client.post("/v1/hooks/git", data=branch, headers=github(branch, "b-1")).get_json()
    ping = b'{"zen": "hi"}'
    assert (
        client.post(
            "/v1/hooks/git", data=ping, headers={**github(ping, "p-1"), "X-GitHub-Event": "ping"}
        ).status_code
        == 200
    )
    bad_tag = push("v1.2")
    assert (
        client.post("/v1/hooks/git", data=bad_tag, headers=github(bad_tag, "t-1")).get_json().get("ignored")
    )
    assert run_count(client, env) == before


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"ref": "refs/tags/v1.0.0", "repository": "ops/app"}', "application/json", 400, "missing_push_time"),
        (b'{"ref": "refs/tags/v1.0.0", "repository": {"pushed_at": 1e300}}', JSON, 400, "missing_push_time"),
        (b"[1, 2]", "application/json", 400, "invalid_body"),
        (b"{nope", "application/json", 400, "invalid_json"),
        (b"payload=%7B%7D", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_signed_but_malformed_payloads_are_4xx(client, env, body, content_type, status, code):
    before = run_count(client, env)
    headers = {**github(body, f"bad-{code}-{len(body)}"), "Content-Type": content_type}
    response = client.post("/v1/hooks/git", data=body, headers=headers)
    assert response.status_code == status and response.get_json()["error"]["code"] == code, response.get_json()
    assert run_count(client, env) == before
