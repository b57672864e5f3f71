import pytest
from module_runner import ScriptedServer


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()
