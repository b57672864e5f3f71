"""Every runner test that makes a runner environment runs once per store: SQLite (a file in the env's data
dir) and PostgreSQL (a database of its own on one server the session starts). A module limits itself
with `pytestmark = pytest.mark.stores("postgres")` (or "sqlite")."""

from __future__ import annotations

import pytest

from tests.postgres import PostgresServer
from tests.runner.service import app_for

STORES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc):
    if "runner_store" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("stores")
        metafunc.parametrize("runner_store", marker.args if marker else STORES, indirect=True, scope="module")


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.stop()


class Store:
    """The store of the runner environments made with it: `env()` are the settings for a fresh one."""

    def __init__(self, kind: str, server: PostgresServer | None):
        self.kind, self.server = kind, server

    def env(self) -> dict[str, str]:
        return {"FLEETDECK_DATABASE_URL": self.server.create_database()} if self.server else {}


@pytest.fixture(scope="module")
def runner_store(request) -> Store:
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    return Store(request.param, server)


@pytest.fixture(scope="module")
def app(env):
    """The runner's Flask app over the module's `env` fixture (a module overrides it to change settings)."""
    with app_for(env) as application:
        yield application


@pytest.fixture
def client(app):
    return app.test_client()
