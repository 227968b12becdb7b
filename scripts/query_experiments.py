# /// script
# requires-python = ">=3.11"
# dependencies = [
#     # the MLflow client without the server and data-science stack: `import mlflow` 1.4 s instead of 1.9 s
#     "mlflow-skinny>=3.17,<3.18",
#     # what full mlflow adds for SQL stores, the embedded local store (sqlite:///mlflow.db) included
#     "sqlalchemy>=1.4,<3",
#     "alembic>=1.10.1,<2",
#     # the PostgreSQL driver for a direct MLFLOW_TRACKING_URI=postgresql://… (imported only then; SQLAlchemy
#     # >= 2.1 maps postgresql:// to psycopg 3)
#     "psycopg[binary]>=3.2",
#     # `artifacts` and --purge of runs whose artifacts live in S3 (s3:// locations; imported only then)
#     "boto3>=1.28",
# ]
# ///
"""Find, inspect, compare and group backtests in MLflow; filters and sorting run in the store; output bounded.

Usage (as an agent types it; `mise x --` loads credentials from .env.local):
  uv run scripts/query_experiments.py experiments --with-counts
  uv run scripts/query_experiments.py experiments --filter "name LIKE 'momentum%'" --include-deleted
  uv run scripts/query_experiments.py runs --experiment momentum --order-by "metrics.sharpe DESC" \\
      --max-results 10
  uv run scripts/query_experiments.py runs --experiment momentum \\
      --filter "metrics.sharpe > 1 and params.window = '20' and tags.universe LIKE 'sp%'" --top-level
  uv run scripts/query_experiments.py runs --experiment momentum --parent-run-id 0a1b... \\
      --columns metrics.sharpe,params.window
  uv run scripts/query_experiments.py run --run-id 0a1b2c...
  uv run scripts/query_experiments.py compare --run-id 0a1b... --run-id 3c4d... --metrics sharpe,max_drawdown
  uv run scripts/query_experiments.py group --experiment momentum --by params.window --metric sharpe \\
      --agg mean,median,max,count
  uv run scripts/query_experiments.py runs --experiment momentum --max-results 5000 --format csv > runs.csv
  uv run scripts/query_experiments.py deflate --experiment momentum   # is the best run better than luck?

--filter and --order-by use MLflow's search grammar (references/query-patterns.md) and run in the store: only
the runs that are printed are downloaded (pages of 1000). JSON and table output stay under 8,000 characters
(--max-chars); when cut, stderr says so. CSV is not cut: it is meant for `> file`. Times are ISO 8601 UTC.

Output (JSON when stdout is not a terminal, a table when it is; --format overrides):
  experiments  [{experiment_id, name, lifecycle_stage, creation_time, last_update_time, description, tags,
               run_count (--with-counts)}]
  runs         [{run_id, run_name, experiment_id, status, start_time, end_time, duration_s, parent_run_id,
               metrics, params, tags}]  (table: sweep children indented under their parent)
  run          {run_id, run_name, experiment_id, experiment_name, status, start_time, end_time, duration_s,
               description, git, metrics, params, tags, datasets, artifacts, parent, children,
               children_count, url}   (git: {commit, branch, repo_url, dirty, dirty_unknown} of the code, or null)
  compare      {runs: [{run_id, run_name, label, ...}], metrics: [{metric, direction, best, values}],
               params_differ, params_same}; table/csv columns are labels: "run name (id prefix)"
  group        [{<by>, count, mean, median, max, ...}] one row per value of --by, ordered by that value
  deflate      {experiment, filter, metric, n_trials, deleted_trials, exclude_deleted, best_run_id,
               best_run_name, best_sharpe, best_is_deleted, expected_max_sharpe, deflated_sharpe_ratio, verdict,
               periods_per_year, n_bars, skew, kurtosis, per_bar, excluded, undefined}  (estimators: deflate --help; references/overfitting.md)
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import math
import os
import re
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# ---- shared preamble: identical in all four scripts (tests/test_conventions.py checks) ----
EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4, 5
EXIT_CODES_HELP = """exit codes:
  0  ok
  1  unexpected error (rerun with --debug for the traceback)
  2  bad usage or bad input (nothing was written)
  3  not found: experiment, run or metric
  4  authentication or permission: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN
  5  tracking server unreachable, timed out or failing: MLFLOW_TRACKING_URI
  130  interrupted (Ctrl-C)"""
# MLflow's own HTTP defaults retry 7 times with backoff (~4 minutes on a refused port). Ours fail in seconds;
# a value the user set in the environment always wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
SECRET_ENV_VARS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
KEY_PATTERN = re.compile(r"^[/\w.\- :]*$")  # what MLflow accepts in metric, param and tag keys
MAX_KEY_LENGTH = 250
# PYTHONDONTWRITEBYTECODE=1 (set in many containers and CI images) would make Python compile this script's
# dependencies from source on every run, which makes their import several times slower. They live in
# uv's cached environment, never in your tree, so caching their bytecode there is safe. (uv's
# `compile-bytecode` setting instead re-checks the whole environment on every `uv run`.)
sys.dont_write_bytecode = False


class CliError(Exception):
    """An expected failure: a one-line message for stderr and the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # pickled whole (code too) when it comes back from a worker process
        return type(self), (self.code, str(self))


class CliParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2) instead of usage text plus error, and takes
    no abbreviations: argparse would read a prefix (--period) as whichever long flag it starts
    (--periods-per-year), a trap for an agent that guessed a flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise CliError(EXIT_USAGE, f"{message} (see --help)")


# The credentials of a URI: everything from "://" to the LAST "@" before the host (a password may hold "@", and
# SQLAlchemy/psycopg accept a raw "/", "?" or "#" in one too), in any scheme (http, postgresql+psycopg, mysql, ...).
# An "@" later in a path or query may mask the host as well: over-masking is the safe side.
URI_CREDENTIALS = re.compile(r"(?<=://)\S*@(?=[^@\s/?#]*(?:[/?#\s]|$))")


def mask_uri(uri: str) -> str:
    """Hide credentials in a URI: user:p@ss@host -> ***@host."""
    return URI_CREDENTIALS.sub("***@", uri or "")


# The URIs resolve_tracking_uri returned: their passwords are masked in any text. A set, since in-process
# callers (tests, notebooks) resolve many times.
TRACKING_URIS: set[str] = set()


def password_pieces(uri: str) -> list[str]:
    """The password of a URI's credentials, and the pieces of it a driver shows when it splits the URI at
    another "@", "/" or ":" than we do (psycopg: host 'ss@Word9@127.0.0.1' for the password 'Pw@ss@Word9')."""
    match = URI_CREDENTIALS.search(uri or "")
    password = match.group(0)[:-1].partition(":")[2] if match else ""
    pieces = {password}
    for i, char in enumerate(password):
        if char in "@/?#:":
            pieces.update((password[:i], password[i + 1 :]))
    return [piece for piece in pieces if len(piece) >= 4]


def redact(text: str) -> str:
    """Mask URI credentials, the tracking URI's password (whole or in pieces) and the values of secret env
    vars in text that will be shown or stored."""
    text = URI_CREDENTIALS.sub("***@", str(text))
    secrets = [os.environ.get(var, "") for var in SECRET_ENV_VARS]
    for uri in (os.environ.get("MLFLOW_TRACKING_URI", ""), *TRACKING_URIS):
        secrets += password_pieces(uri)
    for value in sorted(secrets, key=len, reverse=True):  # longest first: a piece never unmasks a whole
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


class RedactedStream:
    """stderr with redact() applied to everything written: library logs (--debug) and drivers' errors quote
    URIs and passwords in their own ways."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def __getattr__(self, name):
        return getattr(self.stream, name)


# The database drivers the scripts can open a database URI with: scheme[+driver] -> (the module SQLAlchemy
# imports, its PyPI package). The scripts ship psycopg (PostgreSQL 3) alone; postgresql+psycopg2:// (MLflow's
# documented form) is served by it. Others work when installed alongside (uv run --with PACKAGE).
DB_DRIVERS = {
    "postgresql": ("psycopg", "psycopg"),  # SQLAlchemy >= 2.1 reads postgresql:// as psycopg 3
    "postgresql+psycopg": ("psycopg", "psycopg"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "PyMySQL"),
    "mssql": ("pyodbc", "pyodbc"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
    "mssql+pymssql": ("pymssql", "pymssql"),
}
TRACKING_URI_FORMS = (
    "http(s)://host:port, sqlite:///path/to/mlflow.db, postgresql://, databricks (with the Databricks "
    "credentials), or mysql:// / mssql:// with their driver installed (uv run --with PACKAGE)"
)
SQLITE_HEADER = b"SQLite format 3\x00"


def resolve_tracking_uri(cli_uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded local store ./mlflow.db (absolute).
    Checked before anything is written: a scheme MLflow can track to, a database driver that is installed
    (postgresql+psycopg2:// becomes postgresql+psycopg://), an SQLite store that is a file that lasts."""
    uri = (cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        # MLflow >= 3.7 defaults to sqlite:///mlflow.db in the working directory, but a leftover ./mlruns
        # switches it to the file store, which raises. Spelling the default out avoids that and tells the
        # user which file holds their runs.
        uri = "sqlite:///" + str(Path.cwd() / "mlflow.db")
    TRACKING_URIS.add(uri)
    form = uri.split("://", 1)[0].lower() if "://" in uri else uri.lower()
    scheme = form.split("+", 1)[0]
    where = (
        f"{'--tracking-uri' if cli_uri else 'MLFLOW_TRACKING_URI'} (MLFLOW_TRACKING_URI) {mask_uri(uri)!r}"
    )
    if scheme not in ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks"):
        raise CliError(
            EXIT_USAGE, f"{where} is not a tracking URI: use {TRACKING_URI_FORMS} (a path needs sqlite:///)"
        )
    if form == "postgresql+psycopg2":
        uri = "postgresql+psycopg" + uri[len(form) :]
        TRACKING_URIS.add(uri)
        form = "postgresql+psycopg"
    if scheme in ("postgresql", "mysql", "mssql"):
        import importlib.util

        if form not in DB_DRIVERS:
            raise CliError(
                EXIT_USAGE, f"{where}: driver {form} is not one MLflow can use here: use {TRACKING_URI_FORMS}"
            )
        module, package = DB_DRIVERS[form]
        if importlib.util.find_spec(module) is None:
            raise CliError(
                EXIT_USAGE,
                f"{where} needs the Python package {package}, which these scripts do not ship: run them with "
                f"`uv run --with {package} scripts/...`, or use {TRACKING_URI_FORMS}",
            )
    if scheme == "sqlite":
        check_sqlite_uri(uri, where)
    return uri


def check_sqlite_uri(uri: str, where: str) -> None:
    """An SQLite store must be a file that outlives the script: not in memory, in a folder that exists, and
    (when it exists) an SQLite database."""
    target = uri.split("://", 1)[1]
    if target in ("", "/") or ":memory:" in target or "mode=memory" in target:
        raise CliError(
            EXIT_USAGE,
            f"{where}: an in-memory SQLite store keeps nothing once the script exits; use a file: "
            "sqlite:///mlflow.db (relative) or sqlite:////absolute/path.db",
        )
    db = Path(target[1:].split("?")[0])
    if not db.parent.is_dir():
        raise CliError(
            EXIT_USAGE,
            f"{where}: folder {db.parent} does not exist; create it or fix the path (sqlite:///relative.db, "
            "sqlite:////absolute/path.db)",
        )
    if db.exists() or db.is_symlink():
        header = b""
        if db.is_file() and os.access(db, os.R_OK):
            with open(db, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        elif db.is_file():
            return  # unreadable: connect() says so
        if not db.is_file() or (header and header != SQLITE_HEADER):
            what = (
                "a folder"
                if db.is_dir()
                else "not a regular file"
                if not db.is_file()
                else "another kind of file"
            )
            raise CliError(
                EXIT_USAGE,
                f"{where}: {db} is not an SQLite database ({what}); point it at an MLflow store "
                "(sqlite:///mlflow.db) or at a new file",
            )


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI address of an experiment or run, for http(s) tracking servers only. The UI (3.17)
    opens in GenAI mode (traces, "Evaluations"); ?workflowType=machine_learning opens the runs view."""
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return None
    base = URI_CREDENTIALS.sub("", tracking_uri).rstrip("/")
    path = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}{path}?workflowType=machine_learning"


def store_lock_path(db: Path, kind: str) -> Path:
    """The file a local store's lock of this kind lives in: in the user's cache folder
    ($XDG_CACHE_HOME or ~/.cache, mlflow-python/locks/), not beside db, so the research repository that
    holds mlflow.db gets no lock files. Named by the store's folder (device and inode: every path to the
    store, symlinks included, finds the same lock) and file name; beside db when the cache is not writable.
    The locks coordinate one user's processes on one machine (as SQLite itself assumes)."""
    folder = db.resolve().parent
    stat = folder.stat()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlflow-python" / "locks"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return db.with_name(f"{db.name}.{kind}.lock")
    return cache / f"{stat.st_dev}-{stat.st_ino}-{db.name}.{kind}.lock"


def connect(tracking_uri: str, debug: bool = False, writes: bool = True):
    """Configure bounded HTTP retries and quiet logging, then return an MlflowClient (imports mlflow).
    A local store: read commands (writes=False) need it to exist and work when it is read-only; writes need
    it writable (checked here, before MLflow logs pages about a read-only database)."""
    return kept_from_collector(open_client, tracking_uri, debug, writes)


def kept_from_collector(load, *args):
    """load(*args) with CPython's collector paused, then every object alive frozen (gc.freeze: left out of
    later collections, still freed by reference counting; new objects are collected as usual) -> its result.
    For big imports: `import mlflow` and the SQL store's set-up add ~170,000 long-lived objects (modules,
    classes, SQLAlchemy's mappers), and the collector would sweep the growing heap three times meanwhile and
    again on every full collection while the run is written (0.08-0.18 s each, ~0.6 s of a 3 s log:
    bench/RESULTS.md)."""
    import gc

    collecting = gc.isenabled()
    gc.disable()
    try:
        return load(*args)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def open_client(tracking_uri: str, debug: bool, writes: bool):
    """connect() without its handling of the collector."""
    local = tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri
    db = Path(tracking_uri[len("sqlite:///") :].split("?")[0]) if local else None
    if db is not None and not writes and not db.exists():
        raise CliError(
            EXIT_NOT_FOUND,
            f"no MLflow store at {db.resolve()} (nothing was created): run from the folder that holds "
            "mlflow.db, or set MLFLOW_TRACKING_URI to your store or server",
        )
    read_only = db is not None and not (
        os.access(db.parent, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))
    )
    if read_only and writes:
        raise CliError(
            EXIT_AUTH,
            f"the store {db.resolve()} is read-only for this user: write to a store you own (set "
            "MLFLOW_TRACKING_URI, e.g. sqlite:///mlflow.db in your folder) or ask its owner for write access",
        )
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        import logging

        for name in ("mlflow", "alembic", "urllib3", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import mlflow
    except ModuleNotFoundError as exc:
        if exc.name != "mlflow":
            raise
        # uv deletes the files mlflow and mlflow-skinny share when a cached environment moves from one to the
        # other (an older version of a script used the full mlflow): reinstalling restores them.
        raise CliError(
            EXIT_UNEXPECTED,
            "mlflow is missing from this script's cached uv environment; repair it once with "
            f"`uv run --reinstall {sys.argv[0]} --help`",
        ) from None

    mlflow.set_tracking_uri(tracking_uri)
    if re.match(r"(postgresql|mysql|mssql)\b", tracking_uri):
        # MLflow retries a database it cannot reach or log in to 10 times over ~100 s
        # (mlflow.store.db.utils.create_sqlalchemy_engine_with_retry); like HTTP, ours give up in seconds.
        import mlflow.store.db.utils

        mlflow.store.db.utils.MAX_RETRY_COUNT = 3
    if not local or read_only:  # a read-only store can be read without the lock (nothing to create)
        return mlflow.MlflowClient(tracking_uri)
    # MLflow creates its tables (tracking and model registry) the first time a process opens a new sqlite
    # store; processes starting together on a new file race and fail ("table ... already exists"). Open the
    # store one process at a time.
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, MLflow's own behaviour
        fcntl = None
    with open(store_lock_path(db, "open"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        client = mlflow.MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    return client


def classify_error(exc: BaseException) -> tuple[int, str]:
    """Map an exception from MLflow, requests or the OS to (exit code, one-line message)."""
    text = " ".join(str(exc).split())
    code_name = str(getattr(exc, "error_code", ""))
    status = re.search(r"error code (\d{3})", text)
    status = int(status.group(1)) if status else None
    if code_name in ("UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403):
        what = "permission denied (403)" if code_name == "PERMISSION_DENIED" or status == 403 else "401"
        return EXIT_AUTH, (
            f"tracking server refused the request: {what}. Check MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) and that this user may do this"
        )
    if "Databricks credential configuration failed" in text:  # databricks:// without (valid) credentials
        return EXIT_AUTH, (
            "no Databricks credentials for this tracking URI: set DATABRICKS_HOST and DATABRICKS_TOKEN, or "
            "name a profile of ~/.databrickscfg (databricks://PROFILE or DATABRICKS_CONFIG_PROFILE; "
            "`databricks auth login` writes one)"
        )
    if re.search(r"password authentication failed", text):  # a database URI's user or password is wrong
        return EXIT_AUTH, "the database refused the login: check the user and password in MLFLOW_TRACKING_URI"
    if re.search(r"NoCredentialsError|Unable to locate credentials|InvalidAccessKeyId|SignatureDoesNotMatch",
                 f"{type(exc).__name__} {text}"):  # fmt: skip
        return EXIT_AUTH, (
            "the S3 artifact store got no valid AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE), and MLFLOW_S3_ENDPOINT_URL for an S3-compatible store"
        )
    if (status or 200) < 500 and re.search(r"not in a valid JSON format|Response body: '\s*<", text):  # HTML
        return EXIT_UNREACHABLE, (
            f"the tracking URI does not answer like an MLflow tracking server (HTTP {status or 200}, an HTML "
            "page): check MLFLOW_TRACKING_URI (host, port, path prefix)"
        )
    unreachable = (
        r"Max retries exceeded|Connection refused|timed out|Timeout|NewConnectionError|Failed to establish"
        r"|Name or service not known|Connection aborted|RemoteDisconnected|ConnectionError|ResponseError"
    )
    if (status and status >= 500) or re.search(unreachable, text):
        return EXIT_UNREACHABLE, (
            f"tracking server unreachable or failing ({text[:160]}). Check MLFLOW_TRACKING_URI and that "
            "the server is up; MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES tune waiting"
        )
    if code_name == "RESOURCE_DOES_NOT_EXIST":
        return EXIT_NOT_FOUND, text[:300]
    if code_name in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"):
        return EXIT_USAGE, text[:300]
    return EXIT_UNEXPECTED, f"{type(exc).__name__}: {text[:300]} (rerun with --debug for the traceback)"


def run_cli(action, debug: bool) -> int:
    """Run action(); turn every failure into one redacted line on stderr and a documented exit code.
    Library warnings (MLflow, pandas, pydantic) stay off stderr unless --debug, for this call only."""
    import contextlib
    import warnings

    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(RedactedStream(sys.stderr)):
            if not debug:
                warnings.simplefilter("ignore")
            return action() or EXIT_OK
    except CliError as exc:
        error, message, code = exc, str(exc), exc.code
    except KeyboardInterrupt as exc:
        error, message, code = exc, "interrupted", 130
    except Exception as exc:  # noqa: BLE001 - the one place every unexpected failure is reported
        error, (code, message) = exc, classify_error(exc)
    if debug and code != 130:  # the traceback holds URIs and messages too: redacted like the error line
        sys.stderr.write(redact("".join(traceback.format_exception(error))))
    print(f"error: {redact(message)}", file=sys.stderr)
    return code


def output_format(requested: str | None) -> str:
    """--format if given, else a table for a person at a terminal and JSON for a program."""
    return requested or ("table" if sys.stdout.isatty() else "json")


def json_safe(value):
    """Non-finite floats become null (valid JSON for agents); everything else passes through."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def flat_rows(data) -> list[dict]:
    """Rows for table/csv: a list of objects, or one object as key/value rows; nested objects get dotted keys."""

    def flatten(obj: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in obj.items():
            if isinstance(value, dict) and value:
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    if isinstance(data, dict):
        return [{"key": k, "value": v} for k, v in flatten(data).items()]
    return [flatten(row) if isinstance(row, dict) else {"value": row} for row in data]


def cell(value, exact: bool = False) -> str:
    """Text of one table or csv cell: floats at 6 significant digits for people, exact (repr) for csv."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def emit(data, fmt: str) -> None:
    """Print data to stdout as json, table or csv. stdout carries data only."""
    data = json_safe(data)
    if fmt == "json":
        if isinstance(data, list):  # one item per line: compact for agents, still readable and greppable
            body = ",\n".join(json.dumps(item, default=str, ensure_ascii=False) for item in data)
            sys.stdout.write(f"[\n{body}\n]\n" if data else "[]\n")
        else:
            sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
        return
    rows = flat_rows(data)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if fmt == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: cell(row.get(c), exact=True) for c in columns} for row in rows)
        return
    table = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table]
    sys.stdout.write("\n".join(lines) + "\n")


# ---- end of shared preamble ----

MAX_OUTPUT_CHARS = 8000  # default bound on JSON/table output (agents' context); --max-chars 0 lifts it
PAGE_SIZE = 1000  # runs per search request (MLflow's default page; the server allows more, we don't need it)
DEFAULT_MAX_RUNS = 20
GROUP_MAX_RUNS = 10000  # group aggregates over at most this many runs unless --max-runs says otherwise
COUNT_CAP_HTTP = 10000  # --with-counts over HTTP pages through runs; stop counting an experiment here
ARTIFACT_LIST_LIMIT = 200
CHILDREN_LIMIT = 100
QUERY_DOC = "references/query-patterns.md"
HOUSEKEEPING_DOC = "references/experiment-management.md"
PARENT_TAG = "mlflow.parentRunId"
DESCRIPTION_TAG = "mlflow.note.content"
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")

# The backtest metrics shown by default (in this order) and which way is better. "higher": bigger wins;
# "lower": smaller wins; "zero": closest to 0 wins (drawdowns are logged as negative fractions, e.g. -0.23).
# A metric not listed here is shown but no best value is marked.
METRIC_DIRECTIONS = {
    "sharpe": "higher",
    "sortino": "higher",
    "calmar": "higher",
    "cagr": "higher",
    "total_return": "higher",
    "volatility": "lower",
    "max_drawdown": "zero",
    "win_rate": "higher",
    "profit_factor": "higher",
    "omega": "higher",
    "smart_sharpe": "higher",
    "smart_sortino": "higher",
    "adjusted_sortino": "higher",
    "probabilistic_sharpe_ratio": "higher",
    "recovery_factor": "higher",
    "serenity_index": "higher",
    "gain_to_pain_ratio": "higher",
    "common_sense_ratio": "higher",
    "payoff_ratio": "higher",
    "tail_ratio": "higher",
    "ulcer_performance_index": "higher",
    "avg_drawdown": "zero",
    "value_at_risk": "zero",
    "conditional_value_at_risk": "zero",
    "ulcer_index": "lower",
    "longest_drawdown_days": "lower",
    "avg_drawdown_days": "lower",
    "risk_of_ruin": "lower",
}
KEY_METRICS = (
    "sharpe",
    "sortino",
    "cagr",
    "max_drawdown",
    "volatility",
    "total_return",
    "win_rate",
    "profit_factor",
    "calmar",
)
# A walk-forward parent (tag backtest.walk_forward=true, issue 22) is judged by its stitched out-of-sample
# series: runs, compare and group show these in place of the key metrics it does not log.
WALK_FORWARD_METRICS = tuple(f"oos_{name}" for name in KEY_METRICS) + (
    "is_sharpe",
    "wf_efficiency",
    "n_folds",
    "positive_fold_share",
    "pick_stability",
)
FOLD_METRICS = tuple(f"oos_{name}" for name in KEY_METRICS) + ("is_sharpe",)  # a fold: its test window
AGGREGATES = ("mean", "median", "min", "max", "std", "sum", "count")
DEFAULT_AGGREGATES = "mean,median,max,count"


# ---- deflated Sharpe ratio: identical in query_experiments.py and log_backtest.py (test_conventions checks) ----
# Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest
# Overfitting and Non-Normality", Journal of Portfolio Management 40(5). Everything here is in per-bar units:
# a Sharpe ratio annualised with P bars per year is divided by sqrt(P) first.
EULER_GAMMA = 0.5772156649015329


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """The Sharpe ratio the best of n_trials independent trials reaches by luck alone (every true Sharpe 0):
    E[max] ~ sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e))), g the Euler-Mascheroni constant,
    Z^-1 the standard normal quantile, V the variance of the trials' Sharpe ratios (ddof 1; result in the
    same units). NaN (undefined) for fewer than 2 trials or a variance that is not finite and positive."""
    from statistics import NormalDist

    if n_trials < 2 or not math.isfinite(variance) or variance <= 0:
        return math.nan
    z = NormalDist().inv_cdf
    spread = (1 - EULER_GAMMA) * z(1 - 1 / n_trials) + EULER_GAMMA * z(1 - 1 / (n_trials * math.e))
    return math.sqrt(variance) * spread


def probabilistic_sharpe_ratio(sharpe: float, benchmark: float, n_bars: int, skew: float, kurtosis: float):
    """P(true Sharpe > benchmark) = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2))
    (Bailey & Lopez de Prado 2012): SR, SR* per bar, T bars, sample skewness and NON-excess kurtosis (normal:
    3) of the bar returns. NaN (undefined) for fewer than 2 bars, a non-finite input or a non-positive
    variance term (kurtosis too small for the skew)."""
    from statistics import NormalDist

    defined = all(
        isinstance(v, int | float) and math.isfinite(v) for v in (sharpe, benchmark, skew, kurtosis)
    )
    if not defined or n_bars is None or n_bars < 2:
        return math.nan
    spread = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if spread <= 0:
        return math.nan
    return NormalDist().cdf((sharpe - benchmark) * math.sqrt(n_bars - 1) / math.sqrt(spread))


def deflated_sharpe_ratio(
    sharpe: float, trial_sharpes: list[float], n_bars: int, skew: float, kurtosis: float
) -> tuple[float, float]:
    """(expected maximum Sharpe of the trials, deflated Sharpe ratio), both per bar / a probability.
    DSR = PSR(SR* = E[max]) of the selected trial: the probability that its true Sharpe ratio exceeds what
    the best of len(trial_sharpes) trials would show by luck. trial_sharpes: every trial's per-bar Sharpe
    (the selected one included); their sample variance (ddof 1) is V. kurtosis: non-excess."""
    from statistics import variance

    trials = [float(v) for v in trial_sharpes if isinstance(v, int | float) and math.isfinite(v)]
    if len(trials) < 2:
        return math.nan, math.nan
    expected = expected_max_sharpe(len(trials), variance(trials))
    return expected, probabilistic_sharpe_ratio(sharpe, expected, n_bars, skew, kurtosis)


# ---- end of deflated Sharpe ratio ----


# ---- stress windows: identical in query_experiments.py and log_backtest.py (test_conventions checks) ----
# The named stress windows and the period statistics (references/periods.md).
@dataclass(frozen=True)
class StressWindow:
    """A named window of dates, both inclusive (a bar on `end` at any time of day is inside)."""

    name: str  # lower-case key: the metric stress_<name>_return
    label: str
    start: str  # YYYY-MM-DD
    end: str  # YYYY-MM-DD


# Dates and their sources: references/periods.md ("Stress windows").
STRESS_WINDOWS = (
    StressWindow("dotcom", "Dot-com crash", "2000-03-10", "2000-09-10"),
    StressWindow("sept11", "9/11", "2001-09-11", "2001-10-11"),
    StressWindow("gfc", "2008 financial crisis", "2007-10-09", "2009-03-09"),
    StressWindow("flash_crash", "2010 flash crash", "2010-05-05", "2010-05-10"),
    StressWindow("us_downgrade", "2011 US downgrade", "2011-08-05", "2011-09-05"),
    StressWindow("yuan_devaluation", "2015 yuan devaluation", "2015-08-10", "2015-10-10"),
    StressWindow("volmageddon", "February 2018 volatility spike", "2018-01-26", "2018-02-08"),
    StressWindow("q4_2018", "Q4 2018 sell-off", "2018-10-01", "2018-12-24"),
    StressWindow("covid", "2020 COVID crash", "2020-02-19", "2020-03-23"),
    StressWindow("rate_shock_2022", "2022 rate shock", "2022-01-03", "2022-10-12"),
)
PERIOD_KINDS = ("year", "quarter", "month", "stress")
PERIOD_STATS = ("return", "volatility", "sharpe", "max_drawdown")
# ---- end of stress windows ----


# ---- pure functions: validation and shaping (unit-tested by importing this file) ----


def iso_utc(ms) -> str | None:
    """Milliseconds since the epoch -> '2026-01-31T12:00:00Z' (None stays None)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (order kept, duplicates dropped)."""
    return list(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))


def quote(value: str) -> str:
    """A string literal for MLflow's filter grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_columns(text: str | None) -> dict[str, list[str]] | None:
    """--columns metrics.sharpe,params.window,tags.* -> {'metrics': [...], 'params': [...], 'tags': [...]}."""
    if text is None:
        return None
    chosen: dict[str, list[str]] = {"metrics": [], "params": [], "tags": []}
    aliases = {"metric": "metrics", "param": "params", "tag": "tags"}
    for item in split_list(text):
        prefix, dot, key = item.partition(".")
        prefix = aliases.get(prefix, prefix)
        if not dot or prefix not in chosen or not key:
            raise CliError(
                EXIT_USAGE,
                f"--columns item {item!r} must look like metrics.NAME, params.NAME or tags.NAME "
                "(NAME may be *), e.g. --columns metrics.sharpe,params.window",
            )
        chosen[prefix].append(key)
    return chosen


def build_run_filter(user_filter: str | None, status: str | None, parent_run_id: str | None, top_level: bool):
    """AND the user's filter with the clauses our flags stand for (MLflow's grammar has only AND)."""
    clauses = [user_filter.strip()] if user_filter and user_filter.strip() else []
    if status:
        clauses.append(f"attributes.status = {quote(status)}")
    if parent_run_id:
        clauses.append(f"tags.`{PARENT_TAG}` = {quote(parent_run_id)}")
    if top_level:
        clauses.append(f"tags.`{PARENT_TAG}` IS NULL")
    return " and ".join(clauses)


def select(values: dict, keys: list[str] | None, default_keys=None) -> dict:
    """Pick keys from a metrics/params/tags dict: explicit keys (absent ones as null; '*' = all)."""
    if keys is None:
        if default_keys is None:
            return dict(sorted(values.items()))
        return {k: values[k] for k in default_keys if k in values}
    if "*" in keys:
        return dict(sorted(values.items()))
    return {k: values.get(k) for k in keys}


def walk_forward_keys(tags: dict, params: dict | None = None) -> tuple[str, ...]:
    """The out-of-sample metrics shown for a walk-forward parent and for its folds (param fold, a parent:
    their metrics are their test window's, oos_<name>); () for any other run."""
    if tags.get(WALK_FORWARD_TAG) == "true":
        return WALK_FORWARD_METRICS
    if params and FOLD_PARAM in params and PARENT_TAG in tags:
        return FOLD_METRICS
    return ()


def metric_direction(name: str) -> str | None:
    """Which way a metric is better; is_/oos_/best_ variants go the way of the metric they split."""
    for prefix in ("", "is_", "oos_", "best_"):
        if name.startswith(prefix) and name[len(prefix) :] in METRIC_DIRECTIONS:
            return METRIC_DIRECTIONS[name[len(prefix) :]]
    return {"wf_efficiency": "higher"}.get(name)


def run_record(run, columns: dict | None = None, all_columns: bool = False) -> dict:
    """One run as the JSON object `runs` prints."""
    info, data = run.info, run.data
    tags = data.tags
    if all_columns:
        metrics, params, shown_tags = (
            dict(sorted(data.metrics.items())),
            dict(sorted(data.params.items())),
            tags,
        )
    elif columns is not None:
        metrics = select(data.metrics, columns["metrics"])
        params = select(data.params, columns["params"])
        shown_tags = select(tags, columns["tags"])
    else:
        keys = walk_forward_keys(tags, data.params)
        metrics = select(data.metrics, None, (KEY_METRICS if keys is not FOLD_METRICS else ()) + keys)
        params = dict(sorted(data.params.items()))
        # log_backtest's bookkeeping tags (fingerprint, skill version, undefined metrics) stay out of the
        # default listing: they cost ~200 characters a run. --all-columns, --columns tags.* and `run` show them.
        shown_tags = {k: v for k, v in sorted(tags.items()) if not k.startswith(("mlflow.", "backtest."))}
    duration = None
    if info.start_time and info.end_time:
        duration = round((info.end_time - info.start_time) / 1000, 3)
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "start_time": iso_utc(info.start_time),
        "end_time": iso_utc(info.end_time),
        "duration_s": duration,
        "parent_run_id": tags.get(PARENT_TAG),
        "metrics": metrics,
        "params": params,
        "tags": shown_tags,
    }


def tree_order(records: list[dict]) -> list[tuple[dict, int]]:
    """(record, depth) with each printed child right after its printed parent; other order kept."""
    ids = {r["run_id"] for r in records}
    children: dict[str, list[dict]] = {}
    for record in records:
        parent = record.get("parent_run_id")
        if parent in ids and parent != record["run_id"]:
            children.setdefault(parent, []).append(record)
    ordered: list[tuple[dict, int]] = []
    seen: set[str] = set()

    def add(record: dict, depth: int) -> None:
        if record["run_id"] in seen:
            return
        seen.add(record["run_id"])
        ordered.append((record, depth))
        for child in children.get(record["run_id"], []):
            add(child, depth + 1)

    for record in records:
        if record.get("parent_run_id") not in ids:
            add(record, 0)
    for record in records:  # a parent cycle cannot happen in MLflow, but never drop a run
        add(record, 0)
    return ordered


def table_rows(records: list[dict], show_tags: bool) -> list[dict]:
    """Runs for the table view: children indented under their parent, long ids shortened."""
    rows = []
    for record, depth in tree_order(records):
        name = record["run_name"] or ""
        row = {
            "run_id": record["run_id"],
            "run_name": ("  " * (depth - 1) + "└ " + name) if depth else name,
            "status": record["status"],
            "start_time": record["start_time"],
            "duration_s": record["duration_s"],
        }
        if depth == 0 and record.get("parent_run_id"):
            row["parent"] = record["parent_run_id"][:8]
        row.update({f"metrics.{k}": v for k, v in record["metrics"].items()})
        row.update({f"params.{k}": v for k, v in record["params"].items()})
        if show_tags:
            row.update({f"tags.{k}": v for k, v in record["tags"].items()})
        rows.append(row)
    return rows


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def best_runs(values: dict[str, float | None], direction: str | None) -> list[str]:
    """Run ids holding the best value of one metric in its direction (ties: all); [] if undefined."""
    present = {run_id: v for run_id, v in values.items() if finite(v)}
    if not present or direction not in ("higher", "lower", "zero"):
        return []
    score = {"higher": lambda v: -v, "lower": lambda v: v, "zero": lambda v: abs(v)}[direction]
    best = min(score(v) for v in present.values())
    return [run_id for run_id, v in present.items() if score(v) == best]


def run_labels(runs: list[tuple[str, str | None]]) -> dict[str, str]:
    """Column labels for compared runs: the run name a person recognises and the id prefix that finds it,
    e.g. "mom-12-1 (3355eb87)"."""
    return {run_id: f"{name or 'run'} ({run_id[:8]})" for run_id, name in runs}


def compare_runs(runs: list[dict], metric_names: list[str] | None) -> dict:
    """runs: [{run_id, run_name, experiment_id, status, metrics, params}] -> the compare object."""
    all_metrics = list(dict.fromkeys(k for r in runs for k in sorted(r["metrics"])))
    if metric_names is None:
        shown = KEY_METRICS + tuple(
            k for r in runs for k in walk_forward_keys(r.get("tags", {}), r.get("params"))
        )
        metric_names = [m for m in dict.fromkeys(shown) if m in all_metrics] or all_metrics
    elif metric_names == ["all"]:
        metric_names = [m for m in KEY_METRICS if m in all_metrics] + sorted(
            m for m in all_metrics if m not in KEY_METRICS
        )
    metrics = []
    for name in metric_names:
        values = {r["run_id"]: r["metrics"].get(name) for r in runs}
        direction = metric_direction(name)
        metrics.append(
            {"metric": name, "direction": direction, "best": best_runs(values, direction), "values": values}
        )
    param_keys = sorted({k for r in runs for k in r["params"]})
    differ, same = [], {}
    for key in param_keys:
        values = {r["run_id"]: r["params"].get(key) for r in runs}
        if len(set(values.values())) > 1:
            differ.append({"param": key, "values": values})
        else:
            same[key] = next(iter(values.values()))
    labels = run_labels([(r["run_id"], r["run_name"]) for r in runs])
    return {
        "runs": [
            {
                **{k: r[k] for k in ("run_id", "run_name", "experiment_id", "status", "start_time")},
                "label": labels[r["run_id"]],
            }
            for r in runs
        ],  # fmt: skip
        "metrics": metrics,
        "params_differ": differ,
        "params_same": same,
    }


def compare_rows(result: dict, mark: bool) -> list[dict]:
    """The compare object as a metric x run matrix for table/csv (mark: add '*' to best values)."""
    labels = {r["run_id"]: r["label"] for r in result["runs"]}
    rows = []
    for item in result["metrics"]:
        row = {
            "name": item["metric"],
            "better": item["direction"] or "",
            "best": ",".join(labels[i] for i in item["best"]),
        }
        for run_id, value in item["values"].items():
            shown = cell(json_safe(value)) if mark else value
            row[labels[run_id]] = f"{shown} *" if mark and run_id in item["best"] else shown
        rows.append(row)
    for item in result["params_differ"]:
        row = {"name": f"params.{item['param']}", "better": "", "best": ""}
        row.update({labels[run_id]: value for run_id, value in item["values"].items()})
        rows.append(row)
    return rows


def sort_key_for(values: list[str]):
    """Order group keys numerically when they all parse as numbers, else as text (None last)."""

    def as_float(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return None

    numeric = all(as_float(v) is not None for v in values if v is not None)
    if numeric:
        return lambda v: (v is None, as_float(v) if v is not None else 0.0, "")
    return lambda v: (v is None, 0.0, str(v))


def aggregate(values: list[float], agg: str):
    if agg == "count":
        return len(values)
    if not values:
        return None
    if agg == "mean":
        return statistics.fmean(values)
    if agg == "median":
        return statistics.median(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    if agg == "sum":
        return math.fsum(values)
    if agg == "std":
        return statistics.stdev(values) if len(values) > 1 else None
    raise ValueError(agg)


def group_rows(pairs: list[tuple[str | None, float | None]], by: str, aggs: list[str]) -> list[dict]:
    """(group value, metric value) pairs -> one row per group value: aggregates of the finite values."""
    groups: dict[str | None, list[float]] = {}
    for key, value in pairs:
        bucket = groups.setdefault(key, [])
        if finite(value):
            bucket.append(float(value))
    rows = []
    for key in sorted(groups, key=sort_key_for(list(groups))):
        row = {by: key}
        row.update({agg: aggregate(groups[key], agg) for agg in aggs})
        rows.append(row)
    return rows


# ---- deflate: is the best run of an experiment better than luck? (pure; fed by fetch_trials) ----
SWEEP_TAG = "backtest.sweep"  # log_backtest's sweep parents: they summarise a search, they are not a trial
WALK_FORWARD_TAG = "backtest.walk_forward"  # a walk-forward parent: one trial (its oos_ metrics); folds: none
FOLD_PARAM = "fold"  # a walk-forward fold run: param fold, tag mlflow.parentRunId = its walk-forward parent
DSR_CONFIDENCE = 0.95  # the verdict calls a best run "likely real" from this deflated Sharpe ratio on
STORED_INF = 1.79e308  # MLflow stores +-inf as +-1.797e308: such a value is not a Sharpe ratio

DEFLATE_HELP = (  # the estimators, stated once: deflate's --help
    "example: deflate --experiment momentum --filter \"params.universe = 'sp500'\"\n\n"
    "Every finished run with --metric is a trial, deleted runs included (--exclude-deleted leaves them out);\n"
    "runs with the same logged return series (dataset digest) count once. Sweep parents (backtest.sweep=true)\n"
    "are not trials, their children are; a walk-forward parent (backtest.walk_forward=true) is one trial\n"
    "read from its oos_ metrics (oos_<metric>, oos_skew, oos_kurtosis, params.oos_n_bars), its folds none.\n"
    "Reads logged values only: metrics.<metric> (annualised), metrics.skew, metrics.kurtosis (excess, as\n"
    "log_backtest logs it; +3 is used), params.periods_per_year, params.n_bars. Estimators:\n"
    "  per-bar SR = metric / sqrt(periods_per_year) (runs of different bar frequencies compare per bar)\n"
    "  V = sample variance (ddof 1) of the trials' per-bar SR; the best = the highest per-bar SR\n"
    "  expected_max_sharpe = sqrt(V) ((1 - g) Z^-1(1 - 1/N) + g Z^-1(1 - 1/(N e))), g = 0.5772...,\n"
    "      annualised with the best run's periods_per_year\n"
    "  deflated_sharpe_ratio = Phi((SR - E[max]) sqrt(T - 1) / sqrt(1 - skew SR + (kurtosis - 1)/4 SR^2)),\n"
    "      T = the best run's n_bars (Bailey & Lopez de Prado 2014, The Deflated Sharpe Ratio)\n"
    "Undefined values are null with a reason under `undefined`. How to read them: references/overfitting.md"
)


@dataclass
class Trial:
    """What deflate reads of one run: logged metrics and params only, nothing recomputed from returns.
    A walk-forward parent's values are its oos_ ones (the stitched out-of-sample series)."""

    run_id: str
    run_name: str | None
    sharpe: float | None  # the --metric value as logged: an annualised Sharpe ratio
    periods_per_year: str | None  # params are text
    n_bars: str | None
    skew: float | None
    kurtosis: float | None  # EXCESS kurtosis, as log_backtest logs it (QuantStats' convention: normal = 0)
    role: str = (
        "trial"  # "trial", "walk_forward_parent" (also one trial), "sweep_parent", "walk_forward_fold"
    )
    deleted: bool = False
    series: str | None = None  # the logged return series' dataset digest: same digest, same trial
    start_time: int = 0


def defined_value(value) -> float | None:
    """A logged metric as a float, or None when absent, NaN or a stored infinity."""
    if not finite(value) or abs(value) >= STORED_INF:
        return None
    return float(value)


def positive_number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def percent(probability: float) -> str:
    """A probability as a percentage that never rounds to a certainty it is not: 0.996 -> '99.6%', never
    '100%'; 0.53 -> '53%'."""
    for digits in range(5):
        text = f"{probability:.{digits}%}"
        if (0 < probability < 1) and float(text[:-1]) in (0.0, 100.0):
            continue
        return text
    return "> 99.999%" if probability > 0.5 else "< 0.001%"


def ratio(value: float) -> str:
    """A deflated Sharpe ratio at 2 decimals, more where 2 would show 0.00 or 1.00 for a value that is not."""
    for digits in range(2, 7):
        text = f"{value:.{digits}f}"
        if (0 < value < 1) and float(text) in (0.0, 1.0):
            continue
        return text
    return f"{value:.6g}"


def deflate_verdict(n: int, name: str | None, best: float | None, expected: float, dsr: float, why) -> str:
    """One sentence an agent can repeat to a person."""
    label = f"run {name!r}" if name else "the best run"
    if best is None:
        return f"No verdict: {why}."
    if not math.isfinite(dsr):
        return f"No verdict on {label} (Sharpe {best:.2f}, best of {n}): the deflated Sharpe ratio is undefined ({why})."
    head = (
        f"The best of {n} runs, {label} with Sharpe {best:.2f}, has a {percent(dsr)} probability of a true "
        f"Sharpe above the {expected:.2f} that the best of {n} skill-less trials would show by luck"
    )
    if dsr >= DSR_CONFIDENCE:
        return f"{head}: likely a real edge (deflated Sharpe ratio {ratio(dsr)} >= {DSR_CONFIDENCE})."
    return f"{head}: not evidence of a real edge (deflated Sharpe ratio {ratio(dsr)} < {DSR_CONFIDENCE})."


def deleted_sentence(counted: int, left_out: int, exclude_deleted: bool) -> str:
    """What the verdict says about deleted runs: deleting the losers must never raise the DSR unseen."""
    if exclude_deleted:
        return f" Deleted runs left out (--exclude-deleted): {left_out}."
    return f" Deleted runs count as trials: {counted} of them here (--exclude-deleted leaves them out)."


def distinct_trials(trials: list[Trial]) -> tuple[list[Trial], int]:
    """One trial per logged return series: runs with the same dataset digest (a rerun, a re-log with a
    hold-out, an interrupted sweep's child next to its rerun, a deleted run and its rerun) count once; the
    one kept is active before deleted, then the earliest. -> (trials, how many were repeats)."""
    kept: dict[str, Trial] = {}
    for trial in sorted(trials, key=lambda t: (t.deleted, t.start_time, t.run_id)):
        kept.setdefault(trial.series or f"run:{trial.run_id}", trial)
    chosen = set(map(id, kept.values()))
    return [t for t in trials if id(t) in chosen], len(trials) - len(kept)


def deflate_summary(trials: list[Trial], metric: str, exclude_deleted: bool = False) -> dict:
    """The deflate object from the runs' logged values (estimators: DEFLATE_HELP)."""
    excluded = {"sweep_parents": 0, "walk_forward_folds": 0, "same_series": 0, "deleted": 0,
                "no_periods_per_year": 0}  # fmt: skip
    candidates: list[Trial] = []
    for trial in trials:
        if trial.role == "sweep_parent":  # counted whether or not it logs the metric: it is never a trial
            excluded["sweep_parents"] += 1
        elif trial.role == "walk_forward_fold":
            excluded["walk_forward_folds"] += 1
        elif defined_value(trial.sharpe) is None:
            continue  # not a trial of this metric
        elif trial.deleted and exclude_deleted:
            excluded["deleted"] += 1
        else:
            candidates.append(trial)
    candidates, excluded["same_series"] = distinct_trials(candidates)
    usable: list[tuple[Trial, float, float]] = []  # (trial, annualised value, bars per year)
    for trial in candidates:
        periods = positive_number(trial.periods_per_year)
        if periods is None:
            excluded["no_periods_per_year"] += 1
            continue
        usable.append((trial, defined_value(trial.sharpe), periods))  # type: ignore[arg-type]
    deleted = sum(trial.deleted for trial, _, _ in usable)
    note = deleted_sentence(deleted, excluded["deleted"], exclude_deleted)
    per_bar = [value / math.sqrt(periods) for _, value, periods in usable]
    undefined: dict[str, str] = {}
    out: dict = {"metric": metric, "n_trials": len(usable), "deleted_trials": deleted,
                 "exclude_deleted": exclude_deleted}  # fmt: skip
    if not usable:
        why = f"no finished run has a finite {metric!r} and a periods_per_year param"
        out.update(best_run_id=None, best_run_name=None, best_sharpe=None, expected_max_sharpe=None,
                   deflated_sharpe_ratio=None,
                   verdict=deflate_verdict(0, None, None, math.nan, math.nan, why) + note)  # fmt: skip
        out.update(excluded=excluded, undefined={"deflated_sharpe_ratio": why})
        return out
    index = max(range(len(usable)), key=per_bar.__getitem__)  # per-bar units: mixed bar frequencies compare
    best, value, periods = usable[index]
    variance = statistics.variance(per_bar) if len(per_bar) > 1 else math.nan
    n_bars = positive_number(best.n_bars)
    skew, excess = defined_value(best.skew), defined_value(best.kurtosis)
    kurtosis = excess + 3 if excess is not None else None
    expected, dsr = deflated_sharpe_ratio(
        per_bar[index],
        per_bar,
        int(n_bars) if n_bars else None,
        skew,
        kurtosis,  # type: ignore[arg-type]
    )
    if len(usable) < 2:
        undefined["expected_max_sharpe"] = "needs at least 2 trials"
    elif not variance > 0:
        undefined["expected_max_sharpe"] = "every trial has the same Sharpe ratio (zero variance)"
    oos = "oos_" if best.role == "walk_forward_parent" else ""
    missing = [name for name, v in ((f"params.{oos}n_bars", n_bars), (f"metrics.{oos}skew", skew),
                                    (f"metrics.{oos}kurtosis", kurtosis)) if v is None]  # fmt: skip
    if "expected_max_sharpe" in undefined:
        undefined["deflated_sharpe_ratio"] = undefined["expected_max_sharpe"]
    elif missing:
        undefined["deflated_sharpe_ratio"] = f"the best run has no {', '.join(missing)}"
    elif not math.isfinite(dsr):
        undefined["deflated_sharpe_ratio"] = "1 - skew SR + (kurtosis - 1)/4 SR^2 <= 0 for the best run"
    scale = math.sqrt(periods)
    out.update(
        best_run_id=best.run_id,
        best_run_name=best.run_name,
        best_sharpe=value,
        best_is_deleted=best.deleted,
        expected_max_sharpe=expected * scale if math.isfinite(expected) else None,
        deflated_sharpe_ratio=dsr if math.isfinite(dsr) else None,
        verdict=deflate_verdict(
            len(usable),
            best.run_name,
            value,
            expected * scale,
            dsr,
            "; ".join(dict.fromkeys(undefined.values())),
        )
        + note,
        periods_per_year=periods,
        n_bars=int(n_bars) if n_bars else None,
        skew=skew,
        kurtosis=kurtosis,
        per_bar={"best_sharpe": per_bar[index], "expected_max_sharpe": expected, "sharpe_variance": variance},
        excluded=excluded,
        undefined=undefined,
    )
    return out


def render(data, fmt: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        emit(data, fmt)
    return buffer.getvalue()


def shrink_largest(data: dict) -> str | None:
    """Halve the largest list or dict inside an object (in place); returns its key, None if nothing left."""
    sizes = {
        key: len(json.dumps(json_safe(value), default=str))
        for key, value in data.items()
        if isinstance(value, list | dict) and value
    }
    if not sizes:
        return None
    key = max(sizes, key=sizes.get)
    value = data[key]
    keep = len(value) // 2
    data[key] = value[:keep] if isinstance(value, list) else dict(list(value.items())[:keep])
    return key


def bounded(data, fmt: str, max_chars: int) -> tuple[str, str | None]:
    """Render data within max_chars (0 = no bound); returns (text, note for stderr or None).

    A list loses rows from the end; an object loses the second half of its largest lists/dicts, repeatedly."""
    text = render(data, fmt)
    if not max_chars or len(text) <= max_chars:
        return text, None
    hint = "get the rest with --max-chars 0, fewer --columns, or --format csv > FILE"
    if isinstance(data, list):
        low, high = 0, len(data)  # largest n with render(data[:n]) <= max_chars
        while low < high:
            mid = (low + high + 1) // 2
            if len(render(data[:mid], fmt)) <= max_chars:
                low = mid
            else:
                high = mid - 1
        if low == 0 and data:  # never print [] for rows that exist: an agent would read "no runs"
            return render(data[:1], fmt), (
                f"output over {max_chars} characters: showing only the first of {len(data)} rows, whole; {hint}"
            )
        note = f"output cut to the first {low} of {len(data)} rows ({max_chars} characters); {hint}"
        return render(data[:low], fmt), note
    data = json.loads(json.dumps(json_safe(data), default=str))  # a copy we may cut
    cut: list[str] = []
    while len(text) > max_chars:
        key = shrink_largest(data)
        if key is None:
            break
        cut.append(key)
        text = render(data, fmt)
    fields = ", ".join(dict.fromkeys(cut))
    return text, f"output cut to {max_chars} characters by shortening {fields}; {hint}"


def print_bounded(data, fmt: str, max_chars: int | None) -> None:
    limit = (0 if fmt == "csv" else MAX_OUTPUT_CHARS) if max_chars is None else max_chars
    text, note = bounded(data, fmt, limit)
    sys.stdout.write(text)
    if note:
        print(f"warning: {note}", file=sys.stderr)


# ---- MLflow I/O ----


def filter_error(exc, flag: str) -> CliError | None:
    """A search MLflow rejected (bad filter or order-by) -> exit 2 with MLflow's reason and where to look."""
    code = str(getattr(exc, "error_code", ""))
    if code not in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
        return None
    reason = " ".join(str(getattr(exc, "message", exc)).split())[:300]
    return CliError(
        EXIT_USAGE, f"MLflow rejected {flag}: {reason}. See {QUERY_DOC} for the grammar and examples"
    )


def all_experiments(client, view_type) -> list:
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=view_type, max_results=PAGE_SIZE, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            return experiments


def resolve_experiments(client, names: list[str]) -> list:
    """Experiment names (or ids) -> active experiments; unknown or deleted: exit 3 with the closest names."""
    return [find_experiment(client, name) for name in names]


def closest(word: str, candidates, n: int = 5) -> list[str]:
    """Up to n candidates like word: those containing it first, then difflib's close matches."""
    candidates = [c for c in dict.fromkeys(candidates) if c]
    found = [c for c in candidates if word and (c.startswith(word) or word.lower() in c.lower())][:n]
    for match in difflib.get_close_matches(word, candidates, n=n, cutoff=0.4):
        if match not in found:
            found.append(match)
    return found[:n]


def find_experiment(client, name_or_id: str):
    """An active experiment by name, else by id; unknown or deleted: exit 3 naming the closest names.
    Identical in query_experiments.py and get_metric_history.py (tests/test_conventions.py checks)."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name_or_id)
    if experiment is None and name_or_id.isdigit():
        try:
            experiment = client.get_experiment(name_or_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    if experiment is None:
        known = [e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000)]
        near = closest(name_or_id, known)
        hint = f"closest: {', '.join(near)}" if near else "no experiment has a similar name"
        raise CliError(
            EXIT_NOT_FOUND,
            f"experiment {name_or_id!r} not found ({hint}); list them with: query_experiments.py experiments",
        )
    if experiment.lifecycle_stage == "deleted":
        raise CliError(
            EXIT_NOT_FOUND,
            f"experiment {experiment.name!r} (id {experiment.experiment_id}) is deleted; bring it back "
            f"with create_experiment.py --name {experiment.name!r} --restore",
        )
    return experiment


def refresh_sqlite_statistics(client) -> None:
    """Give SQLite the table statistics MLflow never collects, so ordering by a metric stays fast.

    Without sqlite_stat1, SQLite plans MLflow's `ORDER BY metrics.X` (a LEFT JOIN on a materialised
    subquery) as a nested scan: top-20 by sharpe over 5,000 runs took ~2 s; with statistics, ~0.03 s.
    ANALYZE writes only SQLite's statistics table; it runs when they are missing or the runs table has more
    than doubled since, sampled (analysis_limit) so it takes milliseconds, and is skipped if the file is busy.
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "sqlite" or not engine.url.database:
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(engine.url.database, timeout=1)) as db:
            has_stats = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone()
            known = 0
            if has_stats:
                row = db.execute("SELECT stat FROM sqlite_stat1 WHERE tbl = 'runs' LIMIT 1").fetchone()
                known = int(row[0].split()[0]) if row and row[0] else 0
            runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            if has_stats and runs <= 2 * max(known, 50):
                return
            db.execute("PRAGMA analysis_limit = 1000")
            db.execute("ANALYZE")
            db.commit()
    except sqlite3.Error:  # busy or read-only file: queries still work, only slower
        return


def search_runs(client, experiment_ids, filter_string: str, order_by: list[str], limit: int, view=None):
    """Up to `limit` runs, filtered and ordered by the store, fetched in pages; returns (runs, more_exist).
    view: an mlflow ViewType (default: active runs only)."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    runs, token = [], None
    while len(runs) < limit:
        try:
            page = client.search_runs(
                experiment_ids,
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY if view is None else view,
                max_results=min(PAGE_SIZE, limit - len(runs)),
                order_by=order_by or None,
                page_token=token,
            )
        except MlflowException as exc:
            flag = "--order-by" if order_by and "order" in str(exc).lower() else "--filter"
            code, _ = classify_error(exc)
            slow_sort = any(re.match(r"\s*(metrics|params|tags)\.", o) for o in order_by)
            if code == EXIT_UNREACHABLE and slow_sort and re.search(r"timed out|Timeout", str(exc)):
                raise CliError(
                    EXIT_UNREACHABLE,
                    "the server timed out ordering by a metric/param/tag. On a SQLite-backed server without "
                    "table statistics this sort is quadratic in the number of runs: the server admin can run "
                    "`sqlite3 mlflow.db 'PRAGMA analysis_limit=1000; ANALYZE;'` once; meanwhile narrow --filter "
                    "or raise MLFLOW_HTTP_REQUEST_TIMEOUT",
                ) from None
            raise (filter_error(exc, flag) or exc) from None
        runs.extend(page)
        token = page.token
        if not token:
            return runs, False
    return runs, bool(token)


def get_run(client, run_id: str):
    """The run, or exit 3 naming the closest run ids/names among recent runs."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    experiments = all_experiments(client, ViewType.ACTIVE_ONLY)
    recent, _ = (
        search_runs(client, [e.experiment_id for e in experiments], "", [], PAGE_SIZE)
        if experiments
        else ([], 0)
    )
    by_name = [r for r in recent if r.info.run_name == run_id]
    if len(by_name) == 1:  # a run name given where an id was expected, and it is unambiguous
        print(f"warning: {run_id!r} is a run name; using run {by_name[0].info.run_id}", file=sys.stderr)
        return by_name[0]
    near = closest(run_id, [r.info.run_id for r in recent] + [r.info.run_name for r in recent], n=5)
    labels = []
    for match in near:
        run = next(r for r in recent if match in (r.info.run_id, r.info.run_name))
        labels.append(f"{run.info.run_id} ({run.info.run_name})")
    hint = (
        f"closest among the {len(recent)} most recent runs: {'; '.join(labels)}"
        if labels
        else "no similar run"
    )
    if len(by_name) > 1:
        hint = f"{len(by_name)} runs are named {run_id!r}; pass one run id"
    raise CliError(
        EXIT_NOT_FOUND, f"run {run_id!r} not found ({hint}); find ids with: query_experiments.py runs"
    )


def count_runs(client, experiment_ids: list[str]) -> dict[str, int | None]:
    """Active runs per experiment. A database store is asked for COUNT(*) (nothing downloaded); over HTTP,
    MLflow has no count endpoint, so runs are paged through (1000 per request) up to COUNT_CAP_HTTP."""
    from mlflow.entities import ViewType

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is not None and hasattr(store, "ManagedSessionMaker"):
        from mlflow.store.tracking.dbmodels.models import SqlRun
        from sqlalchemy import func

        with store.ManagedSessionMaker() as session:
            rows = (
                session.query(SqlRun.experiment_id, func.count(SqlRun.run_uuid))
                .filter(SqlRun.experiment_id.in_([int(i) for i in experiment_ids]))
                .filter(SqlRun.lifecycle_stage == "active")
                .group_by(SqlRun.experiment_id)
                .all()
            )
        counts = {str(exp_id): n for exp_id, n in rows}
        return {i: counts.get(i, 0) for i in experiment_ids}
    counts = {}
    for experiment_id in experiment_ids:
        total, token = 0, None
        while True:
            page = client.search_runs(
                [experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE, page_token=token
            )
            total += len(page)
            token = page.token
            if not token or total >= COUNT_CAP_HTTP:
                break
        if token:
            print(
                f"warning: experiment {experiment_id} has at least {total} runs (counting stops there)",
                file=sys.stderr,
            )
        counts[experiment_id] = total
    return counts


def list_artifacts(
    client, run_id: str, start: str | None = None, limit: int = ARTIFACT_LIST_LIMIT
) -> tuple[list[dict], bool]:
    """Artifact files (path, size) breadth-first from folder `start` up to `limit` entries; (entries, cut)."""
    entries, pending = [], [start]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop(0)):
            if len(entries) >= limit:
                return entries, True
            if item.is_dir:
                pending.append(item.path)
            entries.append({"path": item.path + ("/" if item.is_dir else ""), "size": item.file_size})
    return entries, False


@dataclass
class LoggedRun:
    """The few logged values of one run that deflate reads (from search_runs or straight from the database)."""

    run_id: str
    name: str | None
    deleted: bool
    start_time: int
    metrics: dict
    params: dict
    tags: dict
    digests: list[str]  # the digests of its logged datasets (log_backtest logs one: the return series)


def deflate_keys(metric: str) -> tuple[list[str], list[str], list[str]]:
    """The metric, param and tag keys deflate reads (a walk-forward parent's values are its oos_ ones)."""
    metrics = [metric, "skew", "kurtosis"]
    return (
        metrics + [f"oos_{m}" for m in metrics],
        ["periods_per_year", "n_bars", "oos_n_bars", FOLD_PARAM],
        [SWEEP_TAG, WALK_FORWARD_TAG, PARENT_TAG],
    )


def trial_of(run: LoggedRun, metric: str, walk_forward_parents: set[str]) -> Trial:
    """A Trial from a run's logged values: a walk-forward parent reads its oos_ values, a fold run (param
    fold, its parent a walk-forward parent) and a sweep parent are marked, never trials."""
    metrics, params, tags = run.metrics, run.params, run.tags
    role, prefix = "trial", ""
    if tags.get(SWEEP_TAG) == "true":
        role = "sweep_parent"
    elif tags.get(WALK_FORWARD_TAG) == "true":
        role, prefix = "walk_forward_parent", "oos_"
    elif FOLD_PARAM in params and tags.get(PARENT_TAG) in walk_forward_parents:
        role = "walk_forward_fold"
    return Trial(
        run_id=run.run_id, run_name=run.name, sharpe=metrics.get(prefix + metric),
        periods_per_year=params.get("periods_per_year"), n_bars=params.get(prefix + "n_bars"),
        skew=metrics.get(prefix + "skew"), kurtosis=metrics.get(prefix + "kurtosis"), role=role,
        deleted=run.deleted, series=min(run.digests) if run.digests else None, start_time=run.start_time or 0,
    )  # fmt: skip


def runs_from_search(client, experiment_ids: list[str], filter_string: str, metric: str) -> list[LoggedRun]:
    """Every matching run, deleted ones too, through search_runs a page at a time (any store, servers too)."""
    from mlflow.entities import ViewType

    runs, _ = search_runs(client, experiment_ids, filter_string, [], math.inf, ViewType.ALL)
    metric_keys, param_keys, tag_keys = deflate_keys(metric)
    return [
        LoggedRun(
            run_id=r.info.run_id,
            name=r.info.run_name,
            deleted=r.info.lifecycle_stage == "deleted",
            start_time=r.info.start_time or 0,
            metrics={k: v for k, v in r.data.metrics.items() if k in metric_keys},
            params={k: v for k, v in r.data.params.items() if k in param_keys},
            tags={k: v for k, v in r.data.tags.items() if k in tag_keys},
            digests=[d.dataset.digest for d in getattr(r.inputs, "dataset_inputs", None) or []],
        )  # fmt: skip
        for r in runs
    ]


MLFLOW_FILTER_HELPER = "_get_sqlalchemy_filter_clauses"  # private, in mlflow.store.tracking.sqlalchemy_store


def mlflow_filter_clauses(session, store, filter_string: str):
    """MLflow's own translation of a search filter into SQLAlchemy clauses, or None when this MLflow has no
    such helper. The one place deflate touches MLflow's private API
    (sqlalchemy_store._get_sqlalchemy_filter_clauses(parsed, session, dialect) -> (attribute filters,
    non-attribute subqueries, dataset subqueries)); tests/test_overfitting.py fails when its shape changes,
    and deflate falls back to the public search_runs."""
    import inspect

    from mlflow.store.tracking import sqlalchemy_store
    from mlflow.utils.search_utils import SearchUtils

    helper = getattr(sqlalchemy_store, MLFLOW_FILTER_HELPER, None)
    if helper is None or list(inspect.signature(helper).parameters) != ["parsed", "session", "dialect"]:
        return None
    clauses = helper(SearchUtils.parse_search_filter(filter_string), session, store._get_dialect())
    if not (isinstance(clauses, tuple) and len(clauses) == 3):
        return None
    return clauses


def runs_from_database(store, experiment_ids: list[str], filter_string: str, metric: str):
    """The same runs from a database store, reading only the rows deflate needs; None when MLflow's filter
    translation is not available (mlflow_filter_clauses).

    MLflow's search_runs builds a full Run (every metric, param and tag as ORM objects) for each match:
    ~1 ms a run of log_backtest's ~90 metrics, seconds for thousands. Here the runs are selected with
    MLflow's own filter translation and only the needed rows are read."""
    from mlflow.store.tracking.dbmodels import models
    from sqlalchemy import select

    SqlRun, SqlInput, SqlDataset, latest = (
        models.SqlRun,
        models.SqlInput,
        models.SqlDataset,
        models.SqlLatestMetric,
    )
    metric_keys, param_keys, tag_keys = deflate_keys(metric)
    with store.ManagedSessionMaker() as session:
        clauses = mlflow_filter_clauses(session, store, filter_string)
        if clauses is None:
            return None
        attribute, non_attribute, dataset = clauses
        runs = select(SqlRun.run_uuid)
        for clause in non_attribute:
            runs = runs.join(clause)
        for clause in dataset:
            runs = runs.join(clause, SqlRun.run_uuid == clause.c.destination_id)
        runs = runs.where(SqlRun.experiment_id.in_([int(i) for i in experiment_ids]), *attribute).distinct()
        found = {
            run_id: LoggedRun(run_id, name, stage == "deleted", start or 0, {}, {}, {}, [])
            for run_id, name, stage, start in session.execute(
                select(SqlRun.run_uuid, SqlRun.name, SqlRun.lifecycle_stage, SqlRun.start_time).where(
                    SqlRun.run_uuid.in_(runs)
                )
            )
        }
        for run_id, key, value, is_nan in session.execute(
            select(latest.run_uuid, latest.key, latest.value, latest.is_nan).where(
                latest.run_uuid.in_(runs), latest.key.in_(metric_keys)
            )
        ):
            found[run_id].metrics[key] = math.nan if is_nan else value
        for table, keys, field in (
            (models.SqlParam, param_keys, "params"),
            (models.SqlTag, tag_keys, "tags"),
        ):
            rows = select(table.run_uuid, table.key, table.value).where(
                table.run_uuid.in_(runs), table.key.in_(keys)
            )
            for run_id, key, value in session.execute(rows):
                getattr(found[run_id], field)[key] = value
        digests = select(SqlInput.destination_id, SqlDataset.digest).join(
            SqlDataset, SqlDataset.dataset_uuid == SqlInput.source_id
        )
        digests = digests.where(
            SqlInput.destination_type == "RUN",
            SqlInput.source_type == "DATASET",
            SqlInput.destination_id.in_(runs),
        )
        for run_id, digest in session.execute(digests):
            found[run_id].digests.append(digest)
    return list(found.values())


def walk_forward_parents(client, runs: list[LoggedRun]) -> set[str]:
    """Ids of the walk-forward parents of these runs' fold runs: from the runs themselves, and looked up for
    fold runs whose parent is not among them (another filter, or a parent still RUNNING)."""
    known = {r.run_id for r in runs if r.tags.get(WALK_FORWARD_TAG) == "true"}
    seen = {r.run_id for r in runs}
    for parent in {r.tags.get(PARENT_TAG) for r in runs if FOLD_PARAM in r.params} - seen - {None}:
        with contextlib.suppress(Exception):  # a purged parent: its folds stay trials of their own
            if client.get_run(parent).data.tags.get(WALK_FORWARD_TAG) == "true":
                known.add(parent)
    return known


def fetch_trials(client, experiment_ids: list[str], user_filter: str, metric: str) -> list[Trial]:
    """Finished runs of the experiments that match --filter, deleted ones too, as Trials (roles marked)."""
    from mlflow.exceptions import MlflowException

    filter_string = build_run_filter(user_filter, "FINISHED", None, False)
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    runs = None
    if store is not None and hasattr(store, "ManagedSessionMaker"):
        try:
            runs = runs_from_database(store, experiment_ids, filter_string, metric)
        except MlflowException as exc:
            raise (filter_error(exc, "--filter") or exc) from None
    if runs is None:  # a tracking server, or an MLflow whose private filter helper changed
        runs = runs_from_search(client, experiment_ids, filter_string, metric)
    parents = walk_forward_parents(client, runs)
    return [trial_of(run, metric, parents) for run in runs]


# ---- subcommands ----


@dataclass(frozen=True)
class Query:
    """A checked command line: the subcommand's handler, its arguments, and where and how to answer."""

    handler: Callable  # cmd_experiments, cmd_runs, ...: handler(client, query) -> data to print
    args: argparse.Namespace
    fmt: str
    tracking_uri: str
    debug: bool


def cmd_experiments(client, query: Query) -> object:
    args = query.args
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    view = ViewType.ALL if args.include_deleted else ViewType.ACTIVE_ONLY
    experiments, token = [], None
    while len(experiments) < args.max_results:
        try:
            page = client.search_experiments(
                view_type=view,
                max_results=min(PAGE_SIZE, args.max_results - len(experiments)),
                filter_string=args.filter,
                order_by=args.order_by or None,
                page_token=token,
            )
        except MlflowException as exc:
            raise (filter_error(exc, "--filter/--order-by") or exc) from None
        experiments.extend(page)
        token = page.token
        if not token:
            break
    if token:
        print(
            f"warning: showing the first {len(experiments)} experiments; raise --max-results for more",
            file=sys.stderr,
        )
    records = [
        {
            "experiment_id": e.experiment_id,
            "name": e.name,
            "lifecycle_stage": e.lifecycle_stage,
            "creation_time": iso_utc(e.creation_time),
            "last_update_time": iso_utc(e.last_update_time),
            "description": e.tags.get(DESCRIPTION_TAG),
            "tags": {k: v for k, v in sorted(e.tags.items()) if not k.startswith("mlflow.")},
        }
        for e in experiments
    ]
    if args.with_counts and records:
        counts = count_runs(client, [r["experiment_id"] for r in records])
        for record in records:
            record["run_count"] = counts.get(record["experiment_id"])
    return records


def cmd_runs(client, query: Query) -> object:
    args, fmt = query.args, query.fmt
    experiments = resolve_experiments(client, args.experiment)
    refresh_sqlite_statistics(client)
    filter_string = build_run_filter(args.filter, args.status, args.parent_run_id, args.top_level)
    runs, more = search_runs(
        client, [e.experiment_id for e in experiments], filter_string, args.order_by, args.max_results
    )
    if more:
        print(
            f"warning: showing the first {len(runs)} matching runs; more exist: raise --max-results or "
            "narrow --filter",
            file=sys.stderr,
        )
    columns = parse_columns(args.columns)
    records = [run_record(run, columns, args.all_columns) for run in runs]
    if fmt == "table":
        show_tags = args.all_columns or bool(columns and columns["tags"])
        return table_rows(records, show_tags)
    return records


def cmd_run(client, query: Query) -> dict:
    args, tracking_uri = query.args, query.tracking_uri
    run = get_run(client, args.run_id)
    info, data = run.info, run.data
    experiment = client.get_experiment(info.experiment_id)
    parent_id = data.tags.get(PARENT_TAG)
    parent = None
    if parent_id:
        try:
            parent = {"run_id": parent_id, "run_name": client.get_run(parent_id).info.run_name}
        except Exception:  # noqa: BLE001 - a deleted parent still has an id worth showing
            parent = {"run_id": parent_id, "run_name": None}
    children, more = search_runs(
        client, [info.experiment_id], f"tags.`{PARENT_TAG}` = {quote(info.run_id)}", [], CHILDREN_LIMIT
    )
    try:
        artifacts, cut = list_artifacts(client, info.run_id)
        if cut:
            print(f"warning: artifact list cut at {ARTIFACT_LIST_LIMIT} entries", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the run is still worth showing without its artifact list
        code, message = classify_error(exc)
        if code in (EXIT_AUTH, EXIT_UNREACHABLE):
            raise
        print(f"warning: could not list artifacts: {redact(message)}", file=sys.stderr)
        artifacts = None
    datasets = []
    for item in getattr(run.inputs, "dataset_inputs", None) or []:
        dataset = item.dataset
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), None)
        datasets.append(
            {
                "name": dataset.name,
                "digest": dataset.digest,
                "source_type": dataset.source_type,
                "source": dataset.source,
                "context": context,
            }
        )
    record = run_record(run, all_columns=True)
    # Key metrics first: if the output bound has to shorten the metrics, these are the ones kept.
    record["metrics"] = {
        **{k: record["metrics"][k] for k in KEY_METRICS if k in record["metrics"]},
        **{k: v for k, v in record["metrics"].items() if k not in KEY_METRICS},
    }
    record["tags"] = {k: v for k, v in sorted(data.tags.items()) if not k.startswith("mlflow.")}
    record.pop("parent_run_id")
    record.update(
        {
            "experiment_name": experiment.name,
            "lifecycle_stage": info.lifecycle_stage,
            "description": data.tags.get(DESCRIPTION_TAG),
            "git": code_version(data.tags),
            "datasets": datasets,
            "artifacts": artifacts,
            "parent": parent,
            "children": [
                {"run_id": c.info.run_id, "run_name": c.info.run_name, "status": c.info.status}
                for c in children
            ],
            "children_count": f">={len(children)}" if more else len(children),
            "url": ui_url(tracking_uri, info.experiment_id, info.run_id),
        }
    )
    order = [
        "run_id",
        "run_name",
        "experiment_id",
        "experiment_name",
        "status",
        "lifecycle_stage",
        "start_time",
    ]
    return {**{k: record[k] for k in order}, **{k: v for k, v in record.items() if k not in order}}


def code_version(tags: dict[str, str]) -> dict | None:
    """The strategy's code version log_backtest recorded (mlflow.source.git.* tags), or None."""
    if "mlflow.source.git.commit" not in tags:
        return None
    return {
        "commit": tags["mlflow.source.git.commit"],
        "branch": tags.get("mlflow.source.git.branch"),
        "repo_url": tags.get("mlflow.source.git.repoURL"),
        "dirty": {"true": True, "false": False}.get(tags.get("backtest.git_dirty", "")),
        "dirty_unknown": tags.get("backtest.git_dirty_unknown"),  # why dirty is null, when it is
    }


def cmd_compare(client, query: Query) -> object:
    args, fmt = query.args, query.fmt
    runs = [get_run(client, run_id) for run_id in args.run_id]
    for run in runs:
        if run.info.lifecycle_stage == "deleted":
            print(
                f"warning: run {run.info.run_id} ({run.info.run_name}) is deleted (in the trash)",
                file=sys.stderr,
            )
    records = [run_record(run, all_columns=True) for run in runs]
    metric_names = None
    if args.metrics:
        metric_names = ["all"] if args.metrics.strip() == "all" else split_list(args.metrics)
        present = {k for r in records for k in r["metrics"]}
        missing = [m for m in metric_names if m != "all" and m not in present]
        if missing and len(missing) == len(metric_names):
            near = closest(missing[0], sorted(present))
            raise CliError(
                EXIT_NOT_FOUND,
                f"none of the runs has metric {missing[0]!r}"
                + (f" (closest: {', '.join(near)})" if near else ""),
            )
        for name in missing:
            print(f"warning: no compared run has metric {name!r}", file=sys.stderr)
    result = compare_runs(records, metric_names)
    if fmt in ("table", "csv"):
        return compare_rows(result, mark=fmt == "table")
    return result


def group_value(run, metric: str) -> float | None:
    """A run's value of the grouped metric: a walk-forward parent's is its out-of-sample one (oos_<metric>)."""
    metrics = run.data.metrics
    if metric not in metrics and walk_forward_keys(run.data.tags):
        return metrics.get(f"oos_{metric}")
    return metrics.get(metric)


def cmd_group(client, query: Query) -> list[dict]:
    args = query.args
    experiments = resolve_experiments(client, args.experiment)
    refresh_sqlite_statistics(client)
    prefix, _, key = args.by.partition(".")
    prefix = {"param": "params", "tag": "tags"}.get(prefix, prefix)
    ids = [e.experiment_id for e in experiments]
    base = build_run_filter(args.filter, args.status, None, args.top_level)
    present = f"{prefix}.`{key}` IS NOT NULL"  # the store drops runs without the key
    runs, more = search_runs(client, ids, " and ".join(c for c in (base, present) if c), [], args.max_runs)
    if more:
        print(
            f"warning: aggregated the first {len(runs)} runs only; raise --max-runs or narrow --filter",
            file=sys.stderr,
        )
    if not runs:
        sample, _ = search_runs(client, ids, base, [], 100)
        known = sorted({k for r in sample for k in (r.data.params if prefix == "params" else r.data.tags)})
        near = closest(key, known)
        raise CliError(
            EXIT_NOT_FOUND,
            f"no run has {prefix}.{key}"
            + (f" (closest: {', '.join(near)})" if near else "")
            + ("" if sample else " (no runs match at all)"),
        )
    source = (lambda r: r.data.params) if prefix == "params" else (lambda r: r.data.tags)
    pairs = [(source(r).get(key), group_value(r, args.metric)) for r in runs]
    if not any(finite(value) for _, value in pairs):
        known = sorted({k for r in runs for k in r.data.metrics})
        near = closest(args.metric, known)
        raise CliError(
            EXIT_NOT_FOUND,
            f"no run with {args.by} has metric {args.metric!r}"
            + (f" (closest: {', '.join(near)})" if near else ""),
        )
    without = sum(1 for _, value in pairs if not finite(value))
    if without:
        print(
            f"warning: {without} of {len(pairs)} runs have no finite {args.metric!r}; not aggregated",
            file=sys.stderr,
        )
    rows = group_rows(pairs, args.by, split_list(args.agg))
    for row in rows:
        row["metric"] = args.metric
    return rows


def cmd_deflate(client, query: Query) -> dict:
    args = query.args
    experiments = resolve_experiments(client, args.experiment)
    ids = [e.experiment_id for e in experiments]
    trials = fetch_trials(client, ids, args.filter, args.metric)
    if not any(defined_value(t.sharpe) is not None for t in trials):
        sample, _ = search_runs(client, ids, build_run_filter(args.filter, "FINISHED", None, False), [], 100)
        near = closest(args.metric, sorted({k for r in sample for k in r.data.metrics}))
        raise CliError(
            EXIT_NOT_FOUND,
            f"no finished run has a finite metric {args.metric!r}"
            + (f" (closest: {', '.join(near)})" if near else "")
            + ("" if sample else " (no finished runs match at all)"),
        )
    summary = deflate_summary(trials, args.metric, args.exclude_deleted)
    for reason, count in summary["excluded"].items():
        if count and reason == "no_periods_per_year":
            print(
                f"warning: {count} runs with {args.metric!r} left out: {reason.replace('_', ' ')}",
                file=sys.stderr,
            )
    if summary.get("best_is_deleted"):
        print(f"warning: the best trial, run {summary['best_run_id']}, is deleted", file=sys.stderr)
    return {"experiment": [e.name for e in experiments], "filter": args.filter or None, **summary}


# ---- periods: runs x calendar periods (or stress windows) of one statistic ----


PERIODS_ARTIFACT_DIR = "periods"
RETURNS_ARTIFACTS = ("returns.csv", "returns.parquet")  # log_backtest's stored series, by size


@dataclass(frozen=True)
class RunPeriods:
    """One run's values of the asked statistic per period, where they came from, or why there are none."""

    run_id: str
    run_name: str
    values: dict[str, float | None]
    source: str | None  # "artifact" (periods/<by>.csv), "returns" (recomputed from the stored returns)
    reason: str | None = None  # set when undefined


def segment_value(values: list[float], metric: str, periods: float, compounded: bool, rf: float):
    """log_backtest's statistic of one period (segment_stats there), in plain Python: this script has no
    pandas or numpy (mlflow-skinny imports pandas at `import mlflow` when it is installed: +0.4 s a query)."""
    n = len(values)
    if metric == "return":
        return math.prod(1.0 + v for v in values) - 1.0 if compounded else math.fsum(values)
    if metric == "max_drawdown":
        equity, peak, deepest = 1.0, 1.0, 0.0
        for v in values:
            equity = equity * (1.0 + v) if compounded else equity + v
            peak = max(peak, equity)
            deepest = min(deepest, equity / peak - 1.0)
        return deepest
    if n < 2:
        return None
    if metric == "volatility":
        return statistics.stdev(values) * math.sqrt(periods)
    rf_bar = (1.0 + rf) ** (1.0 / periods) - 1.0 if rf else 0.0
    excess = [v - rf_bar for v in values]
    sd = statistics.stdev(excess)
    return statistics.fmean(excess) / sd * math.sqrt(periods) if sd > 0 else None


def period_key(stamp: str, by: str) -> str:
    """The calendar label of an ISO timestamp as log_backtest writes it ("2008", "2008Q4", "2008-10")."""
    year, month = stamp[:4], int(stamp[5:7])
    return {"year": year, "quarter": f"{year}Q{(month - 1) // 3 + 1}", "month": f"{year}-{month:02d}"}[by]


def recomputed_values(path: Path, by: str, metric: str, params: dict) -> tuple[dict, str | None]:
    """A run's values per period from its stored returns.csv (timestamp, returns[, benchmark]) and its
    settings (periods_per_year, compounded, rf params): (values, None) or ({}, the reason there are none)."""
    import csv

    if path.suffix != ".csv":
        return {}, "logged before periods/ existed, its returns stored as Parquet: re-log it to get periods/"
    try:
        periods = float(params["periods_per_year"])
    except (KeyError, ValueError):
        return {}, "no periods_per_year param to recompute its periods with"
    compounded = params.get("compounded", "true") != "false"
    rf = float(params.get("rf", "0") or 0)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][0] == "bar" or "returns" not in rows[0]:
        return {}, "its returns have no timestamps (bars only): no calendar"
    at = rows[0].index("returns")
    bars = [(row[0], float(row[at])) for row in rows[1:]]
    groups: dict[str, list[float]] = {}
    if by == "stress":
        for w in STRESS_WINDOWS:
            inside = [v for stamp, v in bars if w.start <= stamp[:10] <= w.end]
            if inside:
                groups[w.name] = inside
    else:
        for stamp, v in bars:
            groups.setdefault(period_key(stamp, by), []).append(v)
    return {p: segment_value(vs, metric, periods, compounded, rf) for p, vs in groups.items()}, None


def run_periods(client, run, by: str, metric: str, folder: Path) -> RunPeriods:
    """The run's periods/<by>.csv, else its values recomputed from its stored returns with the run's own
    settings, else undefined with the reason."""
    import csv

    info = run.info
    here = folder / info.run_id
    names = {a.path for a in client.list_artifacts(info.run_id, PERIODS_ARTIFACT_DIR)}
    wanted = f"{PERIODS_ARTIFACT_DIR}/{by}.csv"
    if wanted in names:
        with open(client.download_artifacts(info.run_id, wanted, str(here)), newline="") as handle:
            table = list(csv.DictReader(handle))
        key = "name" if by == "stress" else "period"
        values = {
            row[key]: float(row[metric]) if row[metric] and math.isfinite(float(row[metric])) else None
            for row in table
            if int(row["n_bars"])
        }
        return RunPeriods(info.run_id, info.run_name, values, "artifact")
    top = {a.path for a in client.list_artifacts(info.run_id)}
    stored = next((name for name in RETURNS_ARTIFACTS if name in top), None)
    if stored is None:
        return RunPeriods(info.run_id, info.run_name, {}, None, "no periods/ artifact and no stored returns")
    path = Path(client.download_artifacts(info.run_id, stored, str(here)))
    values, why = recomputed_values(path, by, metric, run.data.params)
    if why:
        return RunPeriods(info.run_id, info.run_name, {}, None, why)
    return RunPeriods(info.run_id, info.run_name, values, "returns")


def period_order(by: str, labels) -> list[str]:
    """Calendar labels in time order; stress windows in the built-in order, then the users' by name."""
    if by != "stress":
        return sorted(labels)
    builtin = [w.name for w in STRESS_WINDOWS]
    return [n for n in builtin if n in labels] + sorted(set(labels) - set(builtin))


def periods_result(by: str, metric: str, rows: list[RunPeriods], counts: dict) -> dict:
    defined = [r for r in rows if r.reason is None]
    return {
        "by": by,
        "metric": metric,
        **counts,
        "periods": period_order(by, {p for r in defined for p in r.values}),
        "runs": [
            {"run_id": r.run_id, "run_name": r.run_name, "source": r.source, "values": r.values}
            for r in defined
        ],  # fmt: skip
        "undefined": [
            {"run_id": r.run_id, "run_name": r.run_name, "reason": r.reason}
            for r in rows
            if r.reason is not None
        ],  # fmt: skip
    }


def periods_rows(result: dict) -> list[dict]:
    """Table and csv: one row per run, one column per period (undefined runs last, with their reason)."""
    rows = [
        {
            "run_name": r["run_name"],
            "run_id": r["run_id"],
            **{p: r["values"].get(p) for p in result["periods"]},
        }
        for r in result["runs"]
    ]
    return rows + [{"run_name": u["run_name"], "run_id": u["run_id"], "undefined": u["reason"]}
                   for u in result["undefined"]]  # fmt: skip


def cmd_periods(client, query: Query) -> object:
    import tempfile

    args = query.args
    experiments = resolve_experiments(client, args.experiment)
    ids = [e.experiment_id for e in experiments]
    if args.run_id:
        runs = [get_run(client, run_id) for run_id in args.run_id]
        elsewhere = [r.info.run_id for r in runs if r.info.experiment_id not in ids]
        if elsewhere:
            raise CliError(
                EXIT_NOT_FOUND, f"run {elsewhere[0]} is not in --experiment {', '.join(args.experiment)}"
            )
    else:
        refresh_sqlite_statistics(client)
        runs, _ = search_runs(client, ids, build_run_filter(args.filter, None, None, False), [], sys.maxsize)
    parents = [r for r in runs if r.data.tags.get(SWEEP_TAG) == "true"]
    runs = [r for r in runs if r.data.tags.get(SWEEP_TAG) != "true"]  # a sweep's children are its periods
    if not runs:
        raise CliError(
            EXIT_NOT_FOUND,
            "no run matches"
            + (f" (only {len(parents)} sweep parents, which are left out)" if parents else ""),
        )
    shown = runs[: args.max_runs]
    if len(shown) < len(runs):
        print(
            f"warning: periods of the first {len(shown)} of {len(runs)} matching runs; raise --max-runs or "
            "narrow --filter",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="query-periods-") as folder:
        rows = [run_periods(client, run, args.by, args.metric, Path(folder)) for run in shown]
    counts = {"n_runs": len(runs), "n_shown": len(shown), "sweep_parents_left_out": len(parents),
              "n_recomputed": sum(r.source == "returns" for r in rows),
              "n_undefined": sum(r.reason is not None for r in rows)}  # fmt: skip
    result = periods_result(args.by, args.metric, rows, counts)
    return periods_rows(result) if query.fmt in ("table", "csv") else result


# ---- housekeeping: delete, restore, purge, artifacts, ui ----
FINGERPRINT_TAG = "backtest.fingerprint"  # log_backtest's fingerprint of a backtest (series and settings)
SELECTORS = ("--filter", "--status", "--older-than", "--duplicates", "--all")
AGE = re.compile(r"^(?:(?P<weeks>\d+(?:\.\d+)?)w)?(?:(?P<days>\d+(?:\.\d+)?)d)?(?:(?P<hours>\d+(?:\.\d+)?)h)?"
                 r"(?:(?P<minutes>\d+(?:\.\d+)?)m)?(?:(?P<seconds>\d+(?:\.\d+)?)s)?$")  # fmt: skip
UI_PORT = 5000
MLFLOW_UI = "uvx --from 'mlflow==3.17.2' mlflow ui"  # README's line; tests/test_docs.py starts it
STATS_NOTE = (
    "deleted runs still count as trials in `deflate` (deleted_trials): deleting the losers does not raise the "
    "deflated Sharpe ratio; only runs deleted as mistakes may be left out with --exclude-deleted"
)
PURGE_NOTE = (
    "purged runs are gone for good: deflate no longer sees them, so they no longer count as trials; purge only "
    "mistakes (a wrong file, a broken run), never the losers of a search"
)


def age_ms(text: str) -> int:
    """'30d', '12h', '2w', '1d12h' -> milliseconds; exit 2 for anything else or zero."""
    from datetime import timedelta

    match = AGE.match(text.strip()) if text.strip() else None
    parts = {k: float(v) for k, v in match.groupdict().items() if v} if match else {}
    delta = timedelta(**parts).total_seconds() * 1000 if parts else 0
    if delta <= 0:
        raise CliError(EXIT_USAGE, f"--older-than {text!r} is not an age: use e.g. 30d, 12h, 2w or 1d12h")
    return int(delta)


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.lower().startswith(("http://", "https://"))


@dataclass
class Chosen:
    """One run a delete or restore acts on: picked by the user (`selected`) or taken along as a child."""

    run: object  # mlflow.entities.Run
    why: str  # "selected" or "child of <parent run id>"
    stage: str = ""  # its lifecycle stage once acted on ("deleted", "purged", "active"); "" = unchanged

    @property
    def active(self) -> bool:
        return self.run.info.lifecycle_stage == "active"

    def record(self) -> dict:
        info, tags = self.run.info, self.run.data.tags
        return {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "status": info.status,
            "lifecycle_stage": self.stage or info.lifecycle_stage,
            "start_time": iso_utc(info.start_time),
            "parent_run_id": tags.get(PARENT_TAG),
            "why": self.why,
        }


def runs_by_ids(client, run_ids: list[str]) -> list:
    """Every named run, or exit 3 naming all unknown ids (checked before anything is written)."""
    from mlflow.exceptions import MlflowException

    runs, unknown = [], []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            unknown.append(run_id)
    if unknown:
        raise CliError(
            EXIT_NOT_FOUND,
            f"run {', '.join(map(repr, unknown))} not found (nothing was changed); find ids with: "
            "query_experiments.py runs --experiment NAME",
        )
    return runs


def duplicate_runs(runs: list) -> list:
    """Runs with the same backtest fingerprint as a newer one (the newest of each fingerprint is kept)."""
    groups: dict[str, list] = {}
    for run in runs:
        fingerprint = run.data.tags.get(FINGERPRINT_TAG)
        if fingerprint:
            groups.setdefault(fingerprint, []).append(run)
    older = []
    for group in groups.values():
        group.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True)
        older += group[1:]
    return older


def runs_by_selector(client, experiment_id: str, args, view) -> list:
    """The runs of one experiment that --filter, --status, --older-than and --duplicates select (AND)."""
    clauses = [args.filter.strip()] if args.filter.strip() else []
    if args.older_than:
        clauses.append(
            f"attributes.start_time < {int(datetime.now(UTC).timestamp() * 1000) - args.older_than}"
        )
    if args.duplicates:
        clauses.append(f"tags.`{FINGERPRINT_TAG}` IS NOT NULL")
    base = " and ".join(clauses)
    statuses = args.status or [None]
    runs = []
    for status in statuses:  # MLflow's grammar has no OR: one search per status
        where = " and ".join(c for c in (base, f"attributes.status = {quote(status)}" if status else "") if c)
        found, _ = search_runs(client, [experiment_id], where, [], math.inf, view)
        runs += found
    return duplicate_runs(runs) if args.duplicates else runs


def with_children(client, chosen: list[Chosen], view) -> list[Chosen]:
    """The chosen runs and, after each, every descendant (a sweep's or walk-forward's children go with
    their parent): one search per experiment for runs that have a parent."""
    ids = {c.run.info.run_id for c in chosen}
    experiments = sorted({c.run.info.experiment_id for c in chosen})
    children: dict[str, list] = {}
    if experiments:
        found, _ = search_runs(client, experiments, f"tags.`{PARENT_TAG}` IS NOT NULL", [], math.inf, view)
        for run in found:
            children.setdefault(run.data.tags[PARENT_TAG], []).append(run)
    out: list[Chosen] = []

    def add(item: Chosen) -> None:
        out.append(item)
        for child in sorted(children.get(item.run.info.run_id, []), key=lambda r: r.info.start_time or 0):
            if child.info.run_id not in ids:
                ids.add(child.info.run_id)
                add(Chosen(child, f"child of {item.run.info.run_id}"))

    for item in chosen:
        add(item)
    return out


def child_warnings(client, chosen: list[Chosen]) -> list[str]:
    """A chosen child whose parent stays: the parent's sweep statistics were computed with it."""
    ids = {c.run.info.run_id for c in chosen}
    notes = []
    for item in chosen:
        parent = item.run.data.tags.get(PARENT_TAG)
        if parent and parent not in ids:
            notes.append(
                f"run {item.run.info.run_id} ({item.run.info.run_name}) is a child of run {parent}: the "
                "parent's statistics (n_trials, deflated_sharpe_ratio, pbo, best_*) still count it"
            )
    return notes


def find_any_experiment(client, name_or_id: str):
    """An experiment by name or id, deleted ones too (restore --whole-experiment); else exit 3."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name_or_id)
    if experiment is None and name_or_id.isdigit():
        with contextlib.suppress(MlflowException):
            experiment = client.get_experiment(name_or_id)
    if experiment is None:
        return find_experiment(client, name_or_id)  # exit 3 with the closest names
    return experiment


def gc_command(run_ids: list[str]) -> str:
    """What a tracking server's administrator runs to purge exactly these runs."""
    return (
        f"MLFLOW_TRACKING_URI=<this server's URL> mlflow gc --backend-store-uri <the server's "
        f"--backend-store-uri> --run-ids {','.join(run_ids)}"
    )


def purge_runs(client, runs: list) -> list[str]:
    """Remove these (deleted) runs for good: their artifacts, then their rows. MLflow's `mlflow gc --run-ids`
    is not limited to those runs: without --experiment-ids it also purges every deleted experiment and every
    deleted logged model in the store (mlflow.cli._gc_tracking_resources, 3.17), so this is gc's per-run
    step, for these runs only: get_artifact_repository(artifact_uri).delete_artifacts(), then the store's
    _hard_delete_run (bulk deletes of metrics, latest metrics, params and tags before the run row, which
    3.17 does in that order: the foreign-key failures of mlflow #13254 on PostgreSQL came from the ORM
    cascade it replaced). _hard_delete_run leaves the run's dataset links (inputs, input_tags: no foreign
    key) behind; they are removed here too, with the datasets no other run uses."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    store = client._tracking_client.store
    purged = []
    for run in runs:
        uri = run.info.artifact_uri
        get_artifact_repository(uri).delete_artifacts()
        if uri.startswith("/") or uri.startswith("file:"):  # the empty run folder a local store keeps
            folder = Path(uri.removeprefix("file://").removeprefix("file:")).parent
            if folder.name == run.info.run_id and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        store._hard_delete_run(run.info.run_id)
        purged.append(run.info.run_id)
    remove_dataset_links(store, purged)
    return purged


def remove_dataset_links(store, run_ids: list[str]) -> None:
    """Delete purged runs' rows in inputs and input_tags, and datasets that no remaining input names."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlInput, SqlInputTag
    from sqlalchemy import delete, select

    with store.ManagedSessionMaker() as session:
        links = select(SqlInput.input_uuid, SqlInput.source_id).where(
            SqlInput.destination_type == "RUN", SqlInput.destination_id.in_(run_ids)
        )
        rows = session.execute(links).all()
        inputs = [row[0] for row in rows]
        datasets = {row[1] for row in rows}
        if not inputs:
            return
        session.execute(delete(SqlInputTag).where(SqlInputTag.input_uuid.in_(inputs)))
        session.execute(delete(SqlInput).where(SqlInput.input_uuid.in_(inputs)))
        used = set(session.scalars(select(SqlInput.source_id).where(SqlInput.source_id.in_(datasets))))
        if datasets - used:
            session.execute(delete(SqlDataset).where(SqlDataset.dataset_uuid.in_(datasets - used)))


def choose_runs(client, args, deleting: bool) -> tuple[object | None, list[Chosen], list[str]]:
    """(the experiment or None, the runs to act on with their children, warnings): reads only."""
    from mlflow.entities import ViewType

    view = ViewType.DELETED_ONLY if not deleting else ViewType.ALL if args.purge else ViewType.ACTIVE_ONLY
    warnings_: list[str] = []
    experiment = None
    if args.run_id:
        runs = runs_by_ids(client, args.run_id)
        wanted = "deleted" if not deleting else None if args.purge else "active"
        skipped = [r for r in runs if wanted and r.info.lifecycle_stage != wanted]
        for run in skipped:
            state = "already deleted" if deleting else "not deleted"
            warnings_.append(f"run {run.info.run_id} ({run.info.run_name}) is {state}: left as it is")
        runs = [r for r in runs if r not in skipped]
    else:
        experiment = find_experiment(client, args.experiment)
        if args.all or not deleting and not args.filter.strip():
            runs, _ = search_runs(client, [experiment.experiment_id], "", [], math.inf, view)
        else:
            runs = runs_by_selector(client, experiment.experiment_id, args, view)
    chosen = with_children(client, [Chosen(r, "selected") for r in runs], view)
    if deleting:
        warnings_ += child_warnings(client, chosen)
    return experiment, chosen, warnings_


def cmd_delete(client, query: Query) -> dict:
    args = query.args
    if args.whole_experiment:
        return whole_experiment(client, query, deleting=True)
    experiment, chosen, notes = choose_runs(client, args, deleting=True)
    ids = [c.run.info.run_id for c in chosen]
    if args.purge and is_server(query.tracking_uri):
        raise CliError(
            EXIT_USAGE,
            "--purge works on a local or database store only; on a tracking server soft-delete the runs "
            "(without --purge) and ask the server's administrator to run: "
            + (gc_command(ids) if ids else "nothing (no run selected)")
            + " (MLflow 3.17's gc also purges every deleted experiment and logged model it finds)",
        )
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    action = "purge" if args.purge else "delete"
    out = {
        "dry_run": not args.yes,
        "action": action,
        "experiment": experiment.name if experiment else None,
        "selected": len(chosen),  # exact, whatever the output bound cuts from `runs`
        "children_included": sum(c.why != "selected" for c in chosen),
    }
    if args.yes and chosen:
        delete_all_or_none(client, [c.run.info.run_id for c in chosen if c.active])
        out["deleted"] = sum(c.active for c in chosen)
        if args.purge:
            out["purged"] = len(purge_runs(client, [client.get_run(run_id) for run_id in ids]))
        for item in chosen:
            item.stage = "purged" if args.purge else "deleted"
    elif chosen:
        flags = "--purge --yes" if args.purge else "--yes"
        out["next"] = f"rerun with {flags} to {action} these {len(chosen)} runs"
    out["warnings"] = notes
    out["note"] = PURGE_NOTE if args.purge else STATS_NOTE
    out["runs"] = [c.record() for c in chosen]
    return out


def delete_all_or_none(client, run_ids: list[str]) -> None:
    """Soft-delete every run or none: when one is refused (permission, server failure), the ones already
    deleted are restored before the error is reported."""
    done = []
    try:
        for run_id in run_ids:
            client.delete_run(run_id)
            done.append(run_id)
    except BaseException:
        for run_id in done:
            with contextlib.suppress(Exception):
                client.restore_run(run_id)
        raise


def cmd_restore(client, query: Query) -> dict:
    args = query.args
    if args.whole_experiment:
        return whole_experiment(client, query, deleting=False)
    experiment, chosen, notes = choose_runs(client, args, deleting=False)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    for item in chosen:
        client.restore_run(item.run.info.run_id)
        item.stage = "active"
    return {
        "dry_run": False,
        "action": "restore",
        "experiment": experiment.name if experiment else None,
        "selected": len(chosen),
        "children_included": sum(c.why != "selected" for c in chosen),
        "restored": len(chosen),
        "warnings": notes,
        "runs": [c.record() for c in chosen],
    }


def whole_experiment(client, query: Query, deleting: bool) -> dict:
    """Delete (soft) or restore a whole experiment: MLflow marks its runs deleted or active with it."""
    from mlflow.entities import ViewType

    args = query.args
    experiment = (
        find_experiment(client, args.experiment) if deleting else find_any_experiment(client, args.experiment)
    )
    if not deleting and experiment.lifecycle_stage != "deleted":
        raise CliError(EXIT_USAGE, f"experiment {experiment.name!r} is not deleted: nothing to restore")
    active, _ = search_runs(client, [experiment.experiment_id], "", [], math.inf, ViewType.ACTIVE_ONLY)
    deleted, _ = search_runs(client, [experiment.experiment_id], "", [], math.inf, ViewType.DELETED_ONLY)
    out = {
        "dry_run": deleting and not args.yes,
        "action": "delete_experiment" if deleting else "restore_experiment",
        "experiment": experiment.name,
        "experiment_id": experiment.experiment_id,
        "active_runs": len(active),
        "deleted_runs": len(deleted),
    }
    if deleting and not args.yes:
        out["next"] = f"rerun with --yes to delete experiment {experiment.name!r} and its {len(active)} runs"
    elif deleting:
        client.delete_experiment(experiment.experiment_id)
    else:
        client.restore_experiment(experiment.experiment_id)
    if deleting:
        out["note"] = (
            "restorable: restore --experiment NAME --whole-experiment (a new experiment of the same name cannot "
            f"be created meanwhile); {STATS_NOTE}"
        )
    return out


def cmd_artifacts(client, query: Query) -> dict:
    """List a run's artifacts under --path, or download them to --download DIR."""
    args = query.args
    run = get_run(client, args.run_id)
    run_id, path = run.info.run_id, args.path.strip("/") or None
    entries, cut = list_artifacts(client, run_id, start=path, limit=args.max_entries)
    if path and not entries:
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        siblings = client.list_artifacts(run_id, parent)
        match = [item for item in siblings if item.path == path and not item.is_dir]
        if not match:
            near = closest(path, [item.path for item in siblings])
            raise CliError(
                EXIT_NOT_FOUND,
                f"run {run_id} has no artifact {path!r}"
                + (f" (closest: {', '.join(near)})" if near else " (list them: artifacts --run-id ID)"),
            )
        entries = [{"path": match[0].path, "size": match[0].file_size}]
    out = {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "artifact_uri": run.info.artifact_uri,
        "path": path,
    }
    if args.download:
        target = Path(args.download)
        target.mkdir(parents=True, exist_ok=True)
        local = Path(client.download_artifacts(run_id, path or "", str(target)))
        files = sorted(str(p) for p in ([local] if local.is_file() else local.rglob("*")) if p.is_file())
        out.update(downloaded=len(files), local_path=str(local), files=files)
        return out
    if cut:
        print(f"warning: listing stopped at {args.max_entries} entries; raise --max-entries", file=sys.stderr)
    files = [e for e in entries if not e["path"].endswith("/")]
    out.update(
        count=len(files), total_bytes=sum(e["size"] or 0 for e in files), truncated=cut, artifacts=entries
    )
    return out


def ui_command(tracking_uri: str, port: int) -> str | None:
    """The command that opens the MLflow UI on this store (None for a server: it has its own UI). A database
    URI is given as "$MLFLOW_TRACKING_URI": the command is printed, and its password must not be."""
    if is_server(tracking_uri) or tracking_uri.startswith("databricks"):
        return None
    store = (
        f"sqlite:///{tracking_uri[len('sqlite:///') :]}" if tracking_uri.startswith("sqlite:///") else None
    )
    store = store or '"$MLFLOW_TRACKING_URI"'
    return f"{MLFLOW_UI} --backend-store-uri {store} --port {port}"


def cmd_ui(client, query: Query) -> dict:
    """How to open the MLflow UI on the current store, and the link to an experiment's runs (starts nothing)."""
    args, uri = query.args, query.tracking_uri
    experiment = find_experiment(client, args.experiment) if args.experiment else None
    command = ui_command(uri, args.port)
    base = URI_CREDENTIALS.sub("", uri).rstrip("/") if command is None else f"http://127.0.0.1:{args.port}"
    path = f"/#/experiments/{experiment.experiment_id}" if experiment else "/#/experiments"
    out = {
        "command": command,
        "url": f"{base}{path}?workflowType=machine_learning",
        "experiment": experiment.name if experiment else None,
    }
    if command:
        out["notes"] = [
            "run the command in a terminal of its own (it serves until stopped); the first start downloads MLflow "
            "and takes about a minute, later starts a few seconds",
            "stop it with Ctrl-C in that terminal (it stops its worker processes too); started in the background, "
            "stop its whole process group: kill -- -PGID (setsid … & starts one), never a single worker pid",
            "the link opens the runs view (?workflowType=machine_learning); without it MLflow 3.17 opens in "
            "GenAI mode: click Model training at the top left",
        ]
    else:
        out["notes"] = ["the tracking server serves the UI: open the link (log in with your MLflow user)"]
    return out


# ---- command line ----


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def build_parser() -> CliParser:
    common = CliParser(add_help=False)
    common.add_argument(
        "--format", choices=["json", "table", "csv"], help="default: table at a terminal, else json"
    )
    common.add_argument(
        "--max-chars",
        type=non_negative_int,
        metavar="N",
        help=f"cut json/table output to N characters (default {MAX_OUTPUT_CHARS}; csv: no cut); 0 = no cut",
    )
    common.add_argument("--tracking-uri", metavar="URI", help="overrides MLFLOW_TRACKING_URI")
    common.add_argument("--debug", action="store_true", help="tracebacks and MLflow logging on stderr")

    parser = CliParser(
        prog="query_experiments.py",
        description="Find, inspect, compare and group backtests in MLflow (filters run in the store).",
        epilog=(
            "every subcommand also takes (after its name): --format json|table|csv, --max-chars N, "
            "--tracking-uri URI, --debug\n"
            f"filter grammar and examples: {QUERY_DOC}\n\n{EXIT_CODES_HELP}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CliParser, metavar="SUBCOMMAND")
    parser.set_defaults(writes=False)  # delete and restore write: a read-only local store exits 4 first

    def add(name: str, help_text: str, epilog: str = ""):
        return sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=(epilog + "\n\n" if epilog else "") + EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add(
        "experiments",
        "list experiments",
        "example: experiments --filter \"name LIKE 'momentum%'\" --with-counts",
    )
    p.set_defaults(handler=cmd_experiments, check=None)
    p.add_argument(
        "--filter", default="", metavar="S", help="e.g. \"name LIKE 'mom%%'\" or \"tags.team = 'quant'\""
    )
    p.add_argument(
        "--order-by", action="append", default=[], metavar="S", help="e.g. 'name ASC' (repeatable)"
    )
    p.add_argument("--max-results", type=positive_int, default=100, metavar="N", help="default 100")
    p.add_argument("--include-deleted", action="store_true", help="also deleted experiments")
    p.add_argument(
        "--with-counts", action="store_true", help="add run_count (active runs; COUNT(*) on a database store)"
    )

    p = add(
        "runs",
        "search runs in one or more experiments (filtered, ordered and limited by the store)",
        "examples:\n  runs --experiment momentum --order-by 'metrics.sharpe DESC' --max-results 10\n"
        "  runs --experiment momentum --filter \"metrics.sharpe > 1 and params.window = '20'\" --top-level",
    )
    p.set_defaults(handler=cmd_runs, check=check_runs)
    p.add_argument(
        "--experiment", action="append", required=True, metavar="NAME", help="name or id (repeatable)"
    )
    p.add_argument("--filter", default="", metavar="S", help="MLflow search filter (AND only)")
    p.add_argument(
        "--order-by", action="append", default=[], metavar="S", help="e.g. 'metrics.sharpe DESC' (repeatable)"
    )
    p.add_argument(
        "--max-results", type=positive_int, default=DEFAULT_MAX_RUNS, metavar="N", help="default 20"
    )
    cols = p.add_mutually_exclusive_group()
    cols.add_argument(
        "--columns",
        metavar="LIST",
        help="e.g. metrics.sharpe,params.window,tags.* (default: key metrics, all params, user tags)",
    )
    cols.add_argument("--all-columns", action="store_true", help="every metric, param and tag")
    p.add_argument("--status", type=str.upper, choices=RUN_STATUSES, help="only runs with this status")
    family = p.add_mutually_exclusive_group()
    family.add_argument("--parent-run-id", metavar="ID", help="only the children of this run (a sweep)")
    family.add_argument("--top-level", action="store_true", help="hide sweep children (runs with a parent)")

    p = add("run", "everything about one run: params, metrics, tags, datasets, artifacts, parent, children")
    p.set_defaults(handler=cmd_run, check=None)
    p.add_argument("--run-id", required=True, metavar="ID")

    p = add(
        "compare",
        "compare 2-20 runs metric by metric; the best value per metric is marked in its direction",
        "directions: "
        + ", ".join(f"{k} {v}" for k, v in METRIC_DIRECTIONS.items())
        + " (zero = closest to 0)",
    )
    p.set_defaults(handler=cmd_compare, check=check_compare)
    p.add_argument("--run-id", action="append", required=True, metavar="ID", help="repeat 2-20 times")
    p.add_argument(
        "--metrics", metavar="LIST", help="e.g. sharpe,max_drawdown, or 'all' (default: key metrics)"
    )

    p = add(
        "group",
        "aggregate a metric per value of one param or tag (how a hyperparameter moves a metric)",
        "example: group --experiment momentum --by params.window --metric sharpe --agg mean,median,max,count",
    )
    p.set_defaults(handler=cmd_group, check=check_group)
    p.add_argument(
        "--experiment", action="append", required=True, metavar="NAME", help="name or id (repeatable)"
    )
    p.add_argument("--by", required=True, metavar="params.X", help="params.NAME or tags.NAME")
    p.add_argument("--metric", default="sharpe", help="default sharpe")
    p.add_argument("--agg", default=DEFAULT_AGGREGATES, metavar="LIST", help=f"of {', '.join(AGGREGATES)}")
    p.add_argument("--filter", default="", metavar="S", help="MLflow search filter applied first")
    p.add_argument("--status", type=str.upper, choices=RUN_STATUSES, help="only runs with this status")
    p.add_argument("--top-level", action="store_true", help="ignore sweep children")
    p.add_argument(
        "--max-runs", type=positive_int, default=GROUP_MAX_RUNS, metavar="N", help=f"default {GROUP_MAX_RUNS}"
    )

    p = add(
        "deflate",
        "is the best run better than luck? N, expected maximum Sharpe and deflated Sharpe ratio of an experiment",
        DEFLATE_HELP,
    )
    p.set_defaults(handler=cmd_deflate, check=check_deflate)
    p.add_argument(
        "--experiment", action="append", required=True, metavar="NAME", help="name or id (repeatable)"
    )
    p.add_argument(
        "--filter", default="", metavar="S", help="MLflow search filter: which runs are the trials"
    )
    p.add_argument(
        "--metric", default="sharpe", help="the annualised Sharpe-type metric to deflate (default sharpe)"
    )
    p.add_argument(
        "--exclude-deleted",
        action="store_true",
        help="leave deleted runs out (only for runs deleted as mistakes: deleted losers are still trials)",
    )
    p = add(
        "periods",
        "runs x calendar periods or stress windows: one statistic per run and period (references/periods.md)",
        "examples:\n  periods --experiment momentum --by year\n"
        "  periods --experiment momentum --by stress --metric max_drawdown --filter \"params.lookback = '100'\"\n"
        "values come from each run's periods/<by>.csv; runs logged before it existed are recomputed from their\n"
        "stored returns (n_recomputed), else listed under `undefined` with the reason. Sweep parents are left\n"
        "out (their children are in).",
    )
    p.set_defaults(handler=cmd_periods, check=check_periods)
    p.add_argument(
        "--experiment", action="append", required=True, metavar="NAME", help="name or id (repeatable)"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--filter", default="", metavar="S", help="MLflow search filter: which runs")
    which.add_argument("--run-id", metavar="ID,...", help="these runs (comma-separated) instead of a filter")
    p.add_argument("--by", default="year", choices=PERIOD_KINDS, help="default year")
    p.add_argument("--metric", default="return", choices=PERIOD_STATS, help="default return")
    p.add_argument(
        "--max-runs",
        type=positive_int,
        default=DEFAULT_MAX_RUNS,
        metavar="N",
        help=f"default {DEFAULT_MAX_RUNS}",
    )

    p = add(
        "delete",
        "soft-delete runs (restorable) or a whole experiment; a dry run unless --yes; --purge removes for good",
        "examples:\n  delete --run-id 0a1b2c,3d4e5f            # dry run: what would be deleted\n"
        "  delete --experiment momentum --status FAILED,KILLED --yes\n"
        "  delete --experiment momentum --older-than 30d --filter \"params.lookback = '50'\" --yes\n"
        "  delete --experiment momentum --duplicates --yes   # same backtest fingerprint: the newest is kept\n"
        "  delete --experiment momentum --whole-experiment --yes\n"
        "  delete --run-id 0a1b2c --purge --yes               # local or database store only\n\n"
        "--experiment needs a selector (--filter, --status, --older-than, --duplicates or --all: several\n"
        "are ANDed); nothing is deleted by omission. A sweep's or walk-forward's parent takes its children.\n"
        f"Deleted runs still count as trials in deflate. More: {HOUSEKEEPING_DOC}",
    )
    p.set_defaults(handler=cmd_delete, check=check_housekeeping, writes=True)
    add_targets(p, deleting=True)

    p = add(
        "restore",
        "restore deleted runs (with their children) or a deleted experiment",
        "examples:\n  restore --run-id 0a1b2c\n  restore --experiment momentum --filter \"params.lookback = '50'\"\n"
        "  restore --experiment momentum --whole-experiment\n\n"
        f"--experiment alone restores every deleted run of the experiment. More: {HOUSEKEEPING_DOC}",
    )
    p.set_defaults(handler=cmd_restore, check=check_housekeeping, writes=True)
    add_targets(p, deleting=False)

    p = add(
        "artifacts",
        "list a run's artifacts (path, size) or download a file or folder of them",
        "examples:\n  artifacts --run-id 0a1b2c\n  artifacts --run-id 0a1b2c --path tearsheet.html --download out\n"
        "  artifacts --run-id 0a1b2c --path code --download out   # a folder",
    )
    p.set_defaults(handler=cmd_artifacts, check=check_artifacts)
    p.add_argument("--run-id", required=True, metavar="ID")
    p.add_argument("--path", default="", metavar="P", help="a file or folder inside the run's artifacts")
    p.add_argument("--download", metavar="DIR", help="download --path (default: everything) into DIR")
    p.add_argument(
        "--max-entries", type=positive_int, default=ARTIFACT_LIST_LIMIT, metavar="N",
        help=f"list at most N entries (default {ARTIFACT_LIST_LIMIT})",
    )  # fmt: skip

    p = add(
        "ui",
        "print the command that opens the MLflow UI on the current store and the link to an experiment's runs",
        "example: ui --experiment momentum   (starts nothing)",
    )
    p.set_defaults(handler=cmd_ui, check=None)
    p.add_argument("--experiment", metavar="NAME", help="link to this experiment's runs")
    p.add_argument("--port", type=positive_int, default=UI_PORT, help=f"default {UI_PORT}")
    return parser


def check_periods(args) -> None:
    check_experiments_named(args)
    if args.run_id is not None:
        args.run_id = list(dict.fromkeys(split_list(args.run_id)))
        if not args.run_id:
            raise CliError(EXIT_USAGE, "--run-id is empty: give run ids, comma-separated")


def add_targets(p: CliParser, deleting: bool) -> None:
    """delete's and restore's flags: the runs or the experiment, the selectors, --yes and --purge."""
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--run-id", action="append", metavar="ID[,ID...]", help="run ids (comma-separated, repeatable)"
    )
    target.add_argument("--experiment", metavar="NAME", help="an experiment's name or id, with a selector")
    p.add_argument(
        "--filter", default="", metavar="S", help="MLflow search filter (references/query-patterns.md)"
    )
    p.add_argument(
        "--whole-experiment", action="store_true", help="the experiment itself (MLflow marks its runs too)"
    )
    if not deleting:  # restore acts at once (it loses nothing) and selects by --filter only
        p.set_defaults(status=None, older_than=None, duplicates=False, all=False, yes=True, purge=False)
        return
    p.add_argument("--status", metavar="LIST", help="runs with one of these statuses, e.g. FAILED,KILLED")
    p.add_argument(
        "--older-than", metavar="AGE", help="runs started longer ago than AGE: 30d, 12h, 2w, 1d12h"
    )
    p.add_argument(
        "--duplicates", action="store_true", help="all but the newest run of each backtest fingerprint"
    )
    p.add_argument("--all", action="store_true", help="every run of the experiment")
    p.add_argument("--yes", action="store_true", help="act (without it: a dry run that lists what would go)")
    p.add_argument(
        "--purge", action="store_true",
        help="remove the runs for good (rows and artifacts; local or database store, not a server)",
    )  # fmt: skip


def check_experiments_named(args) -> None:
    for name in args.experiment:
        if not name.strip():
            raise CliError(EXIT_USAGE, "--experiment is empty: give a name (list them with `experiments`)")
    if getattr(args, "parent_run_id", None) and not args.parent_run_id.strip():
        raise CliError(EXIT_USAGE, "--parent-run-id is empty")


def check_runs(args) -> None:
    check_experiments_named(args)
    parse_columns(args.columns)


def check_compare(args) -> None:
    ids = list(dict.fromkeys(i.strip() for i in args.run_id if i.strip()))
    if len(ids) < len(args.run_id):
        print("warning: repeated or empty --run-id ignored", file=sys.stderr)
    if not 2 <= len(ids) <= 20:
        raise CliError(EXIT_USAGE, f"compare needs 2 to 20 different --run-id (got {len(ids)})")
    args.run_id = ids


def check_group(args) -> None:
    check_experiments_named(args)
    prefix, dot, key = args.by.partition(".")
    if not dot or not key or prefix not in ("params", "param", "tags", "tag"):
        raise CliError(
            EXIT_USAGE, f"--by {args.by!r} must be params.NAME or tags.NAME, e.g. --by params.window"
        )
    if "`" in key:
        raise CliError(EXIT_USAGE, "--by must not contain backticks")
    aggs = split_list(args.agg)
    unknown = [a for a in aggs if a not in AGGREGATES]
    if not aggs or unknown:
        raise CliError(EXIT_USAGE, f"--agg {args.agg!r}: choose from {', '.join(AGGREGATES)}")


def check_deflate(args) -> None:
    check_experiments_named(args)
    args.metric = args.metric.strip()
    if not args.metric or not KEY_PATTERN.match(args.metric):
        raise CliError(EXIT_USAGE, f"--metric {args.metric!r} is not a metric name, e.g. --metric sharpe")


def check_housekeeping(args) -> None:
    """delete/restore: run ids, or an experiment with a selector; every value checked before any request."""
    deleting = args.handler is cmd_delete
    if args.run_id is not None:
        args.run_id = list(dict.fromkeys(i for item in args.run_id for i in split_list(item)))
        if not args.run_id:
            raise CliError(EXIT_USAGE, "--run-id is empty: give run ids (find them with `runs`)")
        used = selectors_used(args) + (["--whole-experiment"] if args.whole_experiment else [])
        if used:
            raise CliError(EXIT_USAGE, f"{', '.join(used)} select runs of an --experiment, not of --run-id")
    elif not args.experiment.strip():
        raise CliError(EXIT_USAGE, "--experiment is empty: give a name (list them with `experiments`)")
    if args.status is not None:
        statuses = [s.upper() for s in split_list(args.status)]
        unknown = [s for s in statuses if s not in RUN_STATUSES]
        if unknown or not statuses:
            raise CliError(EXIT_USAGE, f"--status {args.status!r}: choose from {','.join(RUN_STATUSES)}")
        args.status = statuses
    if args.older_than is not None:
        args.older_than = age_ms(args.older_than)
    chosen = selectors_used(args)
    if args.experiment is not None and args.whole_experiment:
        if chosen or args.purge:
            extra = chosen + (["--purge"] if args.purge else [])
            raise CliError(EXIT_USAGE, f"--whole-experiment takes no {', '.join(extra)}")
    elif args.experiment is not None and deleting and not chosen:
        raise CliError(
            EXIT_USAGE,
            f"--experiment needs a selector: {', '.join(SELECTORS)} (nothing is deleted by omission); "
            "--whole-experiment deletes the experiment itself",
        )
    if args.all and len(chosen) > 1:
        raise CliError(
            EXIT_USAGE, f"--all selects every run: drop {', '.join(c for c in chosen if c != '--all')}"
        )


def selectors_used(args) -> list[str]:
    """The selector flags given, in SELECTORS' order."""
    values = (args.filter.strip(), args.status, args.older_than, args.duplicates, args.all)
    return [flag for flag, value in zip(SELECTORS, values, strict=True) if value]


def check_artifacts(args) -> None:
    if not args.run_id.strip():
        raise CliError(EXIT_USAGE, "--run-id is empty")
    if args.download is not None and Path(args.download).exists() and not Path(args.download).is_dir():
        raise CliError(EXIT_USAGE, f"--download {args.download!r} is a file: give a folder")


def build_query(args) -> Query:
    """Input checks that need no MLflow (exit 2 before any import or request): the subcommand's own check."""
    if args.check is not None:
        args.check(args)
    return Query(
        args.handler, args, output_format(args.format), resolve_tracking_uri(args.tracking_uri), args.debug
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv

    def action() -> int:
        query = build_query(build_parser().parse_args(argv))
        client = connect(query.tracking_uri, query.debug, writes=query.args.writes)
        print_bounded(query.handler(client, query), query.fmt, query.args.max_chars)
        return EXIT_OK

    return run_cli(action, debug)


if __name__ == "__main__":
    status = main()
    # The interpreter's shutdown would sweep every object still alive (mlflow's, SQLAlchemy's, pandas'): 1-2 s
    # of a 6 s log (bench/RESULTS.md). Frozen objects are left to the OS; atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(status)
