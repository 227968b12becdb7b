"""create_experiment.py end to end, on a fresh local store and on the real basic-auth server."""

from __future__ import annotations

import json
import uuid

import pytest
from harness import assert_clean_error, free_port, run_script


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_create_then_idempotent_with_description_and_tags(client_for, store, run_in_process):
    name = unique("momentum")
    first = run_in_process(
        "create_experiment",
        "--name",
        name,
        "--description",
        "12-1 momentum",
        "--tag",
        "team=quant",
        env=store,
    )
    assert first.returncode == 0, first.stderr
    out = first.json()
    assert out["created"] is True and out["name"] == name and out["lifecycle_stage"] == "active"
    assert out["description"] == "12-1 momentum" and out["tags"] == {"team": "quant"}
    assert out["tracking_uri"] == store["MLFLOW_TRACKING_URI"]
    if store["MLFLOW_TRACKING_URI"].startswith("http"):
        assert out["url"] == (
            f"{store['MLFLOW_TRACKING_URI']}/#/experiments/{out['experiment_id']}?workflowType=machine_learning"
        )
    else:
        assert out["url"] is None

    # Second call: same experiment, not created again; new tags (JSON and KEY=VALUE) applied and reported.
    second = run_in_process(
        "create_experiment", "--name", name, "--tags", '{"asset_class": "equity"}', "--tag", "team=macro",
        env=store,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    again = second.json()
    assert again["created"] is False and again["experiment_id"] == out["experiment_id"]
    assert again["tags"] == {"team": "macro", "asset_class": "equity"}
    assert again["description"] == "12-1 momentum"

    stored = client_for(store).get_experiment(out["experiment_id"])
    assert stored.tags["mlflow.note.content"] == "12-1 momentum"
    assert stored.tags["team"] == "macro" and stored.tags["asset_class"] == "equity"


def test_deleted_experiment_needs_restore(client_for, store, run_in_process):
    name = unique("deleted")
    client = client_for(store)
    experiment_id = client.create_experiment(name)
    client.delete_experiment(experiment_id)

    refused = run_script("create_experiment", "--name", name, env=store)  # exit 3 as a process
    assert_clean_error(refused, 3, "--restore", "deleted")
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"

    restored = run_in_process(
        "create_experiment", "--name", name, "--restore", "--description", "back", env=store
    )
    assert restored.returncode == 0, restored.stderr
    out = restored.json()
    assert out["restored"] is True and out["created"] is False and out["experiment_id"] == experiment_id
    experiment = client.get_experiment(experiment_id)
    assert experiment.lifecycle_stage == "active"
    assert experiment.tags["mlflow.note.content"] == "back"


def test_table_format_for_people(local_store):
    result = run_script("create_experiment", "--name", "tabular", "--format", "table", env=local_store)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["key", "value"]
    assert any(line.split()[:2] == ["name", "tabular"] for line in lines)
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_embedded_default_store_when_nothing_configured(tmp_path):
    result = run_script("create_experiment", "--name", "local-default", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.json()["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "mlflow.db").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--name", "   "], "--name is empty"),
        (["--name", "x", "--tags", "{not json"], "--tags is not valid JSON"),
        (["--name", "x", "--tags", "[1, 2]"], "JSON object"),
        (["--name", "x", "--tag", "no-equals-sign"], "KEY=VALUE"),
        (["--name", "x", "--tag", "bad!key=1"], "tag key"),
        (["--name", "x", "--tag", "mlflow.user=me"], "reserved"),
        (["--name", "x" * 501], "longer than 500"),
        (["--name", "line\nbreak"], "control characters"),
        ([], "--name"),
        (["--name", "x", "--format", "xml"], "invalid choice"),
    ],
)
def test_bad_input_is_exit_2_and_writes_nothing(no_store_yet, tmp_path, args, needle):
    result = run_script("create_experiment", *args, env=no_store_yet)
    assert_clean_error(result, 2, needle)
    assert not (tmp_path / "mlflow.db").exists()  # validation happens before the store is touched


@pytest.mark.server
def test_wrong_password_is_exit_4_without_echoing_it(mlflow_server):
    env = mlflow_server.env()
    env["MLFLOW_TRACKING_PASSWORD"] = "Wrong-Password-" + uuid.uuid4().hex
    result = run_script("create_experiment", "--name", unique("nope"), env=env)
    assert_clean_error(result, 4, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    assert env["MLFLOW_TRACKING_PASSWORD"] not in result.stdout + result.stderr


@pytest.mark.server
def test_read_only_user_cannot_change_a_shared_experiment(mlflow_server):
    # MLflow 3.17's basic-auth app lets any authenticated user create a new experiment (workspaces off);
    # what a READ-only user cannot do is write to an experiment someone else owns.
    name = unique("shared-readonly")
    admin = mlflow_server.client()
    experiment_id = admin.create_experiment(name, tags={"team": "quant"})
    mlflow_server.grant(mlflow_server.reader, experiment_id, "READ")
    result = run_script(
        "create_experiment",
        "--name",
        name,
        "--tag",
        "team=hijacked",
        env=mlflow_server.env(mlflow_server.reader),
    )
    assert_clean_error(result, 4, "permission denied")
    assert mlflow_server.reader.password not in result.stdout + result.stderr
    assert mlflow_server.client().get_experiment(experiment_id).tags["team"] == "quant"

    # Reading is allowed: without tags the same call succeeds and reports the experiment unchanged.
    ok = run_script("create_experiment", "--name", name, env=mlflow_server.env(mlflow_server.reader))
    assert ok.returncode == 0, ok.stderr
    assert ok.json()["experiment_id"] == experiment_id and ok.json()["created"] is False


@pytest.mark.server
def test_credentials_in_the_uri_are_masked(mlflow_server):
    alice = mlflow_server.alice
    uri = f"http://{alice.username}:{alice.password}@127.0.0.1:{mlflow_server.port}"
    result = run_script("create_experiment", "--name", unique("masked"), "--tracking-uri", uri)
    assert result.returncode == 0, result.stderr
    out = result.json()
    assert out["tracking_uri"] == f"http://***@127.0.0.1:{mlflow_server.port}"
    assert alice.password not in result.stdout + result.stderr
    assert out["url"].startswith(f"http://127.0.0.1:{mlflow_server.port}/#/experiments/")


def test_unreachable_server_is_exit_5_within_15_seconds():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    result = run_script("create_experiment", "--name", "x", env={"MLFLOW_TRACKING_URI": uri})
    assert_clean_error(result, 5, "MLFLOW_TRACKING_URI")
    assert result.seconds < 15, result.seconds  # the contract, not a speed goal: MLflow's default is ~4 min
