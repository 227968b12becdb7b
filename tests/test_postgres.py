"""The team's server for real: a throwaway PostgreSQL cluster, `mlflow server --app-name basic-auth` on it, and the
four scripts against that server AND against the database URI directly (MLFLOW_TRACKING_URI=postgresql://…).

Paths that differ from SQLite: query_experiments' --with-counts GROUP BY through the store's session (and its
SQLite-only ANALYZE step, which must stay out of PostgreSQL's way), experiment-creation races (a unique
violation instead of SQLite's file lock), the server's history bulk endpoint, and masking a database password
inside a postgresql:// URI. Load at team scale: 16 log_backtest processes and 4 sweeps at once. Artifacts
straight to S3 (a server without --serve-artifacts) against moto's standalone server: an S3 EMULATOR, not AWS.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness
import numpy as np
import pandas as pd
import pytest
from harness import MlflowServer, PostgresServer, assert_clean_error, free_port, run_script
from test_load import N_BARS, check_complete, run_many

# every test here starts PostgreSQL, and most an MLflow server of their own: `-m "not server"` skips them
pytestmark = [pytest.mark.postgres, pytest.mark.server]

COLUMNS = ("fast", "medium", "slow")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_server(postgres, tmp_path_factory):
    """`mlflow server --app-name basic-auth` on PostgreSQL, artifacts proxied (the server stores them)."""
    server = MlflowServer(
        tmp_path_factory.mktemp("pg-server"), backend_store_uri=postgres.create_database("mlflow_server")
    ).start()
    server.alice = server.create_user("alice")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_database(postgres, tmp_path_factory) -> dict[str, str]:
    """Environment for a script pointed straight at a PostgreSQL database (tables made here first)."""
    from mlflow import MlflowClient

    env = {"MLFLOW_TRACKING_URI": postgres.create_database("mlflow_direct")}
    MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()
    return env


def write_series(path, seed: int, columns=("returns",)) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(0.0005, 0.01, (N_BARS, len(columns))), columns=list(columns))
    frame.insert(0, "date", pd.bdate_range("2019-01-02", periods=N_BARS).strftime("%Y-%m-%d"))
    frame.to_csv(path, index=False, float_format="%.17g")


@pytest.fixture(scope="module", params=["server", "database"])
def logged(request, tmp_path_factory):
    """One single run and one 3-column sweep logged by log_backtest into a new experiment, on the
    PostgreSQL-backed server (as alice) or straight into the database."""
    if request.param == "server":
        server = request.getfixturevalue("pg_server")
        env = server.env(server.alice)
    else:
        env = request.getfixturevalue("pg_database")
    folder = tmp_path_factory.mktemp(f"pg-{request.param}")
    write_series(folder / "single.csv", 1)
    write_series(folder / "sweep.csv", 2, COLUMNS)
    experiment = unique("pg")
    common = ("--experiment", experiment, "--no-tearsheet")
    single = run_script("log_backtest", "--returns", "single.csv", *common, "--param", "kind=single",
                        env=env, cwd=folder)  # fmt: skip
    assert single.returncode == 0, single.stderr
    sweep = run_script("log_backtest", "--returns", "sweep.csv", *common, "--param", "kind=sweep",
                       env=env, cwd=folder)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    return {"kind": request.param, "env": env, "folder": folder, "experiment": experiment,
            "single": single.json(), "sweep": sweep.json()}  # fmt: skip


def ok(result: harness.Result):
    assert result.returncode == 0, result.stderr
    return result.json()


def test_log_single_and_sweep_complete(logged, tmp_path, client_for):
    client = client_for(logged["env"])
    single, sweep = logged["single"], logged["sweep"]
    returns = pd.read_csv(logged["folder"] / "single.csv")["returns"].to_numpy()
    run = client.get_run(single["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["kind"] == "single"
    scalars = {k: v for k, v in run.data.metrics.items() if k not in ("equity", "drawdown", "year_return")}
    assert scalars == pytest.approx(single["metrics"], rel=1e-15) and len(scalars) >= 60
    history = sorted(client.get_metric_history(single["run_id"], "equity"), key=lambda m: m.step)
    np.testing.assert_allclose([m.value for m in history], np.cumprod(1 + returns), rtol=1e-12)
    assert {a.path for a in client.list_artifacts(single["run_id"])} == {
        "metrics.json",
        "periods",
        "returns.csv",
    }
    with open(client.download_artifacts(single["run_id"], "metrics.json", str(tmp_path))) as handle:
        assert json.load(handle)["metrics"] == single["metrics"]

    parent = client.get_run(sweep["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["backtest.sweep"] == "true"
    assert [r["run_name"] for r in sweep["runs"]] == list(COLUMNS)
    frame = pd.read_csv(logged["folder"] / "sweep.csv")
    for child in sweep["runs"]:
        stored = client.get_run(child["run_id"])
        assert (
            stored.info.status == "FINISHED" and stored.data.tags["mlflow.parentRunId"] == parent.info.run_id
        )
        assert stored.data.metrics["sharpe"] == child["metrics"]["sharpe"]
        points = client.get_metric_history(child["run_id"], "equity")
        assert len(points) == N_BARS
        assert max(m.value for m in points) == pytest.approx(np.cumprod(1 + frame[child["run_name"]]).max())


def test_every_query_subcommand(logged, client_for, run_in_process):
    env, experiment, sweep = logged["env"], logged["experiment"], logged["sweep"]
    client = client_for(env)
    expected = {r.info.run_id: r for r in client.search_runs([logged["single"]["experiment_id"]])}
    assert len(expected) == 2 + len(COLUMNS)  # the single run, the sweep's parent and its children

    # --with-counts: COUNT(*) ... GROUP BY through the store's session (direct) or paging (server)
    listed = ok(run_in_process("query_experiments", "experiments", "--filter", f"name = '{experiment}'",
                               "--with-counts", env=env))  # fmt: skip
    assert [(e["name"], e["run_count"]) for e in listed] == [(experiment, len(expected))]

    # A sweep parent summarises the search (best_sharpe, deflated_sharpe_ratio): it has no sharpe of its own.
    sharpe = {i: r.data.metrics["sharpe"] for i, r in expected.items() if "sharpe" in r.data.metrics}
    assert len(sharpe) == len(expected) - 1
    for direction, reverse in (("DESC", True), ("ASC", False)):
        runs = ok(run_in_process("query_experiments", "runs", "--experiment", experiment, "--order-by",
                                 f"metrics.sharpe {direction}", env=env))  # fmt: skip
        got = [r["metrics"].get("sharpe") for r in runs]
        assert len(got) == len(expected)
        assert got[: len(sharpe)] == sorted(sharpe.values(), reverse=reverse)
        assert got[len(sharpe) :] == [None]  # the store sorts a run without the metric last either way
    top = ok(run_in_process("query_experiments", "runs", "--experiment", experiment, "--order-by",
                            "metrics.sharpe DESC", "--max-results", "2", "--top-level", env=env))  # fmt: skip
    top_level = [i for i, r in expected.items() if "mlflow.parentRunId" not in r.data.tags]
    assert [r["run_id"] for r in top] == sorted(top_level, key=lambda i: (i not in sharpe, -sharpe.get(i, 0)))
    kids = ok(run_in_process("query_experiments", "runs", "--experiment", experiment, "--filter",
                             "params.kind = 'sweep' and metrics.sharpe > -100", "--parent-run-id",
                             sweep["parent_run_id"], env=env))  # fmt: skip
    assert {r["run_id"] for r in kids} == {r["run_id"] for r in sweep["runs"]}

    shown = ok(run_in_process("query_experiments", "run", "--run-id", sweep["runs"][0]["run_id"],
                              env=env))  # fmt: skip
    assert shown["parent"]["run_id"] == sweep["parent_run_id"] and shown["experiment_name"] == experiment
    assert {a["path"] for a in shown["artifacts"]} == {
        "metrics.json", "periods/", "returns.csv", "periods/monthly_returns.png",
    } | {f"periods/{kind}.csv" for kind in ("year", "quarter", "month", "stress")}  # fmt: skip

    ids = [a for r in sweep["runs"] for a in ("--run-id", r["run_id"])]
    compared = ok(run_in_process("query_experiments", "compare", *ids, "--metrics", "sharpe", env=env))
    assert compared["metrics"][0]["best"] == [sweep["best_run_id"]]

    groups = ok(run_in_process("query_experiments", "group", "--experiment", experiment, "--by",
                               "params.kind", "--metric", "sharpe", "--agg", "mean,count", env=env))  # fmt: skip
    for row in groups:
        values = [s for i, s in sharpe.items() if expected[i].data.params.get("kind") == row["params.kind"]]
        assert row["count"] == len(values)
        assert math.isclose(row["mean"], np.mean(values), rel_tol=1e-12)
    assert sum(row["count"] for row in groups) == len(sharpe)


def test_history_bulk_and_summary(logged, tmp_path, client_for, run_in_process):
    env, sweep = logged["env"], logged["sweep"]
    client = client_for(env)
    out = tmp_path / "history.parquet"
    written = ok(run_in_process("get_metric_history", "--experiment", logged["experiment"], "--metrics",
                                "equity,drawdown", "--output", str(out), "--max-runs", "10",
                                env=env))  # fmt: skip
    frame = pd.read_parquet(out)
    # the single run and the sweep's children carry histories; the parent has none
    assert written["points"] == len(frame) == (1 + len(COLUMNS)) * 2 * N_BARS
    for child in sweep["runs"]:
        truth = sorted(client.get_metric_history(child["run_id"], "drawdown"), key=lambda m: m.step)
        mine = frame[(frame.run_id == child["run_id"]) & (frame.metric == "drawdown")].sort_values("step")
        assert list(mine["step"]) == [m.step for m in truth]
        np.testing.assert_array_equal(mine["value"].to_numpy(), [m.value for m in truth])
    summary = ok(run_in_process("get_metric_history", "--run-id", logged["single"]["run_id"], "--metrics",
                                "equity", "--summary", env=env))  # fmt: skip
    assert summary[0]["points"] == N_BARS and summary[0]["run_id"] == logged["single"]["run_id"]


def test_create_experiment_and_masked_uri(logged, postgres):
    env = logged["env"]
    name = unique("created")
    first = ok(run_script("create_experiment", "--name", name, "--tag", "team=quant", env=env))
    again = ok(run_script("create_experiment", "--name", name, env=env))
    assert first["created"] is True and again["created"] is False
    assert again["experiment_id"] == first["experiment_id"] and again["tags"] == {"team": "quant"}
    if logged["kind"] == "database":
        assert first["tracking_uri"] == f"postgresql://***@127.0.0.1:{postgres.port}/mlflow_direct"
        assert logged["single"]["tracking_uri"] == first["tracking_uri"] and first["url"] is None
    assert not [text for text in harness.OUTPUTS if postgres.password in text]


def test_database_password_holding_a_slash_is_masked(postgres, pg_database):
    """Generated passwords often hold '/', which SQLAlchemy and psycopg accept raw in a postgresql:// URI
    (its password part runs to the last '@'): the whole user:password must still be hidden."""
    password = harness.strong_password() + "/x"
    harness.SECRETS.add(password)
    postgres.sql("mlflow_direct", f"CREATE ROLE quant LOGIN SUPERUSER PASSWORD '{password}'")
    uri = f"postgresql://quant:{password}@127.0.0.1:{postgres.port}/mlflow_direct"
    out = ok(run_script("create_experiment", "--name", unique("slash"), env={"MLFLOW_TRACKING_URI": uri}))
    assert out["tracking_uri"] == f"postgresql://***@127.0.0.1:{postgres.port}/mlflow_direct"
    assert not [text for text in harness.OUTPUTS if password.split("/")[0] in text]


def test_wrong_database_password_is_exit_4_and_not_printed(postgres, pg_database):
    wrong = harness.strong_password()
    uri = pg_database["MLFLOW_TRACKING_URI"].replace(postgres.password, wrong)
    started = time.monotonic()
    result = run_script("query_experiments", "experiments", env={"MLFLOW_TRACKING_URI": uri})
    assert_clean_error(result, 4, "database refused the login", "MLFLOW_TRACKING_URI")
    assert wrong not in result.stderr
    assert time.monotonic() - started < 60  # MLflow alone retries the login 10 times over ~100 s


@pytest.mark.parametrize("store", ["server", "database"])
def test_8_processes_racing_to_create_one_experiment(store, request, client_for):
    if store == "server":
        server = request.getfixturevalue("pg_server")
        env = server.env(server.alice)
    else:
        env = request.getfixturevalue("pg_database")
    name = unique("race")
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: run_script("create_experiment", "--name", name, env=env), range(8)))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr[-300:] for r in results]
    outs = [r.json() for r in results]
    assert len({o["experiment_id"] for o in outs}) == 1
    assert sum(o["created"] for o in outs) == 1
    matching = [e for e in client_for(env).search_experiments(filter_string=f"name = '{name}'")]
    assert len(matching) == 1


@pytest.mark.slow
def test_team_load_16_processes_and_4_sweeps(pg_server, tmp_path):
    """16 log_backtest processes into one new experiment and 4 sweeps (3 columns each) into another, all at
    once, as alice: every run complete, nothing FINISHED with part of its data, nothing failed."""
    env = pg_server.env(pg_server.alice)
    singles, sweeps = unique("load"), unique("load-sweeps")
    for i in range(4):
        write_series(tmp_path / f"sweep{i}.csv", 100 + i, COLUMNS)

    def one_sweep(i: int) -> harness.Result:
        return run_script("log_backtest", "--returns", f"sweep{i}.csv", "--experiment", sweeps, "--run-name",
                          f"sweep-{i}", "--no-tearsheet", env=env, cwd=tmp_path, timeout=900)  # fmt: skip

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=5) as pool:
        single_results = pool.submit(run_many, tmp_path, env, singles, 16)
        sweep_results = list(pool.map(one_sweep, range(4)))
        single_results = single_results.result()
    wall = time.monotonic() - started
    results = [*single_results, *sweep_results]
    failures = [(r.returncode, r.stderr[-300:]) for r in results if r.returncode != 0]
    print(f"team load: 16 processes + 4 sweeps in {wall:.1f} s, {len(failures)} failed")
    assert failures == [], failures
    client = pg_server.client(pg_server.alice)
    assert len(check_complete(client, tmp_path, singles, single_results, tmp_path)) == 16

    experiment = client.get_experiment_by_name(sweeps)
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    outs = [r.json() for r in sweep_results]
    assert len(everything) == 4 * (1 + len(COLUMNS))
    assert {r.info.run_id for r in everything} == {
        i for o in outs for i in (o["parent_run_id"], *(c["run_id"] for c in o["runs"]))
    }
    for out in outs:
        for child in out["runs"]:
            run = client.get_run(child["run_id"])
            scalars = {
                k: v for k, v in run.data.metrics.items() if k not in ("equity", "drawdown", "year_return")
            }
            assert run.info.status == "FINISHED" and len(scalars) >= 60  # a sweep prints key metrics only
            assert {k: scalars[k] for k in child["metrics"]} == pytest.approx(child["metrics"], rel=1e-15)
            for key in ("equity", "drawdown"):
                assert len(client.get_metric_history(child["run_id"], key)) == N_BARS
        assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"


# ---- artifacts straight to S3 -------------------------------------------------------------------------------
# moto's standalone server is an S3 EMULATOR (an S3-compatible HTTP API in this process, on 127.0.0.1), not AWS.


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 emulator with a bucket, and the AWS environment a client needs to reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    emulator = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    emulator.start()
    secret = harness.strong_password()
    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    bucket = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="testing-key-id",
                          aws_secret_access_key=secret, region_name="us-east-1")  # fmt: skip
    bucket.create_bucket(Bucket="team-artifacts")
    yield {"env": env, "client": bucket}
    emulator.stop()


@pytest.fixture(scope="module")
def s3_server(pg_server, tmp_path_factory):
    """A second server on the same database with `--default-artifact-root s3://…` and no --serve-artifacts:
    it hands clients s3:// locations and they upload themselves."""
    server = MlflowServer(
        tmp_path_factory.mktemp("s3-server"),
        backend_store_uri=pg_server.backend_store_uri,
        artifact_args=("--default-artifact-root", "s3://team-artifacts/mlflow", "--no-serve-artifacts"),
    ).start()
    yield server
    server.stop()


def no_aws_credentials(tmp_path) -> dict[str, str]:
    """No AWS credentials anywhere boto3 looks (env, files, instance metadata)."""
    return {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def test_artifacts_straight_to_s3(s3, s3_server, tmp_path):
    write_series(tmp_path / "returns.csv", 7)
    env = {**s3_server.env(), **s3["env"], **no_aws_credentials(tmp_path)}
    out = ok(run_script("log_backtest", "--returns", "returns.csv", "--experiment", unique("s3"),
                        "--no-tearsheet", env=env, cwd=tmp_path))  # fmt: skip
    run = s3_server.client().get_run(out["run_id"])
    assert run.info.artifact_uri.startswith("s3://team-artifacts/mlflow/") and run.info.status == "FINISHED"
    prefix = run.info.artifact_uri[len("s3://team-artifacts/") :]
    listed = s3["client"].list_objects_v2(Bucket="team-artifacts", Prefix=prefix)["Contents"]
    assert sorted(o["Key"][len(prefix) + 1 :] for o in listed) == sorted([
        "metrics.json", *(f"periods/{by}.csv" for by in ("month", "quarter", "stress", "year")),
        "periods/monthly_returns.png", "returns.csv",
    ])  # fmt: skip
    body = s3["client"].get_object(Bucket="team-artifacts", Key=f"{prefix}/metrics.json")["Body"].read()
    assert json.loads(body)["metrics"] == out["metrics"]


def test_s3_without_credentials_is_exit_4_before_any_run(s3, s3_server, tmp_path):
    write_series(tmp_path / "returns.csv", 8)
    env = {
        **s3_server.env(),
        "MLFLOW_S3_ENDPOINT_URL": s3["env"]["MLFLOW_S3_ENDPOINT_URL"],
        **no_aws_credentials(tmp_path),
    }
    credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"}
    assert not credentials & set(os.environ), "the test process has AWS credentials in its environment"
    experiment = unique("s3-nocreds")
    result = run_script("log_backtest", "--returns", "returns.csv", "--experiment", experiment,
                        "--no-tearsheet", env=env, cwd=tmp_path)  # fmt: skip
    assert_clean_error(result, 4, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    client = s3_server.client()
    created = client.get_experiment_by_name(experiment)
    assert created is None or client.search_runs([created.experiment_id]) == []  # nothing half-written
    assert re.search(r"s3://team-artifacts/mlflow/\d+", result.stderr)


def pg_rows(uri: str, run_id: str) -> dict[str, int]:
    """Rows of a run in MLflow's tables (the ones its foreign keys name, mlflow #13254), read with psycopg."""
    import psycopg

    tables = (("runs", "run_uuid"), ("metrics", "run_uuid"), ("latest_metrics", "run_uuid"),
              ("params", "run_uuid"), ("tags", "run_uuid"), ("inputs", "destination_id"))  # fmt: skip
    with psycopg.connect(uri) as connection:
        return {
            table: connection.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", (run_id,)
            ).fetchone()[0]
            for table, column in tables
        }


def test_purge_on_postgresql_removes_exactly_the_selected_runs(postgres, query, tmp_path):
    """Issue 24: `delete --purge --yes` on a PostgreSQL store removes the chosen run's rows (metrics, params,
    tags, a dataset input: the foreign keys `mlflow gc` trips over) and artifacts, and nothing else: not
    another deleted run, not a deleted experiment, not a live run."""
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput

    uri = postgres.create_database("mlflow_purge")
    client = MlflowClient(uri)
    experiment = client.create_experiment("purge", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = {}
    for name in ("chosen", "deleted-other", "live"):
        run_id = client.create_run(experiment, run_name=name).info.run_id
        for step, value in enumerate((0.1, 0.2, 0.3)):
            client.log_metric(run_id, "sharpe", value, step=step)
        client.log_param(run_id, "lookback", "20")
        client.set_tag(run_id, "backtest.fingerprint", f"fp-{name}")
        client.log_inputs(
            run_id, [DatasetInput(Dataset(f"returns-{name}", f"dg-{name}", "local", "file:///r"), [])]
        )
        (tmp_path / f"{name}.txt").write_text(name)
        client.log_artifact(run_id, str(tmp_path / f"{name}.txt"))
        client.set_terminated(run_id, "FINISHED")
        runs[name] = run_id
    client.delete_run(runs["deleted-other"])
    other = client.create_experiment("deleted-experiment", artifact_location=(tmp_path / "other").as_uri())
    kept = client.create_run(other, run_name="kept").info.run_id
    client.delete_experiment(other)
    artifacts = Path(client.get_run(runs["chosen"]).info.artifact_uri[len("file://") :])
    assert (artifacts / "chosen.txt").exists()
    env = {"MLFLOW_TRACKING_URI": uri}
    others = {run_id: pg_rows(uri, run_id) for run_id in (runs["deleted-other"], runs["live"], kept)}
    assert others[runs["live"]]["metrics"] == 3 and others[runs["live"]]["inputs"] == 1

    code, out, err = query(env, "delete", "--run-id", runs["chosen"], "--purge")  # a dry run first
    assert code == 0 and json.loads(out)["dry_run"] is True, err
    assert set(pg_rows(uri, runs["chosen"]).values()) != {0} and artifacts.exists()
    code, out, err = query(env, "delete", "--run-id", runs["chosen"], "--purge", "--yes")
    assert code == 0, err
    assert json.loads(out)["purged"] == 1
    assert set(pg_rows(uri, runs["chosen"]).values()) == {0}
    assert not artifacts.exists()
    assert {run_id: pg_rows(uri, run_id) for run_id in others} == others  # the others: every row kept
    assert client.get_run(runs["deleted-other"]).info.lifecycle_stage == "deleted"
    assert client.get_run(runs["live"]).info.lifecycle_stage == "active"
    assert client.get_experiment(other).lifecycle_stage == "deleted"
    code, _, err = query(env, "run", "--run-id", runs["chosen"])
    assert code == 3, err
