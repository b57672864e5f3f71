"""The served OpenAPI document against the app itself: every route documented, and schemathesis
generating valid and invalid requests (a bounded number per operation) through WSGI. No test hosts."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from tests.runner.service import app_for, in_process, make_local_env

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def env(runner_store, tmp_path_factory):
    with in_process(make_local_env(tmp_path_factory.mktemp("runner"), runner_store)) as runner_env:
        yield runner_env


@pytest.fixture(scope="module")
def app(env):
    with app_for(env, FLEETDECK_HOOK_SECRET="k2Vq9xT4mZ7rB1nW8cY3pL6sD0fH5jGa") as application:
        yield application


@pytest.fixture(scope="module")
def api_schema(app, env):
    config = SchemathesisConfig.from_dict(
        {
            "headers": env.auth(),
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                name: {"enabled": True}
                for name in (
                    "not_a_server_error",
                    "status_code_conformance",
                    "content_type_conformance",
                    "response_schema_conformance",
                    "response_headers_conformance",
                    "negative_data_rejection",
                    "ignored_auth",
                )
            },
        }
    )
    return schemathesis.openapi.from_wsgi("/v1/openapi.json", app, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_answer_conforms_to_the_document(case):
    """No 5xx, every status documented, every body and header as documented, invalid input refused."""
    case.call_and_validate()


def test_every_route_is_documented(app):
    spec = app.test_client().get("/v1/openapi.json").get_json()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith("/ui"):  # the console's pages are not the API
            continue
        path = rule.rule.replace("<run_id>", "{id}").replace("<name>", "{name}")
        assert path in spec["paths"], path
        assert set(rule.methods - {"HEAD", "OPTIONS"}) <= {m.upper() for m in spec["paths"][path]}, path
