"""Issue 25: tracking URIs that ran and lost the run, crashed or misled — each is refused before anything is
written (exit 2, one line naming what to use) or reaches its store; and a local store leaves no lock files
in the user's folder."""

from __future__ import annotations

import uuid

import pytest
from harness import DATA, assert_clean_error, free_port, run_script

SCRIPTS = ("log_backtest", "query_experiments", "create_experiment", "get_metric_history")
ARGS = {
    "log_backtest": ["--returns", str(DATA / "example_returns.csv"), "--no-tearsheet"],
    "query_experiments": ["experiments"],
    "create_experiment": ["--name", "uris"],
    "get_metric_history": ["--run-id", "0123456789abcdef0123456789abcdef", "--metrics", "equity"],
}


@pytest.fixture
def call(run_in_process, tmp_path):
    """SCRIPT.main(ARGS + --tracking-uri URI) in this process, in an empty folder -> (code, out, err)."""

    def run(name: str, uri: str):
        done = run_in_process(name, *ARGS[name], "--tracking-uri", uri, cwd=tmp_path)
        return done.returncode, done.stdout, done.stderr

    return run


def refused(result, *needles: str, secret: str | None = None) -> str:
    code, out, err = result
    assert code == 2 and out == "" and err.count("error: ") == 1 and "Traceback" not in err, (code, err)
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)
    assert secret is None or secret not in err, err
    return err


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize(
    "uri", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///file:x?mode=memory"]
)
def test_an_in_memory_sqlite_store_is_refused(call, tmp_path, name, uri):
    """It kept nothing: log_backtest printed a run_id of a run gone with the process (and left ./mlruns)."""
    refused(call(name, uri), "in-memory", "sqlite:///mlflow.db")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_file_that_is_no_sqlite_database_is_refused(call, tmp_path, name):
    text = tmp_path / "notes.db"
    text.write_text("my research notes\n")
    (tmp_path / "folder.db").mkdir()
    for target, what in (
        ("/dev/null", "not a regular file"),
        (text, "another kind"),
        (tmp_path / "folder.db", "a folder"),
    ):
        refused(call(name, f"sqlite:///{target}"), "not an SQLite database", what)
    assert text.read_text() == "my research notes\n"


def test_dev_null_is_refused_by_the_real_command(tmp_path):
    """What the user saw: exit 1 "disk I/O error"."""
    result = run_script(
        "log_backtest",
        *ARGS["log_backtest"],
        env={"MLFLOW_TRACKING_URI": "sqlite:////dev/null"},
        cwd=tmp_path,
    )
    assert_clean_error(result, 2, "not an SQLite database", "/dev/null")


@pytest.mark.parametrize(
    ("form", "package"),
    [("mysql", "mysqlclient"), ("mysql+pymysql", "PyMySQL"), ("mssql", "pyodbc"), ("mssql+pymssql", "pymssql"),
     ("postgresql+pg8000", "pg8000")],
)  # fmt: skip
def test_a_database_driver_we_do_not_ship_is_exit_2_naming_its_package(call, form, package):
    """It was exit 1 with a ModuleNotFoundError traceback line."""
    password = "Pw-" + uuid.uuid4().hex
    err = refused(
        call("query_experiments", f"{form}://quant:{password}@127.0.0.1:{free_port()}/mlflow"),
        package, f"uv run --with {package}", "postgresql://", secret=password,
    )  # fmt: skip
    assert "***@" in err


def test_an_unknown_driver_lists_the_supported_forms(call):
    refused(
        call("create_experiment", "postgresql+asyncpg://u:p@127.0.0.1/db"), "asyncpg", "sqlite:///", "http"
    )


def test_postgresql_psycopg2_is_served_by_the_psycopg_driver_we_ship(scripts):
    """MLflow's documented PostgreSQL form: it reaches the database (tests/test_postgres.py logs through
    it) instead of failing on the missing psycopg2."""
    resolve = scripts.log_backtest.resolve_tracking_uri
    assert resolve("postgresql+psycopg2://u:p@host:5432/db?sslmode=require") == (
        "postgresql+psycopg://u:p@host:5432/db?sslmode=require"
    )
    assert resolve("postgresql://u:p@host/db") == "postgresql://u:p@host/db"


def test_postgresql_psycopg2_on_a_closed_port_is_unreachable_not_a_missing_module(tmp_path):
    password = "Pw-" + uuid.uuid4().hex
    uri = f"postgresql+psycopg2://quant:{password}@127.0.0.1:{free_port()}/mlflow"
    result = run_script("query_experiments", "experiments", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert_clean_error(result, 5, "MLFLOW_TRACKING_URI")
    assert "ModuleNotFoundError" not in result.stderr and password not in result.stderr


@pytest.mark.slow  # 25-60 s on a busy 2-core machine: not in the inner loop (issue 26)
def test_databricks_without_credentials_is_exit_4_naming_what_to_set(tmp_path):
    """It was exit 1 "Reading Databricks credential configuration failed"; the databricks SDK ships with
    MLflow, so databricks / databricks://PROFILE work once credentials are configured."""
    env = {
        "MLFLOW_TRACKING_URI": "databricks",
        "HOME": str(tmp_path),
        "DATABRICKS_CONFIG_FILE": str(tmp_path / "none"),
    }
    for name in ("query_experiments", "log_backtest"):
        result = run_script(name, *ARGS[name], env=env, cwd=tmp_path)
        assert_clean_error(result, 4, "DATABRICKS_HOST", "DATABRICKS_TOKEN", "databrickscfg")


def test_a_local_store_leaves_no_lock_files_in_the_users_folder(run_in_process, tmp_path):
    """mlflow.db.lock and mlflow.db.fingerprints.lock were left untracked in the research repository; they
    live in the user's cache folder now, and are still taken (tests/test_reliability_concurrency.py races
    on them)."""
    repo, cache = tmp_path / "research", tmp_path / "cache"
    repo.mkdir()
    (repo / "returns.csv").write_text((DATA / "example_returns.csv").read_text())
    done = run_in_process("log_backtest", "--returns", "returns.csv", "--no-tearsheet", "--format", "json",
                          env={"XDG_CACHE_HOME": str(cache)}, cwd=repo)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.json()["tracking_uri"] == f"sqlite:///{repo / 'mlflow.db'}"
    assert sorted(p.name for p in repo.iterdir()) == ["mlflow.db", "mlruns", "returns.csv"]
    locks = sorted(p.name.rsplit(".", 2)[1] for p in (cache / "mlflow-python" / "locks").iterdir())
    assert locks == ["fingerprints", "open"], locks
