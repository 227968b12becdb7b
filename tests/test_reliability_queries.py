"""Issue 14 should-fix for the read scripts: deleted runs are served with a warning, --filter errors name the
flag and the grammar reference."""

from __future__ import annotations

import pytest
from harness import DATA


@pytest.fixture(scope="module")
def store_with_a_deleted_run(tmp_path_factory, run_in_process, migrated_store):
    """Two runs logged by log_backtest in a new local store; the first then deleted."""
    from mlflow import MlflowClient

    env = {"MLFLOW_TRACKING_URI": migrated_store(tmp_path_factory.mktemp("deleted") / "mlflow.db")}
    for note in ("a", "b"):
        done = run_in_process("log_backtest", "--returns", str(DATA / "example_returns.csv"), "--no-tearsheet",
                              "--experiment", "deleted", "--param", f"note={note}", env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])  # a local store: no credentials
    experiment = client.get_experiment_by_name("deleted")
    ids = [r.info.run_id for r in client.search_runs([experiment.experiment_id], order_by=["start_time"])]
    client.delete_run(ids[0])
    return {"env": env, "deleted": ids[0], "live": ids[1]}


@pytest.fixture
def use(store_with_a_deleted_run, run_in_process):
    """run_in_process on the store with a deleted run: use(script, *argv) -> Result; use.deleted, use.live."""

    def run(name: str, *argv: str):
        return run_in_process(name, *argv, env=store_with_a_deleted_run["env"])

    run.deleted, run.live = store_with_a_deleted_run["deleted"], store_with_a_deleted_run["live"]
    return run


def test_get_metric_history_warns_about_deleted_runs(use):
    done = use("get_metric_history", "--run-id", use.deleted, "--run-id", use.live, "--metrics", "equity",
               "--format", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {row["run_id"] for row in done.json()} == {use.deleted, use.live}
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and use.deleted in warnings[0] and "deleted" in warnings[0], done.stderr


def test_compare_warns_about_deleted_runs(use):
    done = use(
        "query_experiments", "compare", "--run-id", use.deleted, "--run-id", use.live, "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert any(use.deleted in w and "deleted" in w for w in warnings), done.stderr


@pytest.mark.parametrize("flt", ["metrics.sharpe >>> 1", "nonsense", "params.x = unquoted"])
def test_get_metric_history_filter_errors_name_the_flag_and_the_grammar(use, flt):
    done = use("get_metric_history", "--experiment", "deleted", "--filter", flt, "--metrics", "equity")
    out, err = done.stdout, done.stderr
    assert done.returncode == 2 and out == "" and err.count("error: ") == 1, err
    assert "--filter" in err and "references/query-patterns.md" in err, err
