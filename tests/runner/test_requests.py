"""What the API answers to every kind of request, good and bad, through Flask's test client. No test
hosts: the inventory's hosts are `ansible_connection: local`, so the runs started here are real."""

from __future__ import annotations

import shutil

import pytest

from tests.runner.service import LOCAL_HOSTS, app_for, in_process, make_local_env, wait_until

ACTIVE = ("queued", "waiting", "running")


@pytest.fixture(scope="module")
def env(runner_store, tmp_path_factory):
    with in_process(make_local_env(tmp_path_factory.mktemp("runner"), runner_store)) as runner_env:
        yield runner_env


def finished(client, env, run_id, timeout=60):
    def done():
        run = client.get(f"/v1/runs/{run_id}", headers=env.auth()).get_json()
        return run if run["status"] not in ACTIVE else None

    return wait_until(done, timeout)


def run_count(client, env) -> int:
    return len(client.get("/v1/runs?limit=500", headers=env.auth()).get_json()["runs"])


def is_api_error(response, status: int, code: str | None = None) -> dict:
    """The response is the API's JSON error with this status (and code); its error object."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code, error
    return error


def test_a_valid_request_starts_a_real_run(client, env):
    response = client.post("/v1/runs", json={"action": "ping", "target": "testfleet"}, headers=env.auth("pinger"))
    assert response.status_code == 202, response.get_json()
    run = response.get_json()
    assert response.headers["Location"] == f"/v1/runs/{run['id']}"
    assert run["instances"] == list(LOCAL_HOSTS) and run["operator"] == "pinger" and run["source"] == "api"
    done = finished(client, env, run["id"])
    assert done["status"] == "successful", done
    assert set(done["hosts"]) == set(LOCAL_HOSTS)


BAD_RUN_REQUESTS = [
    ({"action": "nope", "target": "testfleet"}, 404, "unknown_action", "unknown action 'nope'; available: "),
    ({"action": "deploy", "target": "testfleet"}, 404, "action_unavailable", "not-written-yet.yml is not in the"),
    ({"action": 5, "target": "testfleet"}, 422, "invalid_field", "action must be a string"),
    ({"action": None, "target": "testfleet"}, 422, "invalid_field", "action must be a string"),
    (
        {"action": "ping", "target": "testfleet", "params": {"colour": "red"}},
        422,
        "invalid_params",
        "unknown parameter(s) colour; ping accepts: note",
    ),
    ({"action": "ping", "target": "testfleet", "params": {"note": 5}}, 422, "invalid_params", "parameter note: 5"),
    ({"action": "ping", "target": "testfleet", "params": "x"}, 422, "invalid_params", "params must be a JSON object"),
    (
        {"action": "sleep", "target": "local-1", "params": {"sleep_seconds": 1.5}},
        422,
        "invalid_params",
        "parameter sleep_seconds: 1.5 is not of type 'integer'",
    ),
    ({"action": "ping", "target": "nohost"}, 422, "unknown_target", "target 'nohost' is neither a host nor a group"),
    ({"action": "ping", "target": "local-1,local-2"}, 422, "unknown_target", "is neither a host nor a group"),
    ({"action": "ping", "target": "local-*"}, 422, "unknown_target", "is neither a host nor a group"),
    ({"action": "ping", "target": ""}, 422, "unknown_target", "is neither a host nor a group"),
    ({"action": "ping", "target": ["local-1"]}, 422, "invalid_field", "target must be a string"),
    ({"action": "sleep", "target": "all"}, 422, "target_not_allowed", "sleep may target instance, group; 'all' is a"),
    ({"action": "ping", "target": "testfleet", "extra": 1}, 400, "unknown_field", "unknown field(s) extra; allowed"),
    ({"action": "ping"}, 400, "missing_field", "required field(s) missing: target"),
    ({}, 400, "missing_field", "required field(s) missing: action, target"),
    ({"action": "ping", "target": "testfleet", "check": "yes"}, 422, "invalid_field", "check must be true or false"),
    ({"action": "ping", "target": "testfleet", "wait": 1}, 422, "invalid_field", "wait must be true or false"),
]


@pytest.mark.parametrize(("body", "status", "code", "fragment"), BAD_RUN_REQUESTS)
def test_bad_run_requests_are_refused_precisely_and_nothing_runs(client, env, body, status, code, fragment):
    before = run_count(client, env)
    error = is_api_error(client.post("/v1/runs", json=body, headers=env.auth()), status, code)
    assert fragment in error["message"]
    assert run_count(client, env) == before


def test_each_error_code_has_one_status():
    statuses: dict[str, set[int]] = {}
    for _, status, code, _ in BAD_RUN_REQUESTS:
        statuses.setdefault(code, set()).add(status)
    assert all(len(s) == 1 for s in statuses.values()), statuses


def test_invalid_params_lists_every_violation(client, env):
    error = is_api_error(
        client.post(
            "/v1/runs",
            json={"action": "sleep", "target": "local-1", "params": {"sleep_seconds": 0, "x": 1}},
            headers=env.auth(),
        ),
        422,
        "invalid_params",
    )
    assert len(error["errors"]) == 2 and any("unknown parameter(s) x" in e for e in error["errors"])


def test_a_huge_value_is_not_echoed_whole(client, env):
    error = is_api_error(
        client.post("/v1/runs", json={"action": "ping", "target": "ü" * 5000}, headers=env.auth()),
        422,
        "unknown_target",
    )
    assert len(error["message"]) < 400


JSON = "application/json"
PING = b'{"action": "ping", "target": "local-1", "params": {"note": %s}}'


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"not json", JSON, 400, "invalid_json"),
        (b"", JSON, 400, "invalid_json"),
        (b'{"action": "ping", "target": "local-1"', JSON, 400, "invalid_json"),
        (b'{"action": "\xff\xfe", "target": "local-1"}', JSON, 400, "invalid_json"),
        (b'{"action": "ping", "target": "\\ud800"}', JSON, 400, "invalid_json"),
        (PING % b"NaN", JSON, 400, "invalid_json"),
        (PING % b"-Infinity", JSON, 400, "invalid_json"),
        (PING % b"1e999", JSON, 400, "invalid_json"),
        (PING % (b"1" + b"0" * 5000), JSON, 400, "invalid_json"),
        (PING % (b"[" * 40 + b"]" * 40), JSON, 400, "invalid_json"),
        (b"[" * 60000, JSON, 400, "invalid_json"),
        (b'["ping", "local-1"]', JSON, 400, "invalid_body"),
        (b'"ping"', JSON, 400, "invalid_body"),
        (b"null", JSON, 400, "invalid_body"),
        (b'{"action": "ping", "target": "local-1"}', "text/plain", 415, "unsupported_media_type"),
        (b"action=ping&target=local-1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"action": "ping", "target": "local-1"}', None, 415, "unsupported_media_type"),
        (b"x" * (65 * 1024), JSON, 413, "request_entity_too_large"),
    ],
)
def test_bodies_that_are_no_run_request_get_a_json_error(client, env, data, content_type, status, code):
    headers = {**env.auth(), **({"Content-Type": content_type} if content_type else {})}
    before = run_count(client, env)
    is_api_error(client.post("/v1/runs", data=data, headers=headers), status, code)
    assert run_count(client, env) == before


def test_the_body_is_too_large_message(client, env):
    response = client.post("/v1/runs", data="x" * (65 * 1024), content_type="application/json", headers=env.auth())
    assert is_api_error(response, 413)["message"] == "request body too large"


@pytest.mark.parametrize(
    "query",
    [
        "limit=-1",
        "limit=0",
        "limit=501",
        "limit=1.5",
        "limit=1e2",
        "limit=abc",
        "limit=",
        "limit=%D9%A3",  # Arabic-Indic three: int() would take it
        "limit=1_0",
        "limit=+5",
        "limit=%205",
        "limit=99999999999999999999999999",
        "cursor=-5",
        "cursor=0",
        "cursor=9223372036854775808",
        "cursor=18446744073709551616",
        "cursor=nan",
        "cursor=0x10",
    ],
)
def test_odd_paging_values_are_400(client, env, query):
    is_api_error(client.get(f"/v1/runs?{query}", headers=env.auth()), 400, "invalid_argument")


def test_paging_bounds_are_accepted(client, env):
    assert client.get("/v1/runs?limit=500&cursor=9223372036854775807", headers=env.auth()).status_code == 200
    assert client.get("/v1/runs?limit=1&cursor=1", headers=env.auth()).get_json() == {"runs": [], "next_cursor": None}
    is_api_error(client.get("/v1/runs?status=bogus", headers=env.auth()), 400, "invalid_filter")


@pytest.fixture(scope="module")
def done_run(app, env):
    client = app.test_client()
    run = client.post("/v1/runs", json={"action": "ping", "target": "local-1"}, headers=env.auth()).get_json()
    return finished(client, env, run["id"])


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("after=-1", {}),
        ("after=1.0", {}),
        ("after=9223372036854775808", {}),
        ("limit=1001", {}),
        ("limit=0", {}),
        ("", {"Accept": "text/event-stream", "Last-Event-ID": "\u00b2"}),
        ("", {"Accept": "text/event-stream", "Last-Event-ID": "-1"}),
        ("", {"Accept": "text/event-stream", "Last-Event-ID": "99999999999999999999999"}),
        ("after=abc", {"Accept": "text/event-stream"}),
    ],
)
def test_odd_event_positions_are_400_not_a_broken_stream(client, env, done_run, query, headers):
    response = client.get(f"/v1/runs/{done_run['id']}/events?{query}", headers={**env.auth(), **headers})
    is_api_error(response, 400, "invalid_argument")


def test_events_page_and_stream_of_a_finished_run(client, env, done_run):
    page = client.get(f"/v1/runs/{done_run['id']}/events?limit=2", headers=env.auth("reader")).get_json()
    assert [e["seq"] for e in page["events"]] == [1, 2] and page["next_after"] == 2
    stream = client.get(
        f"/v1/runs/{done_run['id']}/events",
        headers={**env.auth(), "Accept": "text/event-stream", "Last-Event-ID": "2"},
    )
    text = stream.get_data(as_text=True)
    assert stream.mimetype == "text/event-stream" and "id: 3\n" in text and "id: 2\n" not in text
    assert text.rstrip().endswith('"status": "successful", "rc": 0}')


@pytest.mark.parametrize(
    "run_id",
    [
        "nope",
        "x" * 5000,
        "%C3%BCn%C3%AFc%C3%B6d%C3%A9-%F0%9F%92%A5",
        "..",
        "%2E%2E",
        "%00",
        "a%20b",
        "%FF%FE",
        "1;DROP TABLE runs",
    ],
)
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/events"), ("POST", "/cancel")])
def test_odd_run_ids_are_404(client, env, run_id, method, suffix):
    error = is_api_error(client.open(f"/v1/runs/{run_id}{suffix}", method=method, headers=env.auth()), 404)
    assert error["code"] in ("unknown_run", "not_found")
    assert len(error["message"]) < 400


@pytest.mark.parametrize(
    "path", ["/nope", "/v1", "/v1/runs/", "/v1/runs/x/nope", "/v1/runs/..%2F..%2Fetc%2Fpasswd", "/v1/actions/x"]
)
def test_unknown_paths_are_json_404(client, env, path):
    assert "openapi" in is_api_error(client.get(path, headers=env.auth()), 404, "not_found")["message"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/runs", {"GET", "POST"}),
        ("PUT", "/v1/runs/x", {"GET"}),
        ("GET", "/v1/runs/x/cancel", {"POST"}),
        ("POST", "/healthz", {"GET"}),
        ("PATCH", "/v1/hooks/git", {"POST"}),
    ],
)
def test_wrong_methods_are_json_405_with_allow(client, env, method, path, allowed):
    response = client.open(path, method=method, headers=env.auth())
    assert is_api_error(response, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_an_internal_error_is_json_and_tells_nothing(client, env, app, monkeypatch):
    def broken(*args):
        raise RuntimeError("/secret/path/in/a/traceback")

    monkeypatch.setattr(app.extensions["fleetdeck"].store, "list_runs", broken)
    error = is_api_error(client.get("/v1/runs", headers=env.auth()), 500, "internal_server_error")
    assert "secret" not in error["message"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer \t ",
        "Basic dXNlcjpwYXNz",
        "{token}",
        "Token {token}",
        "Bearer {token}x",
        "Bearer x{token}",
        "Bearer {token} {token}",
        # Unicode whitespace is not stripped; as str (test client) and as a real server hands it over
        # (UTF-8 bytes decoded as latin-1).
        "Bearer \u2003",
        "Bearer \u2003".encode().decode("latin-1"),
        "Bearer \u00a0{token}",
        "Bearer {token}\u3000",
        "Bearer {token}" + "\u2003".encode().decode("latin-1"),
        "Bearer \u200b{token}",
    ],
)
def test_unauthenticated_requests_are_401(client, env, header):
    headers = {"Authorization": header.format(token=env.tokens["admin"])} if header is not None else {}
    response = client.get("/v1/runs", headers=headers)
    is_api_error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["Bearer {token}", "Bearer   {token}  ", "Bearer {token}\t", "bearer {token}", "BEARER {token}"]
)
def test_the_token_is_compared_as_sent_less_ascii_spaces(client, env, header):
    headers = {"Authorization": header.format(token=env.tokens["reader"])}
    assert client.get("/v1/runs", headers=headers).status_code == 200


def test_scopes(client, env):
    forbidden = client.post("/v1/runs", json={"action": "ping", "target": "local-1"}, headers=env.auth("reader"))
    assert "lacks scope 'run:ping'" in is_api_error(forbidden, 403, "forbidden")["message"]
    sleep = client.post("/v1/runs", json={"action": "sleep", "target": "local-1"}, headers=env.auth("pinger"))
    is_api_error(sleep, 403, "forbidden")
    is_api_error(client.get("/metrics"), 401, "unauthenticated")
    assert client.get("/metrics", headers=env.auth("reader")).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_authentication_comes_before_the_body_and_the_body_before_the_scope(client, env):
    garbage = {"data": b"{nope", "content_type": "application/json"}
    is_api_error(client.post("/v1/runs", **garbage), 401, "unauthenticated")
    is_api_error(client.post("/v1/runs", headers=env.auth("pinger"), **garbage), 400, "invalid_json")
    is_api_error(client.post("/v1/runs", json={"action": "sleep"}, headers=env.auth("pinger")), 403, "forbidden")


def test_runs_list_filters_and_pages(client, env):
    started = [  # one run per host: no lease stands between them, they run side by side
        client.post("/v1/runs", json={"action": "ping", "target": host}, headers=env.auth()).get_json()
        for host in LOCAL_HOSTS
    ]
    for run in started:
        finished(client, env, run["id"])
    first = client.get("/v1/runs?limit=2&action=ping", headers=env.auth("reader")).get_json()
    assert len(first["runs"]) == 2 and all(r["action"] == "ping" for r in first["runs"])
    second = client.get(f"/v1/runs?limit=2&action=ping&cursor={first['next_cursor']}", headers=env.auth()).get_json()
    assert second["runs"] and {r["id"] for r in first["runs"]}.isdisjoint(r["id"] for r in second["runs"])
    assert all(r["seq"] < first["next_cursor"] for r in second["runs"])
    by_target = client.get("/v1/runs?target=local-3&status=successful", headers=env.auth()).get_json()["runs"]
    assert by_target and all(r["target"] == "local-3" for r in by_target)


def test_cancel_a_finished_run_is_409(client, env, done_run):
    is_api_error(client.post(f"/v1/runs/{done_run['id']}/cancel", headers=env.auth()), 409, "not_active")


def test_actions_instances_readyz_metrics(client, env):
    actions = client.get("/v1/actions", headers=env.auth("reader")).get_json()
    assert {"smoke_check", "ping", "sleep"} <= {a["name"] for a in actions["actions"]}
    assert actions["missing"] == [{"name": "deploy", "playbook": "playbooks/not-written-yet.yml"}]
    instances = client.get("/v1/instances", headers=env.auth("reader")).get_json()["instances"]
    assert [i["name"] for i in instances] == list(LOCAL_HOSTS)
    assert all(i["groups"] == ["testfleet"] and i["leased_by"] is None for i in instances)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"]["catalog"]["missing_playbooks"] == {"deploy": "playbooks/not-written-yet.yml"}
    metrics = client.get("/metrics", headers=env.auth("reader")).get_data(as_text=True)
    assert 'fleetdeck_runner_runs_total{action="ping",status="successful"}' in metrics
    assert "fleetdeck_runner_active_leases 0.0" in metrics


def test_a_broken_inventory_is_503_naming_the_file_and_nothing_runs(runner_store, tmp_path):
    broken = make_local_env(tmp_path, runner_store)
    hosts_file = broken.inventory / "hosts.yml"
    hosts_file.write_text("all: [unclosed\n")
    with in_process(broken), app_for(broken) as application:
        client = application.test_client()
        started = client.post("/v1/runs", json={"action": "ping", "target": "local-1"}, headers=broken.auth())
        is_api_error(started, 503, "inventory_unavailable")
        assert str(hosts_file) in started.get_json()["error"]["message"]
        is_api_error(client.get("/v1/instances", headers=broken.auth()), 503, "inventory_unavailable")
        assert client.get("/v1/runs", headers=broken.auth()).get_json()["runs"] == []


def test_execution_nodes_come_from_group_vars_and_a_mix_or_an_unknown_node_is_refused(tmp_path):
    """Node selection ranks group vars as Ansible does (child group over parent, host vars over both); nothing
    connects here: refused requests start no run, and nodes.select is what runs.start calls."""
    from fleetdeck import inventory
    from fleetdeck.service import nodes
    from fleetdeck.service.config import ExecutionNode

    (tmp_path / "group_vars" / "region").mkdir(parents=True)
    (tmp_path / "host_vars" / "c").mkdir(parents=True)
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    fleet:\n      vars: {fleetdeck_execution_node: ''}\n      hosts: {a: , b: , c: , d: }\n"
        "      children:\n        region:\n          hosts: {b: , c: }\n")
    (tmp_path / "group_vars" / "region" / "main.yml").write_text("fleetdeck_execution_node: eu-1\n")
    (tmp_path / "host_vars" / "c" / "main.yml").write_text("fleetdeck_execution_node: eu-2\n")
    inv = inventory.load(tmp_path)
    assert [inv.host_var(h, nodes.NODE_VAR) for h in "abcd"] == ["", "eu-1", "eu-2", ""]
    known = (ExecutionNode("eu-1", "10.0.0.1"), ExecutionNode("eu-2", "10.0.0.2"))
    assert nodes.select(known, inv, ["b"]) == "eu-1"
    assert nodes.select(known, inv, ["a", "d"]) is None
    with pytest.raises(nodes.NodeRefused) as mixed:
        nodes.select(known, inv, ["a", "b", "c"])
    assert mixed.value.code == "mixed_execution_nodes"
    assert mixed.value.nodes == {"local": ["a"], "eu-1": ["b"], "eu-2": ["c"]}
    assert "(eu-1: b; eu-2: c; local: a)" in str(mixed.value)
    with pytest.raises(nodes.NodeRefused) as unknown:
        nodes.select(known[:1], inv, ["c"])
    assert unknown.value.code == "unknown_execution_node" and "eu-2" in str(unknown.value) and ": instance(s) c" in str(
        unknown.value)


def test_a_node_run_stages_the_project_content_and_the_inventory_but_no_password_file(tmp_path):
    from fleetdeck.service import nodes

    from tests.playbook import REPO

    inventory = tmp_path / "env"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text("all: {}\n")
    (inventory / "vault-pass").write_text("not for the node\n")
    private = tmp_path / "private"
    private.mkdir()
    nodes.stage(private, REPO, inventory, "tests/runner/playbooks/ping.yml", inventory / "vault-pass")
    staged = private / "project"
    assert sorted(p.name for p in staged.iterdir()) == ["ansible.cfg", "collections", "playbooks", "roles", "tests"]
    assert sorted(p.name for p in (staged / "tests/runner/playbooks").iterdir()) == sorted(
        p.name for p in (REPO / "tests/runner/playbooks").iterdir())
    assert [p.name for p in (staged / "tests").iterdir()] == ["runner"]
    assert sorted(p.name for p in (private / nodes.RETURNED / "inventory").iterdir()) == ["host_vars", "hosts.yml"]


def test_what_comes_back_from_a_node_is_applied_only_inside_the_inventory_and_the_store(tmp_path):
    """node_return.apply against what a node could send: a changed file, a new one, a conflict, a symlink,
    the vault password file and a backup the store already holds (the fleet test covers the real stream)."""
    from fleetdeck.service import node_return

    inventory, returned, store = tmp_path / "env", tmp_path / "returned", tmp_path / "store"
    (inventory / "host_vars" / "a").mkdir(parents=True)
    (inventory / "hosts.yml").write_text("all: {}\n")
    (inventory / "host_vars" / "a" / "main.yml").write_text("v: 1\n")
    (inventory / "host_vars" / "a" / "other.yml").write_text("w: 1\n")
    (inventory / "vault-pass").write_text("password\n")
    (store / "a" / "old").mkdir(parents=True)
    (store / "a" / "old" / "manifest.json").write_text("{}")
    shutil.copytree(inventory, returned / "inventory", ignore=shutil.ignore_patterns("vault-pass"))
    staged = node_return.snapshot(returned)
    assert set(staged) == {"hosts.yml", "host_vars/a/main.yml", "host_vars/a/other.yml"}
    (returned / "inventory" / "host_vars" / "a" / "main.yml").write_text("v: 2\n")  # changed by the run
    (returned / "inventory" / "host_vars" / "a" / "new.yml").write_text("n: 1\n")  # new
    (returned / "inventory" / "host_vars" / "a" / "other.yml").write_text("w: run\n")
    (inventory / "host_vars" / "a" / "other.yml").write_text("w: here\n")  # changed here too: a conflict
    (returned / "inventory" / "vault-pass").write_text("replaced\n")
    (returned / "inventory" / "escape").symlink_to(tmp_path)
    (returned / "backups" / "a" / "old").mkdir(parents=True)
    (returned / "backups" / "a" / "old" / "manifest.json").write_text('{"other": 1}')
    (returned / "backups" / "a" / "new").mkdir(parents=True)
    (returned / "backups" / "a" / "new" / "manifest.json").write_text('{"new": 1}')
    (returned / "audit.log").write_text('{"event": "start"}\n{"event": "end"}\n')
    audit_log = tmp_path / "state" / "audit.log"
    applied = node_return.apply(returned, staged, inventory, inventory / "vault-pass", audit_log, store, "test")
    assert applied.inventory == ["host_vars/a/main.yml", "host_vars/a/new.yml"]
    assert (inventory / "host_vars" / "a" / "main.yml").read_text() == "v: 2\n"
    assert (inventory / "host_vars" / "a" / "new.yml").read_text() == "n: 1\n"
    assert (inventory / "host_vars" / "a" / "other.yml").read_text() == "w: here\n"
    assert (inventory / "vault-pass").read_text() == "password\n" and not (inventory / "escape").exists()
    assert applied.conflicts == [
        "inventory/escape: refused (a symlink or .git)",
        "inventory/host_vars/a/other.yml: changed on the controller during the run, kept",
        "inventory/vault-pass: refused (the vault password file)",
        "backups/a/old/manifest.json: already in the store or outside it, kept"]
    assert applied.backups == ["a/new/manifest.json"] and (store / "a" / "old" / "manifest.json").read_text() == "{}"
    assert audit_log.read_text() == '{"event": "start"}\n{"event": "end"}\n' and applied.audit_lines == 2
    assert oct(audit_log.stat().st_mode & 0o777) == "0o600"
