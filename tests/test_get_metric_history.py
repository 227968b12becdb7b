"""get_metric_history.py: exact points, downsampling, summaries, files and plots on real stores.

Stores are seeded in this process with MlflowClient.log_batch: runs alpha, beta, gamma with `equity` and
`drawdown` histories on business days from 2005 (step = bar index, timestamp = the bar's time in ms UTC, the
shape log_backtest writes); gamma has no drawdown, and only alpha has a short `signal` holding NaN and 0.0.
Expected values are computed here from the seeded arrays. Most checks call the script's main() in this
process (same code path as `uv run`, minus the start-up); a few run it as a user does.

Benchmark (not asserted here): bench/run.py --only history, 50 runs x 2 series x 5,000 points against a real
`mlflow server` with basic auth, the whole command against a sequential MlflowClient.get_metric_history loop.
"""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from harness import DATA, ROOT, assert_clean_error, run_script

N = 300
RUNS = ("alpha", "beta", "gamma")
SIGNAL = [0.0, float("nan"), 1.5, -2.0, 0.0]


def histories() -> dict:
    rng = np.random.default_rng(20050103)
    out = {}
    for name in RUNS:
        equity = np.cumprod(1 + rng.normal(0.0004, 0.01, N))
        out[name] = {"equity": equity, "drawdown": equity / np.maximum.accumulate(equity) - 1}
    del out["gamma"]["drawdown"]
    out["alpha"]["signal"] = np.array(SIGNAL)
    return out


TIMES = [int(day.timestamp()) * 1000 for day in pd.bdate_range("2005-01-03", periods=N, tz="UTC")]  # ms
HIST = histories()


def iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def seed(client) -> dict:
    from mlflow.entities import Metric

    name = f"gmh-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    run_ids = {}
    for run_name, metrics in HIST.items():
        run = client.create_run(experiment_id, run_name=run_name)
        points = [
            Metric(key, float(v), TIMES[i], i)
            for key, values in metrics.items()
            for i, v in enumerate(values)
        ]
        for k in range(0, len(points), 1000):
            client.log_batch(run.info.run_id, metrics=points[k : k + 1000])
        client.set_terminated(run.info.run_id)
        run_ids[run_name] = run.info.run_id
    return {"experiment": name, "run_ids": run_ids, "names": {v: k for k, v in run_ids.items()}}


@pytest.fixture(scope="module")
def local_seeded(tmp_path_factory, migrated_store):
    from mlflow import MlflowClient

    uri = migrated_store(tmp_path_factory.mktemp("gmh") / "mlflow.db")
    return {**seed(MlflowClient(uri)), "env": {"MLFLOW_TRACKING_URI": uri}, "kind": "local"}


@pytest.fixture(scope="module")
def server_seeded(mlflow_server):
    return {**seed(mlflow_server.client()), "env": mlflow_server.env(), "kind": "server"}


@pytest.fixture(params=["local", "server"])
def seeded(request):
    """The same seeded runs in a local sqlite store and on the real server."""
    return request.getfixturevalue(f"{request.param}_seeded")


@pytest.fixture
def call(run_in_process):
    """Run main(argv) in this process with an environment (run_in_process); returns (exit code, stdout, stderr)."""

    def run(env: dict, *argv: str):
        done = run_in_process("get_metric_history", *argv, env=env)
        return done.returncode, done.stdout, done.stderr

    return run


def by_series(rows: list[dict]) -> dict:
    out: dict = {}
    for row in rows:
        out.setdefault((row["run_name"], row["metric"]), []).append(row)
    return out


def expected_value(v: float):
    return None if math.isnan(v) else v


# ---------------------------------------------------------------- points, downsampling, summaries


def test_exact_points_and_timestamps_with_enough_max_points(seeded, call):
    code, out, err = call(
        seeded["env"], "--experiment", seeded["experiment"], "--metrics", "equity,drawdown,signal",
        "--max-points", "1000",
    )  # fmt: skip
    assert code == 0, err
    series = by_series(json.loads(out))
    expected_keys = {(run, metric) for run, metrics in HIST.items() for metric in metrics}
    assert set(series) == expected_keys
    for (run, metric), rows in series.items():
        values = HIST[run][metric]
        assert [r["step"] for r in rows] == list(range(len(values)))
        assert [r["timestamp"] for r in rows] == [iso(t) for t in TIMES[: len(values)]]
        assert [r["value"] for r in rows] == [expected_value(float(v)) for v in values]
        assert {r["run_id"] for r in rows} == {seeded["run_ids"][run]}
    # missing in some runs: a warning naming run and metric, the rest still returned
    assert f"run {seeded['run_ids']['gamma']} (gamma) has no metric 'drawdown'" in err
    assert "(beta) has no metric 'signal'" in err
    assert "error" not in err


def test_downsampling_keeps_first_last_min_max_and_is_a_subset(seeded, call):
    code, out, err = call(
        seeded["env"], "--run-id", f"{seeded['run_ids']['alpha']},{seeded['run_ids']['beta']}",
        "--run-id", seeded["run_ids"]["gamma"], "--metrics", "equity,drawdown", "--max-points", "12",
    )  # fmt: skip
    assert code == 0, err
    series = by_series(json.loads(out))
    assert len(series) == 5
    for (run, metric), rows in series.items():
        values = HIST[run][metric]
        steps = [r["step"] for r in rows]
        assert len(rows) == 12 and steps == sorted(set(steps))
        for must in (0, N - 1, int(np.argmin(values)), int(np.argmax(values))):
            assert must in steps, (run, metric, must)
        for r in rows:
            assert r["value"] == values[r["step"]] and r["timestamp"] == iso(TIMES[r["step"]])


def test_default_max_points_is_100_per_series(server_seeded, call):
    code, out, _ = call(
        server_seeded["env"], "--run-id", server_seeded["run_ids"]["beta"], "--metrics", "equity"
    )
    assert code == 0
    assert len(json.loads(out)) == 100


def test_summary_numbers(seeded, call):
    code, out, err = call(seeded["env"], "--experiment", seeded["experiment"], "--all", "--summary")
    assert code == 0, err
    rows = {(r["run_name"], r["metric"]): r for r in json.loads(out)}
    assert set(rows) == {(run, m) for run, metrics in HIST.items() for m in metrics}
    for (run, metric), row in rows.items():
        values = HIST[run][metric]
        assert row["points"] == len(values)
        assert (row["first_step"], row["last_step"]) == (0, len(values) - 1)
        assert (row["first_time"], row["last_time"]) == (iso(TIMES[0]), iso(TIMES[len(values) - 1]))
        assert row["first"] == expected_value(values[0]) and row["last"] == expected_value(values[-1])
        assert row["min"] == float(np.nanmin(values)) and row["max"] == float(np.nanmax(values))
    assert "warning" not in err  # --all asks for what each run has: nothing is missing


# ---------------------------------------------------------------- files and plots


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_output_file_reads_back_equal_to_the_seeded_series(local_seeded, call, tmp_path, suffix):
    seeded = local_seeded
    path = tmp_path / f"history{suffix}"
    code, out, err = call(seeded["env"], "--experiment", seeded["experiment"], "--all", "--output", str(path))
    assert code == 0, err
    written = json.loads(out)
    total = sum(len(v) for metrics in HIST.values() for v in metrics.values())
    assert written["output"] == {
        "path": str(path), "format": suffix[1:], "rows": total, "bytes": path.stat().st_size,
    }  # fmt: skip
    assert (written["runs"], written["series"], written["points"]) == (3, 6, total)
    if suffix == ".csv":
        frame = pd.read_csv(path)
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
        assert str(frame["timestamp"].dtype) == "datetime64[ms, UTC]"
        frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    else:
        frame = pd.DataFrame(json.loads(path.read_text()))
    assert list(frame.columns) == ["run_id", "run_name", "metric", "step", "timestamp", "value"]
    for (run, metric), part in frame.groupby(["run_name", "metric"]):
        values = HIST[run][metric]
        assert part["step"].tolist() == list(range(len(values)))
        assert part["timestamp"].tolist() == [iso(t) for t in TIMES[: len(values)]]
        got = part["value"].astype(float).to_numpy()
        assert np.array_equal(got, values, equal_nan=True)
        assert set(part["run_id"]) == {seeded["run_ids"][run]}


TAB10 = {"alpha": (0x1F, 0x77, 0xB4), "beta": (0xFF, 0x7F, 0x0E), "gamma": (0x2C, 0xA0, 0x2C)}


def color_pixels(image, rgb, box) -> int:
    arr = np.asarray(image.convert("RGB").crop(box)).astype(int)
    return int((np.abs(arr - np.array(rgb)).sum(axis=2) < 30).sum())


def test_plot_is_a_valid_png_with_one_line_per_run(server_seeded, call, tmp_path):
    from PIL import Image

    path = tmp_path / "equity.png"
    ids = server_seeded["run_ids"]
    code, out, err = call(
        server_seeded["env"], "--run-id", ",".join(ids[r] for r in RUNS), "--metrics", "equity,drawdown",
        "--plot", str(path), "--summary",
    )  # fmt: skip
    assert code == 0, err
    plot = json.loads(out)["plot"]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (plot["width"], plot["height"]) == (width, height)
    assert [(p["metric"], p["lines"]) for p in plot["panels"]] == [("equity", 3), ("drawdown", 2)]
    assert plot["panels"][1]["runs"] == ["alpha", "beta"]
    assert len(json.loads(out)["summary"]) == 5
    image = Image.open(io.BytesIO(data))
    image.verify()
    image = Image.open(path)
    assert image.size == (width, height) and image.format == "PNG"
    top, bottom = (0, 0, width, height // 2), (0, height // 2, width, height)
    for run in RUNS:  # every run's colour is drawn in the equity panel
        assert color_pixels(image, TAB10[run], top) > 50, run
    # gamma has no drawdown: its colour is absent from the lower panel, alpha's and beta's are there
    assert color_pixels(image, TAB10["gamma"], bottom) == 0
    assert (
        color_pixels(image, TAB10["alpha"], bottom) > 50 and color_pixels(image, TAB10["beta"], bottom) > 50
    )


# ---------------------------------------------------------------- fetching


def test_bulk_fetch_with_truncation_and_fallback_equals_the_client(
    server_seeded, scripts, monkeypatch, connect
):
    """get-history-bulk responses are capped: a small cap forces the cut-response and one-run-alone paths;
    a missing endpoint forces the public get-history. Every path returns what MlflowClient returns."""
    module = scripts.get_metric_history
    client = connect("get_metric_history", server_seeded["env"]["MLFLOW_TRACKING_URI"])
    for key, value in server_seeded["env"].items():
        monkeypatch.setenv(key, value)
    uri = server_seeded["env"]["MLFLOW_TRACKING_URI"]
    pairs = [(rid, m) for name, rid in server_seeded["run_ids"].items() for m in HIST[name]]
    expected = {
        pair: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(*pair))
        for pair in pairs
    }

    def same(got):
        assert set(got) == set(expected)
        for pair, points in got.items():
            assert [(s, t) for s, t, _ in points] == [(s, t) for s, t, _ in expected[pair]]
            assert np.array_equal([v for *_, v in points], [v for *_, v in expected[pair]], equal_nan=True)

    same(module.fetch_series(client, uri, pairs))
    for cap in (250, 450):
        monkeypatch.setattr(module, "BULK_MAX_RESULTS", cap)
        same(module.fetch_series(client, uri, pairs, workers=2))
    # with the run's own size hints (latest step + 1, what the script passes) no response is cut, so no
    # point is sent twice; hints that are far too small still give the right series
    monkeypatch.setattr(module, "BULK_MAX_RESULTS", 700)
    sizes = {pair: len(points) for pair, points in expected.items()}
    served = []
    init = module.RestHistory.__init__

    def counting(self, get_host_creds):  # a spy on the real requests: counts the points each response holds
        init(self, get_host_creds)
        real = self.http_request

        def spy(*args, **kwargs):
            response = real(*args, **kwargs)
            if response.status_code == 200:
                served.append(len(json.loads(response.content).get("metrics", [])))
            return response

        self.http_request = spy

    monkeypatch.setattr(module.RestHistory, "__init__", counting)
    same(module.fetch_series(client, uri, pairs, workers=2, sizes=sizes))
    assert sum(served) == sum(sizes.values()) and max(served) < 700, served
    same(module.fetch_series(client, uri, pairs, workers=2, sizes=dict.fromkeys(pairs, 2)))
    monkeypatch.setattr(module.RestHistory, "BULK", "/ajax-api/2.0/mlflow/metrics/no-such-endpoint")
    same(module.fetch_series(client, uri, pairs, workers=3))


# ---------------------------------------------------------------- what log_backtest writes


def test_log_backtest_equity_and_drawdown_come_back_with_the_bars_dates(
    tmp_path, call, client_for, run_in_process
):
    """A real log_backtest run: every bar (756 < its 5,000-point cap) with its own date; equity is the growth
    of 1.0 and drawdown its distance below the running peak, computed here from the returns file."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    source = DATA / "example_returns.csv"
    logged = run_in_process(
        "log_backtest", "--returns", str(source), "--no-tearsheet", "--experiment", "lb", env=env
    )
    assert logged.returncode == 0, logged.stderr
    run_id = logged.json()["run_id"]
    code, out, err = call(env, "--run-id", run_id, "--metrics", "equity,drawdown", "--max-points", "0")
    assert code == 0, err
    returns = pd.read_csv(source, parse_dates=["date"])
    equity = np.cumprod(1 + returns["returns"].to_numpy())
    drawdown = equity / np.maximum.accumulate(equity) - 1
    dates = returns["date"].dt.strftime("%Y-%m-%d").tolist()  # daily bars come back as their dates
    series = by_series(json.loads(out))
    for metric, expected in (("equity", equity), ("drawdown", drawdown)):
        rows = series[("example_returns", metric)]
        assert [r["step"] for r in rows] == list(range(len(returns)))
        assert [r["timestamp"] for r in rows] == dates
        assert np.allclose([r["value"] for r in rows], expected, rtol=1e-12, atol=1e-12)
    # in the store each bar sits at 12:00 UTC of its date: the same date in every zone from UTC-11 to UTC+11
    stored = [m.timestamp for m in client_for(env).get_metric_history(run_id, "equity")]
    noon = (returns["date"] + pd.Timedelta(hours=12)).dt.as_unit("ms").astype("int64")
    assert sorted(stored) == noon.tolist()
    code, out, err = call(env, "--run-id", run_id, "--metrics", "equity,sharpe", "--summary")
    assert code == 0, err
    summary = {row["metric"]: row for row in json.loads(out)}
    assert (summary["equity"]["first_time"], summary["equity"]["last_time"]) == (dates[0], dates[-1])
    assert summary["sharpe"]["first_time"].endswith("Z")  # a scalar keeps the time it was logged
    code, out, err = call(env, "--run-id", run_id, "--metrics", "equity", "--output", str(tmp_path / "e.csv"))
    assert code == 0, err
    assert pd.read_csv(tmp_path / "e.csv")["timestamp"].tolist() == dates


# ---------------------------------------------------------------- errors


def test_unknown_run_id_is_exit_3_naming_it(server_seeded):
    unknown = "0123456789abcdef0123456789abcdef"
    result = run_script(
        "get_metric_history", "--run-id", f"{server_seeded['run_ids']['alpha']},{unknown}",
        "--metrics", "equity", env=server_seeded["env"],
    )  # fmt: skip
    assert_clean_error(result, 3, unknown, "not found")


def test_cli_happy_path_as_a_user_runs_it(server_seeded):
    """In the script's own environment (orjson there, not in this one): signal's NaN, which the server
    writes as a NaN literal that orjson refuses, comes back as null, its zeros as 0.0."""
    ids = server_seeded["run_ids"]
    result = run_script(
        "get_metric_history", "--run-id", ids["alpha"], "--metrics", "equity,signal", "--max-points", "5",
        env=server_seeded["env"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    series = by_series(result.json())
    rows = series[("alpha", "equity")]
    assert len(rows) == 5 and rows[0]["timestamp"] == iso(TIMES[0]) and rows[-1]["step"] == N - 1
    assert [r["value"] for r in series[("alpha", "signal")]] == [0.0, None, 1.5, -2.0, 0.0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--filter", "metrics.equity > 1e9"], "no runs"),
        (["--metrics", "sharpe_typo"], "sharpe_typo"),
    ],
)
def test_nothing_matched_is_exit_3(seeded, call, args, needle):
    argv = ["--experiment", seeded["experiment"], *args]
    if "--metrics" not in args:
        argv += ["--metrics", "equity"]
    code, out, err = call(seeded["env"], *argv)
    assert code == 3 and out == ""
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_unknown_experiment_is_exit_3(seeded, call):
    code, out, err = call(seeded["env"], "--experiment", "no-such-experiment-xyz", "--metrics", "equity")
    assert (code, out) == (3, "") and "no-such-experiment-xyz" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--metrics", "equity"], "--run-id"),
        (["--run-id", "abc", "--experiment", "x", "--metrics", "equity"], "not both"),
        (["--run-id", "abc"], "--metrics"),
        (["--run-id", "abc", "--metrics", "a", "--all"], "not both"),
        (["--run-id", "bad id!", "--metrics", "equity"], "not a valid run id"),
        (["--run-id", "abc", "--metrics", "equity", "--max-points", "3"], "--max-points"),
        (["--run-id", "abc", "--metrics", "equity", "--output", "x.txt"], ".csv"),
        (["--run-id", "abc", "--metrics", "equity", "--plot", "/no/such/dir/p.png"], "does not exist"),
        (["--run-id", "abc", "--metrics", "equity", "--filter", "x"], "--experiment"),
        (["--run-id", "abc", "--metrics", "equity", "--x", "step"], "--plot"),
    ],
)
def test_bad_usage_is_exit_2_before_touching_mlflow(args, needle, tmp_path):
    """Input errors are found before mlflow, pandas or matplotlib is imported (and before any store)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('g', {str(ROOT / 'scripts' / 'get_metric_history.py')!r})\n"
        "g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)\n"
        f"rc = g.main({args!r})\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'pandas', 'matplotlib', 'numpy'})\n"
        "print(rc, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.stdout.strip() == "2 []", (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and needle in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- pure functions


def test_downsample_indices_properties(scripts):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    downsample = scripts.get_metric_history.downsample_indices

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.floats(allow_nan=True, allow_infinity=False, width=32), min_size=1, max_size=400),
        st.integers(min_value=4, max_value=60),
    )
    def check(values, max_points):
        keep = downsample(values, max_points)
        n = len(values)
        assert keep == sorted(set(keep)) and all(0 <= i < n for i in keep)
        if n <= max_points:
            assert keep == list(range(n))
            return
        assert len(keep) == max_points
        assert 0 in keep and n - 1 in keep
        finite = [v for v in values if not math.isnan(v)]
        if finite:
            assert min(finite) in [values[i] for i in keep] and max(finite) in [values[i] for i in keep]
        spacing = math.ceil((n - 1) / (max_points - 1))
        assert max(b - a for a, b in zip(keep, keep[1:], strict=False)) <= 2 * spacing + 1

    check()
    assert downsample([1.0] * 10, None) == list(range(10))


def test_legend_labels_disambiguate_shared_names(scripts):
    labels = scripts.get_metric_history.legend_labels(
        [
            {"run_id": "aaaaaaaa1111", "run_name": "sma"},
            {"run_id": "bbbbbbbb2222", "run_name": "sma"},
            {"run_id": "cccccccc3333", "run_name": "rsi"},
            {"run_id": "dddddddd4444", "run_name": None},
        ]
    )
    assert labels == {
        "aaaaaaaa1111": "sma (aaaaaaaa)",
        "bbbbbbbb2222": "sma (bbbbbbbb)",
        "cccccccc3333": "rsi",
        "dddddddd4444": "(dddddddd)",
    }
