"""Calendar and stress-period breakdowns (issue 23): every table recomputed here with pandas' own calendar
(to_period and partial-string date slices), at daily, hourly and weekly bars, compounded and not, with a
benchmark; the logged artifacts, stress metrics, year_return history, description and JSON output of real
runs; `query_experiments periods` across a sweep; bad input."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

STATS = ("return", "volatility", "sharpe", "max_drawdown")
PANDAS_FREQ = {"year": "Y", "quarter": "Q", "month": "M"}


def series(kind: str, seed: int) -> tuple[pd.Series, float]:
    """A seeded return series whose first and last calendar periods are partial, and its bars per year."""
    rng = np.random.default_rng(seed)
    if kind == "daily":
        index = pd.bdate_range("2006-05-17", "2012-08-14")
        periods = 252.0
    elif kind == "hourly":  # crypto: every hour of every day
        index = pd.date_range("2019-11-20 07:00", "2021-02-03 18:00", freq="h")
        periods = 365.0 * 24
    else:
        index = pd.date_range("1999-06-04", "2023-03-10", freq="W-FRI")
        periods = 52.0
    scale = 0.01 * math.sqrt(252 / periods)
    return pd.Series(rng.normal(0.0003, scale, len(index)), index=index, name="r"), periods


def total(x: pd.Series, compounded: bool) -> float:
    return float((1 + x).prod() - 1) if compounded else float(x.sum())


def drawdown(x: pd.Series, compounded: bool) -> float:
    equity = (1 + x).cumprod() if compounded else 1 + x.cumsum()
    return float((equity / equity.cummax().clip(lower=1.0) - 1).min())


def expected_stats(x: pd.Series, b: pd.Series | None, periods: float, compounded: bool, rf: float) -> dict:
    excess = x - ((1 + rf) ** (1 / periods) - 1)
    out = {
        "n_bars": len(x),
        "return": total(x, compounded),
        "volatility": x.std() * math.sqrt(periods),
        "sharpe": excess.mean() / excess.std() * math.sqrt(periods),
        "max_drawdown": drawdown(x, compounded),
    }
    if b is not None:
        out["benchmark_return"] = total(b, compounded)
        out["benchmark_max_drawdown"] = drawdown(b, compounded)
        out["excess_return"] = out["return"] - out["benchmark_return"]
    return out


def expected_calendar(r, b, kind, periods, compounded, rf=0.0) -> pd.DataFrame:
    """One row per calendar period, by pandas' Period labels ("2008", "2008Q4", "2008-10")."""
    rows = []
    for label, x in r.groupby(r.index.to_period(PANDAS_FREQ[kind])):
        fmt = "%Y-%m-%d" if (x.index == x.index.normalize()).all() else "%Y-%m-%dT%H:%M:%SZ"
        rows.append({
            "period": str(label), "start": x.index[0].strftime(fmt), "end": x.index[-1].strftime(fmt),
            **expected_stats(x, None if b is None else b.loc[x.index], periods, compounded, rf),
        })  # fmt: skip
    return pd.DataFrame(rows)


def expected_stress(r, b, windows, periods, compounded, rf=0.0) -> dict[str, dict]:
    """Each window by pandas' partial-string slice (an end date includes that whole day)."""
    out = {}
    for name, start, end in windows:
        x = r.loc[start:end]
        if len(x):
            out[name] = expected_stats(x, None if b is None else b.loc[start:end], periods, compounded, rf)
    return out


def check_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got["period"].astype(str)) == list(want["period"])
    for col in want.columns:
        if col in ("period", "start", "end"):
            assert list(got[col].astype(str)) == list(want[col]), col
        else:
            np.testing.assert_allclose(
                got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9, err_msg=col
            )


@pytest.mark.parametrize("kind", ["daily", "hourly", "weekly"])
@pytest.mark.parametrize("compounded", [True, False], ids=["compounded", "simple"])
def test_period_tables_equal_pandas(scripts, kind, compounded):
    lb = scripts.log_backtest
    r, periods = series(kind, 1)
    b = pd.Series(np.random.default_rng(2).normal(0.0002, r.std(), len(r)), index=r.index)
    user = lb.StressWindow("mine", "mine", "2010-02-03", "2010-02-03")  # a single day
    tables = lb.period_tables(r, periods, compounded, 0.02, b, (*lb.STRESS_WINDOWS, user))
    for name in ("year", "quarter", "month"):
        want = expected_calendar(r, b, name, periods, compounded, 0.02)
        check_table(tables.by(name), want)
        assert tables.by(name)["n_bars"].sum() == len(r)
    # partial first and last periods: as many bars as the data has in them
    first_year = r.index[0].year
    assert tables.year["n_bars"].iloc[0] == (r.index.year == first_year).sum() < tables.year["n_bars"].iloc[1]
    windows = [(w.name, w.start, w.end) for w in (*lb.STRESS_WINDOWS, user)]
    want = expected_stress(r, b, windows, periods, compounded, 0.02)
    stress = tables.stress.set_index("name")
    covered = [n for n in stress.index if stress.loc[n, "n_bars"] > 0]
    assert covered == list(want), "every overlapped window, in order, and only those"
    for name, stats in want.items():
        for key, value in stats.items():
            got = stress.loc[name, key]
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-9), (
                name,
                key,
            )
    assert "mine" in stress.index  # a user's window is listed even without bars (weekly: no bar that day)


def test_segment_without_spread_is_undefined(scripts):
    lb = scripts.log_backtest
    index = pd.bdate_range("2020-12-31", periods=3)  # one bar in 2020: no volatility, no Sharpe
    tables = lb.period_tables(pd.Series([0.01, 0.0, 0.0], index=index), 252.0, True)
    first, second = tables.year.iloc[0], tables.year.iloc[1]
    assert first["n_bars"] == 1 and first["return"] == pytest.approx(0.01)
    assert math.isnan(first["volatility"]) and math.isnan(first["sharpe"])
    assert math.isnan(second["sharpe"]) and second["volatility"] == 0  # flat: Sharpe undefined, never inf
    assert first["max_drawdown"] == 0  # the peak starts at 1 before the period's first bar


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "window, needle",
    [
        ("x=2020-13-01:2020-12-31", "not a date"),
        ("x=2020-01-01", "NAME=START:END"),
        ("bad name=2020-01-01:2020-02-01", "NAME=START:END"),
        ("x=2020-03-01:2020-02-01", "before the start"),
        ("gfc=2008-01-01:2008-12-31", "already taken"),
    ],
)
def test_bad_period_is_exit_2_and_nothing_written(log_main, tmp_path, window, needle):
    r, _ = series("daily", 3)
    r.rename_axis("date").to_csv(tmp_path / "r.csv")
    db = tmp_path / "mlflow.db"
    code, out, err = log_main("--returns", str(tmp_path / "r.csv"), "--period", window,
                              "--tracking-uri", f"sqlite:///{db}")  # fmt: skip
    assert code == 2 and out == "" and needle.lower() in err.lower() and "Traceback" not in err
    assert not db.exists()


def test_duplicate_user_period_is_exit_2(log_main, tmp_path):
    r, _ = series("daily", 3)
    r.rename_axis("date").to_csv(tmp_path / "r.csv")
    code, _, err = log_main("--returns", str(tmp_path / "r.csv"), "--dry-run",
                            "--period", "a=2008-01-01:2008-02-01", "--period", "a=2009-01-01:2009-02-01")  # fmt: skip
    assert code == 2 and "already taken" in err


def test_period_prefix_is_refused(log_main, tmp_path):
    """--perio is no abbreviation of --period (nor --period of --periods-per-year)."""
    r, _ = series("daily", 3)
    r.rename_axis("date").to_csv(tmp_path / "r.csv")
    code, _, err = log_main("--returns", str(tmp_path / "r.csv"), "--dry-run",
                            "--perio", "a=2008-01-01:2008-02-01")  # fmt: skip
    assert code == 2 and "--perio" in err


# ---------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def logged(tmp_path_factory, run_in_process):
    """A daily single run with a benchmark and a user window, and a not-compounded hourly sweep of 3, logged
    in this process without a tearsheet (a tearsheet next to the heatmap: test_log_backtest's `single`)."""
    folder = tmp_path_factory.mktemp("periods")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    r, _ = series("daily", 5)
    b = pd.Series(np.random.default_rng(6).normal(0.0002, 0.01, len(r)), index=r.index, name="spy")
    r.rename_axis("date").to_csv(folder / "daily.csv", float_format="%.17g")
    b.rename_axis("date").to_csv(folder / "spy.csv", float_format="%.17g")
    hourly, _ = series("hourly", 7)
    frame = pd.DataFrame({f"lb{k}": hourly.sample(frac=1, random_state=k).to_numpy() for k in (10, 20, 30)},
                         index=hourly.index.rename("timestamp"))  # fmt: skip
    frame.to_csv(folder / "hourly.csv", float_format="%.17g")
    outs = {}
    for name, args in {
        "single": ["--returns", str(folder / "daily.csv"), "--benchmark", str(folder / "spy.csv"),
                   "--period", "taper=2011-06-01:2011-06-30", "--run-name", "daily"],
        "sweep": ["--returns", str(folder / "hourly.csv"), "--simple", "--run-name", "hourly"],
    }.items():  # fmt: skip
        done = run_in_process("log_backtest", *args, "--no-tearsheet", "--experiment", "periods",
                              "--tracking-uri", uri, "--format", "json", cwd=folder)  # fmt: skip
        assert done.returncode == 0, done.stderr
        outs[name] = done.json()
    return {"folder": folder, "uri": uri, "env": {"MLFLOW_TRACKING_URI": uri}, "r": r, "b": b,
            "frame": frame, **outs}  # fmt: skip


def downloaded(client, run_id: str, path: str, folder: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(folder)))


def test_single_run_breakdown(logged, client_for, tmp_path, scripts):
    lb = scripts.log_backtest
    client = client_for(logged["env"])
    out, r, b = logged["single"], logged["r"], logged["b"]
    run = client.get_run(out["run_id"])
    for kind in ("year", "quarter", "month"):
        got = pd.read_csv(
            downloaded(client, out["run_id"], f"periods/{kind}.csv", tmp_path), dtype={"period": str}
        )
        check_table(got, expected_calendar(r, b, kind, 252.0, True))
    windows = [(w.name, w.start, w.end) for w in lb.STRESS_WINDOWS] + [("taper", "2011-06-01", "2011-06-30")]
    want = expected_stress(r, b, windows, 252.0, True)
    assert set(want) == {"gfc", "flash_crash", "us_downgrade", "taper"}
    stress = pd.read_csv(downloaded(client, out["run_id"], "periods/stress.csv", tmp_path)).set_index("name")
    assert list(stress.index) == list(want)
    for name, stats in want.items():
        assert stress.loc[name, "benchmark_max_drawdown"] == pytest.approx(stats["benchmark_max_drawdown"])
        assert run.data.metrics[f"stress_{name}_return"] == pytest.approx(stats["return"], rel=1e-12)
        assert out["metrics"][f"stress_{name}_return"] == run.data.metrics[f"stress_{name}_return"]
    assert not any(k.startswith("stress_dotcom") for k in run.data.metrics)  # not overlapped: not logged
    found = client.search_runs([run.info.experiment_id], "metrics.stress_gfc_return > -1")
    assert [x.info.run_id for x in found] == [out["run_id"]]
    # year_return: step = the year, timestamp = its last bar at 12:00 UTC, value = its compounded return
    history = sorted(client.get_metric_history(out["run_id"], "year_return"), key=lambda m: m.step)
    years = r.groupby(r.index.year)
    assert [m.step for m in history] == list(years.groups)
    for m, (year, x) in zip(history, years, strict=True):
        assert m.value == pytest.approx(total(x, True), rel=1e-12)
        noon = x.index[-1].normalize() + pd.Timedelta(hours=12)
        assert m.timestamp == noon.value // 10**6, year
    png = downloaded(client, out["run_id"], "periods/monthly_returns.png", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the JSON output and the description
    year_returns = {str(y): total(x, True) for y, x in years}
    assert out["periods"]["year_returns"] == pytest.approx(year_returns, rel=1e-12)
    best = max(year_returns, key=year_returns.get)
    worst = min(year_returns, key=year_returns.get)
    assert out["periods"]["best_year"]["period"] == best and out["periods"]["worst_year"]["period"] == worst
    note = run.data.tags["mlflow.note.content"]
    assert "| Year | Return |" in note
    for year, value in year_returns.items():
        assert f"| {year} | {value * 100:+.2f} %".replace("-", "\N{MINUS SIGN}") in note


def test_sweep_children_breakdown_hourly_not_compounded(logged, client_for, tmp_path):
    client = client_for(logged["env"])
    sweep, frame = logged["sweep"], logged["frame"]
    assert len(sweep["runs"]) == 3
    for child in sweep["runs"]:
        r, periods = frame[child["column"]], child["periods_per_year"]  # detected from the hourly bars
        for kind in ("year", "month"):
            got = pd.read_csv(downloaded(client, child["run_id"], f"periods/{kind}.csv", tmp_path / child["run_id"]),
                              dtype={"period": str})  # fmt: skip
            check_table(got, expected_calendar(r, None, kind, periods, False))
        history = sorted(client.get_metric_history(child["run_id"], "year_return"), key=lambda m: m.step)
        years = r.groupby(r.index.year)
        assert [m.step for m in history] == list(years.groups)
        for m, (_, x) in zip(history, years, strict=True):
            assert m.value == pytest.approx(float(x.sum()), rel=1e-12)  # summed: not compounded
            assert m.timestamp == x.index[-1].value // 10**6  # intraday: the bar's own time
        metrics = client.get_run(child["run_id"]).data.metrics
        # issue 23: the heatmap is drawn on every run, --no-tearsheet too (here in this process: no workers)
        png = downloaded(client, child["run_id"], "periods/monthly_returns.png", tmp_path / child["run_id"])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "tearsheet.html" not in child["artifacts"]
        want = expected_stress(r, None, [("covid", "2020-02-19", "2020-03-23")], periods, False)
        assert metrics["stress_covid_return"] == pytest.approx(want["covid"]["return"], rel=1e-12)


def test_the_heatmap_is_drawn_without_a_tearsheet_by_a_worker(logged, tmp_path):
    """Issue 23: periods/monthly_returns.png on every run, --no-tearsheet too (and then no tearsheet), from the
    command line, which draws it in a worker process while it writes (a lone run and a sweep)."""
    from harness import run_script

    (tmp_path / "two.csv").write_text(
        pd.DataFrame({"a": logged["r"].to_numpy(), "b": logged["b"].to_numpy()}, index=logged["r"].index)
        .rename_axis("date").to_csv(float_format="%.17g")
    )  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for args in (["--returns", str(logged["folder"] / "daily.csv")], ["--returns", "two.csv"]):
        done = run_script("log_backtest", *args, "--no-tearsheet", "--debug", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        out = done.json()
        for run in out.get("runs", [out]):
            assert "periods/monthly_returns.png" in run["artifacts"], run["artifacts"]
            assert "tearsheet.html" not in run["artifacts"]
        assert "monthly returns heatmap" in done.stderr  # the phase line of the drawing


def test_window_outside_the_data_is_a_warning(log_main, tmp_path):
    r, _ = series("daily", 3)
    r.rename_axis("date").to_csv(tmp_path / "r.csv")
    code, out, err = log_main("--returns", str(tmp_path / "r.csv"), "--dry-run", "--format",
                              "json", "--period", "old=1990-01-01:1990-12-31")  # fmt: skip
    assert code == 0 and "'old' lies outside the data" in err
    got = json.loads(out)
    assert got["periods"]["stress_returns"]["old"] is None
    assert "stress_old_return" not in got["metrics"] and "periods/stress.csv" in got["artifacts"]


# ---------------------------------------------------------------- query_experiments periods


def ok(result) -> object:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def test_query_periods_over_a_sweep(logged, query):
    env, r = logged["env"], logged["r"]
    got = ok(query(env, "periods", "--experiment", "periods", "--by", "year", "--format", "json"))
    assert got["by"] == "year" and got["metric"] == "return"
    assert got["n_runs"] == 4 and got["sweep_parents_left_out"] == 1 and got["n_undefined"] == 0
    by_id = {run["run_id"]: run for run in got["runs"]}
    assert set(by_id) == {logged["single"]["run_id"], *(c["run_id"] for c in logged["sweep"]["runs"])}
    single = by_id[logged["single"]["run_id"]]
    assert single["source"] == "artifact"
    assert single["values"] == pytest.approx(
        {str(y): total(x, True) for y, x in r.groupby(r.index.year)}, rel=1e-9
    )
    for child in logged["sweep"]["runs"]:
        x = logged["frame"][child["column"]]
        want = {str(y): float(v.sum()) for y, v in x.groupby(x.index.year)}  # the sweep is not compounded
        assert by_id[child["run_id"]]["values"] == pytest.approx(want, rel=1e-9)
    assert got["periods"] == sorted(
        {str(y) for y in r.index.year} | {str(y) for y in logged["frame"].index.year}
    )


def test_query_periods_stress_drawdown_of_chosen_runs(logged, query):
    env, r, b = logged["env"], logged["r"], logged["b"]
    run_id = logged["single"]["run_id"]
    got = ok(query(env, "periods", "--experiment", "periods", "--run-id", run_id, "--by", "stress",
                   "--metric", "max_drawdown", "--format", "json"))  # fmt: skip
    windows = [("gfc", "2007-10-09", "2009-03-09"), ("flash_crash", "2010-05-05", "2010-05-10"),
               ("us_downgrade", "2011-08-05", "2011-09-05"), ("taper", "2011-06-01", "2011-06-30")]  # fmt: skip
    want = {name: s["max_drawdown"] for name, s in expected_stress(r, b, windows, 252.0, True).items()}
    assert got["periods"] == list(want) and got["n_runs"] == 1
    assert got["runs"][0]["values"] == pytest.approx(want, rel=1e-9)


def test_query_periods_bounded_and_as_a_table(logged, query):
    env = logged["env"]
    code, out, err = query(env, "periods", "--experiment", "periods", "--max-runs", "2", "--format", "json")
    got = json.loads(out)
    assert code == 0 and got["n_runs"] == 4 and got["n_shown"] == 2 and len(got["runs"]) == 2
    assert "first 2 of 4" in err
    code, out, _ = query(env, "periods", "--experiment", "periods", "--by", "quarter", "--format", "csv")
    rows = pd.read_csv(io.StringIO(out))
    assert code == 0 and len(rows) == 4 and {"run_name", "run_id", "2008Q1"} <= set(rows.columns)
    code, out, err = query(env, "periods", "--experiment", "periods", "--by", "month", "--format", "table",
                           "--max-chars", "3000")  # fmt: skip
    assert code == 0 and len(out) <= 3000 + 200 and "cut" in err


def test_query_periods_of_old_runs(logged, query, client_for, tmp_path):
    """A run logged before periods/ existed: recomputed from its returns.csv with its own params; a run
    without stored returns (or without timestamps) is undefined with the reason."""
    client = client_for(logged["env"])
    experiment = client.create_experiment("old-runs")
    r, _ = series("weekly", 8)
    (tmp_path / "returns.csv").write_text(
        r.rename("returns").rename_axis("date").to_csv(float_format="%.17g")
    )
    old = client.create_run(experiment, run_name="old")
    for key, value in (("periods_per_year", "52"), ("compounded", "false"), ("rf", "0")):
        client.log_param(old.info.run_id, key, value)
    client.log_artifact(old.info.run_id, str(tmp_path / "returns.csv"))
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    pd.DataFrame({"bar": range(5), "returns": [0.01] * 5}).to_csv(bare_dir / "returns.csv", index=False)
    bare = client.create_run(experiment, run_name="bare")
    client.log_param(bare.info.run_id, "periods_per_year", "252")
    client.log_artifact(bare.info.run_id, str(bare_dir / "returns.csv"))
    empty = client.create_run(experiment, run_name="empty")
    got = ok(query(logged["env"], "periods", "--experiment", "old-runs", "--by", "month", "--metric",
                   "volatility", "--format", "json", "--max-chars", "0"))  # fmt: skip
    assert got["n_runs"] == 3 and got["n_recomputed"] == 1 and got["n_undefined"] == 2
    [run] = got["runs"]
    assert run["run_id"] == old.info.run_id and run["source"] == "returns"
    want = expected_calendar(r, None, "month", 52.0, False)
    assert run["values"] == pytest.approx(
        {p: (None if math.isnan(v) else v) for p, v in zip(want["period"], want["volatility"], strict=True)},
        rel=1e-9,
    )
    reasons = {u["run_id"]: u["reason"] for u in got["undefined"]}
    assert "no timestamps" in reasons[bare.info.run_id]
    assert "no stored returns" in reasons[empty.info.run_id]


@pytest.mark.parametrize("argv, needle", [(["--by", "decade"], "--by"), (["--metric", "calmar"], "--metric")])
def test_query_periods_bad_input_is_exit_2(logged, query, argv, needle):
    code, out, err = query(logged["env"], "periods", "--experiment", "periods", *argv)
    assert code == 2 and out == "" and needle in err and "Traceback" not in err


def test_query_periods_through_the_server(run_in_process, mlflow_server, query, tmp_path):
    """Once through the basic-auth server with proxied artifacts: log, then read the periods back."""
    env = mlflow_server.env()
    r, _ = series("daily", 9)
    r.rename_axis("date").to_csv(tmp_path / "r.csv", float_format="%.17g")
    experiment = f"periods-server-{tmp_path.name}"
    done = run_in_process("log_backtest", "--returns", str(tmp_path / "r.csv"), "--experiment", experiment,
                          "--no-tearsheet", "--format", "json", env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = ok(query(env, "periods", "--experiment", experiment, "--format", "json"))
    assert got["runs"][0]["values"] == pytest.approx(
        {str(y): total(x, True) for y, x in r.groupby(r.index.year)}, rel=1e-9
    )
