"""Every metric log_backtest logs, recomputed from its definition with numpy/scipy and, where a peer library
defines it, with empyrical-reloaded, on real market data shipped inside the `backtesting` package (GOOG daily
2004-2013, EURUSD hourly 2017-2018: nothing is downloaded), at 252, 365 and hourly bars per year, with and
without rf, compounded and simple, with a benchmark. Conventions (QuantStats' where we keep them, ours where
we depart: references/quantstats-metrics.md) are written out here, not imported.

Then the edge series QuantStats gets silently wrong, each a regression test: constant, all-zero,
all-positive, one +100 % bar, a -95 % bar, 2 bars, an unrecovered drawdown, NaN gaps, short history, a
benchmark of another frequency. Function level (the script imported): no server, seconds."""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import empyrical
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

warnings.filterwarnings("ignore")
REL = 1e-9


# ---- real data shipped inside a package ---------------------------------------------------------------------
def shipped_prices(name: str) -> pd.Series:
    """Close prices from backtesting/test/NAME.csv (read directly: importing backtesting loads bokeh)."""
    folder = Path(importlib.util.find_spec("backtesting").submodule_search_locations[0]) / "test"
    frame = pd.read_csv(folder / f"{name}.csv", index_col=0, parse_dates=True)
    return frame["Close"].astype(float)


def crossover_strategy(close: pd.Series, fast: int, slow: int) -> tuple[pd.Series, pd.Series]:
    """(strategy, buy-and-hold) returns: long while the fast SMA is above the slow one, else flat (zero
    bars), the position taken on the bar after the signal. A real strategy with a real benchmark."""
    asset = close.pct_change().iloc[slow:]
    signal = (close.rolling(fast).mean() > close.rolling(slow).mean()).astype(float).shift(1).iloc[slow:]
    strategy = (signal * asset).rename("strategy")
    index = pd.DatetimeIndex(asset.index).as_unit("ns")
    return pd.Series(strategy.to_numpy(), index=index), pd.Series(asset.to_numpy(), index=index)


@dataclass(frozen=True)
class Case:
    name: str
    r: pd.Series
    b: pd.Series
    periods: float


def cases() -> dict[str, Case]:
    goog_r, goog_b = crossover_strategy(shipped_prices("GOOG"), 10, 30)
    fx_r, fx_b = crossover_strategy(shipped_prices("EURUSD"), 12, 48)
    # "crypto": the same real returns on a calendar that trades every day (365 bars a year).
    every_day = pd.date_range("2015-01-01", periods=len(goog_r), freq="D").as_unit("ns")
    crypto_r, crypto_b = (pd.Series(s.to_numpy(), index=every_day) for s in (goog_r, goog_b))
    return {
        "goog_daily_252": Case("goog_daily_252", goog_r, goog_b, 252.0),
        "crypto_daily_365": Case("crypto_daily_365", crypto_r, crypto_b, 365.0),
        "eurusd_hourly": Case("eurusd_hourly", fx_r, fx_b, 24 * 252.0),
    }


CASES = cases()


def test_the_cases_are_the_frequencies_they_claim(scripts):
    """detect_periods gives each case the bars per year used below (EURUSD spans < 1 year: 24 x 252)."""
    for case in CASES.values():
        assert scripts.log_backtest.detect_periods(case.r.index)[0] == case.periods, case.name
    assert len(CASES["goog_daily_252"].r) > 2000 and len(CASES["eurusd_hourly"].r) > 4900


# ---- independent definitions ----------------------------------------------------------------------------------
def longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for flag in mask:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def drawdown_episodes(dd: pd.Series) -> list[tuple[pd.Timestamp, pd.Timestamp, float]]:
    """(first bar below the peak, last bar below it, deepest value) per episode; an open one ends at the last
    bar; a loop, on purpose (the script's version is vectorised)."""
    episodes, start, low = [], None, 0.0
    for i, (stamp, value) in enumerate(dd.items()):
        if value < 0:
            if start is None:
                start, low = stamp, value
            low = min(low, value)
            if i == len(dd) - 1 or dd.iloc[i + 1] >= 0:
                episodes.append((start, stamp, low))
                start = None
    return episodes


def compound(values) -> float:
    return float(np.prod(1.0 + np.asarray(values, dtype=float)) - 1.0)


def independent(r: pd.Series, b: pd.Series | None, rf: float, periods: float, compounded: bool) -> dict:
    """Every metric from its definition. Conventions spelled out:
    - bar excess returns x = r - ((1 + rf)^(1/periods) - 1); years = bars / periods
    - rf_total = (1 + rf)^years - 1 (rf x years simple): rf over the run's span (treynor, upi, serenity)
    - sample (ddof=1) std; bias-corrected skew/kurtosis; VaR/CVaR parametric normal at 95 %
    - drawdown from the equity curve prod(1 + r) (1 + cumsum(r) simple), its running peak including 1.0
    - calendar aggregates: compounded (summed when simple) per calendar month/quarter/year present."""
    a = r.to_numpy(dtype=float)
    n = len(a)
    years = n / periods
    rf_bar = (1 + rf) ** (1 / periods) - 1
    x = a - rf_bar
    rf_total = (1 + rf) ** years - 1 if compounded else rf * years
    total = compound if compounded else (lambda v: float(np.sum(v)))
    equity = np.cumprod(1 + a) if compounded else 1 + np.cumsum(a)
    peak = np.maximum(np.maximum.accumulate(equity), 1.0)
    dd = pd.Series(equity / peak - 1, index=r.index)
    mdd = float(dd.min())
    norm = sps.norm
    out: dict[str, float] = {}

    std_x = np.std(x, ddof=1)
    sharpe_bar = np.mean(x) / std_x
    down = np.sqrt(np.sum(np.minimum(x, 0) ** 2) / n)
    sortino_bar = np.mean(x) / down
    rho = abs(np.corrcoef(a[:-1], a[1:])[0, 1])
    lags = np.arange(1, n)
    penalty = math.sqrt(1 + 2 * np.sum((n - lags) / n * rho**lags))
    skew = sps.skew(a, bias=False)
    kurt = sps.kurtosis(a, fisher=True, bias=False)

    def psr(sr: float) -> float:
        return float(norm.cdf(sr / math.sqrt((1 - skew * sr + (kurt + 3 - 1) / 4 * sr**2) / (n - 1))))

    ann = math.sqrt(periods)
    out["sharpe"] = sharpe_bar * ann
    out["smart_sharpe"] = sharpe_bar / penalty * ann
    out["sortino"] = sortino_bar * ann
    out["smart_sortino"] = sortino_bar / penalty * ann
    out["adjusted_sortino"] = sortino_bar * ann / math.sqrt(2)
    out["smart_adjusted_sortino"] = sortino_bar / penalty * ann / math.sqrt(2)
    out["probabilistic_sharpe_ratio"] = psr(sharpe_bar)
    out["probabilistic_smart_sharpe_ratio"] = psr(sharpe_bar / penalty)
    out["probabilistic_sortino_ratio"] = psr(sortino_bar)
    out["probabilistic_adjusted_sortino_ratio"] = psr(sortino_bar / math.sqrt(2))
    out["omega"] = x[x > 0].sum() / -x[x < 0].sum()
    cagr = (1 + total(a)) ** (1 / years) - 1
    out["cagr"] = cagr
    out["total_return"] = total(a)
    out["calmar"] = cagr / abs(mdd)
    out["risk_return_ratio"] = np.mean(a) / np.std(a, ddof=1)
    daily = r.groupby(r.index.normalize()).sum()
    out["gain_to_pain_ratio"] = daily.sum() / abs(daily[daily < 0].sum())
    monthly_sum = r.groupby(r.index.to_period("M")).sum()
    out["gain_to_pain_ratio_monthly"] = monthly_sum.sum() / abs(monthly_sum[monthly_sum < 0].sum())
    ulcer = math.sqrt(np.sum(dd.to_numpy() ** 2) / (n - 1))
    out["ulcer_index"] = ulcer
    out["ulcer_performance_index"] = (total(a) - rf_total) / ulcer
    dd_mu, dd_sd = dd.mean(), np.std(dd.to_numpy(), ddof=1)
    dd_cvar = dd_mu - dd_sd * norm.pdf(norm.ppf(0.05)) / 0.05
    out["serenity_index"] = (total(a) - rf_total) / (ulcer * (-dd_cvar / np.std(a, ddof=1)))
    out["recovery_factor"] = total(a) / abs(mdd)
    exposure = math.ceil(np.count_nonzero(a) / n * 100) / 100
    out["exposure"] = exposure
    out["risk_adjusted_return"] = cagr / exposure
    out["expected_return"] = np.prod(1 + a) ** (1 / n) - 1

    def periodic(freq: str) -> np.ndarray:
        groups = r.groupby(r.index.to_period(freq))
        return (groups.apply(compound) if compounded else groups.sum()).to_numpy()

    month, quarter, year = periodic("M"), periodic("Q"), periodic("Y")
    out["expected_return_monthly"] = np.prod(1 + month) ** (1 / len(month)) - 1
    out["expected_return_yearly"] = np.prod(1 + year) ** (1 / len(year)) - 1
    out["avg_return"] = a[a != 0].mean()
    out["avg_win"] = a[a > 0].mean()
    out["avg_loss"] = a[a < 0].mean()
    out["avg_up_month"] = month[month > 0].mean()
    out["avg_down_month"] = month[month < 0].mean()
    out["best"], out["worst"] = a.max(), a.min()
    for label, agg in (("month", month), ("quarter", quarter), ("year", year)):
        out[f"best_{label}"], out[f"worst_{label}"] = agg.max(), agg.min()
        out[f"win_rate_{label}"] = np.sum(agg > 0) / np.sum(agg != 0)
    last = r.index[-1]
    out["returns_mtd"] = total(a[r.index >= pd.Timestamp(last.year, last.month, 1)])
    out["returns_ytd"] = total(a[r.index >= pd.Timestamp(last.year, 1, 1)])
    spacing = pd.Timedelta(int(np.median(np.diff(r.index.asi8))), "ns")
    for key, months in (("returns_3m", 3), ("returns_6m", 6), ("returns_1y", 12)):
        start = last - pd.DateOffset(months=months)
        out[key] = total(a[r.index >= start]) if r.index[0] - spacing <= start else math.nan
    for key, months in (("cagr_3y", 35), ("cagr_5y", 59), ("cagr_10y", 119)):
        start = last - pd.DateOffset(months=months)
        window = a[r.index >= start]
        defined = r.index[0] - spacing <= start
        out[key] = (1 + total(window)) ** (periods / len(window)) - 1 if defined else math.nan
    win = np.sum(a > 0) / np.sum(a != 0)
    out["win_rate"] = win
    pf = a[a >= 0].sum() / abs(a[a < 0].sum())
    out["profit_factor"] = pf
    payoff = a[a > 0].mean() / abs(a[a < 0].mean())
    out["payoff_ratio"] = payoff
    wins, losses = a[a >= 0], a[a < 0]
    out["profit_ratio"] = abs(wins.mean() / len(wins)) / abs(losses.mean() / len(losses))
    tail = abs(np.percentile(a, 95) / np.percentile(a, 5))
    out["tail_ratio"] = tail
    out["common_sense_ratio"] = pf * tail
    out["cpc_index"] = pf * win * payoff
    out["kelly_criterion"] = (payoff * win - (1 - win)) / payoff
    out["consecutive_wins"] = longest_run(a > 0)
    out["consecutive_losses"] = longest_run(a < 0)
    out["volatility"] = np.std(a, ddof=1) * ann
    out["max_drawdown"] = mdd
    episodes = drawdown_episodes(dd)
    out["avg_drawdown"] = np.mean([low for _, _, low in episodes])
    # QuantStats' length: whole days elapsed from the first to the last bar below the peak, + 1
    days = [(end - start) // pd.Timedelta(days=1) + 1 for start, end, _ in episodes]
    out["longest_drawdown_days"] = max(days)
    out["avg_drawdown_days"] = np.mean(days)
    mu, sd = a.mean(), np.std(a, ddof=1)
    out["value_at_risk"] = norm.ppf(0.05, mu, sd)
    out["conditional_value_at_risk"] = mu - sd * norm.pdf(norm.ppf(0.05)) / 0.05
    out["outlier_win_ratio"] = np.percentile(a, 99) / a[a >= 0].mean()
    out["outlier_loss_ratio"] = np.percentile(a, 1) / a[a < 0].mean()
    out["risk_of_ruin"] = ((1 - win) / (1 + win)) ** n
    out["skew"], out["kurtosis"] = skew, kurt
    out["autocorr_penalty"] = penalty
    if b is not None:
        c = b.to_numpy(dtype=float)
        cov = np.cov(a, c)
        beta = cov[0, 1] / cov[1, 1]
        out["beta"] = beta
        out["alpha"] = (a.mean() - beta * c.mean()) * periods
        out["correlation"] = np.corrcoef(a, c)[0, 1]
        out["r_squared"] = np.corrcoef(a, c)[0, 1] ** 2
        d = a - c
        out["information_ratio"] = d.mean() / np.std(d, ddof=1)
        out["treynor_ratio"] = (total(a) - rf_total) / beta
    return {k: float(v) for k, v in out.items()}


def peer(r: pd.Series, b: pd.Series, rf: float, periods: float) -> dict:
    """empyrical-reloaded's definitions, converted to our conventions where they differ (stated)."""
    rf_bar = (1 + rf) ** (1 / periods) - 1
    out = {
        "sharpe": empyrical.sharpe_ratio(r, risk_free=rf_bar, annualization=periods),
        # empyrical: mean(x) x P / (sqrt(mean(min(x, 0)^2)) x sqrt(P)): the same as QuantStats'
        "sortino": empyrical.sortino_ratio(r, required_return=rf_bar, annualization=periods),
        "volatility": empyrical.annual_volatility(r, annualization=periods),
        "max_drawdown": empyrical.max_drawdown(r),
        "cagr": empyrical.annual_return(r, annualization=periods),
        "calmar": empyrical.calmar_ratio(r, annualization=periods),
        "omega": empyrical.omega_ratio(r, risk_free=rf_bar, annualization=periods),
        "tail_ratio": empyrical.tail_ratio(r),
        "total_return": empyrical.cum_returns_final(r),
    }
    alpha, beta = empyrical.alpha_beta(r, b, risk_free=rf_bar, annualization=periods)
    out["beta"] = beta
    # empyrical: alpha of excess returns, annualised by compounding: (1 + mean(x - beta (b - rf)))^P - 1.
    # QuantStats (ours): (mean(r) - beta mean(b)) x P, rf ignored. Per bar they differ by rf (1 - beta).
    out["alpha"] = (((1 + alpha) ** (1 / periods) - 1) + rf_bar * (1 - beta)) * periods
    return {k: float(v) for k, v in out.items()}


def ours(lb, case: Case, rf: float, compounded: bool = True) -> dict:
    item = lb.Column(name=case.name, returns=case.r, has_timestamps=True, benchmark=case.b)
    values, notes = lb.compute_metrics(item, rf, case.periods, compounded)
    assert not [note for note in notes if "could not compute" in note], notes
    return values


def assert_same(name: str, got: float, want: float, where: str) -> None:
    if math.isnan(want):
        assert math.isnan(got), f"{where} {name}: {got} should be undefined"
        return
    assert got == pytest.approx(want, rel=REL, abs=1e-15), (
        f"{where} {name}: ours {got!r}, independent {want!r}"
    )


@pytest.mark.parametrize("compounded", [True, False], ids=["compounded", "simple"])
@pytest.mark.parametrize("rf", [0.0, 0.03], ids=["rf0", "rf3pct"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_every_metric_matches_its_independent_definition(scripts, case, rf, compounded):
    lb = scripts.log_backtest
    c = CASES[case]
    got = ours(lb, c, rf, compounded)
    want = independent(c.r, c.b, rf, c.periods, compounded)
    assert set(got) == {spec.name for spec in lb.METRICS}, "a metric without an independent definition"
    assert set(want) == set(got)
    for name in got:
        assert_same(name, got[name], want[name], f"{case} rf={rf} compounded={compounded}")
    undefined = {k for k, v in got.items() if not math.isfinite(v)}
    assert undefined <= {"returns_1y", "cagr_3y", "cagr_5y", "cagr_10y"}, undefined  # windows beyond the data


@pytest.mark.parametrize("rf", [0.0, 0.03], ids=["rf0", "rf3pct"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_metrics_match_empyrical_reloaded(scripts, case, rf):
    lb = scripts.log_backtest
    c = CASES[case]
    got = ours(lb, c, rf)
    for name, value in peer(c.r, c.b, rf, c.periods).items():
        assert_same(name, got[name], value, f"empyrical {case} rf={rf}")


def test_max_drawdown_is_the_minimum_of_the_logged_drawdown_history(scripts):
    lb = scripts.log_backtest
    for case in CASES.values():
        for compounded in (True, False):
            _, drawdown = lb.equity_and_drawdown(case.r, compounded)
            assert ours(lb, case, 0.0, compounded)["max_drawdown"] == float(drawdown.min())


# ---- edge series: QuantStats' silent errors, each pinned -----------------------------------------------------
def series(values, start="2020-01-01", freq="B") -> pd.Series:
    index = pd.date_range(start, periods=len(values), freq=freq).as_unit("ns")
    return pd.Series(np.asarray(values, dtype=float), index=index)


def metrics_of(lb, r: pd.Series, periods: float = 252.0, rf: float = 0.0, compounded: bool = True, b=None):
    values, notes = lb.compute_metrics(lb.Column("s", r, True, benchmark=b), rf, periods, compounded)
    return values, notes


RATIOS_OF_DISPERSION = (
    "sharpe", "smart_sharpe", "sortino", "smart_sortino", "adjusted_sortino", "smart_adjusted_sortino",
    "probabilistic_sharpe_ratio", "probabilistic_smart_sharpe_ratio", "probabilistic_sortino_ratio",
    "probabilistic_adjusted_sortino_ratio", "risk_return_ratio", "skew", "kurtosis", "serenity_index",
)  # fmt: skip


@pytest.mark.parametrize("level", [0.0001, 0.001, 0.0123456789, 1 / 3 * 0.01])
@pytest.mark.parametrize("rf", [0.0, 0.02])
def test_constant_returns_have_no_dispersion_ratios(scripts, level, rf):
    """Cash or a money-market leg: QuantStats gives sharpe ~1e16 (or not, depending on bottleneck)."""
    lb = scripts.log_backtest
    r = series(np.full(600, level))
    values, _ = metrics_of(lb, r, rf=rf)
    for name in RATIOS_OF_DISPERSION:
        assert math.isnan(values[name]), (name, values[name])
    assert values["volatility"] == pytest.approx(0.0, abs=1e-15)
    assert values["total_return"] == pytest.approx((1 + level) ** 600 - 1, rel=1e-12)
    # pandas' own std of a constant series is not exactly 0 for every level (bottleneck or not): the guard
    # is what makes the outcome independent of it.
    noisy = r * (1 + np.random.default_rng(1).normal(0, 1e-14, len(r)))
    values, _ = metrics_of(lb, noisy, rf=rf)
    assert all(math.isnan(values[name]) for name in RATIOS_OF_DISPERSION)


def test_a_real_but_small_dispersion_stays_defined(scripts):
    lb = scripts.log_backtest
    r = series(0.0002 + np.random.default_rng(2).normal(0, 1e-6, 600))
    values, _ = metrics_of(lb, r)
    assert values["sharpe"] == pytest.approx(np.mean(r) / np.std(r, ddof=1) * math.sqrt(252), rel=1e-9)


def test_a_sweep_never_crowns_a_flat_column(scripts):
    lb = scripts.log_backtest
    flat, _ = metrics_of(lb, series(np.full(300, 0.001)))
    real, _ = metrics_of(lb, series(np.random.default_rng(3).normal(0.0002, 0.01, 300)))
    assert math.isnan(flat["sharpe"]) and math.isfinite(real["sharpe"])
    trials = [
        {k: v for k, v in flat.items() if math.isfinite(v)},
        {k: v for k, v in real.items() if math.isfinite(v)},
        {"sharpe": math.nan},
        {"sharpe": math.inf},
    ]

    def best(metrics: list[dict]) -> int:  # the sweep's choice of best, by the default --best-by sharpe
        no_pbo = lb.Overfitting(pbo=math.nan, splits=16, bars_used=0, reason="not computed here")
        summary = lb.summarise_search(metrics, [252.0] * len(metrics), [300] * len(metrics), "sharpe", no_pbo)
        return summary.best

    assert best(trials) == 1
    assert best([trials[0], trials[2], trials[3]]) == 0  # all undefined: the first


def test_all_zero_series_has_no_win_rate_and_no_risk_of_ruin(scripts):
    lb = scripts.log_backtest
    values, _ = metrics_of(lb, series(np.zeros(300)))
    for name in ("win_rate", "risk_of_ruin", "profit_factor", "sharpe", "sortino", "risk_adjusted_return"):
        assert math.isnan(values[name]), name
    assert values["total_return"] == 0 and values["max_drawdown"] == 0 and values["exposure"] == 0


def test_all_positive_series(scripts):
    lb = scripts.log_backtest
    r = series(np.random.default_rng(4).uniform(0.0001, 0.002, 400))
    values, _ = metrics_of(lb, r)
    for name in ("sortino", "profit_factor", "payoff_ratio", "calmar", "recovery_factor", "avg_drawdown",
                 "ulcer_performance_index", "omega", "kelly_criterion"):  # fmt: skip
        assert math.isnan(values[name]), name
    assert values["max_drawdown"] == 0 and values["win_rate"] == 1 and math.isfinite(values["sharpe"])


def test_one_plus_100_percent_bar_is_returns_not_prices(scripts):
    """Non-negative with max exactly 1.0: QuantStats' drawdown functions read it as prices (max dd -0.999,
    calmar ~5740). The true equity never falls."""
    lb = scripts.log_backtest
    values = np.zeros(500)
    values[::7] = 0.001
    values[250] = 1.0
    r = series(values)
    got, _ = metrics_of(lb, r)
    assert got["max_drawdown"] == 0
    assert math.isnan(got["calmar"]) and math.isnan(got["recovery_factor"]) and got["ulcer_index"] == 0
    assert got["total_return"] == pytest.approx(compound(values), rel=1e-12)


def test_minus_95_percent_bar(scripts):
    lb = scripts.log_backtest
    values = np.full(300, 0.001)
    values[100] = -0.95
    r = series(values)
    got, _ = metrics_of(lb, r)
    want = independent(r, None, 0.0, 252.0, True)
    for name in ("max_drawdown", "calmar", "recovery_factor", "total_return", "cagr", "ulcer_index",
                 "avg_drawdown", "longest_drawdown_days"):  # fmt: skip
        assert_same(name, got[name], want[name], "-95 %")
    assert got["recovery_factor"] < 0 and got["max_drawdown"] == pytest.approx(-0.95, rel=1e-12)


def test_two_bars(scripts):
    lb = scripts.log_backtest
    got, notes = metrics_of(lb, series([0.01, -0.02]))
    assert got["max_drawdown"] == pytest.approx(-0.02) and got["total_return"] == pytest.approx(
        1.01 * 0.98 - 1
    )
    assert math.isnan(got["returns_3m"]) and math.isnan(got["cagr_3y"])
    assert any("annualised" in note for note in notes)


def test_recovery_factor_is_sign_correct(scripts):
    lb = scripts.log_backtest
    r = series(np.r_[np.full(50, 0.002), np.full(200, -0.003)])  # lost ~40 %
    got, _ = metrics_of(lb, r)
    assert got["total_return"] < -0.3 and got["recovery_factor"] < 0
    assert got["recovery_factor"] == pytest.approx(got["total_return"] / -got["max_drawdown"], rel=1e-12)


def test_unrecovered_drawdown_is_an_episode(scripts):
    """Underwater from the first bar to the last (500 days): QuantStats finds no episode at all."""
    lb = scripts.log_backtest
    rng = np.random.default_rng(5)
    r = series(np.r_[-0.05, rng.normal(0.0, 0.002, 499)], freq="D")
    got, _ = metrics_of(lb, r, periods=365)
    _, drawdown = lb.equity_and_drawdown(r, True)
    assert (drawdown < 0).all()
    assert got["longest_drawdown_days"] == 500 and got["avg_drawdown_days"] == 500
    assert got["avg_drawdown"] == pytest.approx(drawdown.min(), rel=1e-12)
    # recovered once, then open at the end: two episodes, the last ending on the last bar
    r2 = series(np.r_[-0.01, 0.02, np.full(10, 0.001), np.full(30, -0.002)], freq="D")
    details = lb.drawdown_details(pd.Series(lb.equity_and_drawdown(r2, True)[1], index=r2.index))
    assert list(details["days"]) == [1, 30] and details["end"].iloc[-1] == r2.index[-1]


def test_nan_gaps_are_dropped_before_metrics(scripts, tmp_path):
    """A file with empty rows: the rows are dropped (warned) and the metrics are those of the rest."""
    lb = scripts.log_backtest
    rng = np.random.default_rng(6)
    r = series(rng.normal(0.0005, 0.01, 400))
    gappy = r.copy()
    gappy.iloc[[10, 11, 200]] = np.nan
    path = tmp_path / "gaps.csv"
    pd.DataFrame({"date": gappy.index.strftime("%Y-%m-%d"), "s": gappy.to_numpy()}).to_csv(path, index=False)
    req = lb.build_request(lb.build_parser().parse_args(["--returns", str(path), "--dry-run"]))
    loaded = lb.load_all(req)
    (item,) = loaded.columns
    assert len(item.returns) == 397
    assert any("NaN" in w for w in loaded.warnings)
    got, _ = metrics_of(lb, item.returns)
    want = independent(r.dropna().drop(r.index[[10, 11, 200]]), None, 0.0, 252.0, True)
    for name in ("sharpe", "max_drawdown", "cagr", "volatility", "sortino"):
        assert_same(name, got[name], want[name], "NaN gaps")


def test_short_history_windows_are_undefined_and_annualised_figures_warned(scripts):
    lb = scripts.log_backtest
    r = series(np.random.default_rng(7).normal(0.001, 0.01, 100))  # ~5 months of business days
    got, notes = metrics_of(lb, r)
    for name in ("returns_6m", "returns_1y", "cagr_3y", "cagr_5y", "cagr_10y"):
        assert math.isnan(got[name]), name
    assert math.isfinite(got["returns_3m"]) and math.isfinite(got["cagr"])
    (note,) = [n for n in notes if "annualised" in n]
    assert "cagr" in note and "sharpe" in note and "100 bars" in note
    long, notes = metrics_of(lb, series(np.random.default_rng(7).normal(0.001, 0.01, 800)))
    assert math.isfinite(long["cagr_3y"]) and not [n for n in notes if "annualised" in n]
    assert math.isnan(long["cagr_5y"])


def test_simple_drawdown_metrics_agree_with_the_simple_histories(scripts):
    lb = scripts.log_backtest
    r = CASES["goog_daily_252"].r
    got = ours(lb, CASES["goog_daily_252"], 0.0, compounded=False)
    equity, drawdown = lb.equity_and_drawdown(r, False)
    np.testing.assert_allclose(equity, 1 + np.cumsum(r.to_numpy()), rtol=1e-12)
    assert got["max_drawdown"] == float(drawdown.min())
    assert got["ulcer_index"] == pytest.approx(math.sqrt(np.sum(drawdown**2) / (len(r) - 1)), rel=1e-12)
    assert got["max_drawdown"] != pytest.approx(ours(lb, CASES["goog_daily_252"], 0.0)["max_drawdown"])


def test_risk_adjusted_return_uses_the_runs_periods_and_raw_exposure(scripts):
    lb = scripts.log_backtest
    case = CASES["eurusd_hourly"]
    got = ours(lb, case, 0.03)
    assert got["risk_adjusted_return"] == pytest.approx(got["cagr"] / got["exposure"], rel=1e-12)
    assert got["exposure"] < 1  # with rf > 0, QuantStats counted every bar as exposed


# ---- frequency: observed bars per year, mixed-frequency benchmark --------------------------------------------
def weekday_hours(years: float) -> pd.DatetimeIndex:
    hours = pd.date_range("2016-01-04", periods=int(years * 365.25 * 24), freq="h")
    return hours[hours.day_of_week < 5].as_unit("ns")


def test_observed_bars_per_year_win_over_a_contradicted_convention(scripts):
    lb = scripts.log_backtest
    fx = weekday_hours(2)  # 24 h on weekdays: ~6,260 a year, not 24 x 252
    periods, label = lb.detect_periods(fx)
    span_years = (fx[-1] - fx[0]) / pd.Timedelta(days=365.25)
    assert label == "60min" and periods == round((len(fx) - 1) / span_years)
    assert 6200 < periods < 6300
    days = pd.date_range("2016-01-03", periods=3 * 365, freq="D")
    sunday_to_friday = days[days.day_of_week != 5].as_unit("ns")  # Sunday bars: ~313 a year
    periods, label = lb.detect_periods(sunday_to_friday)
    assert label == "daily_calendar" and 305 < periods < 320
    assert lb.detect_periods(pd.bdate_range("2016-01-01", periods=800).as_unit("ns")) == (252.0, "daily")
    assert lb.detect_periods(pd.date_range("2016-01-01", periods=800, freq="D").as_unit("ns"))[0] == 365.0
    assert lb.detect_periods(weekday_hours(0.3)) == (24 * 252.0, "60min")  # < 1 year: the convention


def test_benchmark_of_another_frequency_is_refused_or_resampled(scripts):
    lb = scripts.log_backtest
    case = CASES["eurusd_hourly"]
    daily_close = shipped_prices("EURUSD").groupby(lambda t: t.normalize()).last()
    daily = pd.Series(daily_close.pct_change().iloc[1:].to_numpy(), index=daily_close.index[1:].as_unit("ns"))
    with pytest.raises(lb.CliError) as refused:
        lb.align(case.r, daily, "strategy", [])
    assert refused.value.code == 2 and "60min" in str(refused.value) and "daily" in str(refused.value)
    assert "--resample-to-benchmark" in str(refused.value)
    warned: list[str] = []
    r, b, info = lb.align(case.r, daily, "strategy", warned, resample=True, compounded=True)
    # independent: each hour compounded into its calendar date, dates the benchmark has
    by_day = case.r.groupby(case.r.index.normalize()).apply(compound)
    expected = by_day[by_day.index.isin(daily.index)]
    pd.testing.assert_index_equal(r.index, expected.index)
    np.testing.assert_allclose(r.to_numpy(), expected.to_numpy(), rtol=REL)  # log1p/expm1 vs prod
    assert b.index.equals(r.index) and any("--resample-to-benchmark" in w for w in warned)
    assert lb.detect_periods(r.index) == lb.detect_periods(daily.index)  # the metrics are daily now
    with pytest.raises(lb.CliError):  # a daily strategy against an hourly benchmark: never resampled
        lb.align(daily, case.r, "strategy", [], resample=True)


# ---- end to end: a logged run's numbers agree with its own histories ------------------------------------------
def test_logged_runs_max_drawdown_is_the_minimum_of_their_drawdown_history(
    tmp_path, local_store, client_for, run_in_process
):
    values = np.zeros(300)
    values[::5] = 0.002
    values[100] = 1.0  # one +100 % bar
    values[150:170] = -0.01
    frame = pd.DataFrame(
        {"date": pd.bdate_range("2021-01-01", periods=300).strftime("%Y-%m-%d"), "s": values}
    )
    path = tmp_path / "plus100.csv"
    frame.to_csv(path, index=False)
    client = None
    for extra in ([], ["--simple"]):
        result = run_in_process("log_backtest", "--returns", str(path), "--no-tearsheet", "--force", *extra,
                                env=local_store)  # fmt: skip
        assert result.returncode == 0, result.stderr
        out = result.json()
        client = client or client_for(local_store)
        history = [m.value for m in client.get_metric_history(out["run_id"], "drawdown")]
        logged = client.get_run(out["run_id"]).data.metrics
        assert logged["max_drawdown"] == min(history) == out["metrics"]["max_drawdown"]
        assert -0.2 < logged["max_drawdown"] < 0


def test_cli_refuses_a_mixed_frequency_benchmark_and_resamples_on_request(log_main, tmp_path):
    import csv
    import io
    import json

    case = CASES["eurusd_hourly"]
    hourly = tmp_path / "hourly.csv"
    pd.DataFrame({"timestamp": case.r.index.strftime("%Y-%m-%dT%H:%M:%SZ"), "s": case.r.to_numpy()}).to_csv(
        hourly, index=False
    )
    by_day = case.b.groupby(case.b.index.normalize()).apply(compound)
    daily = tmp_path / "daily.csv"
    pd.DataFrame({"date": by_day.index.strftime("%Y-%m-%d"), "b": by_day.to_numpy()}).to_csv(
        daily, index=False
    )
    argv = ["--returns", str(hourly), "--benchmark", str(daily), "--dry-run", "--no-tearsheet"]
    code, out, err = log_main(*argv)
    assert code == 2 and out == "" and err.count("error: ") == 1 and "Traceback" not in err
    assert "60min" in err and "daily" in err and "--resample-to-benchmark" in err
    code, out, err = log_main(*argv, "--resample-to-benchmark")
    assert code == 0, err
    data = json.loads(out)
    assert data["frequency"].startswith("daily") and data["n_bars"] == data["benchmark"]["common_bars"]
    assert any("--resample-to-benchmark" in w for w in data["warnings"])
    # --format csv, as the README promises for every script: key,value rows with exact numbers
    code, out, err = log_main(*argv, "--resample-to-benchmark", "--format", "csv")
    assert code == 0, err
    rows = {row["key"]: row["value"] for row in csv.DictReader(io.StringIO(out))}
    assert float(rows["metrics.sharpe"]) == data["metrics"]["sharpe"]
