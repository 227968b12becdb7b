"""Selection bias and overfitting (issue 15): the deflated Sharpe ratio, PBO by CSCV, and `query_experiments.py
deflate` on real local sqlite stores. The statistics are checked against the paper's numerical example, a
Monte Carlo of the expected maximum, a brute-force CSCV loop and scipy; data is seeded here."""

from __future__ import annotations

import json
import math
import os
import uuid
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import assert_clean_error, run_script
from scipy import stats

# ---------------------------------------------------------------- deflated Sharpe ratio


def test_paper_example(scripts):
    """Bailey & Lopez de Prado (2014), section 6: annualised SR 2.5 over T = 1,250 daily bars (250 a year),
    N = 100 trials with annualised SR variance 0.5, skewness -3, kurtosis 10 -> E[max] ~ 0.1132 per bar and
    DSR ~ 0.90."""
    qe = scripts.query_experiments
    sharpe, variance = 2.5 / math.sqrt(250), 0.5 / 250
    expected = qe.expected_max_sharpe(100, variance)
    assert expected == pytest.approx(0.1132, abs=5e-5)
    assert qe.probabilistic_sharpe_ratio(sharpe, expected, 1250, -3.0, 10.0) == pytest.approx(0.90, abs=0.005)
    # The same through deflated_sharpe_ratio, from 100 trial Sharpe ratios with exactly that sample variance.
    trials = np.random.default_rng(1).normal(size=100)
    trials = (trials - trials.mean()) / trials.std(ddof=1) * math.sqrt(variance)
    got_expected, dsr = qe.deflated_sharpe_ratio(sharpe, trials.tolist(), 1250, -3.0, 10.0)
    assert got_expected == pytest.approx(expected, rel=1e-9)
    assert dsr == pytest.approx(0.90, abs=0.005)


def test_expected_maximum_against_monte_carlo_and_scipy(scripts):
    """The closed form against the mean maximum of N simulated Sharpe ratios (an asymptotic approximation:
    +2.4 % at N = 10, closer for larger N) and, term by term, against scipy's normal quantile."""
    qe = scripts.query_experiments
    rng = np.random.default_rng(7)
    for n, variance in ((10, 0.04), (100, 0.002), (1000, 0.5)):
        simulated = rng.normal(0, math.sqrt(variance), (2_000_000 // n, n)).max(axis=1).mean()
        formula = qe.expected_max_sharpe(n, variance)
        assert formula == pytest.approx(simulated, rel=0.03), n
        gamma = 0.5772156649015329
        exact = math.sqrt(variance) * (
            (1 - gamma) * stats.norm.ppf(1 - 1 / n) + gamma * stats.norm.ppf(1 - 1 / (n * math.e))
        )
        assert formula == pytest.approx(exact, rel=1e-9)


def test_probabilistic_sharpe_against_scipy(scripts):
    qe = scripts.query_experiments
    for sr, bench, t, skew, kurt in (
        (0.1, 0.0, 500, 0.0, 3.0),
        (0.05, 0.08, 2000, -1.2, 7.5),
        (0.3, 0.1, 60, 1, 4),
    ):
        z = (sr - bench) * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
        assert qe.probabilistic_sharpe_ratio(sr, bench, t, skew, kurt) == pytest.approx(
            stats.norm.cdf(z), abs=1e-12
        )


def test_undefined_is_nan_never_a_number(scripts):
    qe = scripts.query_experiments
    assert math.isnan(qe.expected_max_sharpe(1, 0.1))  # fewer than 2 trials
    assert math.isnan(qe.expected_max_sharpe(10, 0.0))  # zero variance
    assert math.isnan(qe.expected_max_sharpe(10, math.nan))
    assert math.isnan(qe.probabilistic_sharpe_ratio(0.1, 0.0, 1, 0.0, 3.0))  # one bar
    assert math.isnan(qe.probabilistic_sharpe_ratio(0.1, 0.0, 100, math.nan, 3.0))
    assert math.isnan(qe.probabilistic_sharpe_ratio(1.0, 0.0, 100, 5.0, 1.0))  # 1 - 5 + 0 <= 0
    assert all(math.isnan(v) for v in qe.deflated_sharpe_ratio(0.1, [0.1], 100, 0.0, 3.0))
    assert all(math.isnan(v) for v in qe.deflated_sharpe_ratio(0.1, [0.1, 0.1, 0.1], 100, 0.0, 3.0))


# ---------------------------------------------------------------- PBO by CSCV


def brute_force_pbo(returns: np.ndarray, splits: int) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """CSCV written out as in the paper, one combination at a time, with pandas' std and scipy's ranks."""
    total, n = returns.shape
    block = total // splits
    data = returns[total - block * splits :]
    pieces = np.split(data, splits)
    logits, is_best, oos_best = [], [], []
    for chosen in combinations(range(splits), splits // 2):
        train = pd.DataFrame(np.vstack([pieces[i] for i in chosen]))
        test = pd.DataFrame(np.vstack([pieces[i] for i in range(splits) if i not in chosen]))
        is_sr = (train.mean() / train.std()).to_numpy()
        oos_sr = (test.mean() / test.std()).to_numpy()
        star = int(np.argmax(is_sr))
        omega = stats.rankdata(oos_sr)[star] / (n + 1)
        logits.append(math.log(omega / (1 - omega)))
        is_best.append(is_sr[star])
        oos_best.append(oos_sr[star])
    logits = np.array(logits)
    return float((logits <= 0).mean()), logits, np.array(is_best), np.array(oos_best)


@pytest.mark.parametrize(("bars", "trials", "splits"), [(203, 7, 6), (64, 3, 4), (500, 12, 10)])
def test_cscv_matches_a_brute_force_loop(scripts, bars, trials, splits):
    returns = np.random.default_rng(bars).normal(0.0005, 0.01, (bars, trials))
    returns[:, 1] += 0.01  # a large mean: the vectorised sums must not lose precision to it
    got = scripts.log_backtest.probability_of_overfitting(returns, splits)
    pbo, logits, is_best, oos_best = brute_force_pbo(returns, splits)
    assert got.reason is None and got.splits == splits and got.bars_used == bars // splits * splits
    assert len(got.logits) == math.comb(splits, splits // 2)
    np.testing.assert_allclose(got.logits, logits, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.is_sharpe, is_best, rtol=1e-9)
    np.testing.assert_allclose(got.oos_sharpe, oos_best, rtol=1e-9)
    assert got.pbo == pbo


def test_pbo_of_noise_is_near_one_half_and_of_a_real_edge_near_zero(scripts):
    """20 seeded sweeps of 20 skill-less columns: the in-sample best is a coin flip out of sample, so PBO
    averages ~0.5 (one sweep alone varies a lot: its 12,870 combinations share the same bars). Give one column a
    real drift and it wins in and out of sample: PBO near 0."""
    pbo = scripts.log_backtest.probability_of_overfitting
    noise, edge = [], []
    for seed in range(10):
        returns = np.random.default_rng(seed).normal(0.0003, 0.01, (1000, 20))
        noise.append(pbo(returns).pbo)
        returns[:, 3] += 0.002
        edge.append(pbo(returns).pbo)
    assert 0.35 <= float(np.mean(noise)) <= 0.65, noise
    assert max(edge) < 0.1, edge


def test_pbo_undefined_cases(scripts):
    pbo = scripts.log_backtest.probability_of_overfitting
    rng = np.random.default_rng(3)
    cases = {
        "at least 2 trials": (rng.normal(size=(400, 1)), 16),
        "even and at least 2": (rng.normal(size=(400, 4)), 7),
        "too few": (rng.normal(size=(31, 4)), 16),
        "NaN": (np.where(np.eye(40, 4) > 0, np.nan, 1.0) * rng.normal(size=(40, 4)), 4),
    }
    flat = rng.normal(size=(400, 4))
    flat[:, 2] = 0.001  # a constant column: zero variance everywhere
    cases["zero variance"] = (flat, 16)
    for words, (returns, splits) in cases.items():
        result = pbo(returns, splits)
        assert math.isnan(result.pbo) and words in result.reason and result.logits == [], words


# ---------------------------------------------------------------- deflate on a real store


def seed_trials(uri: str, experiment: str) -> dict:
    """Runs as log_backtest writes them: FINISHED daily and weekly runs, a sweep parent repeating its best
    child (excluded), a FAILED run with the highest Sharpe (excluded), a run without periods_per_year."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    rng = np.random.default_rng(11)
    truth: dict = {"runs": {}}

    def make(name, metrics, params, tags=None, status="FINISHED"):
        run = client.create_run(experiment_id, run_name=name, tags=tags or {})
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("mlflow.source.name", "log_backtest.py")],
        )
        client.set_terminated(run.info.run_id, status)
        truth["runs"][run.info.run_id] = {
            "name": name,
            "metrics": metrics,
            "params": params,
            "status": status,
        }
        return run.info.run_id

    for i in range(12):
        weekly = i % 4 == 3
        metrics = {
            "sharpe": float(rng.normal(0.8, 0.5)),
            "skew": float(rng.normal(-0.3, 0.2)),
            "kurtosis": float(abs(rng.normal(2, 1))),  # excess, as log_backtest logs it
        }
        params = {"periods_per_year": 52 if weekly else 252, "n_bars": 260 if weekly else 1260,
                  "universe": "sp500" if i % 2 else "nasdaq"}  # fmt: skip
        make(f"trial-{i}", metrics, params)
    best = max(
        (i for i, r in truth["runs"].items()),
        key=lambda i: (
            truth["runs"][i]["metrics"]["sharpe"] / math.sqrt(truth["runs"][i]["params"]["periods_per_year"])
        ),
    )
    truth["parent"] = make("sweep", dict(truth["runs"][best]["metrics"], sharpe=9.0), {"periods_per_year": 252,
                           "n_bars": 1260}, tags={"backtest.sweep": "true"})  # fmt: skip
    truth["failed"] = make("crashed", {"sharpe": 12.0, "skew": 0.0, "kurtosis": 0.0},
                           {"periods_per_year": 252, "n_bars": 1260}, status="FAILED")  # fmt: skip
    truth["no_periods"] = make("bare", {"sharpe": 0.5, "skew": 0.0, "kurtosis": 0.0}, {"n_bars": 100})
    return truth


def independent_deflate(runs: list[dict]) -> dict:
    """What deflate must print, computed here with numpy and scipy from the seeded values."""
    per_bar = np.array([r["metrics"]["sharpe"] / math.sqrt(r["params"]["periods_per_year"]) for r in runs])
    n = len(runs)
    best = runs[int(per_bar.argmax())]
    sr = per_bar.max()
    gamma = np.euler_gamma
    expected = math.sqrt(per_bar.var(ddof=1)) * (
        (1 - gamma) * stats.norm.ppf(1 - 1 / n) + gamma * stats.norm.ppf(1 - 1 / (n * math.e))
    )
    skew, kurt = best["metrics"]["skew"], best["metrics"]["kurtosis"] + 3
    z = (
        (sr - expected)
        * math.sqrt(best["params"]["n_bars"] - 1)
        / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    )
    return {
        "best": best,
        "expected": expected * math.sqrt(best["params"]["periods_per_year"]),
        "dsr": stats.norm.cdf(z),
    }


def test_deflate_on_a_local_store(local_store, query):
    name = f"deflate-{uuid.uuid4().hex[:8]}"
    truth = seed_trials(local_store["MLFLOW_TRACKING_URI"], name)
    code, out, err = query(local_store, "deflate", "--experiment", name)
    assert code == 0, err
    got = json.loads(out)
    trials = [
        r
        for i, r in truth["runs"].items()
        if i not in (truth["parent"], truth["failed"], truth["no_periods"])
    ]
    want = independent_deflate(trials)
    assert got["n_trials"] == 12 == len(trials)
    assert got["best_run_name"] == want["best"]["name"]
    assert got["best_run_id"] == next(i for i, r in truth["runs"].items() if r is want["best"])
    assert got["best_sharpe"] == want["best"]["metrics"]["sharpe"]
    assert got["expected_max_sharpe"] == pytest.approx(want["expected"], rel=1e-9)
    assert got["deflated_sharpe_ratio"] == pytest.approx(want["dsr"], rel=1e-9)
    assert got["kurtosis"] == pytest.approx(want["best"]["metrics"]["kurtosis"] + 3)
    assert got["excluded"] == {"sweep_parents": 1, "walk_forward_folds": 0, "same_series": 0, "deleted": 0,
                               "no_periods_per_year": 1}  # fmt: skip
    assert got["undefined"] == {} and got["deleted_trials"] == 0
    assert "1 runs with 'sharpe' left out: no periods per year" in err
    assert f"best of 12 runs, run {want['best']['name']!r}" in got["verdict"]
    assert f"{got['deflated_sharpe_ratio']:.2f}" in got["verdict"]

    # --filter picks the trials; the same numbers computed on that subset.
    code, out, err = query(
        local_store, "deflate", "--experiment", name, "--filter", "params.universe = 'sp500'"
    )
    got = json.loads(out)
    subset = [r for r in trials if r["params"]["universe"] == "sp500"]
    want = independent_deflate(subset)
    assert got["n_trials"] == len(subset) == 6 and got["filter"] == "params.universe = 'sp500'"
    assert got["deflated_sharpe_ratio"] == pytest.approx(want["dsr"], rel=1e-9)

    # One trial: listed as undefined, never a number.
    code, out, err = query(
        local_store, "deflate", "--experiment", name, "--filter", "attributes.run_name = 'trial-0'"
    )
    got = json.loads(out)
    assert code == 0 and got["n_trials"] == 1 and got["deflated_sharpe_ratio"] is None
    assert got["expected_max_sharpe"] is None and "2 trials" in got["undefined"]["deflated_sharpe_ratio"]
    assert "No verdict" in got["verdict"] and "undefined" in got["verdict"]

    code, out, err = query(local_store, "deflate", "--experiment", name, "--metric", "sharp")
    assert code == 3 and "'sharp'" in err and "closest: sharpe" in err and out == ""
    code, out, err = query(local_store, "deflate", "--experiment", name, "--filter", "params.universe = ")
    assert code == 2 and "--filter" in err


def test_database_read_equals_search_runs(local_store, scripts, connect):
    """deflate reads a database store's rows directly; the public search_runs path gives the same trials."""
    qe = scripts.query_experiments
    name = f"deflate-{uuid.uuid4().hex[:8]}"
    seed_trials(local_store["MLFLOW_TRACKING_URI"], name)
    client = connect("query_experiments", local_store["MLFLOW_TRACKING_URI"])
    ids = [client.get_experiment_by_name(name).experiment_id]
    for user_filter in ("", "params.universe = 'sp500' and metrics.sharpe > 0.5"):
        filter_string = qe.build_run_filter(user_filter, "FINISHED", None, False)
        direct = qe.runs_from_database(client._tracking_client.store, ids, filter_string, "sharpe")
        searched = qe.runs_from_search(client, ids, filter_string, "sharpe")
        assert direct and sorted(direct, key=lambda t: t.run_id) == sorted(searched, key=lambda t: t.run_id)


def test_deflate_reads_what_log_backtest_logged(local_store, tmp_path, query, run_in_process):
    """A real 4-column sweep from log_backtest: its children are the trials, the parent is not; skew and
    (excess) kurtosis are the children's logged values."""
    rng = np.random.default_rng(5)
    index = pd.bdate_range("2018-01-02", periods=600)
    frame = pd.DataFrame(rng.normal(0.0004, 0.01, (600, 4)), index=index, columns=["a", "b", "c", "d"])
    frame.index.name = "date"
    frame.to_csv(tmp_path / "sweep.csv")
    name = f"deflate-lb-{uuid.uuid4().hex[:8]}"
    done = run_in_process("log_backtest", "--returns", str(tmp_path / "sweep.csv"), "--experiment", name,
                          "--no-tearsheet", env=local_store)  # fmt: skip
    assert done.returncode == 0, done.stderr
    sweep = done.json()
    code, out, err = query(local_store, "deflate", "--experiment", name)
    assert code == 0, err
    got = json.loads(out)
    children = {r["run_id"]: r for r in sweep["runs"]}
    assert got["n_trials"] == 4
    # The parent logs best_sharpe, not sharpe: it is no trial, and counted under excluded all the same.
    assert got["excluded"]["sweep_parents"] == 1 and got["best_run_id"] != sweep["parent_run_id"]
    best = max(children.values(), key=lambda r: r["metrics"]["sharpe"])
    assert got["best_run_id"] == best["run_id"] and got["best_sharpe"] == best["metrics"]["sharpe"]
    column = frame[best["column"]]
    assert got["n_bars"] == 600 and got["periods_per_year"] == best["periods_per_year"]
    assert got["skew"] == pytest.approx(column.skew(), rel=1e-9)
    assert got["kurtosis"] == pytest.approx(column.kurt() + 3, rel=1e-9)
    assert 0 <= got["deflated_sharpe_ratio"] <= 1


@pytest.mark.server
def test_deflate_over_http_equals_the_local_read(mlflow_server, query):
    """Through a tracking server deflate pages through search_runs; same trials, same numbers as the direct
    read of the server's own database file."""
    name = f"deflate-http-{uuid.uuid4().hex[:8]}"
    seed_trials(f"sqlite:///{mlflow_server.root / 'mlflow.db'}", name)  # the server's store, no HTTP cost
    code, out, err = query(mlflow_server.env(), "deflate", "--experiment", name)
    assert code == 0, err
    over_http = json.loads(out)
    code, out, err = query(
        {"MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_server.root / 'mlflow.db'}"},
        "deflate",
        "--experiment",
        name,
    )
    assert code == 0, err
    assert over_http == json.loads(out) and over_http["n_trials"] == 12


# ---------------------------------------------------------------- sweep parents and out-of-sample


def sweep_frame(seed: int, columns: int = 6, bars: int = 1000) -> pd.DataFrame:
    """Seeded daily returns; column `edge` has a real drift."""
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2016-01-04", periods=bars, name="date")
    frame = pd.DataFrame(rng.normal(0.0002, 0.01, (bars, columns)), index=index,
                         columns=[f"c{i}" for i in range(columns - 1)] + ["edge"])  # fmt: skip
    frame["edge"] += 0.0015
    return frame


@pytest.fixture(scope="module")
def logged_sweep(tmp_path_factory, run_in_process):
    """One real sweep in a local store, as a user runs it (the parent's statistics and artifacts)."""
    folder = tmp_path_factory.mktemp("overfit-sweep")
    frame = sweep_frame(21)
    frame.to_csv(folder / "grid.csv")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    done = run_in_process("log_backtest", "--returns", "grid.csv", "--experiment", name, "--no-tearsheet",
                          env=env, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {"folder": folder, "env": env, "experiment": name, "frame": frame, "out": done.json()}


def test_sweep_parent_summarises_the_search(logged_sweep, scripts, query, tmp_path):
    from mlflow import MlflowClient

    out, frame = logged_sweep["out"], logged_sweep["frame"]
    client = MlflowClient(logged_sweep["env"]["MLFLOW_TRACKING_URI"])
    parent = client.get_run(out["parent_run_id"])
    children = {r["run_id"]: client.get_run(r["run_id"]) for r in out["runs"]}
    best = max(children.values(), key=lambda r: r.data.metrics["sharpe"])
    metrics = parent.data.metrics
    # The parent is not one more strategy: none of the children's metrics under their own names.
    assert not set(metrics) & set(scripts.log_backtest.METRIC_NAMES)
    assert metrics["n_trials"] == 6 == out["n_trials"] and out["best_by"] == "sharpe"
    for name in ("sharpe", "sortino", "max_drawdown", "skew", "kurtosis"):
        assert metrics[f"best_{name}"] == best.data.metrics[name], name
    assert parent.data.tags["backtest.best_run_id"] == best.info.run_id == out["best_run_id"]
    assert parent.data.params["best_by"] == "sharpe" and parent.data.params["pbo_splits"] == "16"
    assert best.info.run_name == "edge"

    # DSR: the parent's equals `deflate` on the same experiment (the children are its only trials).
    code, text, err = query(logged_sweep["env"], "deflate", "--experiment", logged_sweep["experiment"])
    assert code == 0, err
    deflated = json.loads(text)
    assert deflated["n_trials"] == 6 and deflated["best_run_id"] == best.info.run_id
    assert metrics["deflated_sharpe_ratio"] == pytest.approx(deflated["deflated_sharpe_ratio"], rel=1e-12)
    assert metrics["expected_max_sharpe"] == pytest.approx(deflated["expected_max_sharpe"], rel=1e-12)
    assert out["deflated_sharpe_ratio"] == metrics["deflated_sharpe_ratio"]

    # PBO: CSCV on the file's returns, built here with pandas (rf 0): one column with an edge -> near 0.
    expected = scripts.log_backtest.probability_of_overfitting(frame.to_numpy(), 16)
    assert metrics["pbo"] == expected.pbo == out["pbo"] and metrics["pbo"] < 0.1
    local = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path)))
    assert {"comparison.csv", "cscv.csv", "overfitting.json", "overfitting.png"} <= set(os.listdir(local))
    cscv = pd.read_csv(local / "cscv.csv")
    assert len(cscv) == math.comb(16, 8) == 12_870
    np.testing.assert_allclose(cscv["logit"], expected.logits, rtol=1e-12)
    np.testing.assert_allclose(cscv["is_sharpe"], np.array(expected.is_sharpe) * math.sqrt(252), rtol=1e-12)
    assert json.loads((local / "overfitting.json").read_text())["pbo"] == expected.pbo
    assert (local / "overfitting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    description = parent.data.tags["mlflow.note.content"]
    assert "deflated Sharpe ratio" in description and "PBO" in description
    assert description.splitlines()[0].endswith(
        f"DSR {metrics['deflated_sharpe_ratio']:.2f} · PBO {metrics['pbo']:.2f}"
    )


def test_best_by_follows_the_metric_direction(tmp_path, run_in_process):
    frame = sweep_frame(4, columns=5, bars=300)
    frame.to_csv(tmp_path / "grid.csv")
    stats_of = {
        "volatility": frame.std(ddof=1).idxmin(),  # lower is better
        "max_drawdown": ((1 + frame).cumprod() / (1 + frame).cumprod().cummax() - 1)
        .min()
        .idxmax(),  # closest to 0
    }
    for metric, expected in stats_of.items():
        done = run_in_process(
            "log_backtest", "--returns", str(tmp_path / "grid.csv"), "--dry-run", "--best-by", metric
        )
        assert done.returncode == 0, done.stderr
        out = done.json()
        assert out["best_by"] == metric and out["best_column"] == expected, metric


def segment_metrics(run_in_process, path: Path, extra: tuple[str, ...] = ()) -> dict:
    done = run_in_process("log_backtest", "--returns", str(path), "--dry-run", "--no-tearsheet", *extra)
    assert done.returncode == 0, done.stderr
    return done.json()


def test_out_of_sample_metrics_equal_each_segment_alone(tmp_path, run_in_process):
    """is_<m> and oos_<m> are the whole-series computation run on each segment alone (its own file)."""
    frame = sweep_frame(8, columns=1, bars=700)[["edge"]]
    frame.to_csv(tmp_path / "all.csv")
    cut = frame.index.searchsorted(pd.Timestamp("2017-06-01"))
    frame.iloc[:cut].to_csv(tmp_path / "is.csv")
    frame.iloc[cut:].to_csv(tmp_path / "oos.csv")
    rf = ("--rf", "0.02")
    split = segment_metrics(run_in_process, tmp_path / "all.csv", ("--oos-start", "2017-06-01", *rf))
    whole = segment_metrics(run_in_process, tmp_path / "all.csv", rf)
    alone = {
        "is_": segment_metrics(run_in_process, tmp_path / "is.csv", rf),
        "oos_": segment_metrics(run_in_process, tmp_path / "oos.csv", rf),
    }
    names = ("sharpe", "sortino", "cagr", "volatility", "max_drawdown", "calmar", "total_return", "win_rate")
    assert {k: v for k, v in split["metrics"].items() if k in whole["metrics"]} == whole["metrics"]
    for prefix, segment in alone.items():
        assert segment["periods_per_year"] == split["periods_per_year"]
        for name in names:
            assert split["metrics"][prefix + name] == pytest.approx(segment["metrics"][name], rel=1e-12), (
                prefix + name
            )
    # A fraction of the bars splits the same way.
    fraction = segment_metrics(
        run_in_process, tmp_path / "all.csv", ("--oos-start", f"{cut / len(frame)}", *rf)
    )
    assert fraction["metrics"]["oos_sharpe"] == split["metrics"]["oos_sharpe"]


def test_out_of_sample_run_and_sweep_in_a_store(local_store, tmp_path, run_in_process):
    from mlflow import MlflowClient

    frame = sweep_frame(12, columns=5, bars=800)
    frame.to_csv(tmp_path / "grid.csv")
    frame[["edge"]].to_csv(tmp_path / "one.csv")
    done = run_in_process("log_backtest", "--returns", str(tmp_path / "one.csv"), "--oos-start", "0.75",
                          "--no-tearsheet", env=local_store)  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = MlflowClient(local_store["MLFLOW_TRACKING_URI"])
    run = client.get_run(done.json()["run_id"])
    assert run.data.params["oos_start"] == "0.75" and run.data.params["is_n_bars"] == "600"
    assert run.data.params["oos_n_bars"] == "200"
    assert run.data.params["oos_first_bar"] == frame.index[600].strftime("%Y-%m-%d")
    assert {"sharpe", "is_sharpe", "oos_sharpe", "is_win_rate", "oos_calmar"} <= set(run.data.metrics)
    description = run.data.tags["mlflow.note.content"]
    sharpe = (run.data.metrics["is_sharpe"], run.data.metrics["oos_sharpe"])
    assert f"- sharpe: **{sharpe[0]:.3f}** in-sample · **{sharpe[1]:.3f}** out-of-sample" in description
    assert "**Out-of-sample** from" in description

    done = run_in_process("log_backtest", "--returns", str(tmp_path / "grid.csv"), "--oos-start", "0.75",
                          "--best-by", "sortino", "--no-tearsheet", env=local_store)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.json()
    children = {r["run_name"]: client.get_run(r["run_id"]).data.metrics for r in out["runs"]}
    chosen = max(children, key=lambda c: children[c]["is_sortino"])  # chosen in-sample
    by_oos = sorted(children, key=lambda c: -children[c]["oos_sortino"])
    assert out["best_by"] == "is_sortino" and out["best_column"] == chosen
    assert out["oos_rank_of_best"] == by_oos.index(chosen) + 1
    parent = client.get_run(out["parent_run_id"]).data.metrics
    assert parent["oos_rank_of_best"] == out["oos_rank_of_best"]
    assert parent["best_is_sortino"] == children[chosen]["is_sortino"]
    assert parent["best_oos_sortino"] == children[chosen]["oos_sortino"]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--oos-start", "1.5"), "between 0 and 1"),
        (("--oos-start", "last tuesday"), "neither a date"),
        (("--oos-start", "2031-01-01"), "0 out-of-sample bars"),
        (("--best-by", "nope"), "not a metric with a better direction"),
        (("--best-by", "beta"), "not a metric with a better direction"),
        (("--best-by", "omega", "--oos-start", "0.5"), "chosen in-sample"),
        (("--pbo-splits", "7"), "must be even"),
    ],
)
def test_search_flags_refuse_bad_input_before_writing(no_store_yet, tmp_path, flags, words):
    sweep_frame(3, columns=3, bars=200).to_csv(tmp_path / "grid.csv")
    done = run_script("log_backtest", "--returns", str(tmp_path / "grid.csv"), "--no-tearsheet", *flags,
                      env=no_store_yet, cwd=tmp_path)  # fmt: skip
    assert_clean_error(done, 2, words)
    db = Path(no_store_yet["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    assert not db.exists()  # nothing written: not even the store


def test_pbo_of_identical_trials_is_undefined_not_one(scripts):
    """Issue 25 item 8: identical columns tie everywhere (each at the median rank, logit 0, counted as
    <= 0), which made PBO 1.0. With nothing to choose between, PBO is undefined with the reason, like the DSR."""
    column = np.random.default_rng(8).normal(0.0005, 0.01, size=(400, 1))
    result = scripts.log_backtest.probability_of_overfitting(np.repeat(column, 5, axis=1), 16)
    assert math.isnan(result.pbo) and "identical" in result.reason and result.logits == [], result.reason
    nearly = np.repeat(column, 5, axis=1)
    nearly[7, 3] += 1e-4  # one bar differs: a choice exists again
    assert not math.isnan(scripts.log_backtest.probability_of_overfitting(nearly, 16).pbo)


@pytest.mark.parametrize("case", ["noise", "wide_ticks", "undefined"])
def test_overfitting_png_titles_fit_their_panels(scripts, case):
    """Issue 25 item 18: the figure's titles were cut off. Each title lies inside its own panel's width
    (so inside the figure), whatever the tick labels take, and says when PBO is undefined."""
    from dataclasses import replace

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    lb = scripts.log_backtest
    returns = np.random.default_rng(18).normal(0.0003, 0.01, (600, 10))
    if case == "wide_ticks":
        returns = returns * 1e-5 + np.linspace(1e-6, 1e-5, 10)  # Sharpe ratios in the thousands
    result = lb.probability_of_overfitting(returns, 16)
    assert result.logits and math.isfinite(result.pbo)
    if case == "undefined":
        result = replace(result, pbo=math.nan)
    fig = lb.overfitting_figure(result, math.sqrt(252))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    titles = []
    for axes in fig.axes:
        title, panel = axes.title.get_window_extent(renderer), axes.get_window_extent(renderer)
        assert panel.x0 - 1 <= title.x0 and title.x1 <= panel.x1 + 1, (case, axes.get_title(), title, panel)
        assert title.y0 >= 0 and title.y1 <= fig.bbox.y1, (case, axes.get_title())
        titles.append(axes.get_title())
    assert ("PBO undefined" in titles[0]) == (case == "undefined"), titles
    assert (f"PBO = {result.pbo:.2f}" in titles[0]) == (case != "undefined"), titles
