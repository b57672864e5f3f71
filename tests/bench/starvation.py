"""Benchmark: can open event streams and slow clients starve the runner? (Not a timed test: run by hand.)

Starts the real `fleetdeck-runner` (default serving: one gevent worker) with runs on this machine (no test
hosts), starts a long run, opens 50 Server-Sent Event streams on it (over 3 tokens: the default cap is 20 per
token, the first two use all of theirs) and 50 slow clients: 25 send their headers a byte per second, 25 a
body, each reconnecting whenever the server drops it, as a slowloris does. Meanwhile it times /healthz and
POST /v1/runs, and prints the figures.

    sudo .venv/bin/python -m tests.bench.starvation
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fleetdeck.service.config import Settings

from tests.runner.service import Server, free_port, make_local_env, wait_until

STREAMS = 50
SLOW_CLIENTS = 50
SAMPLES = 40
STREAM_TOKENS = ("admin", "reader", "operator")


def open_stream(port: int, run_id: str, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def slow_client(port: int, body: bool, stop: threading.Event, drops: list[int]) -> None:
    """Trickle a request a byte per second; reconnect when the server closes the connection."""
    if body:
        request = b"POST /v1/runs HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        request += b"Content-Length: 4000\r\n\r\n" + b" " * 4000
    else:
        request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n" + b"X-Slow: " + b"a" * 4000 + b"\r\n\r\n"
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                prefix = request.index(b"\r\n\r\n") + 4 if body else 10
                sock.sendall(request[:prefix])
                for byte in request[prefix:]:
                    if stop.wait(1.0):
                        return
                    sock.sendall(bytes([byte]))
        except OSError:
            drops.append(1)
            stop.wait(0.2)


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = make_local_env(Path(tmp))
        port = free_port()
        server = Server(env, port)
        server.start()
        stop = threading.Event()
        try:
            status, run = server.call(
                "POST", "/v1/runs", {"action": "sleep", "target": "local-1", "params": {"sleep_seconds": 600}}
            )
            assert status == 202, run
            wait_until(lambda: server.call("GET", f"/v1/runs/{run['id']}")[1]["status"] == "running")
            baseline = [timed(lambda: server.call("GET", "/healthz", caller=None))[0] for _ in range(10)]

            streams = [
                open_stream(port, run["id"], env.tokens[STREAM_TOKENS[i // Settings.max_streams_per_token]])
                for i in range(STREAMS)
            ]
            drops: list[int] = []
            slow = [
                threading.Thread(target=slow_client, args=(port, i % 2 == 1, stop, drops), daemon=True)
                for i in range(SLOW_CLIENTS)
            ]
            for thread in slow:
                thread.start()
            time.sleep(3)  # every slow client is mid-request

            health = []
            for _ in range(SAMPLES):
                seconds, (status, _) = timed(lambda: server.call("GET", "/healthz", caller=None))
                assert status == 200
                health.append(seconds)
                time.sleep(0.25)
            post_seconds, (status, created) = timed(
                lambda: server.call("POST", "/v1/runs", {"action": "ping", "target": "local-2"})
            )
            assert status == 202, created
            over_cap = server.call(
                "GET", f"/v1/runs/{run['id']}/events", caller="admin", headers={"Accept": "text/event-stream"}
            )
            still_open = sum(1 for s in streams if _alive(s))

            print(f"runner: one gevent worker; {STREAMS} SSE streams over {len(STREAM_TOKENS)} tokens, "
                  f"{SLOW_CLIENTS} slow clients ({SLOW_CLIENTS // 2} headers, {SLOW_CLIENTS // 2} bodies, "
                  "a byte per second)")
            print(f"/healthz before: median {statistics.median(baseline) * 1000:.1f} ms")
            print(f"/healthz under load ({SAMPLES} samples): median {statistics.median(health) * 1000:.1f} ms, "
                  f"max {max(health) * 1000:.1f} ms")
            print(f"POST /v1/runs under load: {status} in {post_seconds * 1000:.1f} ms")
            print(f"SSE streams still open: {still_open}/{STREAMS}; slow connections dropped by the server "
                  f"and reopened: {len(drops)}; 21st stream of a token: {over_cap[0]}")
            assert max(health) < 1.0 and still_open == STREAMS
            for s in streams:
                s.close()
        finally:
            stop.set()
            server.stop()


def _alive(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


if __name__ == "__main__":
    main()
