"""Fixtures: one real tracking server and one README `mlflow ui` per test session (shared by the xdist
workers), a fresh local store per test."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import harness
import pytest
from harness import SCRIPTS, STRICT, MlflowServer, ReadmeUi, Result

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# The test processes cache bytecode too, whatever PYTHONDONTWRITEBYTECODE says (harness.clean_env): each
# xdist worker imports mlflow, pandas and quantstats, which otherwise compile from source in every one.
sys.dont_write_bytecode = False


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    """A real `mlflow server --app-name basic-auth` with proxied artifacts and three users:
    admin; `alice`, an ordinary user (default permission READ, MANAGE on what she creates);
    `reader`, READ only on the shared experiment `shared-readonly`.
    One per test session: under xdist the first worker that needs it starts it and the others use the same
    server (~25 s of CPU per start saved); the controller stops it (pytest_sessionfinish)."""

    def start() -> MlflowServer:
        server = MlflowServer(tmp_path_factory.mktemp("server")).start()
        server.alice = server.create_user("alice")
        server.reader = server.create_user("reader")
        return server

    yield from once_per_session(tmp_path_factory, "mlflow-server.json", start, harness.shared_server)


def once_per_session(tmp_path_factory, state: str, start, shared):
    """A session fixture's body for a process the suite starts once: under xdist the first worker starts it
    and the others find it through the state file `state` (shared: harness.shared_server or shared_ui; the
    controller stops it); without xdist start() here and stop() after the session."""
    if XDIST_WORKER:
        # the workers' temp folders are folders of the controller's (xdist: basetemp/popen-gwN)
        yield shared(tmp_path_factory.getbasetemp().parent / state, start)
        return
    process = start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def mlflow_ui(tmp_path_factory) -> ReadmeUi:
    """README's `mlflow ui` line, run as written in a folder of its own (it serves that folder's
    ./mlflow.db), once per session and shared by the xdist workers like mlflow_server: tests/test_docs.py
    checks that it answers, tests/test_browser.py logs a backtest into it and looks at it in Chromium."""

    def start() -> ReadmeUi:
        return ReadmeUi(tmp_path_factory.mktemp("ui")).start()

    yield from once_per_session(tmp_path_factory, "mlflow-ui.json", start, harness.shared_ui)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """migrated_store(path) -> the sqlite URI of a new store at path: a copy of one store MLflow migrated once
    per session (xdist worker), ~1-2 CPU-s of migrations less for every store a test makes. The template has
    no Default experiment: MLflow creates it when it first opens a store without one (SqlAlchemyStore's
    __init__), so the copy's is made by its first user, with that user's artifact root, as in a new store
    (tests/test_suite_rules.py checks that a copy matches a new store). A test of what a script does to a
    store that does not exist yet makes no copy."""
    from mlflow import MlflowClient

    template = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # the migrations
    with contextlib.closing(sqlite3.connect(template)) as db, db:
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")

    def copy(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    return copy


@pytest.fixture
def local_store(tmp_path, migrated_store) -> dict[str, str]:
    """Environment for a script on a new embedded sqlite store in this test's own folder (migrated_store)."""
    return {"MLFLOW_TRACKING_URI": migrated_store(tmp_path / "mlflow.db")}


@pytest.fixture
def no_store_yet(tmp_path) -> dict[str, str]:
    """Environment for a script on an embedded sqlite store that does not exist yet, in this test's own folder:
    for refusals that must not create it."""
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


@pytest.fixture(params=["local", "server"])
def store(request) -> dict[str, str]:
    """Run the test against both kinds of store: a fresh local sqlite file and the real server (admin)."""
    if request.param == "local":
        return request.getfixturevalue("local_store")
    return request.getfixturevalue("mlflow_server").env()


@pytest.fixture
def client_for(monkeypatch):
    """client_for(env) -> an MlflowClient in the test process looking at the store a script used. MlflowClient
    reads credentials from os.environ on every request: they are set there for this test only."""

    def make(env: dict[str, str]):
        from mlflow import MlflowClient

        for key, value in env.items():
            if key.startswith("MLFLOW_TRACKING_"):
                monkeypatch.setenv(key, value)
        return MlflowClient(env["MLFLOW_TRACKING_URI"])

    return make


def load_script(name: str):
    """Import scripts/NAME.py as a module, to unit-test its pure functions."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def scripts():
    """The four scripts as modules, loaded on first use: scripts.create_experiment, ..."""

    class Loader:
        def __getattr__(self, name):
            module = sys.modules.get(name) or load_script(name)
            setattr(self, name, module)
            return module

    return Loader()


@pytest.fixture(scope="session")
def run_in_process(scripts):
    """run_in_process(name, *args, env=, cwd=) -> harness.Result: scripts/NAME.py's main(args) in this
    process, with the environment harness.run_script gives a process (harness.clean_env plus env) and cwd
    (default: a fresh folder, harness.default_cwd), stdout and stderr captured; everything main() changed is
    put back afterwards (ProcessState). For tests of what a script computes, writes and refuses: ~4-5 CPU-s
    less per call than `uv run` (interpreter, imports, a store's start-up). What only a process shows stays
    with run_script: the real exit status, a clean stderr, signals, the worker processes (main() in a
    process that has imported mlflow forks none: log_backtest.worker_processes; mlflow is imported first
    here so that every in-process run is serial), the PEP 723 environment. Session-scoped (it restores
    everything itself), so that module fixtures can log with it too."""
    import mlflow  # noqa: F401 - before main(): see the docstring

    def run(name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        module = getattr(scripts, name)
        before = harness.ProcessState.now()
        out, err = io.StringIO(), io.StringIO()
        started = time.monotonic()
        try:
            os.environ.clear()
            os.environ.update(harness.clean_env(**(env or {})))
            os.chdir(cwd or harness.default_cwd())
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = module.main(list(args))
                except SystemExit as exc:  # argparse's --help
                    code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            before.restore()
        harness.OUTPUTS.append(out.getvalue() + err.getvalue())
        return Result(code, out.getvalue(), err.getvalue(), time.monotonic() - started)

    return run


@pytest.fixture
def query(run_in_process):
    """Run query_experiments.main(argv) in this process on a store; returns (exit code, stdout, stderr)."""

    def run(env: dict[str, str], *argv: str):
        result = run_in_process("query_experiments", *argv, env=env)
        return result.returncode, result.stdout, result.stderr

    return run


@pytest.fixture
def connect(scripts):
    """connect(name, uri) -> scripts/NAME.py's connect(uri) called in this process (its MlflowClient). What
    connect() changes in the process (MLflow's global tracking URI, the heap it freezes) is put back when the
    test ends (harness.ProcessState), as run_in_process does after each call."""
    import mlflow  # noqa: F401 - ProcessState reads MLflow's state

    before = harness.ProcessState.now()
    yield lambda name, uri: getattr(scripts, name).connect(uri)
    before.restore()


@pytest.fixture
def log_main(run_in_process):
    """log_backtest.main(argv) in this process (run_in_process, no store settings); -> (exit code, stdout,
    stderr). For refusals and dry runs."""

    def run(*argv: str):
        result = run_in_process("log_backtest", *argv)
        return result.returncode, result.stdout, result.stderr

    return run


@pytest.fixture(autouse=True)
def no_global_tracking_uri():
    """When a test ends, MLflow's global tracking URI (mlflow.set_tracking_uri; the scripts' connect() sets
    it) is unset, as before it: a test that leaves it set sends every later MlflowClient() of its xdist worker
    to its store. A leak is an error at teardown; run_in_process and `connect` put it back themselves."""
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        leaked, utils._tracking_uri = utils._tracking_uri, None  # private: MLflow has no getter for it
        assert leaked is None, (
            f"the test left MLflow's global tracking URI set ({leaked}): use run_in_process or `connect`"
        )


@pytest.fixture(scope="session", autouse=True)
def scratch_folders(tmp_path_factory):
    """The scripts a test runs without naming a folder run in fresh folders under this session's (this xdist
    worker's) basetemp, which the secret scan reads (harness.SCRATCH)."""
    harness.SCRATCH = tmp_path_factory.mktemp("cwd")
    yield
    harness.SCRATCH = None


@pytest.fixture(scope="session", autouse=True)
def secret_scan(tmp_path_factory):
    """When the session (or xdist worker) ends: no secret the suite made (server passwords, canaries) may
    appear in anything a script printed, in any file under pytest's temp folders (stores, artifacts, server
    logs), or in the git tree. A leak fails the run as an error at teardown."""
    yield
    leaks, _ = harness.scan_for_secrets([tmp_path_factory.getbasetemp()])
    if leaks:
        pytest.fail(f"secrets leaked into: {', '.join(leaks[:20])}", pytrace=False)


def pytest_collection_modifyitems(items):
    """Every test that starts or reaches a real server carries the `server` marker, found, not written by
    hand: its own code or any fixture it uses (the session's `mlflow_server`, a module's PostgreSQL) names a
    server starter, also through the suite's helpers (harness.starts_a_server), or a fixture parameter asks
    for the server (store[server], seeded[server]). `-m "not server"` then starts no server; a start the
    static check misses fails its test (harness.refuse_unmarked_start)."""
    for item in items:
        if reaches_a_server(item):
            item.add_marker(pytest.mark.server)


def reaches_a_server(item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(isinstance(v, str) and v == "server" for v in callspec.params.values()):
        return True
    function = getattr(item, "function", None)
    fixtures = getattr(item, "_fixtureinfo", None)
    definitions = [d for defs in fixtures.name2fixturedefs.values() for d in defs] if fixtures else []
    return any(harness.starts_a_server(f) for f in [function, *(d.func for d in definitions)] if f)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """While a test without the `server` marker runs (its fixtures too), the server starters refuse."""
    before = harness.UNMARKED_TEST
    harness.UNMARKED_TEST = None if item.get_closest_marker("server") else item.nodeid
    try:
        yield
    finally:
        harness.UNMARKED_TEST = before


def pytest_sessionfinish(session, exitstatus):
    """The controller of an xdist run stops the workers' shared servers. In CI nothing may be skipped: a
    skipped test turns a green run red (checked where results gather)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    factory = getattr(session.config, "_tmp_path_factory", None)  # pytest's own, as xdist reads it
    if not XDIST_WORKER and factory is not None and session.config.pluginmanager.hasplugin("dsession"):
        states = ("mlflow-server.json", "mlflow-ui.json")
        leaks = [
            leak for state in states for leak in harness.stop_shared_process(factory.getbasetemp() / state)
        ]
        if leaks:
            if reporter is not None:
                reporter.write_line(f"secrets leaked into: {', '.join(leaks[:20])}", red=True)
            session.exitstatus = 1
    if STRICT and reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        reporter.write_line("CI=true: skipped tests are failures here", red=True)
        session.exitstatus = 1
