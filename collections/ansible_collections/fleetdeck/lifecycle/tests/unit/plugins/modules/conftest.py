"""Fixtures for the module tests."""

import pytest
from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import ScriptedServer


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()
