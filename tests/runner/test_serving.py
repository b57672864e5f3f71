"""The real `fleetdeck-runner` process on this machine, no test hosts (runs use connection local): open event
streams and stalled clients do not block it, the server's own errors are JSON, streams are capped per token,
and an unusable store is refused at start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.playbook import BIN
from tests.runner.service import Server, free_port, make_local_env, wait_until

MAX_STREAMS = 3


@pytest.fixture(scope="module")
def env(runner_store, tmp_path_factory):
    return make_local_env(tmp_path_factory.mktemp("serving"), runner_store)


@pytest.fixture(scope="module")
def server(env):
    srv = Server(env, free_port())
    srv.full_env["FLEETDECK_RUNNER_MAX_STREAMS"] = str(MAX_STREAMS)
    srv.start()
    yield srv
    srv.stop()


def raw(server, data: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    port = int(server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def stalled_client(server) -> socket.socket:
    """A client that sent half a request line and then nothing (slowloris)."""
    port = int(server.base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Le")
    return sock


def open_stream(server, run_id: str, caller: str = "admin"):
    request = urllib.request.Request(  # noqa: S310 - a local test server
        f"{server.base}/v1/runs/{run_id}/events",
        headers={**server.env.auth(caller), "Accept": "text/event-stream"},
    )
    response = urllib.request.urlopen(request, timeout=60)  # noqa: S310
    assert response.status == 200 and response.readline() == b"retry: 2000\n"
    return response


def test_stalled_clients_and_open_streams_do_not_block_the_service(server):
    status, run = server.call("POST", "/v1/runs", {"action": "sleep", "target": "local-1"})
    assert status == 202, run
    stalled = [stalled_client(server) for _ in range(8)]
    streams = [open_stream(server, run["id"]) for _ in range(MAX_STREAMS)]
    try:
        status, body = server.call(
            "GET", f"/v1/runs/{run['id']}/events", headers={"Accept": "text/event-stream"}
        )
        assert status == 429 and body["error"]["code"] == "too_many_streams", body
        assert server.call("GET", "/healthz", caller=None)[0] == 200
        status, other = server.call("POST", "/v1/runs", {"action": "ping", "target": "local-2"})
        assert status == 202, other
        # Another token has streams of its own.
        open_stream(server, run["id"], caller="reader").close()
    finally:
        for sock in stalled:
            sock.close()
        for stream in streams:
            stream.close()
    # Closed streams give their slots back (the server notices at its next keepalive write).
    wait_until(lambda: _stream_slot_free(server, run["id"]), timeout=40, interval=1)
    assert server.call("POST", f"/v1/runs/{run['id']}/cancel")[0] == 202


def _stream_slot_free(server, run_id: str) -> bool:
    try:
        open_stream(server, run_id).close()
    except urllib.error.HTTPError as exc:
        assert exc.code == 429
        return False
    return True


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, None),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    ],
    ids=["request-line", "header-too-large", "invalid-header", "uri-too-long"],
)
def test_errors_of_the_server_itself_are_json(server, request_bytes, status, code):
    got, headers, body = raw(server, request_bytes)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == (code or "request_header_fields_too_large") and error["message"]


def _ro_mount(path):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    return path, ["umount", str(path)]


def _not_a_dir(path):
    path.write_text("not a directory\n")
    return path, None


def _corrupt_db(path):
    path.mkdir()
    (path / "runner.db").write_bytes(b"this is no sqlite database " * 200)
    return path / "runner.db", None


def _no_permission(path):
    path.mkdir(mode=0o500)
    return path, None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_ro_mount, "Read-only file system"),
        (_not_a_dir, "not a directory"),
        (_no_permission, "Permission denied"),
    ],
    ids=["read-only", "not-a-dir", "no-permission"],
)
def test_an_unusable_store_is_refused_at_start(env, tmp_path, make, reason):
    """The data dir (the SQLite store's, and the runs' with either store)."""
    refused_at_start(env, tmp_path / "data", make, reason)


@pytest.mark.stores("sqlite")
def test_a_corrupt_sqlite_store_is_refused_at_start(env, tmp_path):
    refused_at_start(env, tmp_path / "data", _corrupt_db, "file is not a database")


def refused_at_start(env, data_dir, make, reason):
    named, cleanup = make(data_dir)
    # Root may write anywhere: without CAP_DAC_OVERRIDE it meets the permissions a service user would.
    command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", str(BIN / "fleetdeck-runner")]
    try:
        proc = subprocess.run(
            command,
            env={**os.environ, **env.env, "FLEETDECK_RUNNER_DATA_DIR": str(data_dir)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        if cleanup:
            subprocess.run(cleanup, check=True)
    assert proc.returncode == 2, proc.stderr
    assert f"refusing to start: store {named}" in proc.stderr and reason in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_sse_clients_are_served_concurrently_with_runs(server):
    """Streams of a running run and a finished one, read at the same time, each end with `end`."""
    status, run = server.call("POST", "/v1/runs", {"action": "ping", "target": "local-2", "wait": True})
    assert status == 202
    ends = []

    def read():
        with open_stream(server, run["id"], caller="reader") as stream:
            ends.append(any(line.startswith(b"event: end") for line in stream))

    readers = [threading.Thread(target=read) for _ in range(MAX_STREAMS)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(90)
    assert ends == [True] * MAX_STREAMS


def test_sigterm_does_not_wait_for_slow_clients(runner_store, tmp_path):
    """A client stuck sending its body holds no run back: the service stops within the cancel grace."""
    server = Server(make_local_env(tmp_path, runner_store), free_port())  # a store of its own
    server.start()
    status, run = server.call("POST", "/v1/runs", {"action": "sleep", "target": "local-1"})
    assert status == 202
    wait_until(lambda: server.call("GET", f"/v1/runs/{run['id']}")[1]["status"] == "running")
    stream = open_stream(server, run["id"])
    port = int(server.base.rsplit(":", 1)[1])
    stuck = socket.create_connection(("127.0.0.1", port), timeout=10)
    stuck.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    try:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
        stopped_after = time.monotonic() - started
        lines = stream.read().decode()
    finally:
        stuck.close()
    assert stopped_after < 3 + 8, stopped_after  # cancel grace 3 s, then a 2 s drain
    assert "event: end\n" in lines and '"status": "interrupted"' in lines, lines
    server.start()
    try:
        assert server.call("GET", f"/v1/runs/{run['id']}")[1]["status"] == "interrupted"
    finally:
        server.stop()
