"""query_experiments.py delete / restore / purge / artifacts / ui (issue 24) on real stores: a fresh local
SQLite store per test, the suite's basic-auth server (admin, and `reader`, who may only read), moto's S3
emulator for artifacts in S3. PostgreSQL purge: tests/test_postgres.py.

Each store is seeded with MlflowClient in the shape log_backtest writes (fingerprint tag, sweep parent tagged
backtest.sweep with children tagged mlflow.parentRunId, sharpe/skew/kurtosis, periods_per_year/n_bars).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAY_MS = 86_400_000
SELECTORS = ("--filter", "--status", "--older-than", "--duplicates", "--all")


@dataclass
class Seeded:
    """An experiment of the seeded shape: run ids by name, and what each one is."""

    experiment: str
    experiment_id: str
    ids: dict[str, str] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)

    def stages(self, client) -> dict[str, str]:
        return {name: client.get_run(run_id).info.lifecycle_stage for name, run_id in self.ids.items()}


def seed(client, tmp_path: Path, name: str | None = None) -> Seeded:
    """good/mid/loser (finished trials), dup-old/dup-new (one fingerprint), failed, killed, ancient (started
    60 days ago), a sweep parent with 3 children; `good` has artifacts (a file and a folder)."""
    name = name or f"hk-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    out = Seeded(name, experiment_id)
    now = int(time.time() * 1000)

    def make(run_name, status="FINISHED", sharpe=None, start=None, tags=None):
        tags = {"backtest.fingerprint": f"fp-{run_name}", **(tags or {})}
        run = client.create_run(experiment_id, run_name=run_name, start_time=start or now, tags=tags)
        run_id = run.info.run_id
        if sharpe is not None:
            for key, value in (("sharpe", sharpe), ("skew", 0.1), ("kurtosis", 0.5)):
                client.log_metric(run_id, key, value)
            client.log_param(run_id, "periods_per_year", "252")
            client.log_param(run_id, "n_bars", "1000")
        client.set_terminated(run_id, status)
        out.ids[run_name] = run_id
        return run_id

    make("good", sharpe=2.0)
    make("mid", sharpe=1.0)
    make("loser", sharpe=-0.5)
    make("dup-old", sharpe=0.3, start=now - 5 * DAY_MS, tags={"backtest.fingerprint": "fp-dup"})
    make("dup-new", sharpe=0.3, start=now - DAY_MS, tags={"backtest.fingerprint": "fp-dup"})
    make("failed", status="FAILED")
    make("killed", status="KILLED")
    make("ancient", sharpe=0.1, start=now - 60 * DAY_MS)
    parent = make("sweep", tags={"backtest.sweep": "true"})
    for i in range(3):
        child = make(f"child-{i}", sharpe=0.2 * i, tags={"mlflow.parentRunId": parent})
        out.children.append(child)
    (tmp_path / "art" / "code").mkdir(parents=True, exist_ok=True)
    (tmp_path / "art" / "tearsheet.html").write_text("<html>tearsheet</html>")
    (tmp_path / "art" / "code" / "strategy.py").write_text("print('strategy')\n")
    client.log_artifact(out.ids["good"], str(tmp_path / "art" / "tearsheet.html"))
    client.log_artifacts(out.ids["good"], str(tmp_path / "art" / "code"), "code")
    return out


@pytest.fixture
def local(local_store, client_for, tmp_path, monkeypatch):
    """A fresh local store seeded; artifacts under this test's folder (the store's ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    client = client_for(local_store)
    return local_store, client, seed(client, tmp_path)


def out_of(code, out, err, expected=0) -> dict:
    assert code == expected, (code, out, err)
    return json.loads(out)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- selection and dry run (local store)


def test_experiment_without_selector_exits_2_and_deletes_nothing(local, query):
    env, client, seeded = local
    before = seeded.stages(client)
    code, out, err = query(env, "delete", "--experiment", seeded.experiment, "--yes")
    assert code == 2 and out == "", (code, out, err)
    assert all(flag in err for flag in SELECTORS), err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert seeded.stages(client) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run-id", "abc", "--status", "FAILED"], "--status select runs of an --experiment"),
        (["--experiment", "x", "--status", "DONE"], "--status 'DONE'"),
        (["--experiment", "x", "--older-than", "soon"], "--older-than 'soon'"),
        (["--experiment", "x", "--all", "--duplicates"], "drop --duplicates"),
        (["--experiment", "x", "--whole-experiment", "--purge"], "--whole-experiment takes no --purge"),
        (["--run-id", " , "], "--run-id is empty"),
    ],
)
def test_bad_flags_exit_2_before_any_request(local_store, query, argv, message):
    code, out, err = query(local_store, "delete", *argv)
    assert code == 2 and out == "" and message in err, (code, err)


def test_dry_run_lists_and_leaves_the_store_byte_for_byte(local, query):
    env, client, seeded = local
    db = Path(env["MLFLOW_TRACKING_URI"][len("sqlite:///") :])
    before = digest(db)
    result = out_of(*query(env, "delete", "--experiment", seeded.experiment, "--status", "FAILED,KILLED"))
    assert digest(db) == before
    assert result["dry_run"] is True and result["selected"] == 2 and "--yes" in result["next"]
    assert {r["run_id"] for r in result["runs"]} == {seeded.ids["failed"], seeded.ids["killed"]}
    assert set(result["runs"][0]) >= {"run_id", "run_name", "status", "start_time", "parent_run_id"}
    assert "deflate" in result["note"]


def test_status_selector_deletes_exactly_those_and_restore_brings_them_back(local, query):
    env, client, seeded = local
    result = out_of(
        *query(env, "delete", "--experiment", seeded.experiment, "--status", "failed,killed", "--yes")
    )
    assert result["dry_run"] is False and result["deleted"] == 2
    stages = seeded.stages(client)
    assert {n for n, s in stages.items() if s == "deleted"} == {"failed", "killed"}
    assert all(r["lifecycle_stage"] == "deleted" for r in result["runs"])
    restored = out_of(*query(env, "restore", "--experiment", seeded.experiment))
    assert restored["restored"] == 2
    assert set(seeded.stages(client).values()) == {"active"}


def test_filter_older_than_and_duplicates_select_what_they_say(local, query):
    env, client, seeded = local
    exp = seeded.experiment
    by_filter = out_of(*query(env, "delete", "--experiment", exp, "--filter", "metrics.sharpe < 0"))
    assert [r["run_name"] for r in by_filter["runs"]] == ["loser"]
    old = out_of(*query(env, "delete", "--experiment", exp, "--older-than", "30d"))
    assert [r["run_name"] for r in old["runs"]] == ["ancient"]
    older = out_of(*query(env, "delete", "--experiment", exp, "--older-than", "2d"))
    assert {r["run_name"] for r in older["runs"]} == {"ancient", "dup-old"}
    both = out_of(
        *query(env, "delete", "--experiment", exp, "--older-than", "2d", "--filter", "metrics.sharpe > 0.2")
    )
    assert [r["run_name"] for r in both["runs"]] == ["dup-old"]
    dups = out_of(*query(env, "delete", "--experiment", exp, "--duplicates", "--yes"))
    assert [r["run_name"] for r in dups["runs"]] == ["dup-old"]  # the newest of the fingerprint stays
    stages = seeded.stages(client)
    assert stages["dup-old"] == "deleted" and stages["dup-new"] == "active"
    everything = out_of(*query(env, "delete", "--experiment", exp, "--all"))
    assert everything["selected"] == len(seeded.ids) - 1  # all active runs (dup-old is deleted already)


def test_sweep_parent_takes_its_children_a_child_warns(local, query):
    env, client, seeded = local
    code, out, err = query(env, "delete", "--run-id", seeded.children[0], "--yes")
    result = out_of(code, out, err)
    assert result["selected"] == 1 and "statistics" in err and seeded.ids["sweep"] in err
    assert result["warnings"] and "still count it" in result["warnings"][0]
    assert client.get_run(seeded.ids["sweep"]).info.lifecycle_stage == "active"
    query(env, "restore", "--run-id", seeded.children[0])
    result = out_of(*query(env, "delete", "--run-id", seeded.ids["sweep"], "--yes"))
    assert result["selected"] == 4 and result["children_included"] == 3 and result["warnings"] == []
    stages = seeded.stages(client)
    assert {n for n, s in stages.items() if s == "deleted"} == {"sweep", "child-0", "child-1", "child-2"}
    restored = out_of(*query(env, "restore", "--run-id", seeded.ids["sweep"]))
    assert restored["restored"] == 4 and set(seeded.stages(client).values()) == {"active"}


def test_unknown_run_or_experiment_exits_3_and_changes_nothing(local, query):
    env, client, seeded = local
    before = seeded.stages(client)
    code, out, err = query(env, "delete", "--run-id", f"{seeded.ids['good']},{'f' * 32}", "--yes")
    assert code == 3 and out == "" and "f" * 32 in err and "nothing was changed" in err, err
    code, out, err = query(env, "delete", "--experiment", "no-such-experiment", "--all", "--yes")
    assert code == 3 and "no-such-experiment" in err, err
    code, out, err = query(env, "restore", "--experiment", "no-such-experiment")
    assert code == 3, err
    assert seeded.stages(client) == before


def test_deleted_trials_still_count_in_deflate(local, query):
    env, client, seeded = local
    before = out_of(*query(env, "deflate", "--experiment", seeded.experiment))
    out_of(*query(env, "delete", "--run-id", seeded.ids["loser"], "--yes"))
    after = out_of(*query(env, "deflate", "--experiment", seeded.experiment))
    assert after["n_trials"] == before["n_trials"] and after["deleted_trials"] == before["deleted_trials"] + 1
    assert after["deflated_sharpe_ratio"] == pytest.approx(before["deflated_sharpe_ratio"], abs=0, rel=1e-12)
    left_out = out_of(*query(env, "deflate", "--experiment", seeded.experiment, "--exclude-deleted"))
    assert left_out["n_trials"] == before["n_trials"] - 1


def test_whole_experiment_delete_is_a_dry_run_then_restorable(local, query):
    env, client, seeded = local
    dry = out_of(*query(env, "delete", "--experiment", seeded.experiment, "--whole-experiment"))
    assert dry["dry_run"] is True and dry["active_runs"] == len(seeded.ids)
    assert client.get_experiment(seeded.experiment_id).lifecycle_stage == "active"
    done = out_of(*query(env, "delete", "--experiment", seeded.experiment, "--whole-experiment", "--yes"))
    assert done["dry_run"] is False
    assert client.get_experiment(seeded.experiment_id).lifecycle_stage == "deleted"
    code, _, err = query(env, "runs", "--experiment", seeded.experiment)
    assert code == 3 and "deleted" in err
    out_of(*query(env, "restore", "--experiment", seeded.experiment, "--whole-experiment"))
    assert client.get_experiment(seeded.experiment_id).lifecycle_stage == "active"
    assert set(seeded.stages(client).values()) == {"active"}


def test_bounded_output_with_300_selected_runs_keeps_exact_counts(local_store, client_for, query):
    from test_query_experiments import bulk_seed

    client = client_for(local_store)
    experiment_id = client.create_experiment("bulk")
    bulk_seed(local_store["MLFLOW_TRACKING_URI"], experiment_id, 300, seed=24)
    code, out, err = query(local_store, "delete", "--experiment", "bulk", "--all")
    result = out_of(code, out, err)
    assert len(out) <= 8000 and result["selected"] == 300 and 0 < len(result["runs"]) < 300
    assert "output cut" in err
    code, out, err = query(local_store, "delete", "--experiment", "bulk", "--all", "--yes")
    result = out_of(code, out, err)
    assert len(out) <= 8000 and result["deleted"] == 300
    assert client.search_runs([experiment_id], max_results=10) == []


# ---------------------------------------------------------------- purge (local store)


def store_rows(db: Path, run_id: str) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        return {
            table: connection.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (run_id,)).fetchone()[0]
            for table, column in (("runs", "run_uuid"), ("metrics", "run_uuid"), ("params", "run_uuid"),
                                  ("tags", "run_uuid"), ("latest_metrics", "run_uuid"),
                                  ("inputs", "destination_id"))
        }  # fmt: skip


def test_purge_removes_exactly_the_selected_runs(local, query, tmp_path):
    env, client, seeded = local
    from mlflow.entities import Dataset, DatasetInput

    db = Path(env["MLFLOW_TRACKING_URI"][len("sqlite:///") :])
    good = seeded.ids["good"]
    client.log_inputs(good, [DatasetInput(Dataset("returns", "d1g3st", "local", "file:///r.csv"), [])])
    artifacts = Path(client.get_run(good).info.artifact_uri)
    assert (artifacts / "tearsheet.html").exists()
    # another deleted run and a deleted experiment: a bare `mlflow gc` would purge them too
    out_of(*query(env, "delete", "--run-id", seeded.ids["mid"], "--yes"))
    other = client.create_experiment("deleted-other")
    client.create_run(other, run_name="kept")
    client.delete_experiment(other)
    dry = out_of(*query(env, "delete", "--run-id", good, "--purge"))
    assert dry["dry_run"] is True and "--purge --yes" in dry["next"] and artifacts.exists()
    result = out_of(*query(env, "delete", "--run-id", good, "--purge", "--yes"))
    assert result["purged"] == 1 and result["action"] == "purge"
    assert set(store_rows(db, good).values()) == {0}
    assert not artifacts.exists() and not artifacts.parent.exists()
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM datasets WHERE digest = 'd1g3st'").fetchone()[0] == 0
    assert client.get_run(seeded.ids["mid"]).info.lifecycle_stage == "deleted"  # deleted, not purged
    assert client.get_experiment(other).lifecycle_stage == "deleted"
    assert store_rows(db, seeded.ids["loser"])["metrics"] == 3
    code, _, err = query(env, "run", "--run-id", good)
    assert code == 3
    # an already deleted run can be purged by id
    again = out_of(*query(env, "delete", "--run-id", seeded.ids["mid"], "--purge", "--yes"))
    assert again["purged"] == 1 and store_rows(db, seeded.ids["mid"])["runs"] == 0


# ---------------------------------------------------------------- artifacts and ui (local store)


def test_artifacts_list_file_folder_download_and_unknown_path(local, query, tmp_path):
    env, client, seeded = local
    good = seeded.ids["good"]
    listed = out_of(*query(env, "artifacts", "--run-id", good))
    sizes = {a["path"]: a["size"] for a in listed["artifacts"]}
    assert sizes == {"tearsheet.html": 22, "code/": None, "code/strategy.py": 18}
    assert listed["count"] == 2 and listed["total_bytes"] == 40
    one = out_of(*query(env, "artifacts", "--run-id", good, "--path", "tearsheet.html"))
    assert one["artifacts"] == [{"path": "tearsheet.html", "size": 22}]
    target = tmp_path / "out"
    got = out_of(*query(env, "artifacts", "--run-id", good, "--path", "code", "--download", str(target)))
    assert got["downloaded"] == 1 and Path(got["files"][0]).read_text() == "print('strategy')\n"
    assert Path(got["files"][0]).is_relative_to(target)
    whole = out_of(*query(env, "artifacts", "--run-id", good, "--download", str(tmp_path / "all")))
    assert sorted(Path(f).name for f in whole["files"]) == ["strategy.py", "tearsheet.html"]
    code, out, err = query(env, "artifacts", "--run-id", good, "--path", "tearsheet.htm")
    assert code == 3 and "tearsheet.html" in err and out == "", err


def test_ui_prints_the_command_and_the_runs_view_link(local, query):
    env, client, seeded = local
    result = out_of(*query(env, "ui", "--experiment", seeded.experiment, "--port", "5123"))
    db = env["MLFLOW_TRACKING_URI"]
    assert result["command"] == f"uvx --from 'mlflow==3.17.2' mlflow ui --backend-store-uri {db} --port 5123"
    assert result["url"] == (
        f"http://127.0.0.1:5123/#/experiments/{seeded.experiment_id}?workflowType=machine_learning"
    )
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "uvx --from 'mlflow==3.17.2' mlflow ui --backend-store-uri sqlite:///mlflow.db" in readme


def test_relogging_a_deleted_backtest_logs_a_new_run(local_store, tmp_path, run_in_process):
    (tmp_path / "returns.csv").write_text(
        "date,ret\n" + "".join(f"2020-01-{d:02d},{(-1) ** d * 0.001 * d}\n" for d in range(1, 29))
    )
    env = local_store
    args = (
        "--returns",
        "returns.csv",
        "--experiment",
        "relog",
        "--no-tearsheet",
        "--periods-per-year",
        "252",
    )
    first = run_in_process("log_backtest", *args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_in_process("log_backtest", *args, env=env, cwd=tmp_path)
    assert again.json()["run_id"] == first.json()["run_id"] and again.json().get("deduplicated") is True
    deleted = run_in_process(
        "query_experiments", "delete", "--run-id", first.json()["run_id"], "--yes", env=env, cwd=tmp_path
    )
    assert deleted.returncode == 0 and deleted.json()["deleted"] == 1, deleted.stderr
    relogged = run_in_process("log_backtest", *args, env=env, cwd=tmp_path)
    assert relogged.returncode == 0, relogged.stderr
    assert relogged.json()["run_id"] != first.json()["run_id"] and not relogged.json().get("deduplicated")


# ---------------------------------------------------------------- the basic-auth server


@pytest.fixture
def on_server(mlflow_server, client_for, tmp_path):
    """A seeded experiment on the suite's server (admin's), readable by `reader`."""
    client = client_for(mlflow_server.env())
    seeded = seed(client, tmp_path)
    mlflow_server.grant(mlflow_server.reader, seeded.experiment_id, "READ")
    return mlflow_server, client, seeded


def test_server_delete_restore_and_read_only_user_denied(on_server, query):
    server, client, seeded = on_server
    before = seeded.stages(client)
    for argv in (
        ["--run-id", seeded.ids["sweep"]],
        ["--experiment", seeded.experiment, "--status", "FAILED"],
    ):
        code, out, err = query(server.env(server.reader), "delete", *argv, "--yes")
        assert code == 4 and out == "" and "permission denied" in err, (code, err)
    code, _, err = query(server.env(server.reader), "restore", "--run-id", seeded.ids["good"])
    assert code == 0, err  # nothing to restore: it is active
    assert seeded.stages(client) == before
    result = out_of(*query(server.env(), "delete", "--run-id", seeded.ids["sweep"], "--yes"))
    assert result["deleted"] == 4
    assert {n for n, s in seeded.stages(client).items() if s == "deleted"} == {
        "sweep",
        "child-0",
        "child-1",
        "child-2",
    }
    code, out, err = query(server.env(server.reader), "restore", "--run-id", seeded.ids["sweep"])
    assert code == 4, err
    out_of(*query(server.env(), "restore", "--run-id", seeded.ids["sweep"]))
    assert seeded.stages(client) == before


def test_server_purge_exits_2_with_the_gc_command(on_server, query):
    server, client, seeded = on_server
    code, out, err = query(server.env(), "delete", "--run-id", seeded.ids["loser"], "--purge", "--yes")
    assert code == 2 and out == "", err
    assert (
        f"mlflow gc --backend-store-uri <the server's --backend-store-uri> --run-ids {seeded.ids['loser']}"
        in err
    )
    assert client.get_run(seeded.ids["loser"]).info.lifecycle_stage == "active"


def test_server_artifacts_through_the_proxy_and_ui_link(on_server, query, tmp_path):
    server, client, seeded = on_server
    good = seeded.ids["good"]
    listed = out_of(*query(server.env(server.reader), "artifacts", "--run-id", good))
    assert listed["artifact_uri"].startswith("mlflow-artifacts:")
    assert {a["path"]: a["size"] for a in listed["artifacts"]} == {
        "tearsheet.html": 22,
        "code/": None,
        "code/strategy.py": 18,
    }
    got = out_of(*query(server.env(server.reader), "artifacts", "--run-id", good, "--path", "tearsheet.html",
                        "--download", str(tmp_path / "dl")))  # fmt: skip
    assert Path(got["files"][0]).read_text() == "<html>tearsheet</html>"
    ui = out_of(*query(server.env(), "ui", "--experiment", seeded.experiment))
    assert ui["command"] is None
    assert ui["url"] == f"{server.url}/#/experiments/{seeded.experiment_id}?workflowType=machine_learning"


# ---------------------------------------------------------------- S3 (moto's emulator, not AWS)


@pytest.fixture
def s3_store(local_store, tmp_path, monkeypatch):
    """A local store whose experiment keeps its artifacts in a bucket of moto's S3 emulator on 127.0.0.1."""
    import boto3
    from harness import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    emulator = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    emulator.start()
    aws = {"MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing-key-id",
           "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}  # fmt: skip
    for key, value in aws.items():
        monkeypatch.setenv(key, value)
    bucket = boto3.client("s3", endpoint_url=aws["MLFLOW_S3_ENDPOINT_URL"])
    bucket.create_bucket(Bucket="research")
    yield {**local_store, **aws}, bucket
    emulator.stop()


def test_s3_artifacts_list_download_and_purge(s3_store, client_for, query, tmp_path):
    env, bucket = s3_store
    client = client_for(env)
    experiment_id = client.create_experiment("s3-runs", artifact_location="s3://research/mlflow")
    run = client.create_run(experiment_id, run_name="with-s3")
    (tmp_path / "tearsheet.html").write_text("<html>s3</html>")
    client.log_artifact(run.info.run_id, str(tmp_path / "tearsheet.html"))
    client.set_terminated(run.info.run_id)
    listed = out_of(*query(env, "artifacts", "--run-id", run.info.run_id))
    assert listed["artifact_uri"].startswith("s3://research/mlflow/")
    assert listed["artifacts"] == [{"path": "tearsheet.html", "size": 15}]
    got = out_of(*query(env, "artifacts", "--run-id", run.info.run_id, "--download", str(tmp_path / "dl")))
    assert Path(got["files"][0]).read_text() == "<html>s3</html>"
    prefix = listed["artifact_uri"][len("s3://research/") :]
    assert bucket.list_objects_v2(Bucket="research", Prefix=prefix)["KeyCount"] == 1
    out_of(*query(env, "delete", "--run-id", run.info.run_id, "--purge", "--yes"))
    assert bucket.list_objects_v2(Bucket="research", Prefix=prefix)["KeyCount"] == 0
