"""Fetch an SSH server's host key and pin it in an environment's known_hosts."""

from __future__ import annotations

import socket

import paramiko

from fleetdeck.errors import FleetdeckError, Refused

PREFERRED = "ssh-ed25519"


class Unreachable(FleetdeckError):
    """No SSH host key could be fetched from the address."""


def fetch(address: str, port: int = 22, timeout: float = 5.0) -> paramiko.PKey:
    """The server's host key, ed25519 if it has one."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise Unreachable(f"cannot reach {address} port {port} to fetch its SSH host key: "
                             f"{exc.strerror or exc}") from None
    transport = paramiko.Transport(sock)
    try:
        options = transport.get_security_options()
        options.key_types = [PREFERRED, *(k for k in options.key_types if k != PREFERRED)]
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise Unreachable(f"{address} port {port} did not complete an SSH handshake: {exc}") from None
    finally:
        transport.close()


def entry(address: str, port: int, key: paramiko.PKey) -> str:
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {key.get_name()} {key.get_base64()}\n"


def pin(known_hosts: str, line: str) -> str:
    """known_hosts content with `line` added; refuses a different key of the same type for that host."""
    host, keytype, _ = line.split()
    for number, existing in enumerate(known_hosts.splitlines(), 1):
        fields = existing.split()
        if fields[:2] == [host, keytype]:
            if existing.strip() == line.strip():
                return known_hosts
            raise Refused(f"known_hosts line {number} already pins a different {keytype} key for {host}; "
                          "remove that line if the server was reinstalled")
    return known_hosts + ("" if not known_hosts or known_hosts.endswith("\n") else "\n") + line
