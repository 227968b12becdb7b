"""Issue 25 item 15: the tearsheet is QuantStats' report, with QuantStats' own numbers; where the run logs a
corrected value (issue 13's edge cases), a note at the report's top lists the row, the report's value and the
logged one, so the report never contradicts the run silently."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def report(scripts, tmp_path: Path, returns: np.ndarray, start: str = "2021-01-04", benchmark=None):
    """The tearsheet of a daily series, the note's rows {row: (report's cell, logged cell)}, every row of
    QuantStats' table {row: cell} and the metrics the run logs."""
    lb = scripts.log_backtest
    index = pd.bdate_range(start, periods=len(returns))
    series = pd.Series(returns, index=index, name="s")
    bench = pd.Series(benchmark, index=index, name="spy") if benchmark is not None else None
    column = lb.Column("s", series, True, bench, {"column": "spy"} if bench is not None else None)
    path = tmp_path / "tearsheet.html"
    lb.write_tearsheet(column, path, 0.0, 252.0, True, "strategy-x")
    html = path.read_text(encoding="utf-8")
    assert html.count(lb.NOTE_MARK) == 1
    note = html[html.index(lb.NOTE_MARK) : html.index("</div>", html.index(lb.NOTE_MARK))]
    listed = {
        row: (shown, logged)
        for row, shown, _, logged in re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", note)
    }  # fmt: skip
    table = html[html.index("Key Performance Metrics") :]
    table = table[: table.index("</table>")]
    heads = re.findall(r"<th>([^<]*)</th>", table)
    at = heads.index("strategy-x") - 1
    cells = {
        label: re.findall(r"<td>([^<]*)</td>", rest)[at]
        for label, rest in re.findall(r"<tr><td>([^<]*)</td>((?:<td>[^<]*</td>)+)</tr>", table)
    }
    values, _ = lb.compute_metrics(column, 0.0, 252.0, True)
    return note, listed, cells, values


def shown_number(cell: str) -> float:
    return float(cell.rstrip("%"))


def test_a_short_losing_run_lists_its_undefined_windows_and_its_recovery_factor(scripts, tmp_path):
    returns = np.random.default_rng(7).normal(-0.0003, 0.01, 700)  # under 3 years, losing
    note, listed, cells, values = report(scripts, tmp_path, returns)
    for row in ("3Y (ann.)", "5Y (ann.)", "10Y (ann.)"):  # QuantStats shows the whole run's CAGR
        assert listed[row] == (cells[row], "undefined"), row
    # QuantStats' recovery factor is positive for a losing run; ours has the sign of the return (issue 13)
    shown, logged = listed["Recovery Factor"]
    assert shown_number(shown) > 0 > float(logged) and abs(float(logged) - values["recovery_factor"]) < 0.006
    assert "Sharpe" not in listed and "Max Drawdown" not in listed
    # every row the note leaves out shows the logged value at the report's rounding
    for row, cell in cells.items():
        metric = scripts.log_backtest.TEARSHEET_ROWS.get(row)
        if row in listed or metric is None or metric not in values:
            continue
        value = values[metric] * (100 if cell.endswith("%") else 1)
        off = (
            abs(value - shown_number(cell)) if "." not in cell else abs(round(value, 2) - shown_number(cell))
        )
        assert off < (1 if "." not in cell else 0.0101), (row, cell, value)


def test_the_plus_100_percent_bar_drawdown_is_listed(scripts, tmp_path):
    """Non-negative returns with one bar of exactly +100 %: QuantStats reads them as prices in its drawdown
    functions (max drawdown about -100 %); the run's own equity never falls."""
    returns = np.random.default_rng(3).uniform(0, 0.001, 300)
    returns[150] = 1.0
    note, listed, cells, values = report(scripts, tmp_path, returns)
    assert values["max_drawdown"] == 0
    shown, logged = listed["Max Drawdown"]
    assert shown_number(shown) < -50 and logged == "0.00%", (shown, logged)


def test_a_long_ordinary_run_with_a_benchmark_says_where_it_agrees(scripts, tmp_path):
    """Eleven years of an ordinary winning series against a benchmark: the windows are defined, and what the
    note lists are metrics whose definition departs from QuantStats' (the metric table says so)."""
    rng = np.random.default_rng(11)
    returns, bench = rng.normal(0.0006, 0.01, 2800), rng.normal(0.0003, 0.01, 2800)
    note, listed, cells, values = report(scripts, tmp_path, returns, start="2010-01-04", benchmark=bench)
    assert "beta" in values and cells["Beta"] != "-"
    for row in ("3Y (ann.)", "5Y (ann.)", "10Y (ann.)", "Sharpe", "Beta", "Alpha", "Max Drawdown"):
        assert row not in listed, (row, listed)
    specs = {spec.name: spec for spec in scripts.log_backtest.METRICS}
    for row in listed:
        assert specs[scripts.log_backtest.TEARSHEET_ROWS[row]].departure, (row, listed[row])
    if listed:
        assert f"{len(listed)} value" in note
    else:
        assert "Every value in the table below agrees" in note


def test_a_report_from_daily_returns_of_intraday_bars_says_so(scripts, tmp_path):
    path = tmp_path / "t.html"
    path.write_text("<html><body><h1>x</h1><h4>sub</h4><hr><div>table</div></body></html>")
    scripts.log_backtest.note_corrections(path, "x", None)
    text = path.read_text()
    assert text.index("daily returns compounded from the run's intraday bars") < text.index("<div>table")


@pytest.mark.parametrize(
    "cell, value, listed", [("488", 488.5, False), ("1.8", 1.8049, False), ("1.8", 1.83, True)]
)
def test_the_reports_rounding_is_not_a_difference(scripts, cell, value, listed):
    found = scripts.log_backtest.tearsheet_corrections([("Sharpe", cell)], {"sharpe": value})
    assert bool(found) == listed
