"""Issue 14 item 5: a shared read-only local store can be read by everyone; writes to it are refused in one
line; read commands never create a store. Permissions do not bind root, so as root the scripts run as the
unprivileged user nobody (setpriv), with this test environment's Python (the scripts' dependencies)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
import pytest
from harness import DATA, SCRIPTS, Result, assert_clean_error, clean_env, run_script


def run_unprivileged(name: str, *args: str, store: Path) -> Result:
    prefix = []
    if os.geteuid() == 0:
        prefix = [harness.require_tool("setpriv"), "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", HOME=str(store.parent / "home"))
    completed = subprocess.run(
        [*prefix, sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        cwd=store.parent, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    harness.OUTPUTS.append(completed.stdout + completed.stderr)
    return Result(completed.returncode, completed.stdout, completed.stderr, 0.0)


@pytest.fixture(scope="module")
def read_only_store():
    """A store with one logged run, then made read-only for others: folder 755, files 644, owned by us.
    Outside pytest's temp folder, which is private to root."""
    base = Path(tempfile.mkdtemp(prefix="ro-store-"))
    store = base / "store"
    store.mkdir()
    (base / "home").mkdir()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    result = run_script("log_backtest", "--returns", str(DATA / "example_returns.csv"), "--no-tearsheet",
                        "--experiment", "shared", env=env, cwd=base)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (store / "mlflow.db.lock").touch()
    for path in [base, store, *store.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    os.chmod(base / "home", 0o777)
    if os.geteuid() != 0:  # not root: our own files, so take write permission away from ourselves
        for path in store.iterdir():
            path.chmod(0o444)
        store.chmod(0o555)
    yield {"store": store, "run": result.json()}
    store.chmod(0o755)
    shutil.rmtree(base)


@pytest.mark.slow  # 25-60 s on a busy 2-core machine: not in the inner loop (issue 26)
def test_read_commands_work_on_a_read_only_store(read_only_store):
    store, run = read_only_store["store"], read_only_store["run"]
    before = sorted(p.name for p in store.iterdir())
    result = run_unprivileged("query_experiments", "experiments", store=store)
    assert result.returncode == 0, result.stderr
    assert "shared" in [e["name"] for e in json.loads(result.stdout)]
    result = run_unprivileged(
        "get_metric_history", "--run-id", run["run_id"], "--metrics", "equity", store=store
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in store.iterdir()) == before


@pytest.mark.parametrize("name", ["log_backtest", "create_experiment"])
def test_writes_to_a_read_only_store_are_one_line_exit_4(read_only_store, name):
    args = {
        "log_backtest": ["--returns", str(DATA / "example_returns.csv"), "--no-tearsheet", "--force"],
        "create_experiment": ["--name", "new-one"],
    }[name]
    result = run_unprivileged(name, *args, store=read_only_store["store"])
    assert_clean_error(result, 4, "read-only", "MLFLOW_TRACKING_URI")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("name", "args"),
    [("query_experiments", ["experiments"]),
     ("get_metric_history", ["--run-id", "0123456789abcdef0123456789abcdef", "--metrics", "equity"])],
)  # fmt: skip
def test_read_commands_in_a_folder_without_a_store_create_none(tmp_path, name, args):
    result = run_script(name, *args, cwd=tmp_path)
    assert_clean_error(result, 3, str(tmp_path / "mlflow.db"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flag", "name"), [("--output", "history.csv"), ("--plot", "history.png")])
def test_output_into_a_read_only_folder_is_refused_up_front(read_only_store, flag, name):
    store, run = read_only_store["store"], read_only_store["run"]
    result = run_unprivileged(
        "get_metric_history",
        "--run-id",
        run["run_id"],
        "--metrics",
        "equity",
        flag,
        str(store / name),
        store=store,
    )
    assert_clean_error(result, 2, flag, "cannot write")
    assert not (store / name).exists()
