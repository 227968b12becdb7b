"""Issue 14 should-fix for the read scripts: deleted runs are served with a warning, --filter errors name the
flag and the grammar reference."""

from __future__ import annotations

import json

import pytest
from harness import DATA


@pytest.fixture(scope="module")
def store_with_a_deleted_run(tmp_path_factory, scripts):
    """Two runs logged by log_backtest in a fresh local store; the first then deleted."""
    import os

    folder = tmp_path_factory.mktemp("deleted")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ.update(env)
    try:
        ids = []
        for note in ("a", "b"):
            code = scripts.log_backtest.main(["--returns", str(DATA / "example_returns.csv"), "--no-tearsheet",
                                              "--experiment", "deleted", "--param", f"note={note}"])  # fmt: skip
            assert code == 0
        from mlflow import MlflowClient

        client = MlflowClient(env["MLFLOW_TRACKING_URI"])  # a local store: no credentials
        experiment = client.get_experiment_by_name("deleted")
        ids = [r.info.run_id for r in client.search_runs([experiment.experiment_id], order_by=["start_time"])]
        client.delete_run(ids[0])
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI") if saved is None else os.environ.update(
            MLFLOW_TRACKING_URI=saved
        )
    return {"env": env, "deleted": ids[0], "live": ids[1]}


@pytest.fixture
def use(store_with_a_deleted_run, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_with_a_deleted_run["env"]["MLFLOW_TRACKING_URI"])
    capsys.readouterr()
    return store_with_a_deleted_run


def test_get_metric_history_warns_about_deleted_runs(use, scripts, capsys):
    code = scripts.get_metric_history.main(
        ["--run-id", use["deleted"], "--run-id", use["live"], "--metrics", "equity", "--format", "json"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert {row["run_id"] for row in json.loads(out)} == {use["deleted"], use["live"]}
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and use["deleted"] in warnings[0] and "deleted" in warnings[0], err


def test_compare_warns_about_deleted_runs(use, scripts, capsys):
    code = scripts.query_experiments.main(
        ["compare", "--run-id", use["deleted"], "--run-id", use["live"], "--format", "json"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any(use["deleted"] in w and "deleted" in w for w in warnings), err


@pytest.mark.parametrize("flt", ["metrics.sharpe >>> 1", "nonsense", "params.x = unquoted"])
def test_get_metric_history_filter_errors_name_the_flag_and_the_grammar(use, scripts, capsys, flt):
    code = scripts.get_metric_history.main(
        ["--experiment", "deleted", "--filter", flt, "--metrics", "equity"]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("error: ") == 1, err
    assert "--filter" in err and "references/query-patterns.md" in err, err
