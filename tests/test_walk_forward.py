"""Walk-forward validation (issue 22 step 2): `log_backtest --walk-forward`. The folds, the picks and the
stitched out-of-sample series are computed here by an independent pandas loop written from the contract
(references/walk-forward.md), never with the script's code, and compared with what the script prints and logs:
rolling, anchored, embargo, a step longer than the test, bar counts, day units, weekly bars, one column, no
timestamps, a partial last fold; every bad specification; the runs in a local store and through the
basic-auth server; the sweep's per-child is_/oos_ values. Data is seeded here."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import run_script

UNITS = {"y": "years", "m": "months", "w": "weeks", "d": "days"}  # the calendar units, as pandas names them
BOUNDS = ("train_start", "train_end", "test_start", "test_end")
FOLDS_CSV = [
    "fold", "train_start", "train_end", "test_start", "test_end", "n_train_bars", "n_test_bars", "partial",
    "chosen_column", "is_sharpe", "oos_sharpe", "oos_cagr", "oos_total_return", "oos_max_drawdown",
    "oos_volatility", "oos_rank", "run_id",
]  # fmt: skip
DAILY, WEEKLY, HOURLY = 252.0, 52.0, 24 * 365.0  # bars per year the script detects for these bars


# ---------------------------------------------------------------- the independent computation


def regime_frame(
    seed: int, bars: int, freq: str = "B", columns: int = 3, scale: float = 0.01
) -> pd.DataFrame:
    """Seeded returns whose best column changes with time: column i has an edge in the i-th part of the
    bars, so the walk-forward's pick moves and out-of-sample lags in-sample."""
    rng = np.random.default_rng(seed)
    first = {"B": "2016-01-04", "W-FRI": "2016-01-08"}.get(freq, "2024-01-01")
    index = pd.date_range(first, periods=bars, freq=freq, name="date")
    data = rng.normal(0.02 * scale, scale, (bars, columns))
    for i in range(columns):
        data[i * bars // columns : (i + 1) * bars // columns, i] += 0.12 * scale
    return pd.DataFrame(data, index=index, columns=["trend", "carry", "value", "quality"][:columns])


def duration(text: str, times: int = 1):
    """times x a duration as given: a pandas DateOffset for Ny, Nm, Nw, Nd (one offset, not `times`
    additions), else a number of bars."""
    if text[-1] in UNITS:
        return pd.DateOffset(**{UNITS[text[-1]]: times * int(text[:-1])})
    return times * int(text)


def sharpe(r: pd.Series, ppy: float, rf: float = 0.0) -> float:
    x = r - ((1 + rf) ** (1 / ppy) - 1)
    sd = x.std(ddof=1)
    return float(x.mean() / sd * math.sqrt(ppy)) if sd > 0 else math.nan


def max_drawdown(r: pd.Series, ppy: float = DAILY, rf: float = 0.0) -> float:
    equity = (1 + r).cumprod()
    return float((equity / equity.cummax().clip(lower=1.0) - 1).min())  # the peak includes the starting 1.0


STATS = {"sharpe": sharpe, "max_drawdown": max_drawdown}  # --best-by: higher is better for both


def series_metrics(r: pd.Series, ppy: float, rf: float = 0.0) -> dict[str, float]:
    """The metrics this file checks on any window, by their logged names."""
    total = float((1 + r).prod() - 1)
    return {
        "sharpe": sharpe(r, ppy, rf),
        "total_return": total,
        "cagr": (1 + total) ** (ppy / len(r)) - 1,
        "max_drawdown": max_drawdown(r),
        "volatility": float(r.std(ddof=1) * math.sqrt(ppy)),
    }


@dataclass
class Spec:
    """A walk-forward's settings as a user types them."""

    train: str
    test: str
    step: str | None = None
    embargo: str = "0"
    anchored: bool = False
    best_by: str = "sharpe"
    rf: float = 0.0

    def argv(self) -> list[str]:
        args = ["--walk-forward", "--train", self.train, "--test", self.test]
        args += ["--step", self.step] if self.step else []
        args += ["--embargo", self.embargo] if self.embargo != "0" else []
        args += ["--anchored"] if self.anchored else []
        args += ["--best-by", self.best_by] if self.best_by != "sharpe" else []
        return args + (["--rf", str(self.rf)] if self.rf else [])


@dataclass
class RefFold:
    bounds: tuple  # train_start, train_end, test_start, test_end: Timestamps (calendar) or bar positions
    labels: dict[str, str]
    train: pd.DataFrame
    test: pd.DataFrame
    partial: bool
    chosen: str = ""
    is_value: float = math.nan  # the chosen column's --best-by value on the training window
    is_sharpe: float = math.nan
    oos_rank: int = 0


@dataclass
class Reference:
    spec: Spec
    ppy: float
    folds: list[RefFold] = field(default_factory=list)

    @property
    def stitched(self) -> pd.Series:
        """The chosen column's returns on each test window, in fold order."""
        return pd.concat([f.test[f.chosen] for f in self.folds])

    def parent_metrics(self) -> dict[str, float | None]:
        """The parent's metrics, by name (None: undefined)."""
        oos = {f"oos_{k}": v for k, v in series_metrics(self.stitched, self.ppy, self.spec.rf).items()}
        is_sharpe = float(np.mean([f.is_sharpe for f in self.folds]))
        picks = pd.Series([f.chosen for f in self.folds])
        positive = [series_metrics(f.test[f.chosen], self.ppy)["total_return"] > 0 for f in self.folds]
        return {
            **oos,
            "is_sharpe": is_sharpe,
            f"is_{self.spec.best_by}": float(np.mean([f.is_value for f in self.folds])),
            "wf_efficiency": oos["oos_sharpe"] / is_sharpe if is_sharpe > 0 else None,
            "n_folds": float(len(self.folds)),
            "positive_fold_share": float(np.mean(positive)),
            "pick_stability": float(picks.value_counts().iloc[0] / len(picks)),
        }


def stamp_of(bound, frame: pd.DataFrame) -> pd.Timestamp | None:
    """A boundary's time: itself (calendar), the bar at a position, None past the data or without times."""
    if isinstance(bound, pd.Timestamp):
        return bound
    dated = isinstance(frame.index, pd.DatetimeIndex) and bound < len(frame)
    return frame.index[bound] if dated else None


def labelled(folds: list[RefFold], frame: pd.DataFrame) -> list[RefFold]:
    """Boundaries as the script writes them: YYYY-MM-DD when every bar and boundary is at midnight, else
    YYYY-MM-DDTHH:MM:SSZ; `bar N` for a position past the data or without timestamps."""
    stamps = [stamp_of(b, frame) for fold in folds for b in fold.bounds]
    # dates only for a daily-or-slower series (every bar at midnight), as the run's start/end params
    index = frame.index
    midnight = all(s == s.normalize() for s in stamps if s is not None) and not (
        isinstance(index, pd.DatetimeIndex) and (index != index.normalize()).any()
    )
    layout = "%Y-%m-%d" if midnight else "%Y-%m-%dT%H:%M:%SZ"
    for fold in folds:
        times = [stamp_of(b, frame) for b in fold.bounds]
        fold.labels = {
            name: f"bar {b}" if t is None else t.strftime(layout)
            for name, b, t in zip(BOUNDS, fold.bounds, times, strict=True)
        }
    return folds


def reference_folds(frame: pd.DataFrame, spec: Spec) -> list[RefFold]:
    """The folds written out from the contract, one at a time: fold k trains on [s_k, e_k) with e_k = t0 +
    k*STEP + TRAIN and tests on [e_k + EMBARGO, + TEST); folds go on while a test window starts at or before
    the last bar."""
    index, n = frame.index, len(frame)
    calendar = spec.train[-1] in UNITS
    origin = index[0] if calendar else 0
    biggest_gap = index.to_series().diff().max() if calendar else None
    folds = []
    for k in itertools.count():
        a = origin + duration(spec.step or spec.test, k)
        train_end = a + duration(spec.train)
        test_start = train_end + duration(spec.embargo) if spec.embargo != "0" else train_end
        bounds = (origin if spec.anchored else a, train_end, test_start, test_start + duration(spec.test))
        at = [int(index.searchsorted(b)) for b in bounds] if calendar else list(bounds)
        if at[2] > n - 1:  # this test window would start after the last bar
            return labelled(folds, frame)
        partial = bounds[3] - index[-1] > biggest_gap if calendar else bounds[3] > n
        folds.append(RefFold(bounds, {}, frame.iloc[at[0] : at[1]], frame.iloc[at[2] : at[3]], partial))
    raise AssertionError("unreachable")


def reference(frame: pd.DataFrame, spec: Spec, ppy: float) -> Reference:
    """Folds and picks: on each training window the column with the best --best-by (first on ties, an
    undefined value never), then its rank by the same metric among all columns on the test window."""
    ref = Reference(spec, ppy, reference_folds(frame, spec))
    stat = STATS[spec.best_by]
    for fold in ref.folds:
        scores = fold.train.apply(lambda r: stat(r, ppy, spec.rf))
        fold.chosen = str(scores.dropna().idxmax())  # idxmax: the first of equal values
        fold.is_value = float(scores[fold.chosen])
        fold.is_sharpe = sharpe(fold.train[fold.chosen], ppy, spec.rf)
        tested = fold.test.apply(lambda r: stat(r, ppy, spec.rf))
        value = tested[fold.chosen]
        better = tested.notna() if math.isnan(value) else tested > value  # undefined values rank last
        fold.oos_rank = 1 + int(better.sum())
    return ref


# ---------------------------------------------------------------- comparing the script with it


def close(got, want, what: str) -> None:
    """Equal to 1e-9 relative, or both undefined (None in JSON)."""
    if want is None or (isinstance(want, float) and math.isnan(want)):
        assert got is None, (what, got)
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15), (what, got, want)


def assert_window_metrics(
    values: dict, prefix: str, returns: pd.Series, ppy: float, rf: float, where: str
) -> None:
    """values[prefix + name] for the metrics this file recomputes, on one window's returns."""
    for name, value in series_metrics(returns, ppy, rf).items():
        close(values.get(prefix + name), value, f"{where} {prefix}{name}")


def assert_output_matches(out: dict, frame: pd.DataFrame, ref: Reference) -> None:
    """The JSON output's folds, picks and parent metrics against the independent computation."""
    spec = ref.spec
    assert out["walk_forward"] == {
        "train": spec.train, "test": spec.test, "step": spec.step or spec.test, "embargo": spec.embargo,
        "anchored": spec.anchored, "best_by": spec.best_by, "columns": list(frame.columns),
    }  # fmt: skip
    assert out["n_folds"] == len(ref.folds)
    assert [f["fold"] for f in out["folds"]] == list(range(len(ref.folds)))
    for got, want in zip(out["folds"], ref.folds, strict=True):
        where = f"fold {got['fold']}"
        assert {k: got[k] for k in BOUNDS} == want.labels, where
        assert got["n_train_bars"] == len(want.train), where
        assert got["n_test_bars"] == len(want.test), where
        assert got["partial"] is want.partial, where
        assert got["chosen_column"] == want.chosen, where
        close(got[f"is_{spec.best_by}"], want.is_value, f"{where} is_{spec.best_by}")
        close(got["is_sharpe"], want.is_sharpe, f"{where} is_sharpe")
        assert got["oos_rank"] == want.oos_rank, where
        assert_window_metrics(got["metrics"], "oos_", want.test[want.chosen], ref.ppy, spec.rf, where)
    want = ref.parent_metrics()
    for name, value in want.items():
        close(out["metrics"].get(name), value, name)
    for name in ("oos_sharpe", "is_sharpe", "wf_efficiency"):
        close(out[name], want[name], name)
    if want["wf_efficiency"] is None:
        assert "wf_efficiency" in out["undefined_metrics"]
    assert isinstance(out["verdict"], str) and "out-of-sample" in out["verdict"].lower(), out["verdict"]


@pytest.fixture
def lb(run_in_process, tmp_path):
    """log_backtest.main() in this process (JSON, no tearsheet) with a local store in tmp_path/store;
    -> (exit code, parsed output or stdout text, stderr). lb.db: the store file."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()

    def call(path: Path, *argv: str, cwd: Path | None = None):
        done = run_in_process("log_backtest", "--returns", str(path), "--no-tearsheet", "--format", "json",
                              *argv, env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}, cwd=cwd)  # fmt: skip
        return done.returncode, (done.json() if done.returncode == 0 else done.stdout), done.stderr

    call.db = db
    return call


def assert_no_runs(db: Path) -> None:
    """Nothing written: no store file, or one without a single run."""
    if db.exists():
        with sqlite3.connect(db) as connection:
            assert connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def csv_of(frame: pd.DataFrame, folder: Path, name: str = "grid.csv") -> Path:
    """The frame as a user's file: a date column, or no timestamp column at all for a RangeIndex."""
    path = folder / name
    frame.to_csv(path, index=isinstance(frame.index, pd.DatetimeIndex))
    return path


# ---------------------------------------------------------------- folds and picks (dry runs)

DAYS = regime_frame(22, 1250)  # 2016-01-04 to 2020-10-16, business days
HOURS = regime_frame(9, 2400, "h", scale=0.002)  # 100 days of round-the-clock hourly bars from midnight
CASES = {
    "rolling": (DAYS, Spec("2y", "6m"), DAILY, ()),
    "anchored": (DAYS, Spec("2y", "6m", anchored=True), DAILY, ()),
    "embargo, step longer than test, rf": (DAYS, Spec("18m", "3m", "4m", "2w", rf=0.03), DAILY, ()),
    "best by max_drawdown": (DAYS, Spec("1y", "6m", best_by="max_drawdown"), DAILY, ()),
    "bar counts": (DAYS, Spec("300", "120", embargo="5"), DAILY, ()),
    "anchored bar counts": (DAYS, Spec("400", "200", "250", anchored=True), DAILY, ()),
    "day units": (DAYS, Spec("400d", "100d"), DAILY, ()),
    "weekly bars": (regime_frame(5, 320, "W-FRI", scale=0.022), Spec("2y", "6m"), WEEKLY, ()),
    "hourly bars, calendar windows": (HOURS, Spec("4w", "1w"), HOURLY, ()),
    "hourly bars, bar counts": (HOURS, Spec("500", "200", embargo="24"), HOURLY, ()),
    "one column": (DAYS[["carry"]], Spec("1y", "3m"), DAILY, ()),
    "no timestamps": (DAYS.reset_index(drop=True), Spec("250", "100"), DAILY, ("--periods-per-year", "252")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_folds_and_picks_equal_an_independent_loop(lb, tmp_path, case):
    """--dry-run prints every fold (windows, bars, pick, in-sample and out-of-sample values) and the stitched
    series' metrics, computed as the independent loop computes them, and writes nothing."""
    frame, spec, ppy, extra = CASES[case]
    ref = reference(frame, spec, ppy)
    assert len(ref.folds) >= 3, "the case must make several folds"
    code, out, err = lb(csv_of(frame, tmp_path), *spec.argv(), *extra, "--dry-run")
    assert code == 0, err
    assert_output_matches(out, frame, ref)
    assert out["dry_run"] is True and out["parent_run_id"] is None
    assert [f["run_id"] for f in out["folds"]] == [None] * len(ref.folds)
    assert_no_runs(lb.db)
    if len(frame.columns) == 1:  # no selection: every fold trades the one column
        assert out["metrics"]["pick_stability"] == 1.0


def test_the_reference_loop_cuts_the_folds_as_the_contract_says():
    """What the parametrised cases rely on, checked on the reference itself against dates written out by
    hand: rolling training windows start every STEP from the first bar, anchored ones all at the first bar
    and grow; the embargo's bars are in neither window."""
    rolling = reference_folds(DAYS, Spec("2y", "6m"))
    assert [f.labels["train_start"] for f in rolling[:3]] == ["2016-01-04", "2016-07-04", "2017-01-04"]
    assert [f.labels["test_end"] for f in rolling[:2]] == ["2018-07-04", "2019-01-04"]
    assert len(rolling) == 6 and rolling[-1].partial and not any(f.partial for f in rolling[:-1])
    anchored = reference_folds(DAYS, Spec("2y", "6m", anchored=True))
    assert {f.train.index[0] for f in anchored} == {DAYS.index[0]}
    assert np.all(np.diff([len(f.train) for f in anchored]) > 0)
    bars = reference_folds(DAYS, Spec("300", "120", embargo="5"))
    assert [f.labels["test_start"] for f in bars[:2]] == [label_of(305), label_of(425)]
    assert (
        bars[-1].labels["test_end"] == "bar 1265" and bars[-1].partial
    )  # fold 7: 305 + 7 x 120 + 120 > 1250 bars
    embargoed = reference_folds(DAYS, Spec("18m", "3m", "4m", "2w"))
    for fold in embargoed:
        gap = DAYS.index[(DAYS.index >= fold.bounds[1]) & (DAYS.index < fold.bounds[2])]
        assert len(gap) == 10  # two weeks of business days
        assert not set(gap) & (set(fold.train.index) | set(fold.test.index))


def label_of(position: int) -> str:
    return DAYS.index[position].strftime("%Y-%m-%d")


@pytest.mark.parametrize(("last_day", "partial"), [("Friday", False), ("Thursday", True)])
def test_a_last_fold_cut_by_the_end_of_the_data_is_partial(lb, tmp_path, last_day, partial):
    """Weeks on business days from a Monday: every test window ends on a Monday. Data ending the Friday
    before is complete (the weekend is the series' own largest gap); ending on the Thursday cuts it."""
    spec = Spec("26w", "8w")
    test_end = DAYS.index[0] + duration("26w") + duration("8w", 4)  # the 4th fold's test window ends here
    cut = test_end - pd.Timedelta(days=3 if last_day == "Friday" else 4)
    frame = DAYS.loc[:cut]
    assert frame.index[-1].day_name() == last_day
    ref = reference(frame, spec, DAILY)
    assert len(ref.folds) == 4 and ref.folds[-1].partial is partial
    code, out, err = lb(csv_of(frame, tmp_path), *spec.argv(), "--dry-run")
    assert code == 0, err
    assert_output_matches(out, frame, ref)
    assert out["folds"][-1]["partial"] is partial
    assert out["folds"][-1]["n_test_bars"] == 40 - partial
    assert not any(f["partial"] for f in out["folds"][:-1])


def test_no_out_of_sample_bar_is_traded_twice(lb, tmp_path):
    """STEP >= TEST is checked in approximate days (a month 30.4375), but calendar months vary: 3 months
    from January 4 are 90 days, less than 13 weeks (91). The walk-forward must then refuse (exit 2) or keep
    the test windows apart; it must never trade a bar in two folds (the stitched series would repeat it)."""
    code, out, err = lb(csv_of(DAYS, tmp_path), *Spec("1y", "13w", "3m").argv(), "--dry-run")
    if code == 2:
        assert_refused(code, out, err, "--step")
        return
    assert code == 0, err
    folds = out["folds"]
    for before, after in itertools.pairwise(folds):
        assert before["test_end"] <= after["test_start"], (
            before["fold"],
            before["test_end"],
            after["test_start"],
        )
    assert sum(f["n_test_bars"] for f in folds) <= len(DAYS)


# ---------------------------------------------------------------- bad specifications: exit 2, nothing written

WF = ("--walk-forward",)
BAD_SPECS = [
    ((*WF, "--test", "3m"), "--train"),
    ((*WF, "--train", "2y"), "--test"),
    (("--train", "2y"), "--walk-forward"),
    (("--test", "3m"), "--walk-forward"),
    (("--step", "3m"), "--walk-forward"),
    (("--embargo", "1w"), "--walk-forward"),
    (("--anchored",), "--walk-forward"),
    ((*WF, "--train", "0", "--test", "60"), "--train"),
    ((*WF, "--train", "2y", "--test", "0m"), "--test"),
    ((*WF, "--train", "2y", "--test", "3m", "--step", "0m"), "--step"),
    ((*WF, "--train=-2y", "--test", "3m"), "--train"),
    ((*WF, "--train", "2y", "--test", "3m", "--step=-3m"), "--step"),
    ((*WF, "--train", "2y", "--test", "3m", "--embargo=-1w"), "--embargo"),
    ((*WF, "--train", "2y", "--test", "3q"), "3q"),
    ((*WF, "--train", "2y", "--test", "1.5m"), "--test"),
    ((*WF, "--train", "2y", "--test", "3m", "--oos-start", "0.5"), "--oos-start"),
    ((*WF, "--train", "2y", "--test", "6m", "--step", "3m"), "--step"),
    ((*WF, "--train", "2y", "--test", "1m", "--step", "4w"), "--step"),  # 28 days < 30.4375
    ((*WF, "--train", "2y", "--test", "60"), "--test"),  # calendar and bars mixed
    ((*WF, "--train", "500", "--test", "60", "--embargo", "1w"), "--embargo"),
    ((*WF, "--train", "6y", "--test", "3m"), "--train"),  # longer than the data: no fold
    ((*WF, "--train", "1250", "--test", "10"), "--train"),  # as many bars as the data: no test bar
    ((*WF, "--train", "1", "--test", "10"), "fold 0"),  # one training bar
    ((*WF, "--train", "1d", "--test", "1m"), "fold 0"),  # one training bar, in days
]


@pytest.mark.parametrize(("flags", "words"), BAD_SPECS, ids=[" ".join(f) for f, _ in BAD_SPECS])
def test_bad_specifications_are_refused_before_anything_is_written(lb, tmp_path, flags, words):
    code, out, err = lb(csv_of(DAYS, tmp_path), *flags)
    assert_refused(code, out, err, words)
    assert_no_runs(lb.db)


def assert_refused(code: int, out: str, err: str, words: str) -> None:
    """Exit 2, nothing on stdout, one error line naming the problem, no traceback."""
    assert code == 2, (code, err)
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words.lower() in lines[0].lower(), (words, lines[0])


def test_bad_data_for_a_walk_forward_is_refused(lb, tmp_path):
    """Calendar windows on a file without timestamps; a training window on which no column has a defined
    Sharpe ratio (every column flat)."""
    bare = csv_of(DAYS.reset_index(drop=True), tmp_path, "bare.csv")
    result = lb(bare, *Spec("1y", "3m").argv(), "--periods-per-year", "252")
    assert_refused(*result, "--train")
    flat = DAYS.copy()
    flat.iloc[:300] = 0.0  # the first year: no variance in any column
    result = lb(csv_of(flat, tmp_path, "flat.csv"), *Spec("1y", "6m").argv())
    assert_refused(*result, "fold 0")
    assert_no_runs(lb.db)


# ---------------------------------------------------------------- the runs written (a local store)

LOGGED = Spec("2y", "6m", embargo="1w")


@pytest.fixture(scope="module")
def logged(tmp_path_factory, run_in_process):
    """One walk-forward logged as a user runs it, into a local store: 3 columns, 6 folds, the last partial.
    In this process (its folds serial); the walk-forward through the tracking server below is a process."""
    folder = tmp_path_factory.mktemp("walk-forward")
    csv_of(DAYS, folder)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    experiment = f"wf-{uuid.uuid4().hex[:8]}"
    done = run_in_process("log_backtest", "--returns", "grid.csv", "--experiment", experiment,
                          "--no-tearsheet", *LOGGED.argv(), env=env, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ref = reference(DAYS, LOGGED, DAILY)
    assert ref.folds[-1].partial and len({f.chosen for f in ref.folds}) > 1  # the data exercises both
    return {"folder": folder, "env": env, "experiment": experiment, "out": done.json(), "ref": ref}


def children_by_fold(client, parent_id: str, experiment_id: str) -> dict[int, object]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {int(run.data.params["fold"]): run for run in runs}


def history(client, run_id: str, key: str) -> pd.DataFrame:
    points = client.get_metric_history(run_id, key)
    frame = pd.DataFrame([(p.step, p.timestamp, p.value) for p in points], columns=["step", "ms", "value"])
    return frame.sort_values("step", ignore_index=True)


def noon_ms(index: pd.DatetimeIndex) -> list[int]:
    """Where a daily bar's history point is stored: 12:00 UTC of its date, in milliseconds."""
    return list((index.normalize() + pd.Timedelta(hours=12)).as_unit("ms").asi8)


def test_output_of_the_logged_walk_forward(logged):
    out, ref = logged["out"], logged["ref"]
    assert_output_matches(out, DAYS, ref)
    assert out["dry_run"] is False and out["deduplicated"] is False
    assert out["parent_run_id"] and all(f["run_id"] for f in out["folds"])
    assert len({f["run_id"] for f in out["folds"]}) == len(ref.folds)
    assert {"folds.csv", "walk_forward.png", "metrics.json"} <= set(out["artifacts"])
    assert "tearsheet.html" not in out["artifacts"]  # --no-tearsheet
    assert "periods/monthly_returns.png" in out["artifacts"]  # the heatmap, always (issue 23)
    assert any(name.startswith("periods/") and name.endswith(".csv") for name in out["artifacts"])


def test_parent_run_summarises_the_folds(logged, client_for):
    out, ref = logged["out"], logged["ref"]
    client = client_for(logged["env"])
    parent = client.get_run(out["parent_run_id"])
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    assert tags["backtest.walk_forward"] == "true" and tags["backtest.fingerprint"] == out["fingerprint"]
    assert params["train"] == "2y" and params["test"] == "6m" and params["step"] == "6m"
    assert params["embargo"] == "1w" and params["anchored"] == "false" and params["best_by"] == "sharpe"
    assert params["columns"] == ",".join(DAYS.columns)
    assert float(params["periods_per_year"]) == DAILY
    assert int(params["oos_n_bars"]) == len(ref.stitched)
    want = ref.parent_metrics()
    for name, value in want.items():
        close(metrics.get(name), value, name)
    assert {f"oos_{m}" for m in ("sortino", "calmar", "win_rate", "skew", "kurtosis")} <= set(metrics)
    covid = ref.stitched.loc["2020-02-19":"2020-03-23"]  # a stress window inside the stitched test windows
    close(metrics.get("oos_stress_covid_return"), float((1 + covid).prod() - 1), "oos_stress_covid_return")
    assert "sharpe" not in metrics  # the parent is no strategy of its own: its numbers are prefixed
    mode = pd.Series([f.chosen for f in ref.folds]).value_counts().index[0]
    first_line = tags["mlflow.note.content"].splitlines()[0].replace("`", "")  # markdown code marks
    assert first_line.startswith(
        f"Walk-forward {len(ref.folds)} folds (2y/6m): out-of-sample Sharpe {want['oos_sharpe']:.2f} vs "
        f"in-sample {want['is_sharpe']:.2f}"
    ), first_line
    assert f"{mode} chosen in {100 * want['pick_stability']:.0f} % of folds" in first_line, first_line


def test_one_child_per_fold_with_its_windows_and_metrics(logged, client_for):
    out, ref = logged["out"], logged["ref"]
    client = client_for(logged["env"])
    children = children_by_fold(client, out["parent_run_id"], out["experiment_id"])
    assert sorted(children) == list(range(len(ref.folds)))
    for k, want in enumerate(ref.folds):
        run, test = children[k], want.test[want.chosen]
        params, metrics = run.data.params, run.data.metrics
        assert run.info.run_id == out["folds"][k]["run_id"] and run.info.status == "FINISHED"
        assert {name: params[name] for name in BOUNDS} == want.labels, k
        assert params["chosen_column"] == want.chosen and params["partial"] == str(want.partial).lower()
        assert int(params["n_train_bars"]) == len(want.train) and int(params["n_test_bars"]) == len(test)
        assert params["start"] == test.index[0].strftime("%Y-%m-%d")
        assert params["end"] == test.index[-1].strftime("%Y-%m-%d") and int(params["n_bars"]) == len(test)
        assert float(params["periods_per_year"]) == DAILY  # the whole series', not the window's
        close(metrics["is_sharpe"], want.is_sharpe, f"fold {k} is_sharpe")
        assert_window_metrics(metrics, "oos_", test, DAILY, 0.0, f"fold {k}")
        equity = history(client, run.info.run_id, "equity")
        assert list(equity["step"]) == list(range(len(test)))
        np.testing.assert_allclose(equity["value"], (1 + test).cumprod(), rtol=1e-12)
        assert list(equity["ms"]) == noon_ms(test.index)
        assert "tearsheet.html" not in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_parent_history_is_the_stitched_out_of_sample_series(logged, client_for):
    """The UI's equity chart of the parent is the walk-forward strategy: each fold's pick on its test
    window, one after the other, at the bars' own dates."""
    client = client_for(logged["env"])
    stitched = logged["ref"].stitched
    parent = logged["out"]["parent_run_id"]
    equity, drawdown = history(client, parent, "equity"), history(client, parent, "drawdown")
    assert list(equity["step"]) == list(range(len(stitched))) == list(drawdown["step"])
    wealth = (1 + stitched).cumprod()
    np.testing.assert_allclose(equity["value"], wealth, rtol=1e-12)
    np.testing.assert_allclose(drawdown["value"], wealth / wealth.cummax().clip(lower=1.0) - 1, atol=1e-12)
    assert list(equity["ms"]) == noon_ms(stitched.index)
    assert stitched.index.is_monotonic_increasing and not stitched.index.has_duplicates


def test_folds_csv_is_one_row_per_fold(logged, client_for, tmp_path):
    out, ref = logged["out"], logged["ref"]
    client = client_for(logged["env"])
    local = client.download_artifacts(out["parent_run_id"], "folds.csv", str(tmp_path))
    table = pd.read_csv(local, dtype={"run_id": str})
    assert list(table.columns) == FOLDS_CSV
    assert list(table["fold"]) == list(range(len(ref.folds)))
    assert list(table["run_id"]) == [f["run_id"] for f in out["folds"]]
    for row, want in zip(table.to_dict("records"), ref.folds, strict=True):
        where = f"fold {row['fold']}"
        assert {name: row[name] for name in BOUNDS} == want.labels, where
        assert (row["n_train_bars"], row["n_test_bars"]) == (len(want.train), len(want.test)), where
        assert bool(row["partial"]) is want.partial and row["chosen_column"] == want.chosen, where
        assert row["oos_rank"] == want.oos_rank, where
        close(row["is_sharpe"], want.is_sharpe, f"{where} is_sharpe")
        assert_window_metrics(row, "oos_", want.test[want.chosen], DAILY, 0.0, where)


def test_deflate_counts_a_walk_forward_once_and_its_folds_not_at_all(logged, query, client_for):
    """The walk-forward parents are the trials (judged by their stitched series); the fold runs are none."""
    out = logged["out"]
    client = client_for(logged["env"])
    runs = client.search_runs([out["experiment_id"]])
    parents = [r for r in runs if r.data.tags.get("backtest.walk_forward") == "true"]
    folds = [r for r in runs if "fold" in r.data.params]
    code, text, err = query(logged["env"], "deflate", "--experiment", logged["experiment"])
    assert code == 0, err
    got = json.loads(text)
    assert got["n_trials"] == len(parents) >= 1
    assert got["excluded"]["walk_forward_folds"] == len(folds) >= len(logged["ref"].folds)
    best = max(parents, key=lambda r: r.data.metrics["oos_sharpe"])
    assert got["best_run_id"] == best.info.run_id and got["best_sharpe"] == best.data.metrics["oos_sharpe"]
    assert got["n_bars"] == int(best.data.params["oos_n_bars"])


def test_the_duplicate_check_covers_every_walk_forward_setting(logged, lb):
    """The same file and settings again: the logged walk-forward is returned, nothing new written. Each
    other setting is another walk-forward: another fingerprint (what the duplicate check looks for)."""
    path = logged["folder"] / "grid.csv"
    where = ("--experiment", logged["experiment"], "--tracking-uri", logged["env"]["MLFLOW_TRACKING_URI"])
    # where it was logged: the code version (git) is fingerprinted too
    code, again, err = lb(path, *LOGGED.argv(), *where, cwd=logged["folder"])
    assert code == 0, err
    assert again["deduplicated"] is True and again["parent_run_id"] == logged["out"]["parent_run_id"]
    assert [f["run_id"] for f in again["folds"]] == [f["run_id"] for f in logged["out"]["folds"]]
    variants = [LOGGED, Spec("2y", "6m", "7m", "1w"), Spec("2y", "6m", embargo="2w"),
                Spec("2y", "6m", embargo="1w", anchored=True), Spec("2y", "6m", embargo="1w", rf=0.01),
                Spec("2y", "6m", embargo="1w", best_by="max_drawdown")]  # fmt: skip
    prints = []
    for spec in variants:
        code, out, err = lb(path, *spec.argv(), "--dry-run", cwd=logged["folder"])
        assert code == 0, err
        prints.append(out["fingerprint"])
    assert prints[0] == logged["out"]["fingerprint"]
    assert len(set(prints)) == len(variants), prints


# ---------------------------------------------------------------- the sweep's per-child split values


def test_a_sweep_with_oos_start_lists_each_childs_is_and_oos_values(lb, tmp_path):
    """Issue 22: an agent parsing a sweep's `runs` found no is_/oos_ values; each entry now carries them."""
    path = csv_of(DAYS, tmp_path)
    code, out, err = lb(path, "--oos-start", "2019-01-01", "--dry-run")
    assert code == 0, err
    cut = DAYS.index.searchsorted(pd.Timestamp("2019-01-01"))
    assert [r["column"] for r in out["runs"]] == list(DAYS.columns)
    for run in out["runs"]:
        returns = DAYS[run["column"]]
        for side, part in (("is_", returns.iloc[:cut]), ("oos_", returns.iloc[cut:])):
            assert_window_metrics(run["metrics"], side, part, DAILY, 0.0, run["column"])
    assert_no_runs(lb.db)


# ---------------------------------------------------------------- through the basic-auth tracking server


def test_a_walk_forward_through_the_tracking_server(mlflow_server, tmp_path, client_for):
    """As an ordinary user of the basic-auth server with proxied artifacts, tearsheet included."""
    frame, spec = DAYS.iloc[:800], Spec("1y", "6m", embargo="5d")
    csv_of(frame, tmp_path)
    env = mlflow_server.env(mlflow_server.alice)
    done = run_script("log_backtest", "--returns", "grid.csv", "--experiment", f"wf-http-{uuid.uuid4().hex[:8]}",
                      *spec.argv(), env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out, ref = done.json(), reference(frame, spec, DAILY)
    assert_output_matches(out, frame, ref)
    assert out["url"].startswith(mlflow_server.url)
    client = client_for(env)
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["backtest.walk_forward"] == "true"
    children = children_by_fold(client, out["parent_run_id"], out["experiment_id"])
    assert [children[k].info.run_id for k in sorted(children)] == [f["run_id"] for f in out["folds"]]
    names = {a.path for a in client.list_artifacts(out["parent_run_id"])}
    assert {"folds.csv", "walk_forward.png", "tearsheet.html", "metrics.json"} <= names
    table = pd.read_csv(client.download_artifacts(out["parent_run_id"], "folds.csv", str(tmp_path)))
    assert list(table["chosen_column"]) == [f.chosen for f in ref.folds]
