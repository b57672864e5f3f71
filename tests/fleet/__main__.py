"""`scripts/test-fleet up N | status | down [--name NAME] [--dir DIR] [--subnet K]`.

`up` leaves the hosts to a small supervisor process that outlives the command: it is the parent of
every host and reaps them when `down` asks it to stop (PID 1 on these machines never reaps orphans).
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .hosts import Fleet, FleetError


def hold(fleet: Fleet, count: int) -> int:
    """The supervisor: start the hosts, report, and stay their parent until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        started = time.monotonic()
        hosts = fleet.up(count)
        (fleet.dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
        print(f"{len(hosts)} hosts ready for SSH in {time.monotonic() - started:.1f}s", flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):  # let `up` (and whoever reads its output) see the end
            os.dup2(devnull, stream.fileno())
        while True:
            signal.pause()
    except FleetError as exc:
        print(f"test-fleet: {exc}", flush=True)
        return 1
    finally:
        fleet.down()


def stop_supervisor(fleet: Fleet) -> None:
    pid_file = fleet.dir / "supervisor.pid"
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and pid_file.exists():
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="test-fleet", description="Real SSH test hosts on this machine.")
    parser.add_argument("command", choices=["up", "status", "down", "hold"], help="hold: internal")
    parser.add_argument("count", nargs="?", type=int, help="number of hosts (up)")
    parser.add_argument("--name", default="fd", help="fleet name, 1-5 lowercase letters/digits (default fd)")
    parser.add_argument("--dir", help="state directory (default /tmp/fleetdeck-fleet-NAME)")
    parser.add_argument("--subnet", type=int, help="third octet of 10.231.K.0/24 (default: from the name)")
    args = parser.parse_args(argv)
    try:
        fleet = Fleet(args.name, args.dir, args.subnet)
        if args.command == "hold":
            return hold(fleet, args.count)
        if args.command == "up":
            if not args.count:
                parser.error("up needs the number of hosts")
            stop_supervisor(fleet)
            cmd = [sys.executable, "-m", "tests.fleet", "hold", str(args.count), "--name", fleet.name,
                   "--dir", str(fleet.dir), "--subnet", str(fleet.subnet)]
            supervisor = subprocess.Popen(cmd, cwd=Path(__file__).parents[2], text=True, start_new_session=True,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            report = supervisor.stdout.read().strip()
            if not (fleet.dir / "supervisor.pid").exists():
                raise FleetError(report or "the fleet supervisor stopped before the hosts were ready")
            print(report)
            for row in fleet.describe():
                print(f"  {row['name']:<10} {row['address']}")
            print(f"inventory:   {fleet.inventory}\nknown_hosts: {fleet.known_hosts}\nssh key:     {fleet.key_file}")
            print(f"try: ansible -i {fleet.inventory} all -m ansible.builtin.ping")
        elif args.command == "status":
            rows = fleet.status()
            if not rows:
                print(f"no hosts in fleet {fleet.name} ({fleet.dir})")
            for row in rows:
                print(f"{row['name']:<10} {row['address']:<15} {row['state']}")
        else:
            stop_supervisor(fleet)
            fleet.down()
            print(f"fleet {fleet.name} removed")
    except FleetError as exc:
        print(f"test-fleet: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
