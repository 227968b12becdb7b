"""Load: many log_backtest processes at once against one tracking server, and against one local sqlite store.

Every process logs its own seeded series (distinct fingerprints) into ONE new experiment, so the race to create
the experiment is part of the test. Tearsheets are off (--no-tearsheet): 16 QuantStats reports would cost
minutes of CPU on two cores without exercising anything the store sees differently.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import harness
import numpy as np
import pandas as pd
import pytest
from harness import run_script

N_BARS = 300  # below the default --max-history-points (5000): every bar is a history point


def write_series(folder, seed: int) -> str:
    rng = np.random.default_rng(1000 + seed)
    frame = pd.DataFrame(
        {
            "date": pd.bdate_range("2019-01-02", periods=N_BARS).strftime("%Y-%m-%d"),
            "returns": rng.normal(0.0005, 0.01, N_BARS),
        }
    )
    path = folder / f"load{seed:02d}.csv"
    frame.to_csv(path, index=False, float_format="%.17g")
    return path.name


def run_many(folder, env: dict[str, str], experiment: str, count: int) -> list[harness.Result]:
    names = [write_series(folder, i) for i in range(count)]

    def one(i: int) -> harness.Result:
        return run_script(
            "log_backtest", "--returns", names[i], "--experiment", experiment, "--run-name", f"load-{i:02d}",
            "--param", f"seed={i}", "--no-tearsheet", env=env, cwd=folder, timeout=900,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def check_complete(client, folder, experiment: str, results: list[harness.Result], tmp_path) -> list[str]:
    """Every successful process left one FINISHED, complete run; no run without a process that reported it.
    Returns the run ids."""
    ok = [r for r in results if r.returncode == 0]
    outs = [r.json() for r in ok]
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    # nothing duplicated, nothing orphaned: exactly the runs the successful processes reported
    assert sorted(r.info.run_id for r in runs) == sorted(o["run_id"] for o in outs)
    assert len({o["fingerprint"] for o in outs}) == len(outs)
    for out in outs:
        run = client.get_run(out["run_id"])
        seed = int(run.data.params["seed"])
        assert run.info.status == "FINISHED" and run.info.run_name == f"load-{seed:02d}"
        assert out["experiment_id"] == exp.experiment_id and out["n_bars"] == N_BARS
        scalars = {
            k: v for k, v in run.data.metrics.items() if k not in ("equity", "drawdown", "year_return")
        }
        assert scalars == pytest.approx(out["metrics"], rel=1e-15) and len(scalars) >= 60
        # both histories, every bar, against the seeded data computed here
        r = pd.read_csv(folder / f"load{seed:02d}.csv")["returns"].to_numpy()
        equity = np.cumprod(1 + r)
        for key, expected in (("equity", equity), ("drawdown", equity / np.maximum.accumulate(
                np.maximum(equity, 1.0)) - 1)):  # fmt: skip
            history = sorted(client.get_metric_history(out["run_id"], key), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(N_BARS)), key
            np.testing.assert_allclose([m.value for m in history], expected, rtol=1e-12, atol=1e-15)
        assert sorted(a.path for a in client.list_artifacts(out["run_id"])) == [
            "metrics.json",
            "periods",
            "returns.csv",
        ]
        local = client.download_artifacts(out["run_id"], "metrics.json", str(tmp_path / out["run_id"]))
        with open(local) as handle:
            doc = json.load(handle)
        assert doc["metrics"] == out["metrics"] and doc["run_name"] == f"load-{seed:02d}"
        assert set(doc["metrics"]) | set(doc["undefined_metrics"]) == set(out["metrics"]) | set(
            out["undefined_metrics"]
        )
        # credentials were in the environment of every process: none in a param or tag
        for value in [*run.data.params.values(), *run.data.tags.values()]:
            assert not any(secret in value for secret in harness.SECRETS)
    return [o["run_id"] for o in outs]


@pytest.mark.server
@pytest.mark.slow
def test_16_processes_against_one_server(mlflow_server, tmp_path):
    experiment = f"load-{uuid.uuid4().hex[:8]}"
    env = mlflow_server.env(mlflow_server.alice)
    results = run_many(tmp_path, env, experiment, 16)
    failures = [(r.returncode, r.stderr[-400:]) for r in results if r.returncode != 0]
    assert failures == [], failures  # a server must take 16 writers at once
    for result in results:
        assert "Traceback" not in result.stderr and result.stderr == "", result.stderr
    run_ids = check_complete(
        mlflow_server.client(mlflow_server.alice), tmp_path, experiment, results, tmp_path
    )
    assert len(run_ids) == 16


@pytest.mark.slow
def test_8_processes_against_one_local_sqlite_store(client_for, tmp_path):
    """A store that exists (its tables made here first): 8 writers at once, all complete, nothing duplicated."""
    experiment = f"load-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    client = client_for(env)
    client.search_experiments()  # creates the tables
    results = run_many(tmp_path, env, experiment, 8)
    failed = [(r.returncode, r.stderr.strip()[:300]) for r in results if r.returncode != 0]
    assert failed == [], failed
    assert len(check_complete(client, tmp_path, experiment, results, tmp_path)) == 8


@pytest.mark.slow
def test_4_processes_racing_to_create_a_fresh_sqlite_store(client_for, tmp_path):
    """No store yet: the processes race to create its tables. Each logs a complete run or fails with a clear,
    documented exit code (never 1, 'unexpected') after which a rerun is safe; after rerunning the failed
    ones, every run is there once."""
    experiment = f"load-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = run_many(tmp_path, env, experiment, 4)
    final = list(first)
    for i, result in enumerate(first):
        if result.returncode != 0:
            harness.assert_clean_error(result, result.returncode)
            final[i] = run_script(
                "log_backtest", "--returns", f"load{i:02d}.csv", "--experiment", experiment,
                "--run-name", f"load-{i:02d}", "--param", f"seed={i}", "--no-tearsheet", env=env, cwd=tmp_path,
            )  # fmt: skip
    assert [r.returncode for r in final] == [0] * 4, [r.stderr[-300:] for r in final]
    assert len(check_complete(client_for(env), tmp_path, experiment, final, tmp_path)) == 4
    first_failures = [(r.returncode, r.stderr.strip()[:200]) for r in first if r.returncode != 0]
    assert all(code != 1 for code, _ in first_failures), first_failures
