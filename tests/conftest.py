"""Shared fixtures: one real test fleet per test module, torn down even when tests fail.

Set FLEETDECK_TEST_FLEET to give concurrent test runs on one machine distinct fleets
(name and subnet); the default is "ci", plus the pytest-xdist worker number.
"""

import os

import pytest

from tests.fleet import Fleet
from tests.playbook import REPO


@pytest.fixture(scope="module")
def fleet(request):
    """A fleet of `FLEET_SIZE` (module global, default 3) systemd hosts reachable over SSH."""
    if os.geteuid() != 0:
        pytest.fail("fleet tests need root: they create namespaces, a bridge and mounts")
    # pytest-xdist workers (gw0, gw1, ...) each get their own fleet name.
    name = os.environ.get("FLEETDECK_TEST_FLEET", "ci") + os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    test_fleet = Fleet(name)
    try:
        test_fleet.up(getattr(request.module, "FLEET_SIZE", 3))
        yield test_fleet
    finally:
        test_fleet.down()


@pytest.fixture(scope="session")
def repo():
    return REPO
