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


def test_hostile_experiment_name_and_tags_are_stored_faithfully(store, tmp_path):
    from mlflow import MlflowClient

    args = ["--name", HOSTILE_NAME, "--description", "## desc\n" + HOSTILE_VALUES["shell"]]
    for key, value in HOSTILE_VALUES.items():
        args += ["--tag", f"{key}={value}"]
    result = run_script("create_experiment", *args, env=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pwned").exists()  # nothing was ever handed to a shell
    out = result.json()
    assert out["name"] == HOSTILE_NAME and out["tags"] == HOSTILE_VALUES

    import os

    os.environ.update({k: v for k, v in store.items() if k.startswith("MLFLOW_TRACKING_")})
    stored = MlflowClient(store["MLFLOW_TRACKING_URI"]).get_experiment_by_name(HOSTILE_NAME)
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
