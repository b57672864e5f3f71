"""The instance lock module, run for real on lock files in a temporary directory."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.fleetdeck.lifecycle.tests.unit.utils import run_module


def lock(path, **args):
    return run_module("instance_lock", path=str(path), **args)


def warnings(result):
    """Warning texts (ansible-core 2.19 returns them as structured events)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def test_acquire_writes_holder_and_hides_the_token(tmp_path):
    path = tmp_path / "sub" / "lock.json"
    rc, result = lock(path, holder="alice@ops1 upgrade", token="t1", pid=4242)
    assert rc == 0 and result["changed"] is True
    assert "token" not in result["lock"]
    stored = json.loads(path.read_text())
    assert (stored["holder"], stored["token"], stored["pid"]) == ("alice@ops1 upgrade", "t1", 4242)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_same_run_may_take_it_again(tmp_path):
    path = tmp_path / "lock.json"
    lock(path, token="t1")
    rc, result = lock(path, token="t1")
    assert rc == 0 and result["changed"] is False


def test_second_run_fails_naming_the_holder(tmp_path):
    path = tmp_path / "lock.json"
    lock(path, holder="ci-job-42", token="t1", pid=7)
    rc, result = lock(path, holder="bob", token="t2")
    assert rc == 1
    assert result["msg"].startswith("instance is locked by ci-job-42 (pid 7, since ")
    assert "playbooks/unlock.yml" in result["msg"]
    assert json.loads(path.read_text())["token"] == "t1"


def test_a_dead_holder_is_taken_over_only_while_it_still_holds(tmp_path):
    path = tmp_path / "lock.json"
    lock(path, holder="dead run", token="old", controller="ops1", pid=7, pid_started=99)
    _rc, refused = lock(path, holder="bob", token="t2")
    assert refused["locked"] is True and "token" not in refused["lock"]
    rc, result = lock(path, holder="bob", token="t2", take_over=refused["lock"])
    assert rc == 0 and result["took_over"] == refused["lock"]
    assert json.loads(path.read_text())["holder"] == "bob"

    rc, result = lock(path, holder="carol", token="t3", take_over=refused["lock"])  # no longer the dead one
    assert rc == 1 and result["msg"].startswith("instance is locked by bob (pid 0, since")
    assert json.loads(path.read_text())["token"] == "t2"


def test_only_the_holder_releases_unless_forced(tmp_path):
    path = tmp_path / "lock.json"
    lock(path, holder="alice", token="t1")
    rc, result = lock(path, state="released", token="other")
    assert rc == 0 and result["changed"] is False and path.exists()
    assert any("not by this run" in w for w in warnings(result))
    rc, result = lock(path, state="released", token="t1")
    assert rc == 0 and result["changed"] is True and not path.exists()

    lock(path, holder="alice", token="t1")
    rc, result = lock(path, state="released", token="manual", force=True)
    assert rc == 0 and result["changed"] is True and not path.exists()


def test_check_mode_writes_nothing(tmp_path):
    path = tmp_path / "lock.json"
    rc, result = lock(path, token="t1", _ansible_check_mode=True)
    assert rc == 0 and result["changed"] is True
    assert not os.path.exists(path)


def race(path, tokens):
    """Run `instance_lock` once per token, all at once; run n is the holder `run<n>`."""
    with ThreadPoolExecutor(len(tokens)) as pool:
        return list(pool.map(lambda n: lock(path, holder=f"run{n}", token=tokens[n]), range(len(tokens))))


def test_racing_takers_never_see_a_half_written_lock(tmp_path):
    """Runs that share a token all get the lock; of runs that do not, one does and the others name it."""
    for round_ in range(4):
        results = race(tmp_path / f"shared-{round_}.json", ["t1"] * 8)
        assert all(rc == 0 for rc, _result in results), results
        assert sum(result["changed"] for _rc, result in results) == 1

        results = race(tmp_path / f"contended-{round_}.json", [f"t{n}" for n in range(8)])
        winners = [result["lock"]["holder"] for rc, result in results if rc == 0]
        assert len(winners) == 1, results
        assert all(result["msg"].startswith(f"instance is locked by {winners[0]} ") for rc, result in results if rc)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{kind}-{n}.json" for kind in ("shared", "contended") for n in range(4))  # no temporary file left
