"""Real mise: .env.local reaches the scripts through `mise x --` and the tasks; nothing overrides it."""

from __future__ import annotations

import os
import subprocess
import tomllib
import uuid

import pytest
from harness import ROOT, clean_env, require_tool


@pytest.fixture
def skill_copy(tmp_path):
    """The skill's .mise.toml and scripts in a temp folder, with a HOME of its own and the folder trusted."""
    skill = tmp_path / "mlflow-python"
    skill.mkdir()
    (skill / ".mise.toml").write_text((ROOT / ".mise.toml").read_text())
    (skill / "scripts").symlink_to(ROOT / "scripts")
    home = tmp_path / "home"
    home.mkdir()
    return skill, clean_env(HOME=str(home), MISE_TRUSTED_CONFIG_PATHS=str(skill), MISE_YES="1")


def mise(skill, env, *args):
    binary = require_tool("mise")
    return subprocess.run([binary, *args], cwd=skill, env=env, capture_output=True, text=True, timeout=600)


def test_env_local_is_loaded_last():
    """No literal in .mise.toml comes after `_.file`, so a value in .env.local always wins."""
    env_table = tomllib.loads((ROOT / ".mise.toml").read_text())["env"]
    assert list(env_table)[-1] == "_", "the .env.local include must be the last [env] entry"
    assert env_table["_"]["file"] == {"path": ".env.local", "redact": True}


def test_mise_delivers_env_local_credentials_to_a_script(skill_copy, mlflow_server):
    skill, env = skill_copy
    alice = mlflow_server.alice
    (skill / ".env.local").write_text(
        f"MLFLOW_TRACKING_URI={mlflow_server.url}\n"
        f"MLFLOW_TRACKING_USERNAME={alice.username}\n"
        f"MLFLOW_TRACKING_PASSWORD={alice.password}\n"
    )
    # A stale value exported in the user's shell must not beat .env.local.
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
    name = f"via-mise-{uuid.uuid4().hex[:8]}"
    done = mise(skill, env, "x", "--", "uv", "run", "--quiet", "scripts/create_experiment.py", "--name", name)
    assert done.returncode == 0, done.stderr
    assert alice.password not in done.stdout + done.stderr
    import json

    out = json.loads(done.stdout)
    assert out["tracking_uri"] == mlflow_server.url and out["created"] is True
    # Alice's credentials reached the server: she, not the admin, holds MANAGE on what she created.
    perms = mlflow_server.api("GET", f"/api/3.0/mlflow/users/permissions/list?username={alice.username}")
    assert out["experiment_id"] in json.dumps(perms), perms


def test_mise_task_runs_a_script_with_env_local(skill_copy, tmp_path):
    skill, env = skill_copy
    db = tmp_path / "from-env-local.db"
    (skill / ".env.local").write_text(f"MLFLOW_TRACKING_URI=sqlite:///{db}\n")
    done = mise(skill, env, "run", "create-experiment", "--name", "task-made", "--format", "json")
    assert done.returncode == 0, done.stderr
    from mlflow import MlflowClient

    assert MlflowClient(f"sqlite:///{db}").get_experiment_by_name("task-made") is not None
    # `redact = true`: mise tasks mask every .env.local value in what they print (`mise x --` does not).
    assert '"tracking_uri": "[redacted]"' in done.stdout


def test_without_env_local_the_embedded_store_is_used(skill_copy):
    skill, env = skill_copy
    done = mise(
        skill, env, "x", "--", "uv", "run", "--quiet", "scripts/create_experiment.py", "--name", "solo"
    )
    assert done.returncode == 0, done.stderr
    assert (skill / "mlflow.db").is_file()
    assert os.path.join(str(skill), "mlflow.db") in done.stdout
