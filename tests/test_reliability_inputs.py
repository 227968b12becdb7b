"""Issue 14: inputs log_backtest misread, hung on, or refused only after writing. Each is refused with exit 2
(one line naming what to do) before any store is touched, or read unambiguously."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from harness import assert_clean_error, run_script


@pytest.fixture
def lb(run_in_process, tmp_path):
    """log_backtest.main() in this process (run_in_process) on a store in tmp_path/store that does not exist
    yet (refusals must not create it); returns (code, out, err). lb.store, lb.env: its folder, its environment."""
    store = tmp_path / "store"
    store.mkdir()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}

    def call(*argv: str):
        done = run_in_process("log_backtest", *argv, "--no-tearsheet", "--format", "json", env=env)
        code, out = done.returncode, done.stdout
        return code, (json.loads(out) if code == 0 and out else out), done.stderr

    call.store, call.env = store, env
    return call


def refused(result, *needles: str) -> None:
    code, out, err = result
    assert code == 2 and out == "" and err.count("error: ") == 1 and "Traceback" not in err, (code, err)
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)


def write(path, header: str, rows: list[str]):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def returns(n: int, seed: int = 1, scale: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.001, scale, n)


# ---- item 2: dates ----------------------------------------------------------------------------------------
def test_ambiguous_day_first_monthly_dates_are_refused_naming_date_format(lb, tmp_path):
    """01/02/2020 ... 01/12/2020: every field <= 12, day-first or month-first cannot be told apart."""
    rows = [f"01/{m:02d}/2020,{r:.6f}" for m, r in zip(range(1, 13), returns(12, scale=0.05), strict=True)]
    path = write(tmp_path / "monthly.csv", "date,returns", rows)
    refused(lb("--returns", path, "--dry-run"), "--date-format", "ambiguous")
    code, out, err = lb("--returns", path, "--dry-run", "--date-format", "dayfirst")
    assert code == 0, err
    assert out["frequency"] == "monthly" and out["start"] == "2020-01-01" and out["end"] == "2020-12-01"
    code, out, err = lb("--returns", path, "--dry-run", "--date-format", "%d/%m/%Y")
    assert code == 0 and out["frequency"] == "monthly", err
    code, out, err = lb("--returns", path, "--dry-run", "--date-format", "monthfirst")
    assert code == 0 and out["frequency"] in ("daily", "daily_calendar") and out["start"] == "2020-01-01", err


def test_day_first_daily_dates_are_read_day_first_when_a_day_exceeds_12(lb, tmp_path):
    """01/01/2020 ... 31/01/2020: 13/01 can only be day-first, so the whole column is read that way."""
    rows = [f"{d:02d}/01/2020,{r:.6f}" for d, r in zip(range(1, 32), returns(31), strict=True)]
    code, out, err = lb("--returns", write(tmp_path / "daily.csv", "date,returns", rows), "--dry-run")
    assert code == 0, err
    assert (out["start"], out["end"], out["n_bars"]) == ("2020-01-01", "2020-01-31", 31)
    assert "not in order" not in err


def test_yyyymmdd_integers_are_dates_not_epoch_seconds(lb, tmp_path):
    import pandas as pd

    days = pd.bdate_range("2022-01-03", periods=60)
    rows = [f"{d:%Y%m%d},{r:.6f}" for d, r in zip(days, returns(60), strict=True)]
    code, out, err = lb("--returns", write(tmp_path / "ymd.csv", "date,returns", rows), "--dry-run")
    assert code == 0, err
    assert (out["start"], out["frequency"], out["periods_per_year"]) == ("2022-01-03", "daily", 252)


def test_time_only_column_is_refused(lb, tmp_path):
    rows = [f"09:{m:02d},{r:.6f}" for m, r in zip(range(30), returns(30), strict=True)]
    refused(lb("--returns", write(tmp_path / "times.csv", "time,returns", rows), "--dry-run"), "no date")


# ---- item 3: what MLflow would refuse, caught before the first write -----------------------------------
def test_pre_1970_bars_are_logged_with_real_dates_in_params(lb, tmp_path, client_for):
    import pandas as pd

    days = pd.bdate_range("1965-01-04", periods=300)
    rows = [f"{d:%Y-%m-%d},{r:.6f}" for d, r in zip(days, returns(300), strict=True)]
    code, out, err = lb("--returns", write(tmp_path / "old.csv", "date,returns", rows), "--experiment", "old")
    assert code == 0, err
    assert out["start"] == "1965-01-04" and any("1970" in w for w in out["warnings"]), out["warnings"]
    client = client_for(lb.env)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["start"] == "1965-01-04"
    history = client.get_metric_history(out["run_id"], "equity")
    stamps = [m.timestamp for m in history]
    assert min(stamps) >= 0 and stamps == sorted(stamps)
    # spacing kept: the shift is one offset for the whole series
    first, last = days[0].value // 10**6, days[-1].value // 10**6
    assert max(stamps) - min(stamps) == last - first


def test_rows_with_more_fields_than_the_header_are_refused(lb, tmp_path):
    rows = [f"2024-01-{d:02d},{r:.6f}" for d, r in zip(range(1, 21), returns(20), strict=True)]
    rows[5] += ",0.5"
    refused(lb("--returns", write(tmp_path / "extra.csv", "date,returns", rows)), "line 7", "fields")
    assert list(lb.store.iterdir()) == []


def test_every_row_with_an_extra_field_is_refused_too(lb, tmp_path):
    """pandas then uses the first column as the index and shifts the others left."""
    rows = [f"2024-01-{d:02d},{r:.6f},1" for d, r in zip(range(1, 21), returns(20), strict=True)]
    refused(lb("--returns", write(tmp_path / "extra.csv", "date,returns", rows)), "fields")


def test_sweep_column_name_mlflow_would_refuse_is_caught_before_writing(lb, tmp_path):
    long = "c" * 600
    data = returns(40)
    rows = [f"2024-01-{1 + d // 24:02d}T{d % 24:02d}:00:00,{a:.6f},{a / 2:.6f}" for d, a in enumerate(data)]
    path = write(tmp_path / "sweep.csv", f"date,short,{long}", rows)
    refused(lb("--returns", path, "--dry-run"), "column name", "500")
    refused(lb("--returns", path), "column name")
    assert list(lb.store.iterdir()) == []


def test_experiment_name_over_500_characters_names_the_flag(lb, tmp_path):
    rows = [f"2024-01-{d:02d},{r:.6f}" for d, r in zip(range(1, 21), returns(20), strict=True)]
    refused(lb("--returns", write(tmp_path / "r.csv", "date,returns", rows), "--experiment", "e" * 501),
            "--experiment", "500")  # fmt: skip
    assert list(lb.store.iterdir()) == []


# ---- item 7: non-regular files ----------------------------------------------------------------------------
def test_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "returns.csv"
    os.mkfifo(fifo)
    result = run_script("log_backtest", "--returns", str(fifo), "--dry-run", cwd=tmp_path, timeout=120)
    assert_clean_error(result, 2, "regular file")


@pytest.mark.parametrize("flag", ["--returns", "--benchmark"])
def test_dev_zero_is_refused(lb, tmp_path, flag):
    rows = [f"2024-01-{d:02d},{r:.6f}" for d, r in zip(range(1, 21), returns(20), strict=True)]
    path = write(tmp_path / "r.csv", "date,returns", rows)
    args = (
        ["--returns", "/dev/zero"] if flag == "--returns" else ["--returns", path, "--benchmark", "/dev/zero"]
    )
    refused(lb(*args, "--dry-run"), flag, "regular file")


# ---- item 9: volatile decimals vs percent -----------------------------------------------------------------
def volatile_monthly(tmp_path):
    import pandas as pd

    months = pd.date_range("2015-01-31", periods=96, freq="ME")
    values = np.clip(np.random.default_rng(9).normal(0.02, 0.25, 96), -0.9, 0.95)
    rows = [f"{d:%Y-%m-%d},{r:.6f}" for d, r in zip(months, values, strict=True)]
    return write(tmp_path / "crypto.csv", "date,returns", rows), values


def test_volatile_monthly_decimals_are_read_as_decimals_with_a_warning(lb, tmp_path):
    path, values = volatile_monthly(tmp_path)
    assert np.median(np.abs(values)) > 0.1 and np.abs(values).max() < 1
    code, out, err = lb("--returns", path, "--dry-run")
    assert code == 0, err
    assert out["metrics"]["total_return"] == pytest.approx(np.prod(1 + values) - 1, rel=1e-6)
    assert any("--percent" in w for w in out["warnings"]), out["warnings"]


def test_decimal_flag_accepts_what_the_heuristic_refuses_and_the_message_offers_both(lb, tmp_path):
    import pandas as pd

    days = pd.bdate_range("2020-01-01", periods=120)
    values = np.clip(np.random.default_rng(3).normal(0.0, 0.3, 120), -0.9, 0.9)  # daily, median |r| ~0.2
    rows = [f"{d:%Y-%m-%d},{r:.6f}" for d, r in zip(days, values, strict=True)]
    path = write(tmp_path / "wild.csv", "date,returns", rows)
    refused(lb("--returns", path, "--dry-run"), "--percent", "--decimal")
    code, out, err = lb("--returns", path, "--dry-run", "--decimal")
    assert code == 0, err
    assert out["metrics"]["total_return"] == pytest.approx(np.prod(1 + values) - 1, rel=1e-6)
    refused(lb("--returns", path, "--dry-run", "--decimal", "--percent"), "--decimal")


# ---- should fix: messages that say what to do, bounds, warnings ------------------------------------------
def daily_rows(n: int = 40, sep: str = ",", seed: int = 1) -> list[str]:
    import pandas as pd

    days = pd.bdate_range("2023-01-02", periods=n)
    return [f"{d:%Y-%m-%d}{sep}{r:.6f}" for d, r in zip(days, returns(n, seed), strict=True)]


def test_semicolon_csv_is_read_and_sep_can_be_given(lb, tmp_path):
    path = write(tmp_path / "semi.csv", "date;returns", daily_rows(sep=";"))
    code, out, err = lb("--returns", path, "--dry-run")
    assert code == 0 and out["n_bars"] == 40, err
    pipe = write(tmp_path / "pipe.csv", "date|returns|x,y", daily_rows(sep="|"))  # a comma inside a name
    refused(lb("--returns", pipe, "--dry-run"), "--sep")
    code, out, err = lb("--returns", pipe, "--dry-run", "--sep", "|", "--column", "returns")
    assert code == 0 and out["n_bars"] == 40, err


def test_parquet_with_dates_in_the_index_or_a_multiindex_uses_the_index(lb, tmp_path):
    import pandas as pd

    days = pd.bdate_range("2023-01-02", periods=40)
    frame = pd.DataFrame({"returns": returns(40)}, index=pd.Index(days.strftime("%Y-%m-%d"), name="date"))
    frame.to_parquet(tmp_path / "text_index.parquet")
    code, out, err = lb("--returns", str(tmp_path / "text_index.parquet"), "--dry-run")
    assert code == 0 and out["start"] == "2023-01-02", err
    multi = pd.DataFrame(
        {"returns": returns(40)}, index=pd.MultiIndex.from_arrays([days, [1] * 40], names=[None, "level"])
    )
    multi.to_parquet(tmp_path / "multi.parquet")
    code, out, err = lb("--returns", str(tmp_path / "multi.parquet"), "--dry-run", "--column", "returns")
    assert code == 0 and out["start"] == "2023-01-02" and out["n_bars"] == 40, err


def test_excel_workbook_renamed_csv_says_export_as_csv(lb, tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "book.csv", "w") as book:  # an .xlsx is a zip: same first bytes
        book.writestr("[Content_Types].xml", "<Types/>")
    refused(lb("--returns", str(tmp_path / "book.csv"), "--dry-run"), "Excel", "export it as CSV")


@pytest.mark.parametrize("value", ["1e-300", "1e300", "0.0001", "2e9"])
def test_absurd_periods_per_year_is_refused(lb, tmp_path, value):
    path = write(tmp_path / "r.csv", "date,returns", daily_rows())
    refused(lb("--returns", path, "--dry-run", "--periods-per-year", value), "--periods-per-year", "between")


def test_two_bars_and_a_30_year_gap_are_warned(lb, tmp_path):
    code, out, err = lb("--returns", write(tmp_path / "two.csv", "date,returns", daily_rows(2)), "--dry-run")
    assert code == 0 and any("only 2 bars" in w for w in out["warnings"]), (err, out)
    rows = daily_rows(40)
    rows[20:] = [row.replace("2023-", "1993-", 1) for row in rows[20:]]
    code, out, err = lb("--returns", write(tmp_path / "gap.csv", "date,returns", rows), "--dry-run")
    assert code == 0 and any("gap of 29" in w or "gap of 30" in w for w in out["warnings"]), (err, out)


# ---- issue 25 item 9: European number formats ---------------------------------------------------------------
def price_rows(prices: list[str], sep: str = ";") -> list[str]:
    import pandas as pd

    days = pd.bdate_range("2024-01-01", periods=len(prices)).strftime("%Y-%m-%d")
    return [f"{day}{sep}{price}" for day, price in zip(days, prices, strict=True)]


@pytest.mark.parametrize(
    "prices, line, words",
    [
        # crossing 1,000 upwards and downwards: 1.001 is 1001 with a thousands dot, read as 1.001
        (["996", "998", "999", "1.001", "1.003", "1.002", "999", "998"], 5, ["1.001", "thousands"]),
        (["1.004", "1.002", "1.001", "999", "998", "997", "999", "1.000"], 4, ["1.001", "thousands"]),
        (["12.345", "12.400", "12.388", "12.390", "12.410", "12.399", "12.402", "12401"], 8, ["12.402"]),
    ],
    ids=["up-through-1000", "down-through-1000", "ten-thousands"],
)
def test_prices_with_a_thousands_dot_are_refused_naming_the_line(lb, tmp_path, prices, line, words):
    """A -99.9 % bar next to a x1000 jump is a thousands dot read as a decimal point (the issue's case:
    exit 0, no warning, before). The line named is the one holding the misread price."""
    path = write(tmp_path / "eu.csv", "date;price", price_rows(prices))
    refused(lb("--returns", path, "--prices", "--dry-run"), f"line {line}", *words)


def test_prices_that_only_look_like_thousands_are_read(lb, tmp_path):
    """FX-like prices with three decimals, a crash to cents: real series, no x1000 neighbour pair."""
    fx = write(
        tmp_path / "fx.csv", "date;price", price_rows(["1.001", "1.003", "0.998", "1.000", "1.012"] * 3)
    )
    code, out, err = lb("--returns", fx, "--prices", "--dry-run")
    assert code == 0, err
    assert out["n_bars"] == 14 and abs(out["metrics"]["total_return"] - (1.012 / 1.001 - 1)) < 1e-12
    crash = write(tmp_path / "crash.csv", "date,price", price_rows(["10", "9.5", "4", "0.011", "0.01"], ","))
    code, out, err = lb("--returns", crash, "--prices", "--dry-run")
    assert code == 0, err
    assert abs(out["metrics"]["total_return"] - (0.01 / 10 - 1)) < 1e-12


@pytest.mark.parametrize("cell", ["1.234,56", "998,50", "-0,25", "1.234.567"])
def test_european_numbers_are_refused_with_the_format_named(lb, tmp_path, cell):
    """A decimal comma or thousands dots: pandas cannot read the cell; the error says why and how to fix."""
    path = write(tmp_path / "eu.csv", "date;price", price_rows(["1000.5", "1001.5", cell, "1002.5"]))
    refused(lb("--returns", path, "--prices", "--dry-run"), "line 4", cell, "decimal point")
