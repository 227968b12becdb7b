"""Which runs are trials in `query_experiments.py deflate` (issues 24, 25 item 7, 22): deleted runs still count,
one trial per logged return series (dataset digest), a walk-forward parent is one trial and its folds none,
sweep parents are counted as excluded. The numbers are recomputed here with numpy and scipy from the seeded
values; MLflow's private filter helper is checked and its fallback exercised."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pandas as pd
import pytest
from scipy import stats


def expected_dsr(trials: list[dict], n_bars_key: str = "n_bars") -> tuple[str, float, float]:
    """(best run name, expected max Sharpe annualised, DSR) of the trials, computed independently."""
    per_bar = np.array([t["sharpe"] / math.sqrt(t["periods_per_year"]) for t in trials])
    n = len(trials)
    best = trials[int(per_bar.argmax())]
    sr = per_bar.max()
    g = np.euler_gamma
    e_max = math.sqrt(per_bar.var(ddof=1)) * (
        (1 - g) * stats.norm.ppf(1 - 1 / n) + g * stats.norm.ppf(1 - 1 / (n * math.e))
    )
    kurt = best["kurtosis"] + 3
    z = (
        (sr - e_max)
        * math.sqrt(best[n_bars_key] - 1)
        / math.sqrt(1 - best["skew"] * sr + (kurt - 1) / 4 * sr**2)
    )
    return best["name"], e_max * math.sqrt(best["periods_per_year"]), float(stats.norm.cdf(z))


class Seeder:
    """Runs as log_backtest and the walk-forward write them, made with MlflowClient."""

    def __init__(self, uri: str, experiment: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.experiment_id = self.client.create_experiment(experiment)
        self.rng = np.random.default_rng(24)
        self.trials: dict[str, dict] = {}  # run id -> what the independent computation needs

    def run(self, name, metrics, params, tags=None, digest=None, status="FINISHED") -> str:
        from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags or {}).info.run_id
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("mlflow.source.name", "log_backtest.py")],
        )
        if digest:
            dataset = Dataset(f"returns[{name}]", digest, "local", '{"uri": "returns.csv"}')
            self.client.log_inputs(
                run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "backtest")])]
            )
        self.client.set_terminated(run_id, status)
        return run_id

    def trial(self, name: str, sharpe: float | None = None, digest: str | None = None, **extra) -> str:
        values = {
            "name": name,
            "sharpe": float(self.rng.normal(0.7, 0.5)) if sharpe is None else sharpe,
            "skew": float(self.rng.normal(-0.2, 0.1)),
            "kurtosis": float(abs(self.rng.normal(1.5, 0.5))),
            "periods_per_year": 252,
            "n_bars": 1260,
        }
        metrics = {k: values[k] for k in ("sharpe", "skew", "kurtosis")}
        run_id = self.run(name, metrics, {"periods_per_year": 252, "n_bars": 1260, **extra},
                          digest=digest or uuid.uuid4().hex[:16])  # fmt: skip
        self.trials[run_id] = values
        return run_id


def deflate(query, env, name, *flags):
    code, out, err = query(env, "deflate", "--experiment", name, *flags)
    assert code == 0, err
    return json.loads(out), err


def test_deleted_trials_still_count(local_store, query, scripts):
    """Deleting the losers must not raise the DSR: deleted runs are trials unless --exclude-deleted, and the
    verdict says which it did."""
    name = f"deleted-{uuid.uuid4().hex[:8]}"
    seed = Seeder(local_store["MLFLOW_TRACKING_URI"], name)
    for i in range(8):
        seed.trial(f"t{i}")
    before, _ = deflate(query, local_store, name)
    losers = sorted(seed.trials, key=lambda i: seed.trials[i]["sharpe"])[:3]
    for run_id in losers:
        seed.client.delete_run(run_id)
    after, err = deflate(query, local_store, name)
    best, e_max, dsr = expected_dsr(list(seed.trials.values()))
    assert after["n_trials"] == 8 and after["deleted_trials"] == 3 and after["exclude_deleted"] is False
    assert after["deflated_sharpe_ratio"] == pytest.approx(dsr, rel=1e-9) == before["deflated_sharpe_ratio"]
    assert after["best_run_name"] == best and after["expected_max_sharpe"] == pytest.approx(e_max, rel=1e-9)
    assert "Deleted runs count as trials: 3" in after["verdict"]

    kept, _ = deflate(query, local_store, name, "--exclude-deleted")
    survivors = [v for i, v in seed.trials.items() if i not in losers]
    _, _, dsr_kept = expected_dsr(survivors)
    assert kept["n_trials"] == 5 and kept["excluded"]["deleted"] == 3 and kept["deleted_trials"] == 0
    assert kept["deflated_sharpe_ratio"] == pytest.approx(dsr_kept, rel=1e-9)
    assert kept["deflated_sharpe_ratio"] > after["deflated_sharpe_ratio"]  # why the default counts them
    assert "Deleted runs left out (--exclude-deleted): 3" in kept["verdict"]

    # The best deleted: still the best trial, and stderr says it is deleted.
    top = max(seed.trials, key=lambda i: seed.trials[i]["sharpe"])
    seed.client.delete_run(top)
    again, err = deflate(query, local_store, name)
    assert again["best_run_id"] == top and again["best_is_deleted"] is True and "is deleted" in err


def test_one_trial_per_return_series(local_store, query):
    """A rerun, a re-log with a hold-out (more metrics, same series), an interrupted sweep's FINISHED child
    next to its rerun, a deleted run and its identical rerun: one trial each."""
    name = f"series-{uuid.uuid4().hex[:8]}"
    seed = Seeder(local_store["MLFLOW_TRACKING_URI"], name)
    distinct = [seed.trial(f"t{i}", digest=f"{i:016x}") for i in range(6)]
    values = seed.trials
    first = values[distinct[0]]
    # the same series again: a rerun (--force), a re-log with --oos-start, a deleted original's rerun
    rerun = seed.run("t0-rerun", {k: first[k] for k in ("sharpe", "skew", "kurtosis")},
                     {"periods_per_year": 252, "n_bars": 1260}, digest=f"{0:016x}")  # fmt: skip
    holdout = seed.run("t0-holdout", {**{k: first[k] for k in ("sharpe", "skew", "kurtosis")}, "oos_sharpe": 0.1},
                       {"periods_per_year": 252, "n_bars": 1260, "oos_start": "2020-01-01"}, digest=f"{0:016x}")  # fmt: skip
    seed.client.delete_run(distinct[1])
    second = values[distinct[1]]
    seed.run("t1-rerun", {k: second[k] for k in ("sharpe", "skew", "kurtosis")},
             {"periods_per_year": 252, "n_bars": 1260}, digest=f"{1:016x}")  # fmt: skip
    # an interrupted sweep: parent FAILED, two FINISHED children; the rerun's children have the same series
    old_parent = seed.run("sweep", {"best_sharpe": 1.0}, {}, tags={"backtest.sweep": "true"}, status="FAILED")
    for i in (2, 3):
        v = values[distinct[i]]
        seed.run(f"t{i}-interrupted", {k: v[k] for k in ("sharpe", "skew", "kurtosis")},
                 {"periods_per_year": 252, "n_bars": 1260}, tags={"mlflow.parentRunId": old_parent},
                 digest=f"{i:016x}")  # fmt: skip
    got, _ = deflate(query, local_store, name)
    _, e_max, dsr = expected_dsr(list(values.values()))
    assert got["n_trials"] == 6 and got["excluded"]["same_series"] == 5
    assert got["deflated_sharpe_ratio"] == pytest.approx(dsr, rel=1e-9)
    assert got["expected_max_sharpe"] == pytest.approx(e_max, rel=1e-9)
    assert got["deleted_trials"] == 0  # the deleted t1 is counted through its active rerun
    assert rerun != holdout


def test_walk_forward_parent_is_one_trial_and_its_folds_none(local_store, query):
    """Runs shaped as issue 22 describes them: the parent (tag backtest.walk_forward=true) with oos_ metrics,
    n_folds and wf_efficiency; fold children with param fold. The parent's stitched out-of-sample series is
    the trial; a sweep parent without sharpe is counted under excluded."""
    name = f"wf-{uuid.uuid4().hex[:8]}"
    seed = Seeder(local_store["MLFLOW_TRACKING_URI"], name)
    for i in range(5):
        seed.trial(f"t{i}", sharpe=0.2 + 0.1 * i)
    oos = {"name": "walk-forward", "sharpe": 1.9, "skew": -0.1, "kurtosis": 1.0, "periods_per_year": 252,
           "oos_n_bars": 630}  # fmt: skip
    parent = seed.run(
        "walk-forward",
        {"oos_sharpe": 1.9, "oos_skew": -0.1, "oos_kurtosis": 1.0, "oos_cagr": 0.2, "oos_max_drawdown": -0.1,
         "is_sharpe": 2.5, "wf_efficiency": 0.76, "n_folds": 3},
        {"periods_per_year": 252, "n_bars": 1260, "oos_n_bars": 630, "train": "2y", "test": "6m"},
        tags={"backtest.walk_forward": "true"}, digest="f" * 16,
    )  # fmt: skip
    for fold in range(3):  # each fold's test window: a high Sharpe that must not be a trial of its own
        seed.run(f"fold-{fold}", {"oos_sharpe": 3.0 + fold, "is_sharpe": 2.0, "sharpe": 4.0 + fold},
                 {"fold": fold, "periods_per_year": 252, "n_bars": 210}, tags={"mlflow.parentRunId": parent},
                 digest=f"{fold:015x}e")  # fmt: skip
    seed.run("sweep", {"best_sharpe": 9.0, "n_trials": 5}, {}, tags={"backtest.sweep": "true"})
    got, _ = deflate(query, local_store, name)
    trials = [*seed.trials.values(), oos]
    best, e_max, dsr = expected_dsr(trials, n_bars_key="oos_n_bars")
    assert got["n_trials"] == 6 and got["best_run_id"] == parent and best == "walk-forward"
    assert got["excluded"]["walk_forward_folds"] == 3 and got["excluded"]["sweep_parents"] == 1
    assert got["best_sharpe"] == 1.9 and got["n_bars"] == 630
    assert got["deflated_sharpe_ratio"] == pytest.approx(dsr, rel=1e-9)
    assert got["expected_max_sharpe"] == pytest.approx(e_max, rel=1e-9)
    # --filter selecting only the folds: their parent is looked up, they stay no trial
    code, out, err = query(local_store, "deflate", "--experiment", name, "--filter", "params.fold != ''")
    assert (
        code == 0
        and json.loads(out)["n_trials"] == 0
        and json.loads(out)["excluded"]["walk_forward_folds"] == 3
    )

    # runs, compare and group show the walk-forward parent's oos_ metrics
    code, out, err = query(local_store, "runs", "--experiment", name, "--top-level", "--max-results", "50")
    record = next(r for r in json.loads(out) if r["run_id"] == parent)
    assert record["metrics"]["oos_sharpe"] == 1.9 and record["metrics"]["wf_efficiency"] == 0.76
    assert record["metrics"]["oos_max_drawdown"] == -0.1 and record["metrics"]["n_folds"] == 3
    other = next(r for r in json.loads(out) if r["run_name"] == "t0")
    code, out, err = query(local_store, "compare", "--run-id", parent, "--run-id", other["run_id"])
    compared = {m["metric"]: m for m in json.loads(out)["metrics"]}
    assert compared["oos_sharpe"]["values"][parent] == 1.9 and compared["oos_sharpe"]["direction"] == "higher"
    assert compared["oos_max_drawdown"]["direction"] == "zero" and "wf_efficiency" in compared
    code, out, err = query(local_store, "group", "--experiment", name, "--by", "params.periods_per_year",
                           "--metric", "sharpe", "--top-level", "--agg", "max,count")  # fmt: skip
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["count"] == 6 and row["max"] == 1.9  # the walk-forward parent aggregated by its oos_sharpe


def test_private_filter_helper_is_checked_and_has_a_fallback(local_store, scripts, monkeypatch, connect):
    """deflate reads a database store through MLflow's private _get_sqlalchemy_filter_clauses: this fails
    loudly when an MLflow upgrade changes it, and without it the public search_runs gives the same trials."""
    qe = scripts.query_experiments
    name = f"private-{uuid.uuid4().hex[:8]}"
    seed = Seeder(local_store["MLFLOW_TRACKING_URI"], name)
    for i in range(4):
        seed.trial(f"t{i}", digest=f"{i % 3:016x}")
    seed.client.delete_run(next(iter(seed.trials)))
    client = connect("query_experiments", local_store["MLFLOW_TRACKING_URI"])
    store = client._tracking_client.store
    ids = [seed.experiment_id]
    filter_string = qe.build_run_filter("metrics.sharpe > -100", "FINISHED", None, False)
    with store.ManagedSessionMaker() as session:
        clauses = qe.mlflow_filter_clauses(session, store, filter_string)
    assert clauses is not None, "MLflow changed _get_sqlalchemy_filter_clauses: update mlflow_filter_clauses"
    direct = qe.runs_from_database(store, ids, filter_string, "sharpe")
    searched = qe.runs_from_search(client, ids, filter_string, "sharpe")
    key = lambda r: r.run_id  # noqa: E731
    assert len(direct) == 4 and sorted(direct, key=key) == sorted(searched, key=key)
    assert sum(r.deleted for r in direct) == 1 and all(r.digests for r in direct)

    monkeypatch.setattr(qe, "MLFLOW_FILTER_HELPER", "_renamed_by_an_upgrade")  # as if MLflow renamed it
    assert qe.runs_from_database(store, ids, filter_string, "sharpe") is None
    fallback = qe.fetch_trials(client, ids, "", "sharpe")
    assert sorted(t.run_id for t in fallback) == sorted(r.run_id for r in direct)


def test_verdict_never_rounds_to_certainty(scripts):
    qe = scripts.query_experiments
    verdict = qe.deflate_verdict(10, "best", 2.1, 1.2, 0.996, "")
    assert "99.6% probability" in verdict and "100%" not in verdict and "ratio 0.996 >=" in verdict
    assert qe.percent(0.53) == "53%" and qe.percent(1.0) == "100%" and qe.percent(0.0004) == "0.04%"
    assert qe.ratio(0.5312) == "0.53" and qe.ratio(0.9999) == "0.9999" and qe.ratio(0.001) == "0.001"


@pytest.mark.server
def test_deleted_and_repeated_trials_over_http(mlflow_server, query):
    """Through a tracking server (search_runs, deleted runs included): the same trials as the direct read."""
    name = f"deleted-http-{uuid.uuid4().hex[:8]}"
    local = {"MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_server.root / 'mlflow.db'}"}
    seed = Seeder(local["MLFLOW_TRACKING_URI"], name)
    runs = [seed.trial(f"t{i}", digest=f"{i % 4:016x}") for i in range(6)]
    seed.client.delete_run(runs[0])
    over_http, _ = deflate(query, mlflow_server.env(), name)
    direct, _ = deflate(query, local, name)
    assert over_http == direct and direct["n_trials"] == 4 and direct["excluded"]["same_series"] == 2


def test_relogged_series_count_once(local_store, tmp_path, query, run_in_process):
    """Through log_backtest: a sweep, then the same file again with a hold-out (--force, --oos-start): the
    dataset digest is the return series alone, so deflate still counts 3 trials."""
    rng = np.random.default_rng(7)
    index = pd.bdate_range("2019-01-02", periods=400)
    frame = pd.DataFrame(rng.normal(0.0005, 0.01, (400, 3)), index=index, columns=["a", "b", "c"])
    frame.index.name = "date"
    frame.to_csv(tmp_path / "sweep.csv")
    name = f"relog-{uuid.uuid4().hex[:8]}"
    common = ("--returns", str(tmp_path / "sweep.csv"), "--experiment", name, "--no-tearsheet")
    assert run_in_process("log_backtest", *common, env=local_store).returncode == 0
    again = run_in_process("log_backtest", *common, "--force", "--oos-start", "2020-01-01", env=local_store)
    assert again.returncode == 0, again.stderr
    got, _ = deflate(query, local_store, name)
    assert (
        got["n_trials"] == 3 and got["excluded"]["same_series"] == 3 and got["excluded"]["sweep_parents"] == 2
    )
