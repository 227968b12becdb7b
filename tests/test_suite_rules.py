"""The suite's own rules. A test that starts a real server is marked `server` without anyone writing the
marker (tests/conftest.py, harness.starts_a_server), so `uv run pytest -m "not server"` starts none; a start
the static check cannot see fails its test instead of quietly starting a server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import harness
from harness import ROOT

TESTS = ROOT / "tests"

# A small suite run by a pytest of its own with the real conftest.py: four tests reach a server in four
# different ways, one hides its server behind a string, one starts none.
INNER_TESTS = """
import harness
import pytest


def start_a_server(root):  # a helper: the test below reaches MlflowServer only through it
    return harness.MlflowServer(root).start()


@pytest.fixture(scope="module")
def database():
    server = harness.PostgresServer().start()
    yield server
    server.stop()


def test_through_a_helper(tmp_path):
    start_a_server(tmp_path)


def test_through_a_module_fixture(database):
    assert database


def test_through_the_session_server(mlflow_server):
    assert mlflow_server


def test_through_a_fixture_parameter(store):
    assert store


def test_hidden_behind_a_string(tmp_path):
    getattr(harness, "Mlflow" + "Server")(tmp_path).start()


def test_no_server(local_store):
    assert local_store["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
"""

INNER_CONFTEST = f"""
import importlib.util
import sys

sys.path.insert(0, {str(TESTS)!r})
spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
suite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite)
globals().update({{k: v for k, v in vars(suite).items() if not k.startswith("__")}})
"""


def test_every_test_that_starts_a_server_is_marked_and_not_server_starts_none(tmp_path):
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    server: starts or reaches a server\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLFLOW_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", "not server", "-rA",
         "--basetemp", str(tmp_path / "inner")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = done.stdout + done.stderr
    # the four that reach a server visibly (store[server] among them; store[local] runs) are deselected
    assert "4 deselected" in out, out
    assert "PASSED test_inner.py::test_no_server" in out, out
    assert "PASSED test_inner.py::test_through_a_fixture_parameter[local]" in out, out
    # the hidden start is refused before any process starts, and says what to do
    assert "FAILED test_inner.py::test_hidden_behind_a_string" in out, out
    assert "starts an MLflow tracking server but is not marked `server`" in out, out
    assert "1 failed, 2 passed" in out, out
    assert list((tmp_path / "inner").rglob("server.log")) == [], "a server was started"


def test_the_fault_test_with_a_server_of_its_own_is_marked():
    """The test issue 26 found unmarked: it starts (and kills) a server of its own in its body."""
    from test_reliability import test_server_killed_while_log_backtest_writes_leaves_no_finished_run as test

    assert harness.starts_a_server(test)
    assert not harness.starts_a_server(harness.run_script)


def test_in_process_runs_leave_the_test_process_as_they_found_it(run_in_process, tmp_path):
    """run_in_process puts back what main() changes (conftest.ProcessState): the environment (the scripts
    setdefault MLflow's HTTP limits and log level), the folder, MLflow's tracking URI, the signal handlers,
    sys.stdout/sys.stderr, the collector (connect() freezes the heap: thawed again); a failing call reports its
    exit code and one error line like a process."""
    import gc
    import signal

    from mlflow.tracking._tracking_service import utils

    before = (dict(os.environ), os.getcwd(), utils._tracking_uri, signal.getsignal(signal.SIGTERM))
    streams = (sys.stdout, sys.stderr)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    made = run_in_process("create_experiment", "--name", "restored", env=env, cwd=tmp_path)
    assert made.returncode == 0 and made.json()["name"] == "restored", made.stderr
    assert (tmp_path / "mlflow.db").exists()
    refused = run_in_process("create_experiment", "--name", "", env=env, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.startswith("error: "), refused.stderr
    after = (dict(os.environ), os.getcwd(), utils._tracking_uri, signal.getsignal(signal.SIGTERM))
    assert after == before and (sys.stdout, sys.stderr) == streams
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ or "MLFLOW_HTTP_REQUEST_TIMEOUT" in before[0]


def test_a_copy_of_the_migrated_store_is_a_new_store(migrated_store, run_in_process, tmp_path):
    """conftest.migrated_store: a copy holds what a store MLflow makes at that place holds once a script has
    used it (the same tables, migrations, workspace; the Default experiment and a new one with artifact roots
    of the copy's user, not of the template's folder)."""
    import sqlite3

    stores = {"new": tmp_path / "new" / "mlflow.db", "copy": tmp_path / "copy" / "mlflow.db"}
    stores["new"].parent.mkdir()
    migrated_store(stores["copy"])
    seen = {}
    for kind, path in stores.items():
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{path}"}
        made = run_in_process("create_experiment", "--name", "first", env=env, cwd=path.parent)
        assert made.returncode == 0 and made.json()["experiment_id"] == "1", made.stderr
        with contextlib.closing(sqlite3.connect(path)) as db:
            seen[kind] = {
                # the order of a table's constraints varies between two migrations (alembic's batch copies)
                "schema": {
                    (kind, name): sorted(line.strip(" ,") for line in (sql or "").splitlines())
                    for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master")
                },
                "alembic": db.execute("SELECT * FROM alembic_version").fetchall(),
                "workspaces": db.execute("SELECT * FROM workspaces").fetchall(),
                "experiments": [
                    (i, name, location.replace(str(path.parent), "<folder>"), stage)
                    for i, name, location, stage in db.execute(
                        "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
                    )
                ],
            }
    assert seen["copy"] == seen["new"]
    assert [e[2] for e in seen["new"]["experiments"]] == ["<folder>/mlruns/0", "<folder>/mlruns/1"]


def test_a_script_run_without_a_folder_writes_outside_the_repository(
    run_in_process, tmp_path, tmp_path_factory
):
    """A new sqlite store keeps its experiments' artifacts in ./mlruns of the folder the script runs in: a
    test that names no folder runs it in a fresh one under the session's basetemp (harness.default_cwd),
    where the secret scan looks, not in the repository."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    made = run_in_process("create_experiment", "--name", "anywhere", env=env)
    assert made.returncode == 0, made.stderr
    location = Path(made.json()["artifact_location"].removeprefix("file://"))
    assert location.is_relative_to(tmp_path_factory.getbasetemp()), location
    assert not location.is_relative_to(ROOT), location
    assert harness.default_cwd() != harness.default_cwd()  # a fresh folder for each run (run_script too)
