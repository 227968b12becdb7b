"""Issue 25 item 6: the duplicate check. A re-log with any setting that changes what is logged (a number or
the record's meaning) is a new run, never the earlier run under another name; the same log again is the
earlier run, and its output shows the values that run holds, not the ones just computed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def daily(seed: int, columns: tuple[str, ...], n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(0.0004, 0.01, (n, len(columns))), columns=list(columns))
    frame.insert(0, "date", pd.bdate_range("2019-06-03", periods=n).strftime("%Y-%m-%d"))
    return frame


def git(folder: Path, *args: str) -> None:
    command = ["git", "-C", str(folder), "-c", "user.name=quant", "-c", "user.email=q@example.com", *args]
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture
def lb(run_in_process, migrated_store, tmp_path):
    """log_backtest.main() in this process, in tmp_path (no git repository) on a store there; -> output.
    lb.uri: that store."""
    uri = migrated_store(tmp_path / "mlflow.db")
    daily(1, ("strategy",)).to_csv(tmp_path / "single.csv", index=False)
    daily(2, ("fast", "medium", "slow")).to_csv(tmp_path / "sweep.csv", index=False)
    for seed, name in ((3, "bench_a.csv"), (4, "bench_b.csv")):
        daily(seed, ("benchmark",)).to_csv(tmp_path / name, index=False)

    def call(*argv: str) -> dict:
        done = run_in_process("log_backtest", *argv, "--no-tearsheet", "--format", "json", "--experiment",
                              "dedupe", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.json()

    call.uri = uri
    return call


def run_id(out: dict) -> str:
    return out.get("parent_run_id") or out["run_id"]


SINGLE_CHANGES = {
    "oos_start": ["--oos-start", "2020-06-01"],
    "rf": ["--rf", "0.02"],
    "periods_per_year": ["--periods-per-year", "260"],
    "benchmark": ["--benchmark", "bench_b.csv"],
    "stress_window": ["--period", "brexit=2019-06-24:2019-07-08"],
    "param": ["--param", "lookback=50"],
    "history_points": ["--max-history-points", "100"],
}


def test_each_setting_that_changes_what_is_logged_makes_a_new_run(lb):
    base = ["--returns", "single.csv", "--benchmark", "bench_a.csv", "--param", "lookback=20"]
    first = lb(*base)
    assert first["deduplicated"] is False
    again = lb(*base)
    assert again["deduplicated"] is True and run_id(again) == run_id(first)
    seen = {run_id(first)}
    for name, change in SINGLE_CHANGES.items():
        # the later flag wins in argparse: each change replaces the base's value or adds a setting
        out = lb(*base, *change)
        assert out["deduplicated"] is False, name
        assert run_id(out) not in seen, name
        seen.add(run_id(out))
        assert lb(*base, *change)["deduplicated"] is True, name  # and that setting again is that run


def test_oos_start_relog_holds_the_split_metrics_it_prints(lb, scripts):
    """The reported case: a plain log, then the same with --oos-start printed is_/oos_ metrics and returned the
    plain run, which has none of them."""
    lb("--returns", "single.csv")
    out = lb("--returns", "single.csv", "--oos-start", "0.7")
    assert out["deduplicated"] is False
    import mlflow

    stored = mlflow.MlflowClient(lb.uri).get_run(out["run_id"]).data.metrics
    split = {k: v for k, v in out["metrics"].items() if k.startswith(("is_", "oos_"))}
    assert split and all(stored[k] == v for k, v in split.items())


SWEEP_CHANGES = {
    "best_by": ["--best-by", "sortino"],
    "pbo_splits": ["--pbo-splits", "4"],
}


def test_a_sweeps_selection_settings_make_a_new_sweep(lb):
    first = lb("--returns", "sweep.csv")
    assert lb("--returns", "sweep.csv")["deduplicated"] is True
    for name, change in SWEEP_CHANGES.items():
        out = lb("--returns", "sweep.csv", *change)
        assert out["deduplicated"] is False and run_id(out) != run_id(first), name


def test_the_code_version_is_part_of_the_fingerprint(lb, tmp_path):
    """A new commit of the strategy's repository, or other --code contents, is other code: a new run."""
    repo = tmp_path / "strategy"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "signal.py").write_text("LOOKBACK = 20\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    args = ["--returns", "single.csv", "--code-dir", str(repo)]
    first = lb(*args)
    assert first["git"]["commit"] and lb(*args)["deduplicated"] is True
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    by_commit = lb(*args)
    assert by_commit["deduplicated"] is False and by_commit["git"]["commit"] != first["git"]["commit"]

    code = tmp_path / "outside.py"  # outside the repository: only its contents say which code it is
    code.write_text("LOOKBACK = 20\n")
    with_code = lb("--returns", "single.csv", "--code", str(code))
    assert lb("--returns", "single.csv", "--code", str(code))["deduplicated"] is True
    code.write_text("LOOKBACK = 50\n")
    edited = lb("--returns", "single.csv", "--code", str(code))
    assert edited["deduplicated"] is False and run_id(edited) != run_id(with_code)


def test_a_deduplicated_output_shows_the_stored_values(lb):
    """The stored run is the answer: its metrics (here changed in the store after it was logged, as an older
    version of the skill might have computed them), not the ones this process computed."""
    import mlflow
    from mlflow.entities import Metric

    first = lb("--returns", "single.csv")
    client = mlflow.MlflowClient(lb.uri)
    stored_sharpe = first["metrics"]["sharpe"] + 1.0
    later = client.get_run(first["run_id"]).info.end_time + 1000
    client.log_batch(first["run_id"], metrics=[Metric("sharpe", stored_sharpe, later, 0)])
    again = lb("--returns", "single.csv")
    assert again["deduplicated"] is True
    assert again["metrics"]["sharpe"] == stored_sharpe
    assert again["metrics"].keys() == first["metrics"].keys()  # no history (equity, drawdown) among them
    assert again["undefined_metrics"] == first["undefined_metrics"]

    sweep = lb("--returns", "sweep.csv")
    child = sweep["runs"][0]
    client.log_batch(child["run_id"], metrics=[Metric("sharpe", 9.5, later + 10**7, 0)])
    client.log_batch(sweep["parent_run_id"], metrics=[Metric("pbo", 0.125, later + 10**7, 0)])
    dup = lb("--returns", "sweep.csv")
    assert dup["deduplicated"] is True
    assert dup["runs"][0]["metrics"]["sharpe"] == 9.5 and dup["pbo"] == 0.125
    assert dup["runs"][1]["metrics"] == sweep["runs"][1]["metrics"]
