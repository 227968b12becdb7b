"""Hostile strings reach MLflow faithfully or are refused with exit 2: never a crash, never mangled."""

from __future__ import annotations

import pytest
from harness import assert_clean_error, run_script

HOSTILE_NAME = 'q\'uote "dbl" ünïcødé 🚀 $(touch pwned) `id` ; rm -rf / | & > x'
HOSTILE_VALUES = {
    "quotes": "it's \"quoted\" ''",
    "shell": "$(touch pwned); `id` && echo $HOME | cat > /tmp/x",
    "unicode": "ünïcødé ∑ 数据 🚀",
    "sql": "'; DROP TABLE runs; --",
    "newlines": "line one\nline two\r\n\ttabbed",
    "empty": "",
    "long": "x" * 10_000,
}


def test_hostile_experiment_name_and_tags_are_stored_faithfully(client_for, store, tmp_path):
    args = ["--name", HOSTILE_NAME, "--description", "## desc\n" + HOSTILE_VALUES["shell"]]
    for key, value in HOSTILE_VALUES.items():
        args += ["--tag", f"{key}={value}"]
    result = run_script("create_experiment", *args, env=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pwned").exists()  # nothing was ever handed to a shell
    out = result.json()
    assert out["name"] == HOSTILE_NAME and out["tags"] == HOSTILE_VALUES

    stored = client_for(store).get_experiment_by_name(HOSTILE_NAME)
    assert stored is not None and stored.experiment_id == out["experiment_id"]
    assert {k: stored.tags[k] for k in HOSTILE_VALUES} == HOSTILE_VALUES
    assert stored.tags["mlflow.note.content"] == "## desc\n" + HOSTILE_VALUES["shell"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--name", "n" * 10_000], "longer than 500"),
        (["--name", "ok", "--tag", "k" * 251 + "=v"], "tag key"),
        (["--name", "ok", "--tag", "semi;colon=v"], "tag key"),
        (["--name", "ok", "--tag", "ünï=v"], None),  # \w is unicode-aware in MLflow too: accepted
        (["--name", "ok", "--tag", "big=" + "v" * 20_001], "longer than 20000"),
        (["--name", "nul\x01byte"], "control characters"),
        (["--name", "ok", "--tags", '{"nested": {"a": 1}}'], "string or number"),
    ],
)
def test_hostile_input_refused_cleanly_or_accepted(local_store, tmp_path, args, needle):
    result = run_script("create_experiment", *args, env=local_store, cwd=tmp_path)
    if needle is None:
        assert result.returncode == 0, result.stderr
        assert result.json()["tags"] == {"ünï": "v"}
    else:
        assert_clean_error(result, 2, needle)


# ---- issue 6 additions: log_backtest names/params/tags, and filters of query_experiments/get_metric_history ---
import json  # noqa: E402
import uuid  # noqa: E402

from harness import DATA  # noqa: E402

LB_PARAMS = {k: v for k, v in HOSTILE_VALUES.items() if k != "long"} | {"long": "y" * 6000}  # the 6000 limit
LB_TAGS = {k: v for k, v in HOSTILE_VALUES.items() if k != "long"} | {"long": "z" * 8000}
RUN_NAME = HOSTILE_NAME + " ✓"


@pytest.fixture(scope="module")
def hostile_run(mlflow_server, tmp_path_factory):
    """One log_backtest run through `uv run` (no shell anywhere) with hostile names, params and tags."""
    folder = tmp_path_factory.mktemp("hostile")
    experiment = f"{HOSTILE_NAME} {uuid.uuid4().hex[:6]}"
    args = ["--returns", str(DATA / "example_returns.csv"), "--no-tearsheet", "--experiment", experiment,
            "--run-name", RUN_NAME, "--description", "## " + HOSTILE_VALUES["shell"],
            "--params", json.dumps({"nested": {"ünï key": "ünï \"x\""}})]  # fmt: skip
    for key, value in LB_PARAMS.items():
        args += ["--param", f"{key}={value}"]
    for key, value in LB_TAGS.items():
        args += ["--tag", f"{key}={value}"]
    env = mlflow_server.env(mlflow_server.alice)
    result = run_script("log_backtest", *args, env=env, cwd=folder)
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "experiment": experiment, "out": result.json(), "env": env}


@pytest.mark.server
def test_log_backtest_stores_hostile_names_params_and_tags_faithfully(hostile_run, mlflow_server):
    assert not (hostile_run["folder"] / "pwned").exists() and not (hostile_run["folder"] / "x").exists()
    out = hostile_run["out"]
    assert out["experiment"] == hostile_run["experiment"] and out["run_name"] == RUN_NAME
    client = mlflow_server.client(mlflow_server.alice)
    assert client.get_experiment(out["experiment_id"]).name == hostile_run["experiment"]
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == RUN_NAME
    assert {k: run.data.params[k] for k in LB_PARAMS} == LB_PARAMS
    assert run.data.params["nested.ünï key"] == 'ünï "x"'
    assert {k: run.data.tags[k] for k in LB_TAGS} == LB_TAGS
    headline, _, rest = run.data.tags["mlflow.note.content"].partition("\n\n")  # the headline comes first
    assert headline.startswith("Sharpe ") and rest.startswith("## " + HOSTILE_VALUES["shell"])


HOSTILE_FILTERS = [
    # (filter, True when it must find the hostile run)
    ("params.shell = '" + HOSTILE_VALUES["shell"] + "'", True),
    ("tags.unicode = '" + HOSTILE_VALUES["unicode"] + "'", True),
    ("params.long = '" + "y" * 6000 + "'", True),
    ("params.`nested.ünï key` = 'ünï \"x\"'", True),
    ("attributes.run_name = '" + RUN_NAME + "'", None),  # holds a single quote: found or refused
    ("params.sql = '''; DROP TABLE runs; --'", None),
    ("'; DROP TABLE runs; --", None),
    ("metrics.sharpe > 0 OR 1=1", None),
    ("params.x = '" + "q" * 10_000 + "'", False),
    ('tags."$(touch pwned)" = "`id`"', None),
    ("params.unicode LIKE '%数据%'", True),
    ("tags.newlines = 'line one\nline two\r\n\ttabbed'", None),
]


@pytest.mark.server
@pytest.mark.parametrize(("script", "flt", "finds"), [
    (s, f, m) for s in ("query_experiments", "get_metric_history") for f, m in HOSTILE_FILTERS
])  # fmt: skip
def test_hostile_filters_are_answered_or_refused_never_crash(
    hostile_run, mlflow_server, run_in_process, script, flt, finds
):
    experiment = hostile_run["experiment"]
    if script == "query_experiments":
        # --max-chars 0: the run's 6 kB param and 8 kB tag exceed the default 8,000-character bound
        argv = ["runs", "--experiment", experiment, "--filter", flt, "--format", "json", "--max-chars", "0"]
    else:
        argv = ["--experiment", experiment, "--filter", flt, "--metrics", "equity", "--format", "json"]
    done = run_in_process(script, *argv, env=hostile_run["env"])
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code in (0, 2, 3), (code, err)  # 3: get_metric_history found no run matching
    assert "Traceback" not in err
    if code != 0:
        assert out == "" and err.count("error: ") == 1, err
        assert finds is not True, (flt[:80], err)
        return
    found = {row["run_id"] for row in json.loads(out)}
    if finds is not None:
        assert found == ({hostile_run["out"]["run_id"]} if finds else set()), (flt[:80], found)
    # the store is intact and nothing was written
    client = mlflow_server.client(mlflow_server.alice)
    assert len(client.search_runs([hostile_run["out"]["experiment_id"]])) == 1


@pytest.mark.server
def test_hostile_experiment_names_are_found_by_exact_name(hostile_run, run_in_process):
    """Lookups by a name full of quotes and unicode (experiments --filter, runs --experiment)."""
    env = hostile_run["env"]
    found = run_in_process(
        "query_experiments", "experiments", "--filter", "name LIKE '%ünïcødé 🚀%'", env=env
    )
    assert found.returncode == 0, found.stderr
    assert hostile_run["experiment"] in [e["name"] for e in found.json()]
    history = run_in_process("get_metric_history", "--experiment", hostile_run["experiment"], "--metrics",
                             "equity", env=env)  # fmt: skip
    assert history.returncode == 0, history.stderr
    assert {row["run_id"] for row in history.json()} == {hostile_run["out"]["run_id"]}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--run-name", "r" * 10_000], "--run-name"),
        (["--param", "k=" + "v" * 10_000], "longer than"),
        (["--tag", "k=" + "v" * 10_000], "longer than"),
        (["--description", "d" * 10_000], "--description"),
        (["--param", "a;b=1"], "param key"),
        (["--tag", "$(id)=1"], "tag key"),
        (["--param", "k" * 251 + "=1"], "param key"),
        (["--experiment", "line\nbreak"], "control characters"),
        (["--experiment", "   "], "empty"),
        (["--params", '{"a": {"b": "' + "v" * 10_000 + '"}}'], "longer than"),
    ],
)
def test_log_backtest_refuses_hostile_arguments_before_writing(
    no_store_yet, tmp_path, run_in_process, args, needle
):
    done = run_in_process(
        "log_backtest", "--returns", str(DATA / "example_returns.csv"), *args, env=no_store_yet
    )
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 2 and out == "" and err.count("error: ") == 1 and needle.lower() in err.lower(), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.server
def test_log_backtest_10kb_experiment_name_stored_faithfully_or_refused(mlflow_server, run_in_process):
    name = "ünï'" + "e" * 10_000 + uuid.uuid4().hex[:6]
    done = run_in_process("log_backtest", "--returns", str(DATA / "example_returns.csv"), "--no-tearsheet",
                          "--experiment", name, env=mlflow_server.env(mlflow_server.alice))  # fmt: skip
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code in (0, 2), (code, err[:300])
    client = mlflow_server.client(mlflow_server.alice)
    stored = client.get_experiment_by_name(name)
    if code == 2:
        assert out == "" and err.count("error: ") == 1 and "Traceback" not in err
        assert stored is None or client.search_runs([stored.experiment_id]) == []
    else:
        assert stored is not None and stored.name == name
        assert json.loads(out)["experiment"] == name
