"""query_experiments.py: filters, ordering, paging, compare, group and output bounds on real stores.

Most checks call the script's main() in this process (same code path as `uv run`, minus ~10 s of start-up);
a few run it as a user does. Stores are seeded with MlflowClient in the shape log_backtest writes (metrics
sharpe, sortino, ..., params periods_per_year/start/end/n_bars, sweep children tagged mlflow.parentRunId).
The >1000-run store is filled in one transaction through MLflow's own SQLAlchemy models (80 ms per run via
the client would take minutes); reads still go through the real store and server.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from harness import ROOT, assert_clean_error, run_script

KEY = (
    "sharpe",
    "sortino",
    "calmar",
    "cagr",
    "total_return",
    "volatility",
    "max_drawdown",
    "win_rate",
    "profit_factor",
)
RETURNS_CSV = "date,ret\n2020-01-02,0.01\n2020-01-03,-0.02\n"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# ---------------------------------------------------------------- helpers


def backtest_metrics(rng: random.Random) -> dict[str, float]:
    values = {name: round(rng.gauss(0.5, 0.8), 6) for name in KEY}
    values["max_drawdown"] = -abs(values["max_drawdown"]) / 3
    values["volatility"] = abs(values["volatility"]) / 4 + 0.05
    return values


def seed_store(client, suffix: str, artifacts: str | None, run_client=None) -> dict:
    """Experiments A (6 runs + a sweep parent with 4 children), B (2 runs), C (1 run, deleted).

    run_client (default: client) writes the runs: for the server, a client on the server's own sqlite file,
    because every basic-auth request costs a password hash check (~40 requests took 100 s on a busy box)."""
    run_client = run_client or client
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    rng = random.Random(20240611)
    base = int(time.time() * 1000) - 100_000
    truth: dict = {"runs": {}, "suffix": suffix}
    clock = iter(range(1000))

    def make_run(experiment_id, name, params, metrics, tags=None, status="FINISHED", parent=None):
        start = base + next(clock) * 1000
        run_tags = dict(tags or {})
        if parent:
            run_tags["mlflow.parentRunId"] = parent
        run = run_client.create_run(experiment_id, start_time=start, run_name=name, tags=run_tags)
        run_id = run.info.run_id
        run_client.log_batch(
            run_id,
            metrics=[Metric(k, v, start, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("mlflow.source.name", "log_backtest.py")],
        )
        run_client.set_terminated(run_id, status=status, end_time=start + 2500)
        truth["runs"][run_id] = {
            "name": name, "experiment_id": experiment_id, "params": {k: str(v) for k, v in params.items()},
            "metrics": metrics, "tags": dict(tags or {}), "parent": parent, "status": status, "start": start,
        }  # fmt: skip
        return run_id

    common = {"periods_per_year": 252, "start": "2020-01-01", "end": "2023-12-31", "n_bars": 1006}

    def experiment(name, **kwargs):
        location = f"{artifacts}/{name}" if artifacts else None
        return client.create_experiment(name, artifact_location=location, **kwargs)

    a = experiment(f"qe-momentum-{suffix}", tags={"team": "quant", "mlflow.note.content": "12-1"})
    b = experiment(f"qe-meanrev-{suffix}")
    c = experiment(f"qe-old-{suffix}")
    truth.update(a=a, b=b, c=c)
    for i, (window, universe) in enumerate(
        [(5, "sp500"), (10, "sp500"), (20, "sp500"), (5, "nasdaq100"), (10, "nasdaq100"), (20, "nasdaq100")]
    ):
        metrics = backtest_metrics(rng)
        if i == 4:
            metrics.pop("sortino")
            metrics["turnover"] = 3.5
        make_run(
            a, f"mom-w{window}-{universe}", {**common, "window": window}, metrics, {"universe": universe},
            status="FAILED" if i == 5 else "FINISHED",
        )  # fmt: skip
    children_metrics = [backtest_metrics(rng) for _ in range(4)]
    parent_metrics = dict(max(children_metrics, key=lambda m: m["sharpe"]))
    parent = make_run(
        a, "sweep-lookback", {**common, "sweep": "lookback"}, parent_metrics, {"universe": "sp500"}
    )
    truth["parent"] = parent
    truth["children"] = [
        make_run(a, f"lookback-{lb}", {**common, "window": lb}, m, {"universe": "sp500"}, parent=parent)
        for lb, m in zip((30, 60, 90, 120), children_metrics, strict=True)
    ]
    for window in (3, 7):
        make_run(b, f"mr-w{window}", {**common, "window": window}, backtest_metrics(rng))
    make_run(c, "old-run", common, backtest_metrics(rng))
    client.delete_experiment(c)

    # One run with an artifact and a dataset, as log_backtest records them.
    first = next(iter(truth["runs"]))
    client.log_text(first, RETURNS_CSV, "backtest/returns.csv")
    dataset = Dataset("spx-daily", "d1g3st", "local", '{"uri": "data/spx.csv"}')
    client.log_inputs(first, [DatasetInput(dataset, [InputTag("mlflow.data.context", "backtest")])])
    truth["with_artifact"] = first
    return truth


_SEEDED: dict[str, tuple] = {}  # one seeded store per kind for this module's tests


def seed(kind: str, request, tmp_path_factory) -> tuple[dict[str, str], dict]:
    """(env, truth) for a seeded local sqlite store or the session server (as admin), made once."""
    from mlflow import MlflowClient

    if kind in _SEEDED:
        return _SEEDED[kind]
    if kind == "local":
        root = tmp_path_factory.mktemp("qe-local")
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        truth = seed_store(client, uuid.uuid4().hex[:8], str(root / "artifacts"))
    else:
        server = request.getfixturevalue("mlflow_server")
        env, client = server.env(), server.client()
        direct = MlflowClient(f"sqlite:///{server.root / 'mlflow.db'}")  # the server's store, no HTTP
        truth = seed_store(client, uuid.uuid4().hex[:8], None, run_client=direct)
    _SEEDED[kind] = (env, truth)
    return env, truth


@pytest.fixture(scope="module", params=["local", "server"])
def seeded(request, tmp_path_factory):
    return seed(request.param, request, tmp_path_factory)


@pytest.fixture(scope="module")
def server_seeded(request, tmp_path_factory):
    return seed("server", request, tmp_path_factory)


def ok(result):
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def top_by_sharpe(runs: dict) -> list[str]:
    """Run ids by sharpe, best first; ties (a sweep parent repeats its best child) newest first, as MLflow."""
    return sorted(runs, key=lambda i: (-runs[i]["metrics"]["sharpe"], -runs[i]["start"]))


def by_name(truth, name):
    return next(run_id for run_id, r in truth["runs"].items() if r["name"] == name)


def runs_of(truth, experiment_key="a"):
    return {i: r for i, r in truth["runs"].items() if r["experiment_id"] == truth[experiment_key]}


# ---------------------------------------------------------------- pure functions


def test_iso_times_are_utc(scripts):
    qe = scripts.query_experiments
    assert qe.iso_utc(0) == "1970-01-01T00:00:00Z"
    assert qe.iso_utc(1_700_000_000_123) == "2023-11-14T22:13:20Z"
    assert qe.iso_utc(None) is None


def test_run_filter_combines_flags(scripts):
    qe = scripts.query_experiments
    assert qe.build_run_filter("", None, None, False) == ""
    text = qe.build_run_filter("metrics.sharpe > 1", "FAILED", None, True)
    assert text == "metrics.sharpe > 1 and attributes.status = 'FAILED' and tags.`mlflow.parentRunId` IS NULL"
    assert qe.build_run_filter(None, None, "ab'c", False) == "tags.`mlflow.parentRunId` = 'ab\\'c'"


def test_columns_parse_and_reject(scripts):
    qe = scripts.query_experiments
    assert qe.parse_columns("metrics.sharpe, params.window,tags.*") == {
        "metrics": ["sharpe"], "params": ["window"], "tags": ["*"],
    }  # fmt: skip
    for bad in ("sharpe", "attributes.status", "metrics."):
        with pytest.raises(qe.CliError) as err:
            qe.parse_columns(bad)
        assert err.value.code == 2


@pytest.mark.parametrize(
    ("direction", "values", "expected"),
    [
        ("higher", {"a": 1.0, "b": 2.0, "c": None}, ["b"]),
        ("lower", {"a": 0.3, "b": 0.1, "c": float("nan")}, ["b"]),
        ("zero", {"a": -0.30, "b": -0.05, "c": -0.2}, ["b"]),
        ("zero", {"a": 0.1, "b": -0.1}, ["a", "b"]),
        (None, {"a": 1.0, "b": 2.0}, []),
        ("higher", {"a": None, "b": float("nan")}, []),
    ],
)
def test_best_value_follows_direction(scripts, direction, values, expected):
    assert scripts.query_experiments.best_runs(values, direction) == expected


def test_direction_table_covers_key_metrics(scripts):
    qe = scripts.query_experiments
    assert set(qe.KEY_METRICS) <= set(qe.METRIC_DIRECTIONS)
    assert qe.METRIC_DIRECTIONS["max_drawdown"] == "zero" and qe.METRIC_DIRECTIONS["volatility"] == "lower"


def test_group_rows_match_independent_statistics(scripts):
    import pandas as pd

    rng = random.Random(3)
    pairs = [(str(rng.choice([5, 10, 20, 100])), rng.gauss(0, 1)) for _ in range(200)] + [
        ("10", float("nan"))
    ]
    rows = scripts.query_experiments.group_rows(
        pairs, "params.window", ["mean", "median", "max", "std", "count"]
    )
    frame = pd.DataFrame(pairs, columns=["w", "v"]).dropna()
    expected = frame.groupby("w")["v"].agg(["mean", "median", "max", "std", "count"])
    assert [r["params.window"] for r in rows] == ["5", "10", "20", "100"]  # numeric order, not text order
    for row in rows:
        for agg in ("mean", "median", "max", "std"):
            assert math.isclose(row[agg], expected.loc[row["params.window"], agg], rel_tol=1e-12)
        assert row["count"] == expected.loc[row["params.window"], "count"]


def test_tree_order_puts_children_under_parents(scripts):
    records = [
        {"run_id": "c1", "parent_run_id": "p"}, {"run_id": "x", "parent_run_id": None},
        {"run_id": "p", "parent_run_id": None}, {"run_id": "c2", "parent_run_id": "p"},
        {"run_id": "orphan", "parent_run_id": "gone"},
    ]  # fmt: skip
    order = [(r["run_id"], depth) for r, depth in scripts.query_experiments.tree_order(records)]
    assert order == [("x", 0), ("p", 0), ("c1", 1), ("c2", 1), ("orphan", 0)]


def test_bounded_output_cuts_lists_and_objects(scripts):
    qe = scripts.query_experiments
    rows = [{"run_id": f"{i:032x}", "params": {"note": "x" * 50}} for i in range(300)]
    text, note = qe.bounded(rows, "json", 8000)
    kept = json.loads(text)
    assert len(text) <= 8000 and 0 < len(kept) < 300 and kept == rows[: len(kept)]
    assert f"first {len(kept)} of 300" in note and "--max-chars 0" in note
    assert len(qe.render(rows[: len(kept) + 1], "json")) > 8000  # as many rows as fit
    big = {"run_id": "r", "metrics": {f"m{i}": i for i in range(50)}, "artifacts": [{"path": "p" * 80}] * 300}
    text, note = qe.bounded(big, "json", 8000)
    assert len(text) <= 8000 and json.loads(text)["run_id"] == "r" and "artifacts" in note
    assert qe.bounded(rows, "json", 0) == (qe.render(rows, "json"), None)
    # One row bigger than the bound: shown whole, never `[]`, which would read as "no runs".
    huge = [{"run_id": "a" * 32, "params": {"note": "x" * 9000}}, {"run_id": "b" * 32}]
    text, note = qe.bounded(huge, "json", 8000)
    assert json.loads(text) == huge[:1] and "only the first of 2 rows" in note


def test_closest_names(scripts):
    names = ["momentum-daily", "momentum-weekly", "mean-reversion", "carry"]
    found = scripts.query_experiments.closest("momentum-dayly", names)
    assert found[0] == "momentum-daily" and "carry" not in found


# ---------------------------------------------------------------- experiments


def test_experiments_filter_counts_and_deleted(seeded, query):
    env, truth = seeded
    suffix = truth["suffix"]
    listed = ok(query(env, "experiments", "--filter", f"name LIKE '%{suffix}'", "--with-counts"))
    assert {e["name"] for e in listed} == {f"qe-momentum-{suffix}", f"qe-meanrev-{suffix}"}
    counts = {e["experiment_id"]: e["run_count"] for e in listed}
    assert counts == {truth["a"]: len(runs_of(truth, "a")), truth["b"]: len(runs_of(truth, "b"))}
    momentum = next(e for e in listed if e["experiment_id"] == truth["a"])
    assert momentum["description"] == "12-1" and momentum["tags"] == {"team": "quant"}
    assert ISO.match(momentum["creation_time"]) and ISO.match(momentum["last_update_time"])

    everything = ok(query(env, "experiments", "--filter", f"name LIKE '%{suffix}'", "--include-deleted"))
    stages = {e["name"]: e["lifecycle_stage"] for e in everything}
    assert stages[f"qe-old-{suffix}"] == "deleted" and stages[f"qe-momentum-{suffix}"] == "active"
    assert all("run_count" not in e for e in everything)

    code, out, err = query(env, "experiments", "--filter", "name LIKE 'qe-%'", "--max-results", "1")
    assert code == 0 and len(json.loads(out)) == 1 and "--max-results" in err


# ---------------------------------------------------------------- runs: filters, order, limits


def test_runs_filters_run_in_the_store(seeded, query):
    env, truth = seeded
    runs = runs_of(truth)
    name = f"qe-momentum-{truth['suffix']}"
    cases = {
        "metrics.sharpe > 0.5": {i for i, r in runs.items() if r["metrics"]["sharpe"] > 0.5},
        "metrics.max_drawdown >= -0.1": {i for i, r in runs.items() if r["metrics"]["max_drawdown"] >= -0.1},
        "params.window = '20'": {i for i, r in runs.items() if r["params"].get("window") == "20"},
        "tags.universe LIKE 'nas%'": {
            i for i, r in runs.items() if r["tags"].get("universe", "").startswith("nas")
        },
        "attributes.status = 'FAILED'": {i for i, r in runs.items() if r["status"] == "FAILED"},
        "attributes.run_name LIKE 'lookback-%' and params.window != '30'": {
            i for i, r in runs.items() if r["name"].startswith("lookback-") and r["params"]["window"] != "30"
        },
    }
    for filter_string, expected in cases.items():
        assert expected, filter_string  # the seed makes every case non-trivial
        got = ok(query(env, "runs", "--experiment", name, "--filter", filter_string, "--max-chars", "0"))
        assert {r["run_id"] for r in got} == expected, filter_string
    failed = ok(query(env, "runs", "--experiment", name, "--status", "failed"))
    assert {r["run_id"] for r in failed} == cases["attributes.status = 'FAILED'"]


def test_runs_order_limit_and_shape(seeded, query):
    env, truth = seeded
    runs = runs_of(truth)
    name = f"qe-momentum-{truth['suffix']}"
    code, out, err = query(
        env, "runs", "--experiment", name, "--order-by", "metrics.sharpe DESC", "--max-results", "3"
    )
    assert code == 0 and "more exist" in err
    got = json.loads(out)
    expected = top_by_sharpe(runs)[:3]
    assert [r["run_id"] for r in got] == expected
    top = got[0]
    truth_top = runs[top["run_id"]]
    assert list(top) == [
        "run_id", "run_name", "experiment_id", "status", "start_time", "end_time", "duration_s", "parent_run_id",
        "metrics", "params", "tags",
    ]  # fmt: skip
    assert top["metrics"] == {k: truth_top["metrics"][k] for k in KEY if k in truth_top["metrics"]}
    assert top["params"] == truth_top["params"] and top["tags"] == truth_top["tags"]  # no mlflow.* tags
    assert top["duration_s"] == 2.5 and ISO.match(top["start_time"]) and ISO.match(top["end_time"])

    ascending = ok(
        query(
            env,
            "runs",
            "--experiment",
            name,
            "--order-by",
            "params.window ASC",
            "--order-by",
            "metrics.cagr DESC",
        )
    )
    with_window = [r for r in ascending if "window" in r["params"]]
    keys = [(r["params"]["window"], -runs[r["run_id"]]["metrics"]["cagr"]) for r in with_window]
    assert keys == sorted(keys)  # params sort as text in MLflow

    both = ok(
        query(env, "runs", "--experiment", name, "--experiment", truth["b"], "--columns", "params.window")
    )
    assert len(both) == len(runs) + len(runs_of(truth, "b"))  # truth["b"] is an id: ids work too


def test_top_level_and_parent_run_id(seeded, query):
    env, truth = seeded
    name = f"qe-momentum-{truth['suffix']}"
    top = ok(query(env, "runs", "--experiment", name, "--top-level", "--max-chars", "0"))
    assert {r["run_id"] for r in top} == set(runs_of(truth)) - set(truth["children"])
    kids = ok(query(env, "runs", "--experiment", name, "--parent-run-id", truth["parent"]))
    assert {r["run_id"] for r in kids} == set(truth["children"])
    assert {r["parent_run_id"] for r in kids} == {truth["parent"]}


def test_columns_choose_what_is_shown(seeded, query):
    env, truth = seeded
    name = f"qe-momentum-{truth['suffix']}"
    picked = ok(
        query(env, "runs", "--experiment", name, "--columns", "metrics.sharpe,metrics.turnover,params.window")
    )
    for row in picked:
        assert set(row["metrics"]) == {"sharpe", "turnover"} and set(row["params"]) <= {"window"}
        assert row["metrics"]["turnover"] == truth["runs"][row["run_id"]]["metrics"].get("turnover")
        assert row["tags"] == {}
    everything = ok(
        query(env, "runs", "--experiment", name, "--all-columns", "--filter", "metrics.turnover > 0")
    )
    assert len(everything) == 1 and everything[0]["metrics"]["turnover"] == 3.5
    assert everything[0]["tags"]["mlflow.runName"] == everything[0]["run_name"]


def test_runs_unknown_deleted_and_bad_filter(seeded, query):
    env, truth = seeded
    suffix = truth["suffix"]
    code, out, err = query(env, "runs", "--experiment", f"qe-momentun-{suffix}")
    assert code == 3 and out == "" and f"qe-momentum-{suffix}" in err and err.startswith("error: ")
    code, out, err = query(env, "runs", "--experiment", f"qe-old-{suffix}")
    assert code == 3 and "deleted" in err and "--restore" in err
    code, out, err = query(
        env, "runs", "--experiment", f"qe-momentum-{suffix}", "--filter", "metrics.sharpe >> 1"
    )
    assert code == 2 and out == "" and "references/query-patterns.md" in err and "comparator" in err.lower()
    code, out, err = query(
        env, "runs", "--experiment", f"qe-momentum-{suffix}", "--order-by", "metrics.sharpe UP"
    )
    assert code == 2 and "references/query-patterns.md" in err
    code, out, err = query(
        env, "runs", "--experiment", f"qe-momentum-{suffix}", "--filter", "sharpe > 1 or x = 2"
    )
    assert code == 2 and "references/query-patterns.md" in err


# ---------------------------------------------------------------- run, compare, group


def test_run_shows_everything(seeded, query):
    env, truth = seeded
    run_id = truth["with_artifact"]
    got = ok(query(env, "run", "--run-id", run_id))
    expected = truth["runs"][run_id]
    assert got["run_id"] == run_id and got["run_name"] == expected["name"]
    assert got["experiment_name"] == f"qe-momentum-{truth['suffix']}"
    assert got["metrics"] == expected["metrics"] and got["params"] == expected["params"]
    assert got["tags"] == expected["tags"] and got["git"] is None  # not logged from a git repository
    assert got["artifacts"] == [
        {"path": "backtest/", "size": None},
        {"path": "backtest/returns.csv", "size": len(RETURNS_CSV)},
    ]
    assert got["datasets"] == [
        {"name": "spx-daily", "digest": "d1g3st", "source_type": "local", "source": '{"uri": "data/spx.csv"}',
         "context": "backtest"},
    ]  # fmt: skip
    assert got["parent"] is None and got["children"] == [] and got["children_count"] == 0
    if env["MLFLOW_TRACKING_URI"].startswith("http"):
        runs_view = "?workflowType=machine_learning"  # the UI's runs view, not its GenAI mode
        assert (
            got["url"] == f"{env['MLFLOW_TRACKING_URI']}/#/experiments/{truth['a']}/runs/{run_id}{runs_view}"
        )
    else:
        assert got["url"] is None

    parent = ok(query(env, "run", "--run-id", truth["parent"]))
    assert {c["run_id"] for c in parent["children"]} == set(truth["children"]) and parent[
        "children_count"
    ] == 4
    child = ok(query(env, "run", "--run-id", truth["children"][0]))
    assert child["parent"] == {"run_id": truth["parent"], "run_name": "sweep-lookback"}


def test_run_unknown_suggests_close_ids(seeded, query):
    env, truth = seeded
    run_id = truth["parent"]
    typo = run_id[:-1] + ("0" if run_id[-1] != "0" else "1")
    code, out, err = query(env, "run", "--run-id", typo)
    assert code == 3 and out == "" and run_id in err
    by_name_result = ok(query(env, "run", "--run-id", "sweep-lookback"))  # a unique run name is accepted
    assert by_name_result["run_id"] == run_id


def test_compare_marks_best_in_each_direction(seeded, query):
    env, truth = seeded
    ids = [by_name(truth, n) for n in ("mom-w5-sp500", "mom-w10-sp500", "mom-w10-nasdaq100")]
    got = ok(query(env, "compare", *[a for i in ids for a in ("--run-id", i)]))
    assert [r["run_id"] for r in got["runs"]] == ids
    names = {i: n for n, i in zip(("mom-w5-sp500", "mom-w10-sp500", "mom-w10-nasdaq100"), ids, strict=True)}
    assert [r["label"] for r in got["runs"]] == [f"{names[i]} ({i[:8]})" for i in ids]  # name and id
    rows = {m["metric"]: m for m in got["metrics"]}
    default_order = ["sharpe", "sortino", "cagr", "max_drawdown", "volatility", "total_return", "win_rate"]
    assert list(rows) == [*default_order, "profit_factor", "calmar"]  # the key metrics, no turnover
    metric = {i: truth["runs"][i]["metrics"] for i in ids}
    assert rows["sharpe"]["best"] == [max(ids, key=lambda i: metric[i]["sharpe"])]
    assert rows["volatility"]["best"] == [min(ids, key=lambda i: metric[i]["volatility"])]
    assert rows["max_drawdown"]["best"] == [min(ids, key=lambda i: abs(metric[i]["max_drawdown"]))]
    assert rows["sortino"]["values"][ids[2]] is None  # that run has no sortino
    assert rows["sharpe"]["direction"] == "higher" and rows["max_drawdown"]["direction"] == "zero"
    differ = {p["param"]: p["values"] for p in got["params_differ"]}
    assert differ == {"window": {ids[0]: "5", ids[1]: "10", ids[2]: "10"}}
    assert got["params_same"]["periods_per_year"] == "252"

    code, out, err = query(env, "compare", "--run-id", ids[0], "--run-id", ids[1], "--metrics", "sharpe,nope")
    assert (
        code == 0
        and "nope" in err
        and [m["metric"] for m in json.loads(out)["metrics"]] == ["sharpe", "nope"]
    )
    code, out, err = query(env, "compare", "--run-id", ids[0], "--run-id", ids[1], "--metrics", "sharpee")
    assert code == 3 and "sharpe" in err
    code, out, err = query(env, "compare", "--run-id", ids[0])
    assert code == 2 and "2 to 20" in err

    table = query(env, "compare", "--run-id", ids[0], "--run-id", ids[1], "--format", "table")[1]
    best_label = "mom-w5-sp500" if metric[ids[0]]["sharpe"] > metric[ids[1]]["sharpe"] else "mom-w10-sp500"
    sharpe_line = next(line for line in table.splitlines() if line.startswith("sharpe "))
    assert best_label in sharpe_line and " *" in sharpe_line and "params.window" in table
    header = table.splitlines()[0]
    assert all(f"({i[:8]})" in header for i in ids[:2]), header  # columns by run name and run id


def test_group_by_param(seeded, query):
    import pandas as pd

    env, truth = seeded
    name = f"qe-momentum-{truth['suffix']}"
    got = ok(
        query(
            env, "group", "--experiment", name, "--by", "params.window", "--agg", "mean,median,max,count,min"
        )
    )
    frame = pd.DataFrame(
        [
            (r["params"]["window"], r["metrics"]["sharpe"])
            for r in runs_of(truth).values()
            if "window" in r["params"]
        ],
        columns=["window", "sharpe"],
    )
    expected = frame.groupby("window")["sharpe"].agg(["mean", "median", "max", "count", "min"])
    assert [r["params.window"] for r in got] == sorted(expected.index, key=int)
    for row in got:
        assert row["metric"] == "sharpe"
        for agg in ("mean", "median", "max", "min"):
            assert math.isclose(row[agg], expected.loc[row["params.window"], agg], rel_tol=1e-12)
        assert row["count"] == expected.loc[row["params.window"], "count"]

    top = ok(
        query(env, "group", "--experiment", name, "--by", "tags.universe", "--metric", "cagr", "--top-level")
    )
    parents_only = [r for i, r in runs_of(truth).items() if i not in truth["children"]]
    assert {r["tags.universe"]: r["count"] for r in top} == {
        u: sum(1 for r in parents_only if r["tags"]["universe"] == u) for u in ("nasdaq100", "sp500")
    }
    code, _, err = query(env, "group", "--experiment", name, "--by", "params.windw")
    assert code == 3 and "window" in err
    code, _, err = query(env, "group", "--experiment", name, "--by", "params.window", "--metric", "sharp")
    assert code == 3 and "sharpe" in err
    code, _, err = query(env, "group", "--experiment", name, "--by", "window")
    assert code == 2 and "params.NAME" in err


# ---------------------------------------------------------------- formats and the size bound


def test_formats_and_size_bound(seeded, query):
    env, truth = seeded
    name = f"qe-momentum-{truth['suffix']}"
    n = len(runs_of(truth))
    code, out, err = query(env, "runs", "--experiment", name, "--all-columns", "--max-results", "50")
    assert code == 0 and len(out) <= 8000 and "output cut" in err and "--max-chars 0" in err
    shown = json.loads(out)
    assert 0 < len(shown) < n

    everything = ok(
        query(env, "runs", "--experiment", name, "--all-columns", "--max-results", "50", "--max-chars", "0")
    )
    assert len(everything) == n and [r["run_id"] for r in everything[: len(shown)]] == [
        r["run_id"] for r in shown
    ]

    code, out, err = query(
        env, "runs", "--experiment", name, "--all-columns", "--max-results", "50", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == n and "output cut" not in err  # csv is meant for `> file`: never cut
    sharpe = {r["run_id"]: float(r["metrics.sharpe"]) for r in rows}
    assert sharpe == {i: r["metrics"]["sharpe"] for i, r in runs_of(truth).items()}

    code, out, _ = query(
        env, "runs", "--experiment", name, "--format", "table", "--max-results", "50", "--max-chars", "0"
    )
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("run_id") and set(lines[1]) <= {"-", " "}
    parent_line = next(i for i, line in enumerate(lines) if "sweep-lookback" in line)
    children = lines[parent_line + 1 : parent_line + 5]
    assert all("└ lookback-" in line for line in children), out  # the sweep's children right under it
    assert {line.split()[0] for line in children} == set(truth["children"])

    table = query(env, "experiments", "--filter", f"name = '{name}'", "--format", "table")[1]
    assert name in table.splitlines()[2]
    csv_rows = list(csv.DictReader(io.StringIO(query(env, "group", "--experiment", name, "--by", "params.window",
                                                      "--format", "csv")[1])))  # fmt: skip
    assert [r["params.window"] for r in csv_rows] == ["5", "10", "20", "30", "60", "90", "120"]


# ---------------------------------------------------------------- more than one page of runs


def bulk_seed(db_uri: str, experiment_id: str, n: int, seed: int) -> dict[str, float]:
    """n finished runs with 9 metrics and 4 params, inserted in one transaction with MLflow's models."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import insert

    rng = random.Random(seed)
    base = int(time.time() * 1000) - n * 1000
    sharpe: dict[str, float] = {}
    runs, metrics, params, tags = [], [], [], []
    for i in range(n):
        run_id, start, name = uuid.uuid4().hex, base + i * 1000, f"bulk-{i:05d}"
        runs.append(dict(
            run_uuid=run_id, name=name, experiment_id=int(experiment_id), source_type="LOCAL", source_name="",
            entry_point_name="", user_id="bulk", status="FINISHED", start_time=start, end_time=start + 500,
            source_version="", lifecycle_stage="active", artifact_uri=f"/tmp/none/{run_id}",
        ))  # fmt: skip
        values = backtest_metrics(rng)
        sharpe[run_id] = values["sharpe"]
        metrics += [
            dict(key=k, value=v, timestamp=start, step=0, is_nan=False, run_uuid=run_id)
            for k, v in values.items()
        ]
        params += [dict(key="window", value=str(5 * (i % 4 + 1)), run_uuid=run_id)]
        params += [
            dict(key=k, value=v, run_uuid=run_id) for k, v in (("periods_per_year", "252"), ("n_bars", "756"))
        ]
        tags.append(dict(key="mlflow.runName", value=name, run_uuid=run_id))
    store = SqlAlchemyStore(db_uri, "/tmp/none")
    with store.ManagedSessionMaker() as session:
        session.execute(insert(SqlRun.__table__), runs)
        session.execute(insert(SqlMetric.__table__), metrics)
        session.execute(insert(SqlLatestMetric.__table__), metrics)
        session.execute(insert(SqlParam.__table__), params)
        session.execute(insert(SqlTag.__table__), tags)
    store.engine.dispose()
    return sharpe


@pytest.fixture(scope="module", params=["local", "server"])
def big(request, tmp_path_factory):
    """1,150 runs in one experiment: more than one 1,000-run page."""
    from mlflow import MlflowClient

    name = f"qe-big-{uuid.uuid4().hex[:8]}"
    if request.param == "local":
        root = tmp_path_factory.mktemp("qe-big")
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        db_uri = env["MLFLOW_TRACKING_URI"]
        experiment_id = MlflowClient(db_uri).create_experiment(
            name, artifact_location=str(root / "artifacts")
        )
    else:
        server = request.getfixturevalue("mlflow_server")
        env = server.env()
        experiment_id = server.client().create_experiment(name)
        db_uri = (
            f"sqlite:///{server.root / 'mlflow.db'}"  # the server's own store, written as one transaction
        )
    sharpe = bulk_seed(db_uri, experiment_id, 1150, seed=11)
    return env, name, sharpe


def test_paging_beyond_one_page(big, query):
    env, name, sharpe = big
    got = ok(query(env, "runs", "--experiment", name, "--order-by", "metrics.sharpe DESC", "--max-results", "1100",
                   "--columns", "metrics.sharpe", "--max-chars", "0"))  # fmt: skip
    assert [r["run_id"] for r in got] == sorted(sharpe, key=sharpe.get, reverse=True)[:1100]
    assert [r["metrics"]["sharpe"] for r in got] == sorted(sharpe.values(), reverse=True)[:1100]

    listed = ok(query(env, "experiments", "--filter", f"name = '{name}'", "--with-counts"))
    assert listed[0]["run_count"] == len(sharpe)
    groups = ok(query(env, "group", "--experiment", name, "--by", "params.window", "--agg", "count,max"))
    assert sum(g["count"] for g in groups) == len(sharpe) and max(g["max"] for g in groups) == max(
        sharpe.values()
    )


# ---------------------------------------------------------------- as a user runs it


def test_help_and_input_errors_import_nothing_heavy():
    script = str(ROOT / "scripts" / "query_experiments.py")
    for args in (["--help"], ["runs", "--help"], ["group", "--experiment", "x", "--by", "window"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", script, *args], capture_output=True, text=True
        )
        imported = {
            line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line
        }
        assert not imported & {"mlflow", "pandas", "numpy", "quantstats", "matplotlib", "sqlalchemy"}, args
        if args[-1] == "--help":
            assert (
                done.returncode == 0 and "exit codes:" in done.stdout and "5  tracking server" in done.stdout
            )
        else:
            assert done.returncode == 2 and "params.NAME" in done.stderr


def test_end_to_end_as_a_reader_on_the_server(server_seeded, mlflow_server):
    _, truth = server_seeded
    reader_env = mlflow_server.env(mlflow_server.reader)
    name = f"qe-momentum-{truth['suffix']}"
    result = run_script(
        "query_experiments", "runs", "--experiment", name, "--order-by", "metrics.sharpe DESC", "--max-results", "2",
        env=reader_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = runs_of(truth)
    assert [r["run_id"] for r in result.json()] == top_by_sharpe(runs)[:2]
    missing = run_script(
        "query_experiments", "runs", "--experiment", f"qe-momentum-{truth['suffix']}x", env=reader_env
    )
    assert_clean_error(missing, 3, name)
    wrong = dict(reader_env, MLFLOW_TRACKING_PASSWORD="not-the-password")
    assert_clean_error(
        run_script("query_experiments", "experiments", env=wrong), 4, "MLFLOW_TRACKING_USERNAME"
    )
    assert "not-the-password" not in (result.stderr + missing.stderr)


def test_unreachable_server_fails_fast():
    from harness import free_port

    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    result = run_script("query_experiments", "experiments", env=env)
    assert_clean_error(result, 5, "MLFLOW_TRACKING_URI")
    assert result.seconds < 60


def test_lockfile_pins_the_light_mlflow_client():
    """mlflow-skinny 3.17 plus the SQL-store packages: the client without the server and data-science stack
    (full mlflow imports pandas, numpy, pyarrow and scipy at `import mlflow`: +0.5 s a query)."""
    lock = (ROOT / "scripts" / "query_experiments.py.lock").read_text()
    assert re.search(r'name = "mlflow-skinny"\nversion = "3\.17\.\d+"', lock)
    assert not re.search(r'name = "(mlflow|pandas|numpy|scipy|pyarrow)"\n', lock)
    assert re.search(r'name = "sqlalchemy"\n', lock) and re.search(r'name = "alembic"\n', lock)
    assert (
        Path(ROOT / "scripts" / "query_experiments.py").read_text().count('"mlflow-skinny>=3.17,<3.18"') == 1
    )


# ---------------------------------------------------------------- runs logged by the real log_backtest.py


@pytest.fixture(scope="module")
def logged_sweep(tmp_path_factory, run_in_process):
    """One `log_backtest.py` sweep (3 columns from tests/data/example_returns.csv) on a fresh local store."""
    root = tmp_path_factory.mktemp("qe-logged")
    rows = (ROOT / "tests" / "data" / "example_returns.csv").read_text().splitlines()[1:]
    lines = ["date,w10,w20,w30"]
    for row in rows:
        date, value = row.split(",")
        x = float(value)
        lines.append(f"{date},{x},{x * 0.5 + 0.0001},{-x * 0.3 + 0.0002}")
    (root / "sweep.csv").write_text("\n".join(lines) + "\n")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    result = run_in_process(
        "log_backtest", "--returns", str(root / "sweep.csv"), "--experiment", "logged", "--no-tearsheet", env=env,
        cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return env, result.json()


def test_runs_logged_by_log_backtest(logged_sweep, query):
    env, logged = logged_sweep
    children = {r["run_id"]: r for r in logged["runs"]}
    top = ok(query(env, "runs", "--experiment", "logged", "--top-level"))
    assert [r["run_id"] for r in top] == [logged["parent_run_id"]]
    kids = ok(query(env, "runs", "--experiment", "logged", "--parent-run-id", logged["parent_run_id"]))
    assert {r["run_id"] for r in kids} == set(children)
    for row in kids:
        assert row["metrics"]["sharpe"] == children[row["run_id"]]["metrics"]["sharpe"]
        assert row["params"]["periods_per_year"] == "252" and row["params"]["column"] == row["run_name"]

    compared = ok(query(env, "compare", *[a for i in children for a in ("--run-id", i)], "--metrics", "all"))
    rows = {m["metric"]: m for m in compared["metrics"]}
    assert len(rows) > len(KEY)  # every QuantStats metric log_backtest wrote
    sharpe = {i: r["metrics"]["sharpe"] for i, r in children.items()}
    assert rows["sharpe"]["best"] == [max(sharpe, key=sharpe.get)] == [logged["best_run_id"]]
    drawdown = {i: r["metrics"]["max_drawdown"] for i, r in children.items()}
    assert rows["max_drawdown"]["best"] == [min(drawdown, key=lambda i: abs(drawdown[i]))]
    assert {p["param"] for p in compared["params_differ"]} >= {"column"}

    child = ok(query(env, "run", "--run-id", next(iter(children))))
    assert (
        child["parent"]["run_id"] == logged["parent_run_id"] and child["datasets"][0]["context"] == "backtest"
    )
    assert list(child["metrics"])[:2] == ["sharpe", "sortino"]  # key metrics first, kept if the output is cut
    table = query(env, "runs", "--experiment", "logged", "--format", "table", "--max-chars", "0")[
        1
    ].splitlines()
    assert logged["parent_run_id"] in table[2] and all("└ w" in line for line in table[3:6])
