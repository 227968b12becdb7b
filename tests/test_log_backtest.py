"""log_backtest.py: validation, metrics against direct qs.stats calls, histories, one complete run, sweeps,
dedupe, dry run, and a server that dies mid-run. Data is generated here with fixed seeds."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import uuid
import warnings

import numpy as np
import pandas as pd
import pytest
from harness import assert_clean_error, run_script

PERIOD_ARTIFACTS = (
    "periods/year.csv", "periods/quarter.csv", "periods/month.csv", "periods/stress.csv",
    "periods/monthly_returns.png",
)  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def daily_frame(seed: int, n: int = 1500, columns=("strategy",), start="2015-01-02") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.bdate_range(start, periods=n)
    data = {c: rng.normal(0.0004, 0.01, n) for c in columns}
    frame = pd.DataFrame(data)
    frame.insert(0, "date", index.strftime("%Y-%m-%d"))
    return frame


def qs_module():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import quantstats as qs

    return qs


def read_back(path) -> pd.Series:
    """The returns exactly as a user's pandas would read the file: the independent side of the comparison."""
    frame = pd.read_csv(path)
    return pd.Series(
        frame.iloc[:, 1].to_numpy(), index=pd.DatetimeIndex(pd.to_datetime(frame["date"])).as_unit("ns")
    )


# ---- the metric table -------------------------------------------------------------------------------------
CORE = [
    "sharpe",
    "sortino",
    "calmar",
    "omega",
    "cagr",
    "total_return",
    "volatility",
    "max_drawdown",
    "win_rate",
    "profit_factor",
    "payoff_ratio",
    "kelly_criterion",
    "recovery_factor",
    "ulcer_index",
    "tail_ratio",
    "skew",
    "kurtosis",
    "value_at_risk",
    "conditional_value_at_risk",
    "avg_return",
    "avg_win",
    "avg_loss",
    "consecutive_wins",
    "consecutive_losses",
    "best",
    "worst",
]


def test_metric_table_has_the_core_names_and_is_documentable(scripts):
    lb = scripts.log_backtest
    names = [spec.name for spec in lb.METRICS]
    assert len(names) == len(set(names))
    assert set(CORE) <= set(names)
    assert len([s for s in lb.METRICS if not s.benchmark]) >= 60
    assert {s.name for s in lb.METRICS if s.benchmark} == {
        "alpha", "beta", "correlation", "information_ratio", "r_squared", "treynor_ratio"
    }  # fmt: skip
    for spec in lb.METRICS:
        assert lb.KEY_PATTERN.match(spec.name)
        assert spec.name == spec.name.lower()
        assert spec.meaning
        assert spec.units
        assert spec.higher_is_better in (True, False, None)
        compile(spec.call, spec.name, "eval")
    table = lb.metric_table_markdown()
    assert all(f"| `{name}` |" in table for name in names)
    assert table.count("\n") == len(names) + 2


def test_normalised_returns_are_what_quantstats_would_prepare(scripts):
    """prepare_returns=False in the table is only valid if _prepare_returns leaves our series unchanged."""
    qs = qs_module()
    frame = daily_frame(1)
    r = pd.Series(
        frame["strategy"].to_numpy(), index=pd.DatetimeIndex(pd.to_datetime(frame["date"])).as_unit("ns")
    )
    pd.testing.assert_series_equal(qs.utils._prepare_returns(r), r)


def test_metrics_equal_direct_qs_stats_calls(scripts):
    lb = scripts.log_backtest
    qs = qs_module()
    frame = daily_frame(2, n=1200)
    r = pd.Series(
        frame["strategy"].to_numpy(), index=pd.DatetimeIndex(pd.to_datetime(frame["date"])).as_unit("ns")
    )
    b = pd.Series(np.random.default_rng(3).normal(0.0003, 0.009, len(r)), index=r.index)
    column = lb.Column(name="s", returns=r, has_timestamps=True, benchmark=b)
    values, notes = lb.compute_metrics(column, 0.02, 252.0, True)
    assert notes == []
    rf_total = 1.02 ** (len(r) / 252) - 1
    expected = {
        "sharpe": qs.stats.sharpe(r, 0.02, 252),
        "sortino": qs.stats.sortino(r, 0.02, 252),
        "cagr": qs.stats.cagr(r, 0.02, True, 252),
        "total_return": qs.stats.comp(r),
        "volatility": qs.stats.volatility(r, 252),
        "max_drawdown": qs.stats.max_drawdown(r),
        "calmar": qs.stats.calmar(r, periods=252),
        "omega": qs.stats.omega(r, 0.02, 0.0, 252),
        "win_rate": qs.stats.win_rate(r),
        "profit_factor": qs.stats.profit_factor(r),
        "kelly_criterion": qs.stats.kelly_criterion(r),
        "value_at_risk": qs.stats.value_at_risk(r),
        "conditional_value_at_risk": qs.stats.conditional_value_at_risk(r),
        "consecutive_wins": qs.stats.consecutive_wins(r),
        "best_month": qs.stats.best(r, aggregate="ME"),
        "win_rate_year": qs.stats.win_rate(r, aggregate="YE"),
        "probabilistic_sharpe_ratio": qs.stats.probabilistic_sharpe_ratio(r, 0.02, 252),
        # rf over the run's span, not the annual rate (references/quantstats-metrics.md: departures)
        "serenity_index": (qs.stats.comp(r) - rf_total)
        / (qs.stats.ulcer_index(r) * -qs.stats.cvar(qs.stats.to_drawdown_series(r)) / r.std()),
        # benchmark metrics with the dated series: QuantStats' own (slow) alignment must give the same numbers
        "alpha": qs.stats.greeks(r, b, 252)["alpha"],
        "beta": qs.stats.greeks(r, b, 252)["beta"],
        "information_ratio": qs.stats.information_ratio(r, b),
        "r_squared": qs.stats.r_squared(r, b),
        "treynor_ratio": (qs.stats.comp(r) - rf_total) / qs.stats.greeks(r, b, 252)["beta"],
        "correlation": b.corr(r),
    }
    details = qs.stats.drawdown_details(qs.stats.to_drawdown_series(r))
    expected["avg_drawdown"] = details["max drawdown"].mean() / 100
    expected["longest_drawdown_days"] = details["days"].max()
    expected["avg_drawdown_days"] = details["days"].mean()
    for name, value in expected.items():
        assert values[name] == pytest.approx(float(value), rel=1e-12, abs=1e-15), name


PLAIN_QS_CALLS = (
    "profit_factor", "payoff_ratio", "profit_ratio", "common_sense_ratio", "cpc_index", "kelly_criterion",
    "consecutive_wins", "consecutive_losses", "exposure", "value_at_risk", "conditional_value_at_risk",
    "tail_ratio", "outlier_win_ratio", "outlier_loss_ratio", "risk_of_ruin", "skew", "kurtosis", "autocorr_penalty",
)  # fmt: skip
# The qs.stats call each metric's expression replaces (log_backtest computes them without importing
# QuantStats): on an ordinary series every one must give the same number.
QS_CALLS = {
    "sharpe": "qs.stats.sharpe(r, rf, periods)",
    "smart_sharpe": "qs.stats.smart_sharpe(r, rf, periods)",
    "sortino": "qs.stats.sortino(r, rf, periods)",
    "smart_sortino": "qs.stats.smart_sortino(r, rf, periods)",
    "adjusted_sortino": "qs.stats.adjusted_sortino(r, rf, periods)",
    "smart_adjusted_sortino": "qs.stats.adjusted_sortino(r, rf, periods, smart=True)",
    "probabilistic_sharpe_ratio": "qs.stats.probabilistic_sharpe_ratio(r, rf, periods)",
    "probabilistic_smart_sharpe_ratio": "qs.stats.probabilistic_sharpe_ratio(r, rf, periods, smart=True)",
    "probabilistic_sortino_ratio": "qs.stats.probabilistic_sortino_ratio(r, rf, periods)",
    "probabilistic_adjusted_sortino_ratio": "qs.stats.probabilistic_adjusted_sortino_ratio(r, rf, periods)",
    "omega": "qs.stats.omega(r, rf, 0.0, periods)",
    "risk_return_ratio": "qs.stats.risk_return_ratio(r)",
    "gain_to_pain_ratio": "qs.stats.gain_to_pain_ratio(r, rf)",
    "gain_to_pain_ratio_monthly": "qs.stats.gain_to_pain_ratio(r, rf, 'ME')",
    "serenity_index": "(total - rf_total) / (qs.stats.ulcer_index(r) * -qs.stats.cvar(qs.stats.to_drawdown_series(r)) / r.std())",
    "risk_adjusted_return": "qs.stats.cagr(r, 0.0, compounded, periods) / qs.stats.exposure(r)",
    "cagr": "qs.stats.cagr(r, 0.0, compounded, periods)",
    "expected_return": "qs.stats.expected_return(r, compounded=compounded)",
    "expected_return_monthly": "qs.stats.expected_return(r, aggregate='ME', compounded=compounded)",
    "expected_return_yearly": "qs.stats.expected_return(r, aggregate='YE', compounded=compounded)",
    "avg_return": "qs.stats.avg_return(r)",
    "avg_win": "qs.stats.avg_win(r)",
    "avg_loss": "qs.stats.avg_loss(r)",
    "avg_up_month": "qs.stats.avg_win(r, aggregate='ME', compounded=compounded)",
    "avg_down_month": "qs.stats.avg_loss(r, aggregate='ME', compounded=compounded)",
    **{
        f"{kind}{suffix}": f"qs.stats.{kind}(r, aggregate={agg!r}, compounded=compounded)"
        for kind in ("best", "worst")
        for suffix, agg in (("", None), ("_month", "ME"), ("_quarter", "QE"), ("_year", "YE"))
    },
    **{
        f"cagr_{years}y": f"qs.stats.cagr(since(r, months={months}), 0.0, compounded, periods)"
        for years, months in ((3, 35), (5, 59), (10, 119))
    },
    "win_rate": "qs.stats.win_rate(r)",
    "win_rate_month": "qs.stats.win_rate(r, aggregate='ME', compounded=compounded)",
    "win_rate_quarter": "qs.stats.win_rate(r, aggregate='QE', compounded=compounded)",
    "win_rate_year": "qs.stats.win_rate(r, aggregate='YE', compounded=compounded)",
    **{name: f"qs.stats.{name}(r)" for name in PLAIN_QS_CALLS},
    "volatility": "qs.stats.volatility(r, periods)",
    "alpha": "qs.stats.greeks(r, b, periods)['alpha']",
    "beta": "qs.stats.greeks(r, b, periods)['beta']",
    "r_squared": "qs.stats.r_squared(r, b)",
    "information_ratio": "qs.stats.information_ratio(r, b)",
    "treynor_ratio": "(total - rf_total) / qs.stats.greeks(r, b, periods)['beta']",
}


@pytest.mark.parametrize("compounded", [True, False], ids=["compounded", "simple"])
@pytest.mark.parametrize("periods", [252.0, 365.0])
def test_every_metric_equals_the_quantstats_call_it_replaces(scripts, periods, compounded):
    lb = scripts.log_backtest
    qs = qs_module()
    rng = np.random.default_rng(11)
    n = 4200  # > 10 years on both calendars: cagr_10y is defined
    calendar = pd.bdate_range if periods == 252 else pd.date_range
    index = calendar("2012-01-02", periods=n)
    r = pd.Series(rng.normal(0.0004, 0.011, n), index=index.as_unit("ns"))
    b = pd.Series(0.6 * r.to_numpy() + rng.normal(0.0002, 0.008, n), index=r.index)
    rf = 0.02
    values, notes = lb.compute_metrics(lb.Column("s", r, True, benchmark=b), rf, periods, compounded)
    assert notes == []
    years = n / periods
    namespace = {
        "qs": qs, "r": r, "b": b, "rf": rf, "periods": periods, "compounded": compounded, "since": lb.since,
        "total": qs.stats.comp(r) if compounded else r.sum(),
        "rf_total": (1 + rf) ** years - 1 if compounded else rf * years,
    }  # fmt: skip
    assert set(QS_CALLS) <= set(values)
    for name, call in QS_CALLS.items():
        if name == "serenity_index" and not compounded:
            continue  # QuantStats' drawdown always compounds; ours follows --simple (crosscheck tests it)
        want = float(eval(call, namespace))
        assert values[name] == pytest.approx(want, rel=1e-12, abs=1e-15), (name, call)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_vectorised_drawdown_details_matches_quantstats(scripts, seed):
    qs = qs_module()
    rng = np.random.default_rng(seed)
    r = pd.Series(rng.normal(0, 0.01, 800), index=pd.bdate_range("2020-01-01", periods=800).as_unit("ns"))
    if seed == 6:
        r.iloc[:5] = -0.01  # starts in a drawdown
    dd = qs.stats.to_drawdown_series(r)
    ours = scripts.log_backtest.drawdown_details(dd)
    theirs = qs.stats.drawdown_details(dd)
    assert list(ours["days"]) == list(theirs["days"])
    np.testing.assert_allclose(ours["max drawdown"], theirs["max drawdown"], rtol=1e-12)


@pytest.mark.parametrize("compounded", [True, False])
def test_grouped_returns_is_quantstats_group_returns(scripts, compounded):
    """The vectorised replacement the tearsheet's QuantStats uses: QuantStats 0.0.86's own definition, applied
    group by group (comp: the product of 1 + r, less 1; or the sum), on a Series and a DataFrame, daily and
    hourly bars, with gaps and NaNs."""
    rng = np.random.default_rng(8)
    for index in (
        pd.bdate_range("2015-01-01", periods=900),
        pd.date_range("2024-01-01", periods=3000, freq="h"),
    ):
        frame = pd.DataFrame(
            rng.normal(0, 0.01, (len(index), 2)), index=index.as_unit("ns"), columns=["a", "b"]
        )
        frame.iloc[::37, 0] = np.nan
        for data in (frame["a"], frame):
            for by in (data.index.year, [data.index.year, data.index.month], data.index.strftime("%Y-%m-01")):
                want = data.groupby(by).apply(
                    (lambda x: (x + 1).prod(axis=0) - 1) if compounded else (lambda x: x.sum(axis=0))
                )
                got = scripts.log_backtest.grouped_returns(data, by, compounded)
                pd.testing.assert_index_equal(got.index, want.index)
                np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-13, atol=1e-16)


def drawdown_cases() -> dict[str, pd.Series]:
    """Drawdown series (QuantStats' own to_drawdown_series) that exercise every rule of its episode finder."""
    qs = qs_module()
    rng = np.random.default_rng(11)
    days = pd.bdate_range("2016-01-01", periods=1500).as_unit("ns")
    plain = pd.Series(rng.normal(0.0004, 0.01, len(days)), index=days)
    opens_down = plain.copy()
    opens_down.iloc[:5] = -0.01  # starts in a drawdown, later episodes too
    hours = pd.date_range("2024-01-01", periods=2000, freq="h").as_unit("ns")
    cases = {
        "daily": plain,
        "starts in a drawdown": opens_down,
        "never recovers": pd.Series(-0.001, index=days[:300]),
        "starts down, recovers, nothing after": pd.Series([-0.01, 0.02] + [0.001] * 50, index=days[:52]),
        "ends in a drawdown": plain.iloc[:400] - 0.002,
        "hourly bars": pd.Series(rng.normal(0, 0.003, len(hours)), index=hours),
    }
    return {name: qs.stats.to_drawdown_series(r) for name, r in cases.items()}


@pytest.mark.parametrize("case", list(drawdown_cases()))
def test_episode_details_is_quantstats_drawdown_details(scripts, case):
    """The tearsheet's replacement for qs.stats.drawdown_details gives QuantStats' own frame, exactly (dates as
    strings, days, max and 99% max drawdown; single-bar episodes have no 99% figure), also for a DataFrame."""
    qs = qs_module()
    dd = drawdown_cases()[case]
    ours = scripts.log_backtest.episode_details(dd, qs.stats.drawdown_details)
    theirs = qs.stats.drawdown_details(dd)
    empty = case in ("never recovers", "starts down, recovers, nothing after")
    assert len(theirs) == 0 if empty else len(theirs) > 0
    assert case != "ends in a drawdown" or dd.iloc[-1] < 0
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    frame = pd.DataFrame({"returns": dd, "benchmark": dd.shift(3).fillna(0)})
    pd.testing.assert_frame_equal(
        scripts.log_backtest.episode_details(frame, qs.stats.drawdown_details),
        qs.stats.drawdown_details(frame),
        check_exact=True,
    )


def test_resampler_is_quantstats_safe_resample(scripts):
    """The tearsheet's safe_resample: QuantStats' own `resample(...).apply(comp)` as one product per bin, on
    a Series and a DataFrame with NaNs, at every frequency its report uses; other aggregations are its own."""
    qs = qs_module()
    from quantstats._compat import safe_resample

    ours = scripts.log_backtest.resampler_of(safe_resample, qs.stats.comp)
    rng = np.random.default_rng(12)
    index = pd.bdate_range("2012-01-02", periods=2600).as_unit("ns")
    frame = pd.DataFrame(rng.normal(0.0004, 0.01, (len(index), 2)), index=index, columns=["a", "b"])
    frame.iloc[::29, 1] = np.nan
    for data in (frame["a"], frame["b"], frame):
        for freq in ("W-MON", "ME", "QE", "YE"):
            want, got = safe_resample(data, freq, qs.stats.comp), ours(data, freq, qs.stats.comp)
            pd.testing.assert_index_equal(got.index, want.index)
            np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-13, atol=1e-16)
            for other in ("last", np.sum):
                same = ours(data, freq, other).equals(safe_resample(data, freq, other))
                assert same, (freq, other)


def test_quantstats_sped_up_draws_the_same_tearsheet(scripts, tmp_path, monkeypatch):
    """QuantStats' whole HTML report (tables and SVG figures, with a benchmark) is byte-identical inside
    quantstats_sped_up and outside it, and the block leaves QuantStats and matplotlib as they were."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    lb = scripts.log_backtest
    qs = lb.import_quantstats()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # the SVGs' date, and their ids from a fixed salt
    rng = np.random.default_rng(13)
    index = pd.bdate_range("2019-01-01", periods=900).as_unit("ns")
    r = pd.Series(rng.normal(0.0005, 0.01, len(index)), index=index, name="strategy")
    b = pd.Series(rng.normal(0.0003, 0.009, len(index)), index=index, name="market")
    before = (qs.stats.drawdown_details, qs.utils.group_returns, qs.stats.safe_resample)

    def report(path, sped_up: bool) -> bytes:
        with (
            matplotlib.rc_context({"svg.hashsalt": "test"}),
            lb.quantstats_sped_up(qs) if sped_up else contextlib.nullcontext(),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            qs.reports.html(r, benchmark=b, rf=0.01, output=str(path), benchmark_title="market")
        return path.read_bytes()

    assert report(tmp_path / "sped_up.html", True) == report(tmp_path / "own.html", False)
    assert (qs.stats.drawdown_details, qs.utils.group_returns, qs.stats.safe_resample) == before
    assert "draw_idle" not in vars(FigureCanvasAgg)


def test_quantstats_loads_without_yfinance_and_leaves_it_importable(scripts):
    """import_quantstats in a fresh interpreter: QuantStats' yfinance is the placeholder (its download
    refuses), nothing of the real yfinance was loaded, and the process's own `import yfinance` afterwards is
    the real package."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("lb", {str(scripts.log_backtest.__file__)!r})
        lb = sys.modules["lb"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(lb)
        qs = lb.import_quantstats()
        import quantstats._compat as compat
        assert "yfinance" not in sys.modules and not any(m.startswith("yfinance.") for m in sys.modules)
        try:
            compat.yf.download("SPY")
        except RuntimeError as exc:
            print("refused:", exc)
        import yfinance
        print("real:", hasattr(yfinance, "Ticker"), compat.yf is not yfinance)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: log_backtest draws tearsheets from series only" in out.stdout
    assert "real: True True" in out.stdout


def test_a_single_runs_heatmap_is_drawn_once_by_whichever_is_free(scripts, tmp_path, capsys):
    """With a tearsheet, a single run's heatmap is drawn by this process while the worker still draws
    QuantStats' report (the worker then skips it), or by the worker when its report was done first (this
    process then draws nothing); both figures are in the run's folder, the claim's marker is not."""
    lb = scripts.log_backtest
    daily_frame(21, n=800).to_csv(tmp_path / "r.csv", index=False)
    req = lb.build_request(lb.build_parser().parse_args(["--returns", str(tmp_path / "r.csv"), "--debug"]))
    [job] = lb.plan(lb.load_all(req), req, tmp_path / "work").jobs
    with lb.WorkerPool(1) as pool:
        report = pool.submit(lb.draw_tearsheet, job, req, True)
        assert lb.heatmap_while_waiting(job, req, report) is None
    assert "monthly returns heatmap (while the tearsheet is drawn)" in capsys.readouterr().err
    assert {"tearsheet.html", "periods/monthly_returns.png"} <= set(lb.artifact_names(job.folder))
    assert not [p for p in job.folder.rglob("*") if p.name.endswith(".heatmap")]
    again = dataclasses.replace(job, folder=tmp_path / "work" / "again")
    with lb.WorkerPool(1) as pool:
        report = pool.submit(lb.draw_tearsheet, again, req, True)
        report.result()
        png = again.folder / "periods" / "monthly_returns.png"
        drawn = png.stat().st_mtime_ns
        lb.heatmap_while_waiting(again, req, report)
    assert png.stat().st_mtime_ns == drawn
    assert "while the tearsheet is drawn" not in capsys.readouterr().err


def test_undefined_metrics_are_nan_never_zero(scripts):
    lb = scripts.log_backtest
    rng = np.random.default_rng(7)
    r = pd.Series(
        rng.uniform(0.0001, 0.002, 300), index=pd.bdate_range("2022-01-03", periods=300).as_unit("ns")
    )
    values, _ = lb.compute_metrics(lb.Column("up", r, True), 0.0, 252.0, True)
    defined, undefined = lb.split_defined(values)
    for name in ("profit_factor", "sortino", "avg_loss", "payoff_ratio"):
        assert name in undefined, name
        assert name not in defined, name
    assert all(math.isfinite(v) for v in defined.values())
    flat = pd.Series(0.0, index=r.index)
    values, _ = lb.compute_metrics(lb.Column("flat", flat, True), 0.0, 252.0, True)
    assert math.isnan(values["win_rate"])
    assert math.isnan(values["profit_factor"])


# ---- frequency and histories ------------------------------------------------------------------------------
def minute_index(days: int, per_day: int = 390):
    base = pd.bdate_range("2024-01-02", periods=days) + pd.Timedelta(hours=14, minutes=30)
    return pd.DatetimeIndex([d + pd.Timedelta(minutes=m) for d in base for m in range(per_day)])


@pytest.mark.parametrize(
    ("index", "periods", "label"),
    [
        (pd.bdate_range("2020-01-01", periods=300), 252, "daily"),
        (pd.date_range("2020-01-01", periods=300, freq="D"), 365, "daily_calendar"),
        (pd.date_range("2020-01-01", periods=24 * 60, freq="h"), 24 * 365, "60min"),
        (minute_index(3), 390 * 252, "1min"),
        (pd.date_range("2020-01-03", periods=100, freq="W-FRI"), 52, "weekly"),
        (pd.date_range("2015-01-31", periods=60, freq="ME"), 12, "monthly"),
        (pd.date_range("2010-03-31", periods=20, freq="QE"), 4, "quarterly"),
        (pd.date_range("2000-12-31", periods=20, freq="YE"), 1, "yearly"),
    ],
)
def test_detect_periods(scripts, index, periods, label):
    assert scripts.log_backtest.detect_periods(pd.DatetimeIndex(index).as_unit("ns")) == (periods, label)


def test_history_downsampling_keeps_first_last_and_deepest(scripts):
    lb = scripts.log_backtest
    rng = np.random.default_rng(8)
    r = pd.Series(rng.normal(0, 0.01, 20_000))
    equity, drawdown = lb.equity_and_drawdown(r, True)
    np.testing.assert_allclose(equity, (1 + r).cumprod().to_numpy(), rtol=1e-12)
    assert drawdown.max() <= 0
    for deepest in (int(np.argmin(drawdown)), 1, 19_998, 12_345):
        steps = lb.history_steps(len(r), 500, deepest)
        assert len(steps) <= 500
        assert steps[0] == 0
        assert steps[-1] == len(r) - 1
        assert deepest in steps
        assert (np.diff(steps) > 0).all()
    assert list(lb.history_steps(10, 500, 3)) == list(range(10))


# ---- validation: every input error is exit 2 with one line, before anything is written -------------------
def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def good_csv(tmp_path, rows=30, name="r.csv") -> str:
    frame = daily_frame(9, n=rows)
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


INVALID = {
    "missing": (None, "no such file"),
    "directory": ("DIR", "is a directory"),
    "empty": ("", "is empty"),
    "header_only": ("date,returns\n", "no data rows"),
    "text_cell": ("date,r\n2024-01-02,0.01\n2024-01-03,abc\n2024-01-04,0.02\n", "non-numeric value 'abc'"),
    "all_nan": ("date,r\n2024-01-02,\n2024-01-03,\n", "no numbers"),
    "one_row": ("date,r\n2024-01-02,0.01\n", "need at least 2"),
    "bad_timestamp": ("date,r\n2024-01-02,0.01\nnot-a-date,0.02\n2024-01-05,0.01\n", "unparseable timestamp"),
    "missing_timestamp": ("date,r\n2024-01-02,0.01\n,0.02\n2024-01-05,0.01\n", "missing timestamp"),
    "bare_numbers": ("r\n0.01\n0.02\n-0.01\n", "--periods-per-year"),
    "duplicates": ("date,r\n2024-01-02,0.01\n2024-01-02,0.02\n2024-01-03,0.01\n", "duplicate timestamps"),
    "infinite": ("date,r\n2024-01-02,0.01\n2024-01-03,inf\n2024-01-04,0.01\n", "infinite"),
    "ruin": ("date,r\n2024-01-02,0.01\n2024-01-03,-1.0\n2024-01-04,0.01\n", "-100 %"),
    "prices": ("date,r\n2024-01-02,100.5\n2024-01-03,101.2\n2024-01-04,100.9\n", "--prices"),
    "percent": ("date,r\n" + "".join(f"2024-01-{d:02d},{v}\n" for d, v in
                                      zip(range(2, 20), [1.2, -0.8, 2.5, -1.5, 0.3] * 4, strict=False)),
                "--percent"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_returns_file_is_exit_2(log_main, tmp_path, case):
    content, needle = INVALID[case]
    if content is None:
        path = str(tmp_path / "nope.csv")
    elif content == "DIR":
        path = str(tmp_path)
    else:
        path = write(tmp_path, "in.csv", content)
    code, out, err = log_main("--returns", path, "--dry-run")
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--param", "bad key!=1"], "param key"),
        (["--param", "rf=0.1"], "set by log_backtest"),
        (["--param", "x=" + "v" * 7000], "longer than"),
        (["--params", "{not json"], "not valid JSON"),
        (["--params", "[1, 2]"], "JSON object"),
        (["--tag", "mlflow.user=x"], "reserved"),
        (["--tag", "novalue"], "KEY=VALUE"),
        (["--rf", "-0.01"], ">= 0"),
        (["--rf", "4"], "percent"),
        (["--max-history-points", "2"], "at least 3"),
        (["--prices", "--percent"], "exclude"),
        (["--column", "nope"], "not a column"),
    ],
)
def test_invalid_arguments_are_exit_2(log_main, tmp_path, extra, needle):
    code, out, err = log_main("--returns", good_csv(tmp_path), "--dry-run", *extra)
    assert code == 2, err
    assert out == "", err
    assert needle.lower() in err.lower(), err
    assert err.count("error: ") == 1, err


def test_benchmark_problems_are_exit_2(log_main, tmp_path):
    returns = good_csv(tmp_path)
    far = daily_frame(10, n=30, start="1990-01-01")
    far.to_csv(tmp_path / "far.csv", index=False)
    code, _, err = log_main("--returns", returns, "--benchmark", str(tmp_path / "far.csv"), "--dry-run")
    assert code == 2
    assert "common" in err
    two = daily_frame(10, n=30, columns=("a", "b"))
    two.to_csv(tmp_path / "two.csv", index=False)
    code, _, err = log_main("--returns", returns, "--benchmark", str(tmp_path / "two.csv"), "--dry-run")
    assert code == 2
    assert "--benchmark-column" in err


def test_unsorted_nan_rows_and_time_zones_are_fixed_with_warnings(log_main, tmp_path):
    text = (
        "timestamp,r\n2024-01-03T00:00:00+01:00,0.01\n2024-01-01T23:00:00-01:00,0.02\n"
        "2024-01-04T00:00:00Z,\n2024-01-05T00:00:00Z,-0.01\n2024-01-08T00:00:00Z,0.005\n"
    )
    code, out, err = log_main("--returns", write(tmp_path, "tz.csv", text), "--dry-run")
    assert code == 0, err
    data = json.loads(out)
    assert data["n_bars"] == 4
    assert data["start"] == "2024-01-02"
    assert data["end"] == "2024-01-08"
    assert any("sorted" in w for w in data["warnings"])
    assert any("NaN" in w for w in data["warnings"])
    assert any("UTC" in w for w in data["warnings"])
    assert "warning: " in err
    assert "Traceback" not in err


def test_bare_numbers_with_periods_per_year(log_main, tmp_path):
    values = "\n".join(f"{v:.6f}" for v in np.random.default_rng(11).normal(0.001, 0.02, 60))
    path = write(tmp_path, "bare.csv", "r\n" + values + "\n")
    code, out, err = log_main("--returns", path, "--periods-per-year", "12", "--dry-run")
    assert code == 0, err
    data = json.loads(out)
    assert data["periods_per_year"] == 12
    assert data["frequency"] == "bars"
    assert data["start"] == "bar 0"
    assert "best_month" in data["undefined_metrics"]
    assert "sharpe" in data["metrics"]


def test_dry_run_touches_no_store(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    daily_frame(12, n=300).to_csv(folder / "strategy.csv", index=False)
    result = run_script("log_backtest", "--returns", "strategy.csv", "--dry-run", cwd=folder)
    assert result.returncode == 0, result.stderr
    data = result.json()
    assert data["dry_run"] is True
    assert data["run_id"] is None
    assert len(data["metrics"]) >= 60
    assert sorted(p.name for p in folder.iterdir()) == ["strategy.csv"]


def test_input_error_end_to_end_is_one_clean_line(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "p.csv").write_text("date,close\n2024-01-02,100\n2024-01-03,101\n2024-01-04,102\n")
    result = run_script("log_backtest", "--returns", "p.csv", cwd=folder)
    assert_clean_error(result, 2, "--prices")
    assert sorted(p.name for p in folder.iterdir()) == ["p.csv"]


# ---- one complete run on a local store ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def single(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    daily_frame(13, n=2000).to_csv(folder / "momentum.csv", index=False)
    bench = daily_frame(14, n=2100, columns=("spy",))  # 100 extra bars: dropped by the alignment
    bench.to_csv(folder / "spy.csv", index=False)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    args = [
        "--returns", "momentum.csv", "--benchmark", "spy.csv", "--experiment", "mom", "--run-name", "mom-20",
        "--params", '{"signal": {"lookback": 20, "skip": 1}}', "--param", "universe=sp500", "--tag", "team=quant",
        "--description", "Twelve-one momentum", "--rf", "0.01", "--max-history-points", "500",
    ]  # fmt: skip
    result = run_script("log_backtest", *args, env=env, cwd=folder)
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "env": env, "args": args, "result": result, "out": result.json()}


def test_single_output_and_clean_stderr(single):
    out = single["out"]
    assert out["run_name"] == "mom-20"
    assert out["experiment"] == "mom"
    assert out["deduplicated"] is False
    assert out["periods_per_year"] == 252
    assert out["frequency"] == "daily"
    assert out["n_bars"] == 2000
    assert (
        out["benchmark"]["benchmark_bars_dropped"] == 100 and out["benchmark"]["strategy_bars_dropped"] == 0
    )
    assert set(out["artifacts"]) == {"metrics.json", "returns.csv", "tearsheet.html", *PERIOD_ARTIFACTS}
    assert len(out["metrics"]) >= 66
    assert out["url"] is None
    assert single["result"].stderr == "", single["result"].stderr  # no library noise


def test_single_run_holds_everything(client_for, single):
    client = client_for(single["env"])
    run = client.get_run(single["out"]["run_id"])
    assert run.info.status == "FINISHED"
    scalars = {k: v for k, v in run.data.metrics.items() if k not in ("equity", "drawdown", "year_return")}
    assert scalars == pytest.approx(single["out"]["metrics"], rel=1e-15)
    # the logged numbers are QuantStats' own, on the series as the user's file holds it
    qs = qs_module()
    r = read_back(single["folder"] / "momentum.csv")
    assert run.data.metrics["sharpe"] == pytest.approx(qs.stats.sharpe(r, 0.01, 252), rel=1e-12)
    assert run.data.metrics["max_drawdown"] == pytest.approx(qs.stats.max_drawdown(r), rel=1e-12)
    params = run.data.params
    assert (
        params["signal.lookback"] == "20" and params["signal.skip"] == "1" and params["universe"] == "sp500"
    )
    assert params["n_bars"] == "2000"
    assert params["periods_per_year"] == "252"
    assert params["rf"] == "0.01"
    assert params["start"] == "2015-01-02"
    assert params["source_file"] == "momentum.csv"
    assert (
        params["benchmark"] == "spy.csv" and params["compounded"] == "true" and params["frequency"] == "daily"
    )
    tags = run.data.tags
    assert tags["team"] == "quant"
    assert len(tags["backtest.fingerprint"]) == 64
    assert tags["backtest.skill_version"]
    undefined = single["out"]["undefined_metrics"]
    assert tags.get("backtest.undefined_metrics") == (",".join(undefined) if undefined else None)
    note = tags["mlflow.note.content"]
    first, _, rest = note.partition("\n")
    m = single["out"]["metrics"]
    assert first == (
        f"Sharpe {m['sharpe']:.2f} · CAGR {m['cagr'] * 100:.2f} % · "
        f"MaxDD {m['max_drawdown'] * 100:.2f} % · Vol {m['volatility'] * 100:.2f} %"
    ).replace("-", "\N{MINUS SIGN}")  # the line the UI's collapsed description shows
    assert rest.lstrip().startswith("Twelve-one momentum")
    assert "2015-01-02" in note
    assert f"- sharpe: **{m['sharpe']:.3f}**" in note  # a list: MLflow draws tables without padding
    [dataset_input] = run.inputs.dataset_inputs
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "backtest")}
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 2000
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "metrics.json", "periods", "returns.csv", "tearsheet.html"
    ]  # fmt: skip


def test_single_histories_and_artifacts(client_for, single, tmp_path):
    client = client_for(single["env"])
    run_id = single["out"]["run_id"]
    r = read_back(single["folder"] / "momentum.csv")
    equity = (1 + r).cumprod()
    drawdown = equity / np.maximum(equity.cummax(), 1.0) - 1
    history = {m.step: m for m in client.get_metric_history(run_id, "equity")}
    dd_history = {m.step: m for m in client.get_metric_history(run_id, "drawdown")}
    assert len(history) <= 500
    assert set(history) == set(dd_history)
    deepest = int(np.argmin(drawdown.to_numpy()))
    assert {0, len(r) - 1, deepest} <= set(history)
    for step, point in history.items():
        # a daily bar sits at 12:00 UTC of its date (its date in the UI in every zone from UTC-11 to UTC+11)
        assert point.timestamp == (r.index[step].normalize() + pd.Timedelta(hours=12)).value // 1_000_000
        assert point.value == pytest.approx(equity.iloc[step], rel=1e-12)
        assert dd_history[step].value == pytest.approx(drawdown.iloc[step], rel=1e-12, abs=1e-15)
    assert dd_history[deepest].value == pytest.approx(single["out"]["metrics"]["max_drawdown"], rel=1e-12)
    local = client.download_artifacts(run_id, "", str(tmp_path))
    with open(os.path.join(local, "metrics.json")) as handle:
        doc = json.load(handle)
    assert doc["metrics"] == single["out"]["metrics"]
    assert doc["settings"]["rf"] == 0.01
    with open(os.path.join(local, "tearsheet.html"), encoding="utf-8") as handle:
        html = handle.read()
    assert "<html" in html.lower()
    assert "mom-20" in html
    # the metrics table is headed by the run's name, not the file's column; no glyph fonts lack (CAGR﹪)
    assert "<th>mom-20</th>" in html
    assert "<th>strategy</th>" not in html
    assert "\N{SMALL PERCENT SIGN}" not in html
    assert "CAGR%" in html
    assert html.index("The run's logged values") < html.index("Key Performance Metrics")  # issue 25 item 15
    saved = pd.read_csv(os.path.join(local, "returns.csv"))
    np.testing.assert_array_equal(saved["returns"].to_numpy(), r.to_numpy())
    source = pd.read_csv(single["folder"] / "momentum.csv")
    assert saved.columns[0] == source.columns[0]  # the user's timestamp column, by its name
    assert saved.iloc[:, 0].tolist() == source.iloc[:, 0].tolist()  # dates as dates, no "+00:00"


def test_dedupe_then_force(client_for, single, run_in_process):
    env, folder, args = single["env"], single["folder"], single["args"]
    again = run_in_process("log_backtest", *args, "--no-tearsheet", env=env, cwd=folder)
    assert again.returncode == 0, again.stderr
    out = again.json()
    assert out["deduplicated"] is True
    assert out["run_id"] == single["out"]["run_id"]
    assert out["artifacts"] == []
    assert "--force" in again.stderr
    forced = run_in_process("log_backtest", *args, "--no-tearsheet", "--force", env=env, cwd=folder)
    assert forced.returncode == 0, forced.stderr
    assert forced.json()["deduplicated"] is False
    assert forced.json()["run_id"] != single["out"]["run_id"]
    client = client_for(env)
    experiment = client.get_experiment_by_name("mom")
    assert len(client.search_runs([experiment.experiment_id])) == 2


# ---- a sweep on the real server, artifacts through its proxy ------------------------------------------------
@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mlflow_server):
    folder = tmp_path_factory.mktemp("sweep")
    frame = daily_frame(15, n=800, columns=("fast", "medium", "slow"))
    frame["always_up"] = np.random.default_rng(16).uniform(0.0001, 0.002, len(frame))  # no losing bar
    frame.to_csv(folder / "grid.csv", index=False)
    experiment = unique("sweep")
    env = mlflow_server.env(mlflow_server.alice)
    result = run_script(
        "log_backtest",
        "--returns",
        "grid.csv",
        "--experiment",
        experiment,
        "--param",
        "grid=v1",
        env=env,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "env": env, "experiment": experiment, "result": result, "out": result.json()}


def test_sweep_parent_and_children(client_for, sweep, tmp_path):
    out = sweep["out"]
    client = client_for(sweep["env"])
    assert [r["run_name"] for r in out["runs"]] == ["fast", "medium", "slow", "always_up"]
    assert out["url"].endswith(f"/runs/{out['parent_run_id']}?workflowType=machine_learning")  # runs view
    assert "[4/4]" in sweep["result"].stderr
    assert out["best_by"] == "sharpe"
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["backtest.sweep"] == "true"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'"
    )
    assert sorted(c.info.run_name for c in children) == ["always_up", "fast", "medium", "slow"]
    assert all(c.info.status == "FINISHED" and c.data.params["grid"] == "v1" for c in children)
    best = max((c for c in children if "sharpe" in c.data.metrics), key=lambda c: c.data.metrics["sharpe"])
    assert parent.data.tags["backtest.best_run_id"] == best.info.run_id == out["best_run_id"]
    assert parent.data.metrics["best_sharpe"] == best.data.metrics["sharpe"]
    assert "sharpe" not in parent.data.metrics  # the parent summarises the search (tests/test_overfitting.py)
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"Best `{best.info.run_name}`: Sharpe {best.data.metrics['sharpe']:.2f} · ")
    assert all(f"- **{c.info.run_name}**: Sharpe " in note for c in children)  # a list, one line a column
    local = client.download_artifacts(out["parent_run_id"], "", str(tmp_path))
    table = pd.read_csv(os.path.join(local, "comparison.csv"))
    assert list(table["column"]) == ["fast", "medium", "slow", "always_up"]
    assert set(os.listdir(local)) == {
        "comparison.csv", "tearsheet.html", "cscv.csv", "overfitting.json", "overfitting.png"
    }  # fmt: skip
    for child in children:  # every child is a complete run, tearsheet included
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert artifacts == {"metrics.json", "periods", "returns.csv", "tearsheet.html"}, child.info.run_name


def test_sweep_child_with_undefined_metrics(client_for, sweep):
    client = client_for(sweep["env"])
    up = next(r for r in sweep["out"]["runs"] if r["run_name"] == "always_up")
    assert "profit_factor" in up["undefined_metrics"]
    assert "profit_factor" not in up["metrics"]
    run = client.get_run(up["run_id"])
    assert "profit_factor" not in run.data.metrics
    assert "sortino" not in run.data.metrics
    assert set(run.data.tags["backtest.undefined_metrics"].split(",")) == set(up["undefined_metrics"])


def test_sweep_dedupe(sweep):
    again = run_script(
        "log_backtest", "--returns", "grid.csv", "--experiment", sweep["experiment"], "--param", "grid=v1",
        "--no-tearsheet", env=sweep["env"], cwd=sweep["folder"],
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    out = again.json()
    assert out["deduplicated"] is True
    assert out["parent_run_id"] == sweep["out"]["parent_run_id"]
    assert [r["run_id"] for r in out["runs"]] == [r["run_id"] for r in sweep["out"]["runs"]]


def test_sweep_in_helper_processes_logs_what_one_process_logs(
    run_in_process, client_for, sweep, scripts, tmp_path
):
    """The CLI splits a sweep's columns across processes (one per core); main() called in a process that
    already imported mlflow does all of it itself. Both must log the same runs."""
    if (os.cpu_count() or 1) > 1:
        assert "in 1 helper process" in sweep["result"].stderr, sweep["result"].stderr
    server = client_for(sweep["env"])
    lb = scripts.log_backtest
    req = lb.build_request(lb.build_parser().parse_args(["--returns", str(sweep["folder"] / "grid.csv")]))
    # this pytest process imported mlflow: inline
    assert lb.worker_processes(req, lb.Plan(lb.Sweep, [None, None])) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # in the folder the CLI ran in: the code version (git; none there) is in the fingerprint
    done = run_in_process("log_backtest", "--returns", str(sweep["folder"] / "grid.csv"), "--experiment",
                          "one-process", "--param", "grid=v1", "--no-tearsheet", "--tracking-uri", uri,
                          cwd=sweep["folder"])  # fmt: skip
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 0, err
    assert "helper process" not in err
    local = client_for({"MLFLOW_TRACKING_URI": uri})
    one = {r["run_name"]: local.get_run(r["run_id"]) for r in json.loads(out)["runs"]}
    split = {r["run_name"]: server.get_run(r["run_id"]) for r in sweep["out"]["runs"]}
    assert sorted(one) == sorted(split) == ["always_up", "fast", "medium", "slow"]
    for name, run in split.items():
        assert run.data.metrics == one[name].data.metrics, name
        assert run.data.params == one[name].data.params, name
        assert run.data.tags["backtest.fingerprint"] == one[name].data.tags["backtest.fingerprint"]
        for key in ("equity", "drawdown"):
            ours = [(m.step, m.timestamp, m.value) for m in server.get_metric_history(run.info.run_id, key)]
            theirs = [
                (m.step, m.timestamp, m.value) for m in local.get_metric_history(one[name].info.run_id, key)
            ]
            assert sorted(ours) == sorted(theirs), (name, key)
            assert len(ours) > 700, (name, key)


def square(x):
    return {"n": x, "arrays": np.arange(3) * x}


def refused():
    raise scripts_module().CliError(4, "tracking server refused the request: permission denied (403)")


def broken():
    raise ValueError("boom")


def dies():
    os._exit(3)


def scripts_module():
    import sys

    return sys.modules["log_backtest"]


@pytest.mark.parametrize("processes", [0, 2])
def test_worker_pool_results_and_failures(scripts, capsys, processes):
    """The same calls inline (0) and in forked workers: values come back; a failure comes back as the exit
    code our contract gives it; a worker that dies is an unexpected error, never a hang."""
    lb = scripts.log_backtest
    with lb.worker_pool(processes) as pool:
        first = pool.submit(square, 2).result()
    assert first["n"] == 2
    assert list(first["arrays"]) == [0, 2, 4]
    cases = [(refused, 4, "403"), (broken, 1, "boom")] + (
        [(dies, 1, "terminated abruptly")] if processes else []
    )
    for job, code, needle in cases:

        def call(job=job):
            with lb.worker_pool(processes) as pool:
                return pool.submit(job).result()

        assert lb.run_cli(call, debug=False) == code, job.__name__
        assert needle in capsys.readouterr().err, job.__name__


def test_workers_fork_only_on_linux_with_cores_to_spare(scripts, monkeypatch, tmp_path):
    """The choice of worker processes: none where fork is unsafe (not Linux), on one core, in a dry run, or
    in a host that imported mlflow; else one for a single run's figures (with or without the tearsheet: its
    metrics are this process's), and a sweep's columns shared with one worker per further core."""
    import sys
    import types

    lb = scripts.log_backtest
    parser = lb.build_parser()
    req = lb.build_request(parser.parse_args(["--returns", good_csv(tmp_path)]))
    one, ten = lb.Plan(lb.SingleRun, [None]), lb.Plan(lb.Sweep, [None] * 10)
    mlflow = sys.modules.get("mlflow") or types.ModuleType("mlflow")
    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(sys, "platform", "linux")
    assert lb.worker_processes(req, one) == 1
    assert lb.worker_processes(req, ten) == 3
    assert lb.worker_processes(dataclasses.replace(req, tearsheet=False), one) == 1
    assert lb.worker_processes(dataclasses.replace(req, dry_run=True), ten) == 0
    monkeypatch.setattr(sys, "platform", "darwin")
    assert lb.worker_processes(req, ten) == 0
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)  # a host imported mlflow, then called main()
    assert lb.worker_processes(req, ten) == 0
    monkeypatch.delitem(sys.modules, "mlflow")
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert lb.worker_processes(req, ten) == 0


def test_debug_in_process_prints_phase_timings(log_main, tmp_path):
    """--debug is read from the arguments of this call, not from the process's sys.argv."""
    code, _, err = log_main("--returns", good_csv(tmp_path), "--dry-run", "--debug")
    assert code == 0, err
    assert "s data loaded and validated" in err
    code, _, err = log_main("--returns", good_csv(tmp_path), "--dry-run")
    assert code == 0, err
    assert "debug:" not in err


@pytest.mark.parametrize("preset", [None, "mimalloc"])
def test_allocators_that_give_back_memory_set_pyarrow_and_glibc(preset):
    """allocators_that_give_back_memory (bench/RESULTS.md: 1 M bars ~815 -> ~700 MB summed RSS): pyarrow,
    loaded after it, allocates with the system allocator unless the user chose another, and glibc's mmap
    threshold is fixed (a freed 8 MB array is unmapped, not kept in the heap)."""
    import subprocess
    import sys

    from harness import SCRIPTS

    probe = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lb", {str(SCRIPTS / "log_backtest.py")!r})
lb = importlib.util.module_from_spec(spec); sys.modules["lb"] = lb; spec.loader.exec_module(lb)
lb.allocators_that_give_back_memory()
import ctypes, numpy, pyarrow, resource
def rss(): return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
keep = []
before = rss()
for i in range(10):  # 8-12 MB arrays, each freed with a small block kept after it
    block = numpy.ones(1_500_000 - 50_000 * i); keep.append(bytes(4096)); del block
print(pyarrow.default_memory_pool().backend_name, (rss() - before) >> 20)
"""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if preset:
        env["ARROW_DEFAULT_MEMORY_POOL"] = preset
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    backend, grown_mb = out.stdout.split()
    assert backend == (preset or "system")
    # glibc's dynamic threshold alone keeps one freed array's 11 MB in the heap
    assert int(grown_mb) < 4, out.stdout


def test_worker_pool_ends_a_task_nobody_waits_for(scripts):
    """Leaving the pool ends a task still running (a duplicate's tearsheet), without waiting for it."""
    import time

    lb = scripts.log_backtest
    started = time.monotonic()
    with lb.worker_pool(1) as pool:
        pool.submit(time.sleep, 60)
        time.sleep(0.5)
    assert time.monotonic() - started < 20


def test_a_failing_tearsheet_leaves_no_visible_run(scripts, connect, tmp_path):
    """A single run's metrics are written while a helper draws its tearsheet; if the tearsheet then fails,
    the run is FAILED and deleted (out of sight), and the failure is the script's exit code."""
    lb = scripts.log_backtest
    frame = daily_frame(18, n=300)
    frame.to_csv(tmp_path / "s.csv", index=False)
    req = lb.build_request(lb.build_parser().parse_args(["--returns", str(tmp_path / "s.csv")]))
    [job] = lb.plan(lb.load_all(req), req, tmp_path).jobs
    prep = lb.prepare_column(job, req)
    client = connect("log_backtest", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = lb.ensure_experiment(client, "no-report")

    def failing_tearsheet():
        raise lb.CliError(lb.EXIT_UNEXPECTED, "QuantStats could not draw the report")

    with lb.worker_pool(0) as pool:
        tearsheet = pool.submit(failing_tearsheet)
        code = lb.run_cli(
            lambda: lb.write_run(client, experiment_id, job, prep, req, tearsheet=tearsheet), debug=False
        )
    assert code == lb.EXIT_UNEXPECTED
    from mlflow.entities import ViewType

    assert client.search_runs([experiment_id]) == []  # nothing visible
    [run] = client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert run.info.status == "FAILED"
    assert "sharpe" in run.data.metrics  # the metrics had landed: the tearsheet failed last


# ---- the strategy's code version ---------------------------------------------------------------------------
def git(folder, *args: str) -> str:
    import subprocess

    command = ["git", "-C", str(folder), "-c", "user.name=quant", "-c", "user.email=q@example.com", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_code_version_tags_and_code_artifacts(run_in_process, client_for, tmp_path):
    """The git repository holding the current folder (or --code-dir) is recorded: commit, branch, remote
    without its credentials, dirty or not; --code files ride along as artifacts; package versions as tags.
    Outside git: no git tags and no error. A missing --code file is exit 2 before anything is written."""
    import importlib.metadata
    import platform

    repo = tmp_path / "strategy"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "research")
    (repo / "signal.py").write_text("LOOKBACK = 20\n")
    daily_frame(21, n=300).to_csv(repo / "returns.csv", index=False)
    git(repo, "add", "signal.py")
    git(repo, "commit", "-q", "-m", "first")
    canary = "tok-" + uuid.uuid4().hex
    git(repo, "remote", "add", "origin", f"https://quant:{canary}@git.example.com/desk/strategy.git")
    commit = git(repo, "rev-parse", "HEAD")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = repo  # where the user runs log_backtest

    def log(*argv: str):
        done = run_in_process("log_backtest", "--returns", "returns.csv", "--no-tearsheet", "--force", *argv,
                              env={"MLFLOW_TRACKING_URI": store}, cwd=folder)  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    code, out, err = log("--code", "signal.py")  # returns.csv and mlflow.db are untracked: still clean
    assert code == 0, err
    got = json.loads(out)
    assert got["git"] == {
        "commit": commit, "branch": "research", "repo_url": "https://git.example.com/desk/strategy.git",
        "dirty": False, "dirty_unknown": None,
    }  # fmt: skip
    assert "code/signal.py" in got["artifacts"] and canary not in out + err
    client = client_for({"MLFLOW_TRACKING_URI": store})
    tags = client.get_run(got["run_id"]).data.tags
    assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.source.git.branch"] == "research"
    assert tags["mlflow.source.git.repoURL"] == "https://git.example.com/desk/strategy.git"
    assert tags["backtest.git_dirty"] == "false" and canary not in json.dumps(tags)
    assert tags["backtest.version.python"] == platform.python_version()
    for package in ("quantstats", "pandas", "numpy", "mlflow"):
        assert tags[f"backtest.version.{package}"] == importlib.metadata.version(package)
    shown = run_in_process(
        "query_experiments", "run", "--run-id", got["run_id"], env={"MLFLOW_TRACKING_URI": store}
    )
    assert shown.returncode == 0 and shown.json()["git"] == got["git"], shown.stderr  # what it shows of it
    local = client.download_artifacts(got["run_id"], "code", str(tmp_path / "down"))
    assert (tmp_path / "down" / "code" / "signal.py").read_text() == "LOOKBACK = 20\n", local

    (repo / "signal.py").write_text("LOOKBACK = 60\n")  # an uncommitted change to a tracked file
    code, out, err = log()
    assert code == 0, err
    assert client.get_run(json.loads(out)["run_id"]).data.tags["backtest.git_dirty"] == "true"
    git(repo, "checkout", "-q", "signal.py")
    (repo / "new_signal.py").write_text("x = 1\n")  # a --code file git does not know: not in the commit
    code, out, err = log("--code", "new_signal.py")
    assert code == 0 and json.loads(out)["git"]["dirty"] is True, err

    elsewhere = tmp_path / "not-git"  # outside any repository: no git tags, no error
    elsewhere.mkdir()
    daily_frame(22, n=300).to_csv(elsewhere / "returns.csv", index=False)
    folder = elsewhere
    code, out, err = log()
    assert code == 0 and json.loads(out)["git"] is None and err == "", err
    tags = client.get_run(json.loads(out)["run_id"]).data.tags
    assert not [k for k in tags if k.startswith("mlflow.source.git") or k == "backtest.git_dirty"]
    code, out, err = log("--code-dir", str(repo))  # the strategy's repository named explicitly
    assert code == 0 and json.loads(out)["git"]["commit"] == commit, err

    runs_before = len(client.search_runs([client.get_experiment_by_name("backtests").experiment_id]))
    for argv, needle in ((["--code", "missing.py"], "missing.py"), (["--code-dir", "nowhere"], "nowhere")):
        code, out, err = log(*argv)
        assert code == 2 and out == "" and needle in err and err.startswith("error: "), err
    after = client.search_runs([client.get_experiment_by_name("backtests").experiment_id])
    assert len(after) == runs_before  # nothing written


def test_url_credentials_are_stripped(scripts):
    strip = scripts.log_backtest.strip_url_credentials
    assert strip("https://u:p@host/r.git") == "https://host/r.git"
    assert strip("ssh://git@host:22/r.git") == "ssh://host:22/r.git"
    assert strip("git@github.com:desk/r.git") == "git@github.com:desk/r.git"  # a user name, no secret
    assert strip("https://host/r.git") == "https://host/r.git"


def test_history_stamps_daily_at_noon_utc_intraday_exact(scripts, tmp_path):
    """Daily-or-slower bars are stored at 12:00 UTC of their date (the MLflow UI shows metric times in the
    browser's zone: midnight UTC would read as the day before west of Greenwich); intraday bars keep their
    exact time. returns.csv keeps the user's timestamp column and writes UTC without "+00:00"."""
    lb = scripts.log_backtest
    days = pd.DatetimeIndex(["2024-01-02", "2024-01-03 21:00", "2024-01-08"])
    noon = [pd.Timestamp(f"2024-01-0{d} 12:00", tz="UTC").value // 1_000_000 for d in (2, 3, 8)]
    for frequency in ("daily", "daily_calendar", "weekly", "monthly", "yearly"):
        assert lb.history_stamps(days, np.arange(3), frequency).tolist() == noon, frequency
    minutes = pd.date_range("2024-01-02 14:30", periods=4, freq="5min")
    exact = minutes.as_unit("ms").asi8[[0, 3]].tolist()
    assert lb.history_stamps(minutes, np.array([0, 3]), "5min").tolist() == exact
    for name, stamps, first in (("Date", pd.bdate_range("2024-01-02", periods=30), "2024-01-02"),
                                ("Time", pd.date_range("2024-01-02 14:30", periods=30, freq="5min"),
                                 "2024-01-02 14:30:00")):  # fmt: skip
        frame = pd.DataFrame({name: stamps, "alpha": np.random.default_rng(1).normal(0, 0.01, 30)})
        frame.to_csv(tmp_path / "r.csv", index=False)
        req = lb.build_request(lb.build_parser().parse_args(["--returns", str(tmp_path / "r.csv")]))
        [item] = lb.load_all(req).columns
        written = pd.read_csv(tmp_path / lb.write_returns_artifact(item, tmp_path), dtype=str)
        assert list(written.columns[:2]) == [name, "returns"] and written.iloc[0, 0] == first
