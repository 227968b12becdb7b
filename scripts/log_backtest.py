# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "mlflow>=3.17,<3.18",
#     "quantstats==0.0.86",
#     "pandas>=2.2",
#     "pyarrow>=15",
#     # the PostgreSQL driver for a direct MLFLOW_TRACKING_URI=postgresql://… (imported only then; SQLAlchemy
#     # >= 2.1 maps postgresql:// to psycopg 3)
#     "psycopg[binary]>=3.2",
#     # uploads artifacts straight to S3 when the server hands out s3:// artifact locations (imported only then)
#     "boto3>=1.28",
# ]
# ///
"""Log a trading backtest to MLflow: every QuantStats metric, equity and drawdown curves, the returns as a
dataset, a tearsheet and a readable description, in one run (or a parent run with one child per column).

Usage (as an agent types it; `mise x --` loads credentials from .env.local):
  uv run scripts/log_backtest.py --returns returns.csv
  uv run scripts/log_backtest.py --returns returns.csv --benchmark spy.csv --experiment momentum \\
      --run-name mom-12-1 --param lookback=252 --params '{"universe": {"size": 500}}' --tag stage=research
  uv run scripts/log_backtest.py --returns equity.parquet --prices --rf 0.04 --no-tearsheet
  uv run scripts/log_backtest.py --returns sweep.csv               # several numeric columns -> a sweep
  uv run scripts/log_backtest.py --returns returns.csv --dry-run   # compute and print, touch no store

Input: CSV or Parquet. The timestamp column is the one named date, datetime, timestamp or time, else the
first column when it is not numeric. Each other column is one strategy's returns (decimal: 0.01 = 1 %);
--prices converts prices/equity, --percent divides percent values by 100. Several columns make a sweep
unless --column picks one. A file without timestamps needs --periods-per-year.

Output (JSON when stdout is not a terminal, a table when it is; --format overrides): run_id, run_name,
experiment_id, experiment, tracking_uri (credentials masked), url, deduplicated, periods_per_year,
frequency, n_bars, start, end, metrics, undefined_metrics, artifacts, warnings, fingerprint, benchmark.
A sweep prints {"parent_run_id", ..., "runs": [...]} where each run carries its key metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
import traceback
import warnings as warnings_module  # `warnings` is the name of our list of user-facing warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import ClassVar

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

SKILL_NAME = "mlflow-python"
SKILL_VERSION = "0.1.0"
DEFAULT_EXPERIMENT = "backtests"
DEFAULT_MAX_HISTORY_POINTS = 5000
PARQUET_ARTIFACT_MIN_BARS = 100_000  # the normalised returns are stored as Parquet from this many bars on
# The tearsheet of an intraday series this long is drawn from daily compounded returns: QuantStats' report
# on 1M minute bars takes minutes (rolling apply, one drawdown row per episode, 1M-point SVG paths) and
# its calendar tables are daily/monthly anyway. The metrics are always computed on the bars themselves.
TEARSHEET_MAX_INTRADAY_BARS = 20_000
TIMESTAMP_COLUMNS = ("date", "datetime", "timestamp", "time")
DESCRIPTION_TAG = "mlflow.note.content"  # the markdown the MLflow UI shows on the run page
PARENT_TAG = "mlflow.parentRunId"
FINGERPRINT_TAG = "backtest.fingerprint"
DUPLICATE_TAG = "backtest.duplicate_of"  # a run another process logged first, when it could not be deleted
UNDEFINED_TAG = "backtest.undefined_metrics"
VERSION_TAG = "backtest.skill_version"
SWEEP_TAG = "backtest.sweep"
RESERVED_TAG_PREFIXES = ("mlflow.", "backtest.")
MAX_PARAM_VALUE_LENGTH = 6000  # mlflow.utils.validation
MAX_TAG_VALUE_LENGTH = 8000
MAX_DESCRIPTION_LENGTH = 4000  # leaves room in mlflow.note.content for the generated summary
MAX_RF = 0.5  # an annual rate above 50 % is almost surely given in percent
KEY_METRICS = (
    "sharpe", "sortino", "cagr", "total_return", "max_drawdown", "volatility", "calmar", "win_rate",
    "profit_factor",
)  # fmt: skip


# ---- main and the family pipeline: where a reader starts ------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """The pipeline, each stage one function returning a typed value: build_request -> load_all -> plan (the
    kind of family and a Job per child) -> log_family (prepare the children in worker processes where that
    is safe, open the store meanwhile, find a duplicate, write the run or the parent and its children) ->
    emit."""
    argv_given, argv = argv, sys.argv[1:] if argv is None else argv

    def action() -> int:
        import contextlib
        import io

        req = build_request(build_parser().parse_args(argv))
        phase(req, "arguments checked")
        if argv_given is None:  # this process is ours: a host that called main() keeps its allocators
            allocators_that_give_back_memory()
        loaded = load_all(req)  # pandas from here on; every input error is still exit 2 with nothing written
        if req.oos:
            for column in loaded.columns:  # each side of the split needs bars: checked before any work
                oos_position(column.returns, column.has_timestamps, req.oos, column.name)
        phase(req, "data loaded and validated")
        with (
            work_folder() as tmp,
            # MLflow prints run links ("View run ... at ...") to stdout for http servers: stdout is ours.
            contextlib.redirect_stdout(sys.stderr if req.debug else io.StringIO()),
        ):
            family = plan(loaded, req, tmp)
            with worker_pool(worker_processes(req, family)) as pool:
                result = log_family(family, req, pool, tmp)
        out = {**result.output, "warnings": req.warnings + loaded.warnings + result.warnings}
        fmt = output_format(req.output_format)
        emit(table_rows(out) if fmt == "table" else out, fmt)
        return EXIT_OK

    # The command line (argv None) is this process's own: a signal after the work is ignored until it exits.
    return run_cli(stopping_at_signals(action, ours=argv_given is None), "--debug" in argv)


@dataclass(frozen=True)
class ParentRecord:
    """What a kind writes on its parent once the children are logged (its files are in the parent's folder)."""

    metrics: dict[str, float]
    undefined: list[str]
    params: dict[str, str]
    tags: dict[str, str]
    histories: Histories | None = None  # a walk-forward parent's: the stitched out-of-sample equity


@dataclass(frozen=True)
class Family:
    """A plan carried out up to the writes: the children prepared (each job an already-sliced series with its
    role) and what identifies the family. One subclass per kind (SingleRun, Sweep, WalkForward) supplies the
    parent's tags, metrics, description and artifacts and the output; log_family and write_family do the
    rest."""

    shares: list[list[Job]]  # shares[0] this process's, then one per worker: each prepares and writes its own
    preps: list[Prepared]  # in job order
    fingerprint: str  # of the parent (a single run: of the run): what the duplicate check looks for
    run_name: str
    warnings: list[str]

    noun: ClassVar[str] = "backtest"  # what the duplicate warning calls it
    has_parent: ClassVar[bool] = True

    @classmethod
    def workers(cls, req: Request, jobs: list[Job], cores: int) -> int:
        """Worker processes worth starting for these jobs (worker_processes has ruled out the unsafe cases)."""
        return min(cores, len(jobs)) - 1

    @classmethod
    def start(cls, plan: Plan, req: Request, pool, tmp: Path) -> Callable[[], Family]:
        """Start preparing the jobs (the workers' share in the pool); -> finish(), which is called once this
        process has opened the store and returns the family prepared."""
        raise NotImplementedError

    def draw_tearsheets(self, req: Request, warnings: list[str]) -> None:
        """Before the first write: the children's reports that must exist before anything is written."""

    def tearsheet(self):
        """A future of the lone run's tearsheet that write_run awaits after the metrics land (or None)."""
        return None

    def parent_tags(self, req: Request) -> dict[str, str]:
        """The parent's tags when it is created (its description follows once the children are logged)."""
        raise NotImplementedError

    def created_parent_tags(self, req: Request, kind: dict[str, str]) -> dict[str, str]:
        """What every kind's parent is created with: ours, the kind's (`kind`), a placeholder description,
        the user's."""
        return {
            FINGERPRINT_TAG: self.fingerprint,
            VERSION_TAG: SKILL_VERSION,
            **kind,
            "mlflow.source.name": "log_backtest.py",
            "mlflow.source.type": "LOCAL",
            DESCRIPTION_TAG: f"{self.noun} in progress",
            **req.tags,
        }

    def parent_record(self, children: list[Outcome], req: Request, folder: Path) -> ParentRecord:
        raise NotImplementedError

    def output(self, parent: Outcome | None, children: list[Outcome], experiment_id, req: Request) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class Plan:
    """What main() logs: the child jobs and the kind of family they make."""

    kind: type[Family]
    jobs: list[Job]
    walk_forward: WalkForwardPlan | None = None  # the folds and picks of a walk-forward


def log_family(plan: Plan, req: Request, pool, tmp: Path) -> Result:
    """Prepare the children (in worker processes where that is safe) while this process imports mlflow;
    skip a duplicate; write the family; the kind's output."""
    finish = plan.kind.start(plan, req, pool, tmp)
    client = open_store(req)
    family = finish()
    warnings = list(family.warnings)
    if client is None:
        parent = Outcome(None, family.run_name) if family.has_parent else None
        children = [Outcome(None, p.run_name, artifacts=p.artifacts) for p in family.preps]
        return Result(family.output(parent, children, None, req), warnings)
    experiment_id = ensure_experiment(client, req.experiment)
    existing, written = write_once(
        client, experiment_id, family.fingerprint, req,
        write=lambda: write_family(client, experiment_id, family, req, pool, tmp, warnings),
        run_ids=lambda written: [o.run_id for o in ([written[0]] if written[0] else []) + written[1]],
    )  # fmt: skip
    phase(req, "experiment checked, run written or found")
    final_state_written()  # written, or an identical run found: the store holds the result
    if existing is None:
        parent, children = written
        warnings += [w for child in children for w in child.warnings]
    else:
        parent, children = logged_family(client, experiment_id, family, existing)
        warn(
            f"an identical {family.noun} is already logged as run {existing.info.run_id}; pass --force to log "
            "again",
            warnings,
        )
    return Result(family.output(parent, children, experiment_id, req), warnings)


def write_family(
    client, experiment_id: str, family: Family, req: Request, pool, tmp: Path, warnings: list[str]
) -> tuple[Outcome | None, list[Outcome]]:
    """The one writer. A lone run: write_run. A parent: created first, then every child (this process's
    share here, each worker its own share), then the kind's record of the parent (metrics, params, tags,
    files) and its artifacts; FINISHED last, FAILED if anything fails. The parent summarises its children:
    none of their metrics under their own names (it is not one more strategy in MLflow's charts)."""
    family.draw_tearsheets(req, warnings)
    if not family.has_parent:
        [[job]], [prep] = family.shares, family.preps
        run = write_run(client, experiment_id, job, prep, req, tearsheet=family.tearsheet())
        final_state_written()
        return None, [run]
    parent_dir = tmp / "parent"
    parent_dir.mkdir(exist_ok=True)  # the kind may have written files there already
    copy_code(req, parent_dir)
    parent_id = client.create_run(
        experiment_id, run_name=family.run_name, tags=family.parent_tags(req)
    ).info.run_id
    try:
        children = write_all_children(client, experiment_id, family, req, pool, parent_id)
        stop_point()
        record = family.parent_record(children, req, parent_dir)
        log_entries(
            client, parent_id, record.metrics, record.params, record.histories,
            tags={UNDEFINED_TAG: ",".join(record.undefined), **record.tags},
        )  # fmt: skip
        client.log_artifacts(parent_id, str(parent_dir))
        stop_point()
        client.set_terminated(parent_id, "FINISHED")
        final_state_written()
    except BaseException:
        # Workers still writing children would write on after we look: end them first. A worker ended
        # mid-write leaves its child RUNNING (a signal to the whole group lets it mark its own FAILED).
        pool.stop()
        fail_unfinished_children(client, experiment_id, parent_id)
        mark_failed(client, parent_id)
        raise
    return Outcome(parent_id, family.run_name, artifacts=artifact_names(parent_dir)), children


def logged_family(
    client, experiment_id: str, family: Family, existing
) -> tuple[Outcome | None, list[Outcome]]:
    """The outcomes of a family found already logged: its parent and its children, matched by fingerprint."""
    if not family.has_parent:
        return None, [
            Outcome(
                existing.info.run_id, existing.info.run_name, deduplicated=True, stored=Stored.of(existing)
            )
        ]
    parent_id = existing.info.run_id
    children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")
    by_fp = {run.data.tags.get(FINGERPRINT_TAG): run for run in children}
    found = [by_fp.get(p.fingerprint) for p in family.preps]
    return Outcome(parent_id, family.run_name, deduplicated=True, stored=Stored.of(existing)), [
        Outcome(run and run.info.run_id, p.run_name, deduplicated=True, stored=run and Stored.of(run))
        for p, run in zip(family.preps, found, strict=True)
    ]


def write_all_children(
    client, experiment_id: str, family: Family, req: Request, pool, parent_id: str
) -> list[Outcome]:
    """Each process writes its share of the children; when one fails the others still finish theirs, then
    the first failure is raised. -> the children's outcomes in job order."""

    def preps_of(share: list[Job]) -> list[Prepared]:
        return [family.preps[job.position] for job in share]

    theirs = [
        pool.submit(write_children, share, preps_of(share), req, experiment_id, parent_id)
        for share in family.shares[1:]
    ]
    results, failures = [], []
    try:
        results.append(
            write_children(
                family.shares[0], preps_of(family.shares[0]), req, experiment_id, parent_id, client
            )
        )
    except Exception as exc:  # noqa: BLE001 - the workers finish their runs first, then this is raised
        failures.append(exc)
    for future in theirs:
        try:
            results.append(awaited(future))
        except Exception as exc:  # noqa: BLE001 - as above
            failures.append(exc)
    if failures:
        raise failures[0]
    return in_job_order(family.shares, results)


def in_job_order(shares: list[list[Job]], results: list[list]) -> list:
    """Per-share results (shares[i] -> results[i]) back in job order."""
    by_position = {
        job.position: result for share, values in zip(shares, results, strict=True)
        for job, result in zip(share, values, strict=True)
    }  # fmt: skip
    return [by_position[i] for i in range(len(by_position))]


# ---- out of sample: --oos-start -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OosSplit:
    """--oos-start: a date (the first out-of-sample bar is the first at or after it) or a fraction of the
    bars (0 < f < 1: the first f of each series is in-sample)."""

    text: str
    fraction: float | None = None
    date: str | None = None  # ISO 8601, checked before pandas is imported


def parse_oos_start(text: str) -> OosSplit:
    from datetime import datetime

    try:
        fraction = float(text)
    except ValueError:
        fraction = None
    if fraction is not None:
        if not 0 < fraction < 1:
            raise CliError(EXIT_USAGE, f"--oos-start {text!r}: a fraction must be between 0 and 1, e.g. 0.7")
        return OosSplit(text, fraction=fraction)
    try:
        datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            EXIT_USAGE,
            f"--oos-start {text!r} is neither a date (2021-01-01) nor a fraction of the bars (0.7)",
        ) from None
    return OosSplit(text, date=text.strip())


def oos_position(returns, has_timestamps: bool, split: OosSplit, name: str) -> int:
    """Index of the first out-of-sample bar; exit 2 unless both sides have at least 2 bars."""
    import pandas as pd

    n = len(returns)
    if split.fraction is not None:
        position = int(math.floor(split.fraction * n))
    elif not has_timestamps:
        raise CliError(
            EXIT_USAGE, f"--oos-start {split.text}: column {name!r} has no timestamps; give a fraction"
        )
    else:
        stamp = pd.Timestamp(split.date)
        index = returns.index
        if stamp.tzinfo is None and index.tz is not None:
            stamp = stamp.tz_localize(index.tz)
        elif stamp.tzinfo is not None and index.tz is None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        position = int(index.searchsorted(stamp, side="left"))
    if position < 2 or n - position < 2:
        raise CliError(
            EXIT_USAGE,
            f"--oos-start {split.text} leaves {position} in-sample and {n - position} out-of-sample bars in "
            f"column {name!r}; each side needs at least 2",
        )
    return position


# ---- walk-forward: --walk-forward --train --test [--step --embargo --anchored] --------------------------------
# The folds, exactly (references/walk-forward.md): t0 the first bar; fold k trains on [s_k, e_k), e_k = t0 +
# k*STEP + TRAIN, s_k = t0 + k*STEP (rolling) or t0 (--anchored); it tests on [e_k + EMBARGO, e_k + EMBARGO +
# TEST). Folds go on while a test window starts at or before the last bar. Calendar durations are pandas
# DateOffsets (t0 + DateOffset(months=k*N): one offset, not k additions); bar counts are positions on the union
# of the columns' bars.
DURATION = re.compile(r"^(\d+)([ymwd]?)$")
DURATION_UNITS = {"y": "years", "m": "months", "w": "weeks", "d": "days"}  # pandas DateOffset keywords
APPROX_DAYS = {"y": 365.25, "m": 30.4375, "w": 7.0, "d": 1.0}  # only to compare --step with --test
MAX_FOLDS = 500  # more child runs than the MLflow UI can show usefully: a longer --step


@dataclass(frozen=True)
class Duration:
    """A window's length: N calendar units (y, m, w, d) or N bars (unit "")."""

    text: str
    count: int
    unit: str

    def offset(self, times: int = 1):
        import pandas as pd

        return pd.DateOffset(**{DURATION_UNITS[self.unit]: self.count * times})


@dataclass(frozen=True)
class WalkForwardSpec:
    train: Duration
    test: Duration
    step: Duration
    embargo: Duration
    anchored: bool

    @property
    def in_bars(self) -> bool:
        return self.train.unit == ""

    def settings(self) -> dict[str, str]:
        """As given: the parent's params, the JSON's walk_forward object and part of the fingerprint."""
        return {
            "train": self.train.text, "test": self.test.text, "step": self.step.text,
            "embargo": self.embargo.text, "anchored": str(self.anchored).lower(),
        }  # fmt: skip


def parse_duration(text: str, flag: str, zero_ok: bool = False) -> Duration:
    match = DURATION.match(text.strip().lower())
    if text.strip().startswith("-"):
        raise CliError(EXIT_USAGE, f"{flag} {text}: a duration must be positive")
    if not match:
        raise CliError(
            EXIT_USAGE, f"{flag} {text!r}: give N bars (e.g. 63) or N with a unit y, m, w or d (e.g. 3y, 6m)"
        )
    count = int(match.group(1))
    if count == 0 and not zero_ok:
        raise CliError(EXIT_USAGE, f"{flag} {text}: a duration must be positive")
    return Duration(text.strip(), count, match.group(2))


def parse_walk_forward(args) -> WalkForwardSpec | None:
    """--walk-forward and its windows checked before any data is read (the folds are checked in plan)."""
    given = [
        flag for flag, value in (("--train", args.train), ("--test", args.test), ("--step", args.step),
                                 ("--embargo", args.embargo), ("--anchored", args.anchored)) if value
    ]  # fmt: skip
    if not args.walk_forward:
        if given:
            raise CliError(EXIT_USAGE, f"{given[0]} is a walk-forward setting: add --walk-forward")
        return None
    if not (args.train and args.test):
        raise CliError(EXIT_USAGE, "--walk-forward needs --train and --test, e.g. --train 3y --test 3m")
    if args.oos_start is not None:
        raise CliError(
            EXIT_USAGE,
            "--walk-forward excludes --oos-start: a walk-forward's out-of-sample bars are its test windows",
        )
    train, test = parse_duration(args.train, "--train"), parse_duration(args.test, "--test")
    step = parse_duration(args.step, "--step") if args.step else test
    embargo = (
        parse_duration(args.embargo, "--embargo", zero_ok=True) if args.embargo else Duration("0", 0, "")
    )
    if len({d.unit == "" for d in (train, test, step, embargo) if d.count}) > 1:
        raise CliError(
            EXIT_USAGE,
            "--train, --test, --step and --embargo must all be bar counts (63) or all calendar (3m, 1y)",
        )
    days = {d: d.count * APPROX_DAYS.get(d.unit, 1.0) for d in (step, test)}
    if days[step] < days[test]:
        raise CliError(
            EXIT_USAGE,
            f"--step {step.text} is shorter than --test {test.text}: the test windows would overlap (every "
            "out-of-sample bar is traded once)",
        )
    return WalkForwardSpec(train, test, step, embargo, args.anchored)


@dataclass(frozen=True)
class Fold:
    """One fold: training [train_start, train_end), test [test_start, test_end) (ends exclusive, None: past
    the last bar), the bars of each on the union index, and what was chosen on the training window."""

    number: int
    train_start: object  # pandas Timestamp
    train_end: object
    test_start: object
    test_end: object | None
    labels: dict[str, str]  # train_start ... test_end as ISO dates (or "bar N")
    n_train_bars: int
    n_test_bars: int
    partial: bool
    chosen: int = -1  # the column's position
    in_sample: dict[str, float] = field(default_factory=dict)  # is_sharpe (and is_<best_by>) of the chosen
    oos_value: float = math.nan  # the chosen column's --best-by value on the test window
    oos_rank: int = 0  # among all columns on the test window, 1 = best

    def params(self, columns: list[str]) -> dict[str, str]:
        return {
            "fold": str(self.number), **self.labels, "chosen_column": columns[self.chosen],
            "n_train_bars": str(self.n_train_bars), "n_test_bars": str(self.n_test_bars),
            "partial": str(self.partial).lower(),
        }  # fmt: skip


def union_index(columns: list[Column]):
    index = columns[0].returns.index
    for column in columns[1:]:
        index = index.union(column.returns.index)
    return index


def fold_windows(index, spec: WalkForwardSpec, has_timestamps: bool) -> list[Fold]:
    """The folds over the union index, before any choice; exit 2 when there is none or too many."""
    import numpy as np

    n, t0, last = len(index), index[0], index[-1]
    if not spec.in_bars and not has_timestamps:
        raise CliError(EXIT_USAGE, f"--train {spec.train.text}: bars without timestamps take bar counts (63)")
    biggest_gap = int(np.diff(index.asi8).max()) if n > 1 else 0
    dated = has_timestamps and bool((index == index.normalize()).all())
    folds, tested_to = [], 0  # tested_to: the previous test window's end (a position)
    for k in range(MAX_FOLDS + 1):
        if spec.in_bars:
            a = k * spec.step.count
            edges = [0 if spec.anchored else a, a + spec.train.count]
            edges += [edges[1] + spec.embargo.count, edges[1] + spec.embargo.count + spec.test.count]
            if edges[2] > n - 1:
                break
            stamps = [index[p] if p < n else None for p in edges]
            positions, partial = [min(p, n) for p in edges], edges[3] > n
        else:
            a = t0 + spec.step.offset(k)
            stamps = [t0 if spec.anchored else a, a + spec.train.offset()]
            stamps.append(stamps[1] + spec.embargo.offset() if spec.embargo.count else stamps[1])
            stamps.append(stamps[2] + spec.test.offset())
            if stamps[2] > last:
                break
            positions = [int(p) for p in index.searchsorted(stamps, side="left")]
            partial = (stamps[3] - last).value > biggest_gap
        labels = dict(
            zip(("train_start", "train_end", "test_start", "test_end"),
                [fold_label(stamp, edge, has_timestamps, dated)
                 for stamp, edge in zip(stamps, edges if spec.in_bars else positions, strict=True)], strict=True)
        )  # fmt: skip
        if positions[2] < tested_to:  # 13w vs 3m: calendar units pass the check above and overlap
            raise CliError(
                EXIT_USAGE,
                f"--step {spec.step.text} is shorter than --test {spec.test.text} at fold {k}: its test window "
                f"starts {labels['test_start']}, before fold {k - 1}'s ends ({folds[-1].labels['test_end']}): "
                "a bar would be traded twice",
            )
        tested_to = positions[3]
        folds.append(
            Fold(k, *stamps, labels=labels, n_train_bars=positions[1] - positions[0],
                 n_test_bars=positions[3] - positions[2], partial=partial)
        )  # fmt: skip
    if not folds:
        raise CliError(
            EXIT_USAGE,
            f"--train {spec.train.text} leaves no test window: the data runs {fold_label(t0, 0, has_timestamps, dated)}"
            f" to {fold_label(last, n - 1, has_timestamps, dated)} ({n} bars)",
        )
    if len(folds) > MAX_FOLDS:
        raise CliError(
            EXIT_USAGE, f"more than {MAX_FOLDS} folds (one child run each): give a longer --step or --test"
        )
    for fold in folds:
        if fold.n_train_bars < 2:
            raise CliError(
                EXIT_USAGE,
                f"fold {fold.number}: the training window {fold.labels['train_start']} to "
                f"{fold.labels['train_end']} has {fold.n_train_bars} bars; each needs at least 2",
            )
    return folds


def fold_label(stamp, position: int, has_timestamps: bool, dated: bool) -> str:
    """A window boundary as the params and folds.csv show it: its date, else "bar N" (past the data, or no
    timestamps in bar-count mode)."""
    if stamp is None or not has_timestamps:
        return f"bar {position}"
    return stamp.strftime("%Y-%m-%d" if dated and stamp == stamp.normalize() else "%Y-%m-%dT%H:%M:%SZ")


def window(column: Column, start, end) -> Column:
    """The bars of `column` in [start, end) (end None: to the last bar), benchmark alongside."""
    index = column.returns.index
    first = int(index.searchsorted(start, side="left"))
    stop = len(index) if end is None else int(index.searchsorted(end, side="left"))
    bench = column.benchmark.iloc[first:stop] if column.benchmark is not None else None
    return replace(column, returns=column.returns.iloc[first:stop], benchmark=bench)


def choose(folds: list[Fold], columns: list[Column], req: Request, periods: float) -> list[Fold]:
    """Each fold's pick: the best --best-by on the training window with the run's own metric definitions (the
    whole series' periods per year), ties to the first column, an undefined value never; its rank by the
    same metric on the test window among all columns."""
    key, needed = better_first(req.best_by), frozenset({"sharpe", req.best_by})

    def values_of(column: Column, start, end) -> dict[str, float]:
        part = window(column, start, end)
        if len(part.returns) < 2:
            return {}
        return compute_metrics(part, req.rf, periods, req.compounded, only=needed)[0]

    chosen = []
    for fold in folds:
        stop_point()
        values = [values_of(c, fold.train_start, fold.train_end) for c in columns]
        ranked = sorted(range(len(columns)), key=lambda i: key(values[i].get(req.best_by, math.nan)))
        best = ranked[0]
        if key(values[best].get(req.best_by, math.nan))[0]:
            raise CliError(
                EXIT_USAGE,
                f"fold {fold.number}: no column has a defined {req.best_by} on its training window "
                f"{fold.labels['train_start']} to {fold.labels['train_end']}",
            )
        in_sample = {"is_sharpe": values[best].get("sharpe", math.nan)}
        in_sample[f"is_{req.best_by}"] = values[best][req.best_by]
        tested = [values_of(c, fold.test_start, fold.test_end).get(req.best_by, math.nan) for c in columns]
        rank = 1 + sum(key(v) < key(tested[best]) for v in tested)
        chosen.append(replace(fold, chosen=best, in_sample=in_sample, oos_value=tested[best], oos_rank=rank))
    return chosen


@dataclass(frozen=True)
class WalkForwardPlan:
    """The folds chosen, the stitched out-of-sample series and the whole series' bars per year."""

    spec: WalkForwardSpec
    folds: list[Fold]
    columns: list[str]
    stitched: Column
    periods: tuple[float, str]


def walk_forward_plan(loaded: Loaded, req: Request, tmp: Path) -> Plan:
    """The folds, the picks and one job per fold (the chosen column's test window, oos_ prefixed); exit 2 on
    any bad window before anything is written."""
    import pandas as pd

    spec, columns = req.walk_forward, loaded.columns
    index = union_index(columns)
    has_ts = columns[0].has_timestamps
    periods = periods_of(replace(columns[0], returns=pd.Series(0.0, index=index)), req)
    folds = choose(fold_windows(index, spec, has_ts), columns, req, periods[0])
    names = [c.name for c in columns]
    parts = [window(columns[f.chosen], f.test_start, f.test_end) for f in folds]
    stitched = Column(
        "walk-forward", pd.concat([p.returns for p in parts]), has_ts,
        pd.concat([p.benchmark for p in parts]) if columns[0].benchmark is not None else None,
        columns[0].benchmark_info,
    )  # fmt: skip
    jobs = [
        Job(
            fold.number,
            len(folds),
            part,
            f"fold {fold.number:0{len(str(len(folds) - 1))}d} {names[fold.chosen]}",  # sorts by name in the UI
            tmp / f"run{fold.number}",
            prefix="oos_",
            periods=periods,
            params=fold.params(names),
            extra=fold.in_sample,
            role=f"**Walk-forward fold {fold.number}** (test window {fold.labels['test_start']} to "
            f"{fold.labels['test_end']}{', partial' if fold.partial else ''}): `{names[fold.chosen]}` chosen on "
            f"{fold.labels['train_start']} to {fold.labels['train_end']} (in-sample {req.best_by} "
            f"{fold.in_sample[f'is_{req.best_by}']:.2f}); the metrics are its test window's, logged as oos_<name>",
        )  # fmt: skip
        for fold, part in zip(folds, parts, strict=True)
    ]
    return Plan(WalkForward, jobs, WalkForwardPlan(spec, folds, names, stitched, periods))


# ---- the metric table: the one place that says what each metric is --------------------------------------
# `call` is evaluated as written (it IS the code that computes the metric) in the namespace metric_inputs()
# builds once per series: QuantStats 0.0.86's definitions (its qs.stats functions, read line by line), written
# over intermediates shared by all metrics instead of recomputed per call, and without importing QuantStats
# (its import, scipy's and yfinance's, took longer than all the metrics; tests compare every metric with the
# qs.stats call it replaces, and with independent definitions). The names:
#   np, sqrt    numpy, math.sqrt;  n  bars;  periods  bars per year;  compounded  False with --simple
#   r           the normalised returns (pandas Series, DatetimeIndex, decimal units; no NaN, no inf)
#   x           excess returns per bar (numpy): r - ((1 + rf) ** (1 / periods) - 1), QuantStats' de-annualisation
#   mu_r, sd_r, mu_x, sd_x   mean and sample std (ddof 1) of r and of x
#   years       n / periods (QuantStats' CAGR convention: bars, not calendar time)
#   rf_total    the risk-free growth over the run's span: (1 + rf) ** years - 1 (rf x years with --simple)
#   total(s)    prod(1 + s) - 1 when compounded, else sum(s) (QuantStats' comp; its report does the same)
#   cagr_of(s)  (1 + total(s)) ** (1 / (len(s) / periods)) - 1, NaN when 1 + total(s) < 0;  cagr  cagr_of(r)
#   month, quarter, year   r aggregated per calendar month/quarter/year present: total() of each (numpy)
#   day_sums, month_sums   r summed per calendar day / month (gain to pain)
#   wins, losses, gains    r's bars > 0, < 0, >= 0 (numpy);  wr  win_rate(r): share of non-zero bars > 0
#   pf          gains.sum() / -losses.sum() (QuantStats: inf without a losing bar, 0 for an all-zero series)
#   payoff      wins.mean() / -losses.mean();  tail  |95th / 5th percentile|;  quantiles  1st, 5th, 95th, 99th
#   penalty     QuantStats' autocorr_penalty: sqrt(1 + 2 sum_k (n - k) / n |rho_1| ** k), rho_1 the lag-1 autocorr
#   psr(sr)     Phi(sr / sqrt((1 - skew sr + (kurt + 2) / 4 sr^2) / (n - 1))), skew/kurt (excess) of r
#   Z05         the standard normal 5 % quantile;  gaussian_es(s)  mean(s) - std(s) phi(Z05) / 0.05
#   exposure    ceil(share of non-zero bars x 100) / 100;  longest_run(mask)  the longest run of True
#   dd, mdd     OUR drawdown series (equity_and_drawdown: the logged `drawdown` history) and its minimum.
#               QuantStats re-reads a non-negative series whose max is exactly 1.0 as prices in its drawdown
#               functions (_looks_like_returns: max < 1) and always compounds: every drawdown-based metric here
#               comes from the run's own equity curve instead (same numbers on ordinary series, tests check).
#   ulcer       sqrt(sum(dd ** 2) / (n - 1)), QuantStats' ulcer index on our dd
#   episodes    drawdown_details(dd): a vectorised qs.stats.drawdown_details(dd) that also counts an episode
#               open at the last bar and one open from the first bar (QuantStats drops the latter)
#   since(s, months=N | period="mtd"/"ytd")  the bars of the last N months / month / year to date
#   short(N)    the series does not reach back N months (its first bar's period starts after the window)
#   flat(s)     the dispersion of s is ~0 relative to the data's scale (std <= DISPERSION_RTOL x max|s|, |r|)
#   downside(s) sqrt(sum(min(s, 0) ** 2) / n): the Sortino denominator;  tiny(v, s)  |v| ~0 at s's scale
#   rp, bp      strategy and benchmark aligned on common timestamps, positionally indexed (pandas Series)
#   cov, beta   np.cov(rp, bp) and cov[0, 1] / cov[1, 1]
# `guard`: when true, the metric is undefined (QuantStats would return 0, inf or a meaningless huge number).
# A value that is not finite (a division by zero) is undefined too.
# `calendar`: needs real timestamps (a bare column of numbers has none: such metrics are undefined).
# `annualised`: scaled to a year from `periods`; `departure`: where and why we differ from QuantStats 0.0.86.
@dataclass(frozen=True)
class MetricSpec:
    name: str
    call: str
    meaning: str  # the definition (formula) in words
    units: str
    higher_is_better: bool | None  # None: descriptive, no better direction
    guard: str | None = None
    calendar: bool = False
    benchmark: bool = False
    annualised: bool = False
    departure: str = ""


# A dispersion below this fraction of the data's largest |return| is float noise, not risk: float64 returns
# computed from prices carry absolute errors of a few ulps of 1.0 (~1e-16), i.e. <= ~1e-11 of any bar return
# of 1e-5 or more, while any real strategy's std is >= ~1e-4 of its largest bar. Ratios over such a
# denominator (sharpe ~1e16 on a constant series, differing with and without bottleneck) are undefined.
DISPERSION_RTOL = 1e-10
NO_NONZERO_BAR = "(r != 0).sum() == 0"
FLAT_BENCHMARK = "flat(bp)"
SHARPE_GUARD = "flat(x)"
SORTINO_GUARD = "tiny(downside(x), x)"
SHORT_WINDOW = "extrapolate less than a year of history"  # compute_metrics' note on a series under a year
SHORT = "undefined when the series is shorter than the window (QuantStats uses the whole series)"
EPISODES = (
    "from our drawdown; an episode still open at the last bar counts (it ends there), as does one open from "
    "the first bar (QuantStats finds no episode in a series that starts below its peak and never recovers)"
)
OWN_DD = "from our drawdown (the logged history), not QuantStats' re-reading of r"
SPAN_RF = (
    "rf is subtracted as the risk-free growth over the run's span (rf_total); QuantStats subtracts the "
    "annual rf from a multi-year total return, a unit error (identical when --rf is 0)"
)
METRICS: tuple[MetricSpec, ...] = (
    # ratios
    MetricSpec("sharpe", "mu_x / sd_x * sqrt(periods)",
               "mean(x) / std(x, ddof=1) x sqrt(periods)", "ratio", True, guard=SHARPE_GUARD,
               annualised=True, departure="undefined when std(x) is ~0 (QuantStats: ~1e16)"),
    MetricSpec("smart_sharpe", "mu_x / (sd_x * penalty) * sqrt(periods)",
               "sharpe / autocorr_penalty", "ratio", True, guard=SHARPE_GUARD, annualised=True,
               departure="undefined when std(x) is ~0"),
    MetricSpec("sortino", "mu_x / downside(x) * sqrt(periods)",
               "mean(x) / downside(x) x sqrt(periods); downside(x) = sqrt(sum(min(x, 0)^2) / n)", "ratio",
               True, guard=SORTINO_GUARD, annualised=True, departure="undefined when downside(x) is ~0"),
    MetricSpec("smart_sortino", "mu_x / (downside(x) * penalty) * sqrt(periods)",
               "sortino / autocorr_penalty", "ratio", True, guard=SORTINO_GUARD, annualised=True,
               departure="undefined when downside(x) is ~0"),
    MetricSpec("adjusted_sortino", "mu_x / downside(x) * sqrt(periods) / sqrt(2)",
               "sortino / sqrt(2) (Jack Schwager), comparable with Sharpe", "ratio", True, guard=SORTINO_GUARD,
               annualised=True, departure="undefined when downside(x) is ~0"),
    MetricSpec("smart_adjusted_sortino", "mu_x / (downside(x) * penalty) * sqrt(periods) / sqrt(2)",
               "smart_sortino / sqrt(2)", "ratio", True, guard=SORTINO_GUARD, annualised=True,
               departure="undefined when downside(x) is ~0"),
    MetricSpec("probabilistic_sharpe_ratio", "psr(mu_x / sd_x)",
               "Phi(SR / sqrt((1 - skew SR + (kurt - 1) / 4 SR^2) / (n - 1))), SR the per-bar Sharpe, "
               "skew and kurt (non-excess) the bias-corrected sample moments of r",
               "probability", True, guard=SHARPE_GUARD, departure="undefined when std(x) is ~0"),
    MetricSpec("probabilistic_smart_sharpe_ratio", "psr(mu_x / (sd_x * penalty))",
               "probabilistic_sharpe_ratio of the per-bar smart Sharpe", "probability", True,
               guard=SHARPE_GUARD, departure="undefined when std(x) is ~0"),
    MetricSpec("probabilistic_sortino_ratio", "psr(mu_x / downside(x))",
               "probabilistic_sharpe_ratio's formula with the per-bar Sortino in place of SR", "probability",
               True, guard=SORTINO_GUARD, departure="undefined when downside(x) is ~0"),
    MetricSpec("probabilistic_adjusted_sortino_ratio", "psr(mu_x / downside(x) / sqrt(2))",
               "probabilistic_sharpe_ratio's formula with the per-bar adjusted Sortino", "probability", True,
               guard=SORTINO_GUARD, departure="undefined when downside(x) is ~0"),
    MetricSpec("omega", "x[x > 0].sum() / -x[x < 0].sum()",
               "sum(x[x > 0]) / -sum(x[x < 0]) (threshold 0)", "ratio", True, guard="tiny(x[x < 0].sum(), x)",
               departure="undefined when the losses sum to ~0"),
    MetricSpec("calmar", "cagr / -mdd", "cagr / |max_drawdown|", "ratio", True, guard="mdd == 0",
               annualised=True, departure=OWN_DD),
    MetricSpec("risk_return_ratio", "mu_r / sd_r",
               "mean(r) / std(r, ddof=1) (per-bar Sharpe without rf)", "ratio", True, guard="flat(r)",
               departure="undefined when std(r) is ~0 (QuantStats: ~1e15)"),
    MetricSpec("gain_to_pain_ratio", "gain_to_pain(day_sums)",
               "sum of daily sums / |sum of losing daily sums| (Jack Schwager; rf not applied)", "ratio", True,
               calendar=True),
    MetricSpec("gain_to_pain_ratio_monthly", "gain_to_pain(month_sums)",
               "gain_to_pain_ratio on monthly sums", "ratio", True, calendar=True),
    MetricSpec("ulcer_performance_index", "(total(r) - rf_total) / ulcer",
               "(total_return - rf_total) / ulcer_index", "ratio", True, guard="ulcer == 0",
               departure=f"{OWN_DD}; {SPAN_RF}; total return simple with --simple"),
    MetricSpec("serenity_index", "(total(r) - rf_total) / (ulcer * -gaussian_es(dd) / sd_r)",
               "(total_return - rf_total) / (ulcer_index x pitfall), pitfall = -CVaR95(dd) / std(r) "
               "(KeyQuant)", "ratio", True, guard="flat(r) or ulcer == 0",
               departure=f"{OWN_DD}; {SPAN_RF}; numerator total_return (QuantStats: plain sum of r)"),
    MetricSpec("recovery_factor", "total(r) / -mdd",
               "total_return / |max_drawdown| (negative for a losing run)", "ratio", True, guard="mdd == 0",
               departure="sign-correct: QuantStats takes |sum of returns|, so a run that lost 40 % scores "
               f"+0.88; total return compounded (simple with --simple); {OWN_DD}"),
    MetricSpec("risk_adjusted_return", "cagr / exposure", "cagr / exposure",
               "fraction per year", True, guard=NO_NONZERO_BAR, annualised=True,
               departure="QuantStats' rar calls cagr() without periods (always 252) and measures exposure "
               "on rf-adjusted returns (every bar exposed when --rf > 0)"),
    # returns
    MetricSpec("total_return", "total(r)", "prod(1 + r) - 1, or sum(r) with --simple", "fraction", True),
    MetricSpec("cagr", "cagr_of(r)",
               "(1 + total_return) ** (1 / years) - 1, years = bars / periods",
               "fraction per year", True, annualised=True),
    MetricSpec("expected_return", "geometric_mean(r)",
               "Geometric mean return per bar", "fraction per bar", True),
    MetricSpec("expected_return_monthly", "geometric_mean(month)",
               "Geometric mean monthly return", "fraction per month", True, calendar=True),
    MetricSpec("expected_return_yearly", "geometric_mean(year)",
               "Geometric mean calendar-year return", "fraction per year", True, calendar=True),
    MetricSpec("avg_return", "r[r != 0].mean()", "Mean of non-zero bar returns",
               "fraction per bar", True),
    MetricSpec("avg_win", "wins.mean()", "Mean of positive bar returns", "fraction per bar",
               True),
    MetricSpec("avg_loss", "losses.mean()", "Mean of negative bar returns (< 0)",
               "fraction per bar", True),
    MetricSpec("avg_up_month", "month[month > 0].mean()",
               "Mean of positive monthly returns", "fraction per month", True, calendar=True),
    MetricSpec("avg_down_month", "month[month < 0].mean()",
               "Mean of negative monthly returns (< 0)", "fraction per month", True, calendar=True),
    MetricSpec("best", "r.max()", "Best single bar", "fraction per bar", True),
    MetricSpec("worst", "r.min()", "Worst single bar", "fraction per bar", True),
    MetricSpec("best_month", "month.max()",
               "Best calendar month", "fraction", True, calendar=True),
    MetricSpec("worst_month", "month.min()",
               "Worst calendar month", "fraction", True, calendar=True),
    MetricSpec("best_quarter", "quarter.max()",
               "Best calendar quarter", "fraction", True, calendar=True),
    MetricSpec("worst_quarter", "quarter.min()",
               "Worst calendar quarter", "fraction", True, calendar=True),
    MetricSpec("best_year", "year.max()",
               "Best calendar year", "fraction", True, calendar=True),
    MetricSpec("worst_year", "year.min()",
               "Worst calendar year", "fraction", True, calendar=True),
    MetricSpec("returns_mtd", "total(since(r, period='mtd'))", "Return month to date (of the last bar)",
               "fraction", True, calendar=True),
    MetricSpec("returns_3m", "total(since(r, months=3))", "Return over the last 3 months", "fraction", True,
               guard="short(3)", calendar=True, departure=SHORT),
    MetricSpec("returns_6m", "total(since(r, months=6))", "Return over the last 6 months", "fraction", True,
               guard="short(6)", calendar=True, departure=SHORT),
    MetricSpec("returns_ytd", "total(since(r, period='ytd'))", "Return year to date (of the last bar)",
               "fraction", True, calendar=True),
    MetricSpec("returns_1y", "total(since(r, months=12))", "Return over the last 12 months", "fraction", True,
               guard="short(12)", calendar=True, departure=SHORT),
    MetricSpec("cagr_3y", "cagr_of(since(r, months=35))",
               "CAGR of the last 3 years (35 months back, as QuantStats' report)", "fraction per year", True,
               guard="short(35)", calendar=True, annualised=True, departure=SHORT),
    MetricSpec("cagr_5y", "cagr_of(since(r, months=59))",
               "CAGR of the last 5 years (59 months back)", "fraction per year", True, guard="short(59)",
               calendar=True, annualised=True, departure=SHORT),
    MetricSpec("cagr_10y", "cagr_of(since(r, months=119))",
               "CAGR of the last 10 years (119 months back)", "fraction per year", True, guard="short(119)",
               calendar=True, annualised=True, departure=SHORT),
    # trade-style (computed from bars, not from discrete trades)
    MetricSpec("win_rate", "wr", "Share of non-zero bars that are positive",
               "fraction", True, guard=NO_NONZERO_BAR),
    MetricSpec("win_rate_month", "win_rate(month)",
               "Share of non-zero months that are positive", "fraction", True, guard=NO_NONZERO_BAR,
               calendar=True),
    MetricSpec("win_rate_quarter", "win_rate(quarter)",
               "Share of non-zero quarters that are positive", "fraction", True, guard=NO_NONZERO_BAR,
               calendar=True),
    MetricSpec("win_rate_year", "win_rate(year)",
               "Share of non-zero years that are positive", "fraction", True, guard=NO_NONZERO_BAR,
               calendar=True),
    MetricSpec("profit_factor", "pf",
               "Sum of bars >= 0 / |sum of bars < 0|; undefined without a losing bar", "ratio", True,
               guard="(r < 0).sum() == 0"),
    MetricSpec("payoff_ratio", "payoff", "Average win / |average loss| per bar",
               "ratio", True),
    MetricSpec("profit_ratio", "profit_ratio(gains, losses)",
               "(Mean win / win count) / (mean loss / loss count), absolute", "ratio", True),
    MetricSpec("common_sense_ratio", "pf * tail", "Profit factor x tail ratio",
               "ratio", True),
    MetricSpec("cpc_index", "pf * wr * payoff", "Profit factor x win rate x payoff ratio",
               "ratio", True),
    MetricSpec("kelly_criterion", "(payoff * wr - (1 - wr)) / payoff",
               "Kelly fraction p - (1 - p) / payoff ratio, from bar win rate and payoff",
               "fraction of capital", True),
    MetricSpec("consecutive_wins", "longest_run(r > 0)", "Longest run of positive bars",
               "bars", True),
    MetricSpec("consecutive_losses", "longest_run(r < 0)", "Longest run of negative bars",
               "bars", False),
    MetricSpec("exposure", "exposure",
               "Time in market: share of bars with a non-zero return, rounded up to 1 %", "fraction", None),
    # risk and tail
    MetricSpec("volatility", "sd_r * sqrt(periods)",
               "std(r, ddof=1) x sqrt(periods)", "fraction per year", False, annualised=True),
    MetricSpec("max_drawdown", "mdd",
               "min(equity / running peak - 1), the peak including the starting 1.0; equity prod(1 + r), "
               "1 + cumsum(r) with --simple (<= 0; closer to 0 is better)", "fraction", True,
               departure=f"{OWN_DD}; simple equity with --simple (QuantStats always compounds)"),
    MetricSpec("avg_drawdown", "episodes['max drawdown'].mean() / 100",
               "Mean depth of the drawdown episodes (<= 0)", "fraction", True, departure=EPISODES),
    MetricSpec("longest_drawdown_days", "episodes['days'].max()",
               "Longest drawdown episode: whole days elapsed from its first to its last bar below the peak "
               "+ 1",
               "days", False, calendar=True, departure=EPISODES),
    MetricSpec("avg_drawdown_days", "episodes['days'].mean()",
               "Mean drawdown episode length in calendar days", "days", False, calendar=True,
               departure=EPISODES),
    MetricSpec("ulcer_index", "ulcer", "sqrt(sum(dd^2) / (n - 1)) (QuantStats' n - 1)", "fraction", False,
               departure=OWN_DD),
    MetricSpec("value_at_risk", "mu_r + sd_r * Z05",
               "Parametric 95 % value at risk of one bar (normal with the bars' mean and std; < 0)",
               "fraction per bar", True,
               departure="the mean when std(r) is exactly 0, as QuantStats' CVaR (its VaR: NaN from scipy)"),
    MetricSpec("conditional_value_at_risk", "gaussian_es(r)",
               "Parametric 95 % expected shortfall of one bar (< 0)", "fraction per bar", True),
    MetricSpec("tail_ratio", "tail", "|95th / 5th percentile| of bar returns",
               "ratio", True),
    MetricSpec("outlier_win_ratio", "quantiles[3] / gains.mean()",
               "99th percentile bar / mean of bars >= 0", "ratio", None),
    MetricSpec("outlier_loss_ratio", "quantiles[0] / losses.mean()",
               "1st percentile bar / mean of losing bars", "ratio", None),
    MetricSpec("risk_of_ruin", "((1 - wr) / (1 + wr)) ** n",
               "((1 - win rate) / (1 + win rate)) ** bars", "probability", False, guard=NO_NONZERO_BAR,
               departure="undefined when no bar is non-zero, like win_rate (QuantStats: 1.0)"),
    MetricSpec("skew", "r.skew()", "Bias-corrected sample skewness of bar returns",
               "unitless", True, guard="flat(r)", departure="undefined when std(r) is ~0 (pandas: 0)"),
    MetricSpec("kurtosis", "r.kurt()",
               "Bias-corrected sample excess kurtosis of bar returns (normal = 0)", "unitless", False,
               guard="flat(r)", departure="undefined when std(r) is ~0 (pandas: 0)"),
    MetricSpec("autocorr_penalty", "penalty",
               "Lag-1 autocorrelation penalty used by the smart ratios (>= 1)", "unitless", None),
    # against the benchmark (--benchmark)
    MetricSpec("alpha", "(rp.mean() - beta * bp.mean()) * periods",
               "(mean(rp) - beta x mean(bp)) x periods: arithmetic, rf ignored (QuantStats' convention)",
               "fraction per year", True, guard=FLAT_BENCHMARK, benchmark=True, annualised=True),
    MetricSpec("beta", "beta",
               "Beta: cov(strategy, benchmark) / var(benchmark)", "ratio", None, guard=FLAT_BENCHMARK,
               benchmark=True),
    MetricSpec("correlation", "bp.corr(rp)", "Pearson correlation with the benchmark (QuantStats' report)",
               "unitless", None, guard="flat(rp) or flat(bp)", benchmark=True),
    MetricSpec("r_squared", "cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])", "R^2 of the regression on the benchmark",
               "unitless", None, guard="flat(rp) or flat(bp)", benchmark=True),
    MetricSpec("information_ratio", "(rp - bp).mean() / (rp - bp).std()",
               "Mean active return / tracking error, per bar (not annualised)", "ratio", True,
               guard="flat(rp - bp)", benchmark=True),
    MetricSpec("treynor_ratio", "(total(r) - rf_total) / beta",
               "(total_return - rf_total) / beta: over the whole run, not annualised", "ratio", True,
               guard="flat(bp) or flat(rp)", benchmark=True,
               departure=f"{SPAN_RF}; total return simple with --simple; undefined when beta is 0 "
               "(QuantStats: 0)"),
)  # fmt: skip
METRIC_NAMES = tuple(spec.name for spec in METRICS)


def metric_table_markdown() -> str:
    """The metric table as markdown, for references/quantstats-metrics.md (generated, never hand-edited)."""
    direction = {True: "higher", False: "lower", None: "-"}
    lines = [
        "| metric | computed as | definition | units | annualised | better | departs from QuantStats | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in METRICS:
        notes = []
        if spec.benchmark:
            notes.append("needs --benchmark")
        if spec.calendar:
            notes.append("needs timestamps")
        if spec.guard:
            notes.append(f"undefined when `{spec.guard}`")
        cells = [f"`{spec.name}`", f"`{spec.call}`", spec.meaning, spec.units,
                 "yes" if spec.annualised else "no", direction[spec.higher_is_better], spec.departure or "-",
                 "; ".join(notes)]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


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


# ---- probability of backtest overfitting: combinatorially symmetric cross-validation (CSCV) ---------------
DEFAULT_PBO_SPLITS = 16
MAX_PBO_SPLITS = 20  # C(20, 10) = 184,756 combinations
PBO_CHUNK_CELLS = 2_000_000  # combinations x trials per numpy step: bounds memory (~16 MB an array)


@dataclass
class Overfitting:
    """CSCV's result: pbo and one entry per combination of in-sample blocks (arrays empty when undefined)."""

    pbo: float  # NaN when undefined (see reason)
    splits: int
    bars_used: int
    logits: list[float] = field(default_factory=list)  # ln(w / (1 - w)), w the relative OOS rank
    is_sharpe: list[float] = field(default_factory=list)  # in-sample Sharpe (per bar) of the in-sample best
    oos_sharpe: list[float] = field(default_factory=list)  # the same trial's out-of-sample Sharpe (per bar)
    best: list[int] = field(default_factory=list)  # which trial (column) was best in-sample
    reason: str | None = None


def probability_of_overfitting(returns, splits: int = DEFAULT_PBO_SPLITS) -> Overfitting:
    """PBO by CSCV (Bailey, Borwein, Lopez de Prado & Zhu 2017, "The Probability of Backtest Overfitting",
    Journal of Computational Finance 20(4)). returns: T bars x N trials (numpy array, per-bar excess returns).
    1. The first T mod S bars are left out; the rest is cut into S equal blocks of consecutive bars.
    2. Every choice of S/2 blocks is an in-sample set J, the other S/2 blocks its out-of-sample set
       (C(S, S/2) combinations: 12,870 for S = 16).
    3. Performance is the Sharpe ratio (mean / sample std, ddof 1, per bar) of each trial on J and on its
       complement, from per-block sums of returns and squared returns (each bar is read once).
    4. n* = the trial with the best in-sample Sharpe (the first on ties); w = its out-of-sample rank / (N + 1)
       (rank 1 = worst, ties share their average rank); logit = ln(w / (1 - w)).
    5. PBO = the share of combinations whose logit is <= 0: the in-sample best ranks at or below the median
       out of sample. Undefined (NaN, with a reason) for fewer than 2 trials, identical trials, an odd S or
       S < 2, fewer than 2 bars per block, or a trial with zero variance on some half."""
    from itertools import combinations

    import numpy as np

    matrix = np.asarray(returns, dtype=float)
    if matrix.ndim != 2:
        raise ValueError("returns must be a bars x trials matrix")
    total, n_trials = matrix.shape
    block = total // splits if splits >= 2 else 0
    result = Overfitting(math.nan, splits, block * splits)
    if n_trials < 2:
        result.reason = f"needs at least 2 trials (got {n_trials})"
    elif splits < 2 or splits % 2:
        result.reason = f"the number of splits must be even and at least 2 (got {splits})"
    elif block < 2:
        result.reason = f"{total} bars are too few for {splits} blocks of at least 2 bars"
    elif not np.isfinite(matrix).all():
        result.reason = "returns contain NaN or infinite values"
    elif (matrix == matrix[:, :1]).all():  # every rank a tie at the median: logit 0 everywhere, PBO 1.0
        result.reason = f"the {n_trials} trials have identical returns: nothing to choose between"
    if result.reason:
        return result
    data = matrix[total - block * splits :]
    # Centred on each trial's mean: the sums of squares then lose no precision to a large mean.
    centre = data.mean(axis=0)
    blocks = (data - centre).reshape(splits, block, n_trials)
    sums, squares = blocks.sum(axis=1), (blocks**2).sum(axis=1)  # S x N
    chosen = np.array(list(combinations(range(splits), splits // 2)))
    in_sample = np.zeros((len(chosen), splits))
    np.put_along_axis(in_sample, chosen, 1.0, axis=1)  # combinations x S: 1 where the block is in-sample
    half = block * splits // 2  # bars on each side
    scale = np.maximum(data.var(axis=0, ddof=1), np.finfo(float).tiny) * 1e-12

    def sharpe(weights):
        s, q = weights @ sums, weights @ squares
        variance = (q - s * s / half) / (half - 1)
        flat = variance <= scale
        with np.errstate(divide="ignore", invalid="ignore"):
            return (centre + s / half) / np.sqrt(np.where(flat, np.nan, variance)), flat.any()

    step = max(1, PBO_CHUNK_CELLS // n_trials)
    logits, is_best, oos_best, best = [], [], [], []
    for start in range(0, len(chosen), step):
        weights = in_sample[start : start + step]
        is_sr, is_flat = sharpe(weights)
        oos_sr, oos_flat = sharpe(1.0 - weights)
        if is_flat or oos_flat:
            result.reason = "a trial has zero variance on some half of the blocks"
            return result
        star = is_sr.argmax(axis=1)
        rows = np.arange(len(star))
        mine = oos_sr[rows, star][:, None]
        rank = (oos_sr < mine).sum(axis=1) + ((oos_sr == mine).sum(axis=1) + 1) / 2
        omega = rank / (n_trials + 1)
        logits.append(np.log(omega / (1 - omega)))
        is_best.append(is_sr[rows, star])
        oos_best.append(mine[:, 0])
        best.append(star)
    result.logits = np.concatenate(logits).tolist()
    result.is_sharpe = np.concatenate(is_best).tolist()
    result.oos_sharpe = np.concatenate(oos_best).tolist()
    result.best = np.concatenate(best).tolist()
    result.pbo = float(np.mean(np.concatenate(logits) <= 0))
    return result


# ---- a sweep's search summarised: best by a metric, deflated Sharpe, PBO, out of sample ---------------------
SPLIT_METRICS = (
    "sharpe", "sortino", "cagr", "volatility", "max_drawdown", "calmar", "total_return", "win_rate",
)  # fmt: skip  # computed on each side of --oos-start as is_<name> and oos_<name>
BEST_OF_PARENT = KEY_METRICS + ("skew", "kurtosis")  # logged on a sweep parent as best_<name>


def better_first(name: str):
    """Sort key putting the better value of metric `name` first (its direction from the metric table);
    undefined values last."""
    spec = next((s for s in METRICS if s.name == name.removeprefix("is_").removeprefix("oos_")), None)
    sign = -1.0 if spec is None or spec.higher_is_better is not False else 1.0

    def key(value):
        defined = isinstance(value, int | float) and math.isfinite(value)
        return (0, sign * value) if defined else (1, 0.0)

    return key


@dataclass
class SearchSummary:
    """What only a sweep parent knows: how many trials, which was best by what, and how much of it is luck."""

    n_trials: int
    best_by: str  # the metric that chose the best (is_<metric> when chosen in-sample)
    best: int  # position of the best trial
    expected_max_sharpe: float  # annualised with the best trial's periods per year; NaN when undefined
    deflated_sharpe_ratio: float
    pbo: float
    oos_rank_of_best: float  # 1 = the best out of sample too; NaN without --oos-start
    undefined: dict[str, str] = field(default_factory=dict)  # name -> why


def summarise_search(
    metrics: list[dict], periods: list[float], n_bars: list[int], best_by: str, overfitting: Overfitting
) -> SearchSummary:
    """The search's statistics from the trials' logged metrics (the same numbers `query_experiments.py
    deflate` reads back): per-bar Sharpe = sharpe / sqrt(periods); the DSR is the best trial's, against the
    expected maximum of the trials with a defined Sharpe ratio (their count is n_trials)."""
    order = sorted(
        range(len(metrics)), key=lambda i: better_first(best_by)(metrics[i].get(best_by, math.nan))
    )
    best = order[0]
    trials = [i for i, m in enumerate(metrics) if math.isfinite(m.get("sharpe", math.nan))]
    per_bar = {i: metrics[i]["sharpe"] / math.sqrt(periods[i]) for i in trials}
    chosen = metrics[best]
    excess = chosen.get("kurtosis", math.nan)
    expected, dsr = deflated_sharpe_ratio(
        per_bar.get(best, math.nan), list(per_bar.values()), n_bars[best], chosen.get("skew", math.nan),
        excess + 3,  # log_backtest logs excess kurtosis (QuantStats); the formula needs non-excess
    )  # fmt: skip
    undefined = {}
    if len(trials) < 2:
        undefined["deflated_sharpe_ratio"] = (
            f"needs at least 2 trials with a Sharpe ratio (got {len(trials)})"
        )
    elif not math.isfinite(expected):
        undefined["deflated_sharpe_ratio"] = "every trial has the same Sharpe ratio (zero variance)"
    elif not math.isfinite(dsr):
        undefined["deflated_sharpe_ratio"] = "the best trial has no Sharpe ratio, skew or kurtosis"
    if "deflated_sharpe_ratio" in undefined and not math.isfinite(expected):
        undefined["expected_max_sharpe"] = undefined["deflated_sharpe_ratio"]
    if overfitting.reason:
        undefined["pbo"] = overfitting.reason
    rank = math.nan
    if best_by.startswith("is_"):
        oos = "oos_" + best_by.removeprefix("is_")
        ranked = sorted(range(len(metrics)), key=lambda i: better_first(oos)(metrics[i].get(oos, math.nan)))
        if math.isfinite(metrics[best].get(oos, math.nan)):
            rank = float(ranked.index(best) + 1)
        else:
            undefined["oos_rank_of_best"] = f"the best trial's {oos} is undefined"
    return SearchSummary(
        n_trials=len(trials), best_by=best_by, best=best,
        expected_max_sharpe=expected * math.sqrt(periods[best]) if math.isfinite(expected) else math.nan,
        deflated_sharpe_ratio=dsr, pbo=overfitting.pbo, oos_rank_of_best=rank, undefined=undefined,
    )  # fmt: skip


def excess_matrix(columns: list, rf: float, periods: float):
    """The sweep's returns as bars x trials, on the bars all columns share, minus the per-bar risk-free rate
    as QuantStats' sharpe subtracts it ((1 + rf) ** (1 / periods) - 1)."""
    import pandas as pd

    frame = pd.concat([c.returns.rename(i) for i, c in enumerate(columns)], axis=1, join="inner")
    return frame.to_numpy(dtype=float) - ((1 + rf) ** (1 / periods) - 1)


def write_overfitting_artifacts(
    result: Overfitting, names: list[str], periods: float, folder: Path, png: bool = True
) -> list[str]:
    """cscv.csv (one row per combination: in-sample blocks, the in-sample best, its IS and OOS Sharpe
    ratios annualised, relative OOS rank, logit), overfitting.json (the summary) and overfitting.png (the
    paper's two figures: the logit histogram and OOS against IS Sharpe of the selected trial)."""
    from itertools import combinations

    scale = math.sqrt(periods)
    summary = {
        "method": "CSCV (Bailey, Borwein, Lopez de Prado & Zhu): PBO = share of combinations whose in-sample "
        "best ranks at or below the median out of sample (logit <= 0); performance = Sharpe ratio",
        "pbo": result.pbo,
        "undefined_reason": result.reason,
        "splits": result.splits,
        "combinations": len(result.logits),
        "bars_used": result.bars_used,
        "n_trials": len(names),
        "prob_oos_loss": (sum(v < 0 for v in result.oos_sharpe) / len(result.oos_sharpe))
        if result.oos_sharpe
        else None,
        "sharpe_units": f"annualised (x sqrt({periods:g}))",
        "columns": names,
    }
    (folder / "overfitting.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    written = ["overfitting.json"]
    if not result.logits:
        return written
    import numpy as np
    import pandas as pd

    blocks = [" ".join(map(str, c)) for c in combinations(range(result.splits), result.splits // 2)]
    logits = np.asarray(result.logits)
    table = pd.DataFrame(
        {
            "in_sample_blocks": blocks,
            "best_column": np.asarray(names, dtype=object)[result.best],
            "is_sharpe": np.asarray(result.is_sharpe) * scale,
            "oos_sharpe": np.asarray(result.oos_sharpe) * scale,
            "oos_relative_rank": 1 / (1 + np.exp(-logits)),
            "logit": logits,
        }
    )
    table.to_csv(folder / "cscv.csv", index_label="combination")
    written.append("cscv.csv")
    if png:
        draw_overfitting_png(result, scale, folder / "overfitting.png")
        written.append("overfitting.png")
    return written


def draw_overfitting_png(result: Overfitting, scale: float, path: Path) -> None:
    overfitting_figure(result, scale).savefig(path, dpi=100)


def overfitting_figure(result: Overfitting, scale: float):
    """The paper's figures: the histogram of logits (PBO = the mass at or left of 0) and the selected
    trial's out-of-sample against in-sample Sharpe ratio, with a least-squares line (the degradation).
    Titles of two short lines: one line each ran past its panel (and the figure's edge) once the tick labels
    took room."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg for a PNG

    logits = np.asarray(result.logits)
    is_sr, oos_sr = np.asarray(result.is_sharpe) * scale, np.asarray(result.oos_sharpe) * scale
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    left.hist(logits, bins=40, color="#4c72b0", edgecolor="white")
    left.axvline(0, color="#c44e52", linewidth=1.5)
    pbo = f"PBO = {result.pbo:.2f}" if math.isfinite(result.pbo) else "PBO undefined"
    left.set(title=f"Rank logits of the in-sample best\n{pbo} (the share at or left of 0)", xlabel="logit",
             ylabel="combinations")  # fmt: skip
    right.plot(is_sr, oos_sr, ".", markersize=3, alpha=0.3, color="#4c72b0")  # a Line2D: faster than scatter
    if np.ptp(is_sr) > 0:
        slope, intercept = np.polyfit(is_sr, oos_sr, 1)
        xs = np.linspace(is_sr.min(), is_sr.max(), 2)
        sign = "+" if slope >= 0 else "\N{MINUS SIGN}"
        right.plot(
            xs, slope * xs + intercept, color="#c44e52",
            label=f"OOS = {intercept:.2f} {sign} {abs(slope):.2f} \N{MULTIPLICATION SIGN} IS",
        )  # fmt: skip
        right.legend(loc="best")
    right.axhline(0, color="grey", linewidth=0.8)
    right.set(title="Sharpe ratio of the selected trial\nout-of-sample vs in-sample", xlabel="in-sample Sharpe",
              ylabel="out-of-sample Sharpe")  # fmt: skip
    fig.tight_layout()
    return fig


def check_search_flags(best_by: str, pbo_splits: int, oos: OosSplit | None) -> None:
    """--best-by, --pbo-splits and --oos-start together, before any data is read."""
    spec = next((s for s in METRICS if s.name == best_by), None)
    if spec is None or spec.higher_is_better is None:
        ranked = ", ".join(s.name for s in METRICS if s.higher_is_better is not None and not s.benchmark)
        raise CliError(
            EXIT_USAGE, f"--best-by {best_by!r} is not a metric with a better direction; one of: {ranked}"
        )
    if oos is not None and best_by not in SPLIT_METRICS:
        raise CliError(
            EXIT_USAGE,
            f"--best-by {best_by} with --oos-start: the best is chosen in-sample, so choose one of "
            + ", ".join(SPLIT_METRICS),
        )
    if pbo_splits < 2 or pbo_splits % 2 or pbo_splits > MAX_PBO_SPLITS:
        raise CliError(EXIT_USAGE, f"--pbo-splits {pbo_splits} must be even, from 2 to {MAX_PBO_SPLITS}")


@dataclass(frozen=True)
class Segments:
    """A series' in-sample and out-of-sample metrics and the split's params."""

    metrics: dict[str, float]  # is_<name>, oos_<name> (NaN: undefined)
    params: dict[str, str]  # oos_start, oos_first_bar, is_n_bars, oos_n_bars


def split_metrics(column, req: Request, periods: float) -> Segments:
    """SPLIT_METRICS on each side of --oos-start, each side computed alone by compute_metrics with the run's
    conventions (rf, bars per year, compounding); the benchmark is left out (not a split metric)."""
    position = oos_position(column.returns, column.has_timestamps, req.oos, column.name)
    metrics = {}
    for prefix, returns in (
        ("is_", column.returns.iloc[:position]),
        ("oos_", column.returns.iloc[position:]),
    ):
        segment = Column(column.name, returns, column.has_timestamps)
        values, _ = compute_metrics(segment, req.rf, periods, req.compounded)
        metrics.update({prefix + name: values.get(name, math.nan) for name in SPLIT_METRICS})
    n = len(column.returns)
    first = bar_time(column, position) or f"bar {position}"
    params = {"oos_start": req.oos.text, "oos_first_bar": first, "is_n_bars": str(position),
              "oos_n_bars": str(n - position)}  # fmt: skip
    return Segments(metrics, params)


def segments_markdown(summary: dict) -> list[str]:
    """In-sample and out-of-sample side by side for the run page (nothing without --oos-start)."""
    split = summary.get("segments")
    if not split:
        return []
    metrics = summary["metrics"]
    lines = [
        "",
        f"**Out-of-sample** from {split['oos_first_bar']} (`--oos-start {split['oos_start']}`): "
        f"{split['is_n_bars']} bars in-sample, {split['oos_n_bars']} out-of-sample",
        "",
    ]
    for name in SPLIT_METRICS:
        inside, outside = (fmt_value(name, metrics.get(side + name)) for side in ("is_", "oos_"))
        lines.append(f"- {name}: **{inside}** in-sample · **{outside}** out-of-sample")
    return lines


def search_metrics(sweep_preps: list, search: SearchSummary, oos: bool) -> tuple[dict[str, float], list[str]]:
    """A sweep parent's metrics: what only the parent knows, never a child's metric under its own name.
    -> (defined metrics, names of the undefined ones)."""
    best = sweep_preps[search.best].metrics
    values = {
        "n_trials": float(search.n_trials),
        **{f"best_{name}": best.get(name, math.nan) for name in BEST_OF_PARENT},
        "expected_max_sharpe": search.expected_max_sharpe,
        "deflated_sharpe_ratio": search.deflated_sharpe_ratio,
        "pbo": search.pbo,
    }
    if oos:
        values.update({f"best_{side}{name}": best.get(side + name, math.nan) for side in ("is_", "oos_")
                       for name in SPLIT_METRICS})  # fmt: skip
        values["oos_rank_of_best"] = search.oos_rank_of_best
    return split_defined(values)


def search_output(search: SearchSummary) -> dict:
    """The sweep's search statistics in the JSON output (undefined: null, with the reason)."""

    def value(x):
        return x if isinstance(x, int | float) and math.isfinite(x) else None

    return {
        "best_by": search.best_by,
        "n_trials": search.n_trials,
        "expected_max_sharpe": value(search.expected_max_sharpe),
        "deflated_sharpe_ratio": value(search.deflated_sharpe_ratio),
        "pbo": value(search.pbo),
        "oos_rank_of_best": int(search.oos_rank_of_best) if math.isfinite(search.oos_rank_of_best) else None,
        "undefined_search": search.undefined,
    }


def stored_search(computed: dict, stored: Stored) -> dict:
    """search_output() of a sweep found already logged: the statistics its parent holds (a Stored), null
    where it holds none; the reasons of the computed output only for those."""
    out = dict(computed, best_by=stored.tags.get("backtest.best_by", computed["best_by"]))
    for name in ("n_trials", "expected_max_sharpe", "deflated_sharpe_ratio", "pbo", "oos_rank_of_best"):
        value = stored.metrics.get(name)
        out[name] = int(value) if value is not None and name in ("n_trials", "oos_rank_of_best") else value
    out["undefined_search"] = {k: v for k, v in computed["undefined_search"].items() if out.get(k) is None}
    return out


def search_markdown(search: SearchSummary) -> list[str]:
    """The parent run page's lines on selection bias (references/overfitting.md explains them)."""

    def shown(x, digits=2):
        return f"{x:.{digits}f}" if math.isfinite(x) else "undefined"

    lines = [
        f"**Selection bias** over {search.n_trials} trials: a skill-less best would reach Sharpe "
        f"{shown(search.expected_max_sharpe)} by luck; deflated Sharpe ratio of the best "
        f"{shown(search.deflated_sharpe_ratio)} (>= 0.95: likely real); probability of backtest overfitting "
        f"(PBO) {shown(search.pbo)} (near 0.5 or above: the in-sample best is a coin flip out of sample)",
    ]
    if math.isfinite(search.oos_rank_of_best):
        rank = f"{search.oos_rank_of_best:.0f} of {search.n_trials}"
        lines += ["", f"Out-of-sample rank of the in-sample best: {rank}"]
    if search.undefined:
        lines += ["", "Undefined: " + "; ".join(f"{k} ({v})" for k, v in search.undefined.items())]
    return lines


# ---- request: arguments checked before any data is read or any heavy module imported ---------------------
@dataclass
class Request:
    returns_path: Path
    benchmark_path: Path | None
    column: str | None
    benchmark_column: str | None
    prices: bool
    percent: bool
    experiment: str
    run_name: str | None
    params: dict[str, str]
    tags: dict[str, str]
    description: str | None
    rf: float
    periods_per_year: float | None
    compounded: bool
    tearsheet: bool
    dry_run: bool
    force: bool
    max_history_points: int
    tracking_uri: str  # resolved: --tracking-uri, MLFLOW_TRACKING_URI or ./mlflow.db
    output_format: str | None  # --format; None: by terminal
    debug: bool  # tracebacks, library logging and phase timings on stderr
    resample_to_benchmark: bool = False
    best_by: str = "sharpe"  # a sweep's best child by this metric (its direction from the metric table)
    pbo_splits: int = DEFAULT_PBO_SPLITS
    oos: OosSplit | None = None  # --oos-start: in-sample / out-of-sample split
    walk_forward: WalkForwardSpec | None = None  # --walk-forward --train --test [--step --embargo --anchored]
    date_format: str | None = None  # --date-format: dayfirst, monthfirst or a strftime format
    decimal: bool = False  # --decimal: the values are decimal returns, whatever they look like
    sep: str | None = None  # --sep: the CSV separator (default: comma; ; or tab when the header has none)
    code_files: dict[str, Path] = field(default_factory=dict)  # --code: artifact path -> file
    warnings: list[str] = field(default_factory=list)  # given while the request was checked (git, --code)
    windows: tuple = field(
        default_factory=lambda: STRESS_WINDOWS
    )  # the built-in stress windows, then --period NAME=START:END


def warn(message: str, sink: list[str] | None = None) -> None:
    """A warning on stderr (and in the output's `warnings` when a sink is given)."""
    print(f"warning: {message}", file=sys.stderr)
    if sink is not None:
        sink.append(message)


_T0 = time.monotonic()


def phase(req: Request, label: str) -> None:
    """With --debug: how long since this module was loaded, per phase (where the time goes)."""
    if req.debug:
        print(f"debug: {time.monotonic() - _T0:7.2f}s {label}", file=sys.stderr)


def check_key(kind: str, key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not KEY_PATTERN.match(key):
        raise CliError(
            EXIT_USAGE,
            f"{kind} key {key[:60]!r} is invalid: 1-{MAX_KEY_LENGTH} characters of letters, digits, "
            "and _ - . / : or space",
        )


def param_text(value) -> str:
    """A param value as MLflow stores it: strings as is, numbers as Python prints them, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, list):
        return json.dumps(value)
    return str(value)


def flatten_params(obj: dict, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists and scalars become one param each."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = param_text(value if not isinstance(value, dict) else "{}")
    return out


def parse_params(params_json: str | None, pairs: list[str]) -> dict[str, str]:
    """--params JSON (nested objects flattened with dots) merged with --param KEY=VALUE (which wins)."""
    params: dict[str, str] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise CliError(EXIT_USAGE, f"--params is not valid JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(loaded, dict):
            raise CliError(EXIT_USAGE, "--params must be a JSON object, e.g. '{\"lookback\": 20}'")
        params.update(flatten_params(loaded))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(EXIT_USAGE, f"--param {pair!r} is not KEY=VALUE")
        params[key.strip()] = value
    for key, value in params.items():
        check_key("param", key)
        if key in RESERVED_PARAMS:
            raise CliError(
                EXIT_USAGE, f"param {key!r} is set by log_backtest itself; rename yours (e.g. strategy.{key})"
            )
        if len(value) > MAX_PARAM_VALUE_LENGTH:
            raise CliError(
                EXIT_USAGE, f"param {key!r} value is longer than {MAX_PARAM_VALUE_LENGTH} characters"
            )
    return params


def parse_tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(EXIT_USAGE, f"--tag {pair!r} is not KEY=VALUE")
        key = key.strip()
        check_key("tag", key)
        if key.startswith(RESERVED_TAG_PREFIXES):
            raise CliError(EXIT_USAGE, f"tag key {key!r} is reserved (mlflow.* and backtest.* are set by us)")
        if len(value) > MAX_TAG_VALUE_LENGTH:
            raise CliError(EXIT_USAGE, f"tag {key!r} value is longer than {MAX_TAG_VALUE_LENGTH} characters")
        tags[key] = value
    return tags


def check_input_path(path_text: str, flag: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise CliError(EXIT_USAGE, f"{flag} {path_text}: no such file")
    if path.is_dir():
        raise CliError(EXIT_USAGE, f"{flag} {path_text} is a directory: give a CSV or Parquet file")
    if not path.is_file():  # a FIFO waits forever for a writer, /dev/zero never ends: files only
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path_text} is not a regular file (a pipe, device or socket): save the data to a CSV or "
            "Parquet file and pass that",
        )
    if not os.access(path, os.R_OK):
        raise CliError(EXIT_USAGE, f"{flag} {path_text} is not readable (check its permissions)")
    return path


def build_request(args) -> Request:
    """Everything in the arguments checked, before pandas is imported or any data read."""
    if not args.returns:
        raise CliError(
            EXIT_USAGE, "--returns PATH is required: a CSV or Parquet file of returns (see --help)"
        )
    if args.prices and args.percent:
        raise CliError(EXIT_USAGE, "--prices and --percent exclude each other")
    if args.decimal and (args.prices or args.percent):
        raise CliError(EXIT_USAGE, "--decimal excludes --prices and --percent: the values are one kind")
    if (
        args.date_format
        and args.date_format not in ("dayfirst", "monthfirst")
        and "%" not in args.date_format
    ):
        raise CliError(
            EXIT_USAGE,
            f"--date-format {args.date_format!r}: give dayfirst, monthfirst or a strftime format such as %d/%m/%Y",
        )
    if args.sep is not None and len(args.sep.replace("\\t", "\t")) != 1:
        raise CliError(EXIT_USAGE, "--sep must be one character, e.g. ';' or '\\t' for tab")
    if not math.isfinite(args.rf) or args.rf < 0:
        raise CliError(
            EXIT_USAGE, f"--rf {args.rf} must be a finite annual rate >= 0 (QuantStats ignores < 0)"
        )
    if args.rf > MAX_RF:
        raise CliError(
            EXIT_USAGE, f"--rf {args.rf} looks like percent: give a decimal annual rate, e.g. 0.04"
        )
    if args.periods_per_year is not None and not (
        math.isfinite(args.periods_per_year)
        and MIN_PERIODS_PER_YEAR <= args.periods_per_year <= MAX_PERIODS_PER_YEAR
    ):
        raise CliError(
            EXIT_USAGE,
            f"--periods-per-year must be between {MIN_PERIODS_PER_YEAR:g} (a bar a millennium) and "
            f"{MAX_PERIODS_PER_YEAR:g} (30 ms bars): 252 daily, 12 monthly, ...",
        )
    if args.max_history_points < 3:
        raise CliError(EXIT_USAGE, "--max-history-points must be at least 3 (first, last and deepest bar)")
    experiment = (args.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT).strip()
    if not experiment or any(ord(ch) < 32 for ch in experiment):
        raise CliError(EXIT_USAGE, "--experiment is empty or contains control characters")
    if len(experiment) > MAX_NAME_LENGTH:
        raise CliError(
            EXIT_USAGE, f"--experiment is longer than {MAX_NAME_LENGTH} characters (MLflow's limit)"
        )
    if args.run_name is not None and (not args.run_name.strip() or len(args.run_name) > MAX_KEY_LENGTH):
        raise CliError(EXIT_USAGE, f"--run-name must be 1-{MAX_KEY_LENGTH} characters")
    if args.description is not None and len(args.description) > MAX_DESCRIPTION_LENGTH:
        raise CliError(EXIT_USAGE, f"--description is longer than {MAX_DESCRIPTION_LENGTH} characters")
    oos = parse_oos_start(args.oos_start) if args.oos_start is not None else None
    check_search_flags(args.best_by, args.pbo_splits, oos)
    walk_forward = parse_walk_forward(args)
    warnings: list[str] = []  # the git and --code checks' (the JSON output's `warnings` too)
    return Request(
        returns_path=check_input_path(args.returns, "--returns"),
        benchmark_path=check_input_path(args.benchmark, "--benchmark") if args.benchmark else None,
        column=args.column,
        benchmark_column=args.benchmark_column,
        prices=args.prices,
        percent=args.percent,
        experiment=experiment,
        run_name=args.run_name.strip() if args.run_name else None,
        params=parse_params(args.params, args.param),
        tags={**parse_tags(args.tag), **code_version_tags(args, warnings), **package_version_tags()},
        description=args.description,
        rf=float(args.rf),
        periods_per_year=args.periods_per_year,
        compounded=not args.simple,
        tearsheet=not args.no_tearsheet,
        dry_run=args.dry_run,
        force=args.force,
        max_history_points=args.max_history_points,
        tracking_uri=resolve_tracking_uri(args.tracking_uri),
        best_by=args.best_by,
        pbo_splits=args.pbo_splits,
        oos=oos,
        walk_forward=walk_forward,
        output_format=args.format,
        debug=args.debug,
        resample_to_benchmark=args.resample_to_benchmark,
        date_format=args.date_format,
        decimal=args.decimal,
        sep=args.sep.replace("\\t", "\t") if args.sep else None,
        code_files=code_artifacts(args.code, args.code_dir, args.code_max_mb, warnings),
        warnings=warnings,
        windows=parse_period_windows(args.period),
    )


MIN_PERIODS_PER_YEAR, MAX_PERIODS_PER_YEAR = 1e-3, 1e9
MIN_BARS_FOR_RATIOS = 12  # fewer bars: a warning that ratios are noise
MAX_NAME_LENGTH = 500  # MLflow's limit for experiment and dataset names (mlflow.utils.validation)
EXCEL_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")  # xlsx (a zip) and xls (OLE2)
TIME_ONLY = r"^\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$"
NUMERIC_DATE = r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2,4})(?!\d)"  # 01/02/2020, 1.2.20, 01-02-2020 ...


# ---- the code version: which strategy code produced the returns ---------------------------------------------
GIT_TIMEOUT = 5  # seconds per git call: a hung filesystem or credential helper must not hang a backtest
PACKAGES = ("quantstats", "pandas", "numpy", "mlflow")


# Nothing a repository names may run (a cloned or unpacked strategy repository is untrusted): git runs programs
# its config names during `status` (core.fsmonitor, the clean filter of a path's `filter` attribute, and hooks
# when it writes the index). Every git call gets these settings at command-line precedence (over the
# repository's own config), no system config, no optional locks (no index write, no post-index-change hook),
# no prompt, and every filter driver any config defines neutralised (see git_env). status never runs textconv
# or external diffs; they are switched off anyway, as are submodules' work trees (git would run `status` in
# each, under the submodule's own config): --ignore-submodules=dirty.
GIT_SAFE_CONFIG = {
    "core.fsmonitor": "",  # empty = off, in every git version (a bool since 2.36, a hook path before)
    "core.useBuiltinFSMonitor": "false",
    "core.hooksPath": os.devnull,
    "diff.external": "",
}
GIT_UNSAFE_ENV = ("GIT_TEST_FSMONITOR", "GIT_EXTERNAL_DIFF", "GIT_PAGER", "GIT_ASKPASS", "GIT_SSH_COMMAND")


@dataclass(frozen=True)
class GitEnv:
    """How to run git in one folder: the environment, and the filter drivers neutralised in it."""

    env: dict[str, str]
    filters: frozenset[str]


def git_run(directory: Path, *args: str, env: dict[str, str] | None = None):
    """`git -C directory ARGS` under env (default: git_env(directory)) -> CompletedProcess, or None when
    git is missing or times out."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "--no-pager", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else git_env(directory).env,
        )
    except (OSError, subprocess.SubprocessError):
        return None


def git_config_env(settings: dict[str, str]) -> dict[str, str]:
    """The environment with settings added at command-line precedence (GIT_CONFIG_COUNT/KEY_n/VALUE_n: no
    quoting limits, unlike -c name=value; appended to any the user set)."""
    env = {k: v for k, v in os.environ.items() if k not in GIT_UNSAFE_ENV}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", GIT_CONFIG_NOSYSTEM="1")
    count = env.get("GIT_CONFIG_COUNT", "")
    count = int(count) if count.isdigit() else 0
    for i, (key, value) in enumerate(settings.items(), start=count):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    env["GIT_CONFIG_COUNT"] = str(count + len(settings))
    return env


def git_env(directory: Path) -> GitEnv:
    """The safe environment for git in directory: GIT_SAFE_CONFIG, plus every filter driver that any config
    git reads there defines (filter.NAME.clean/smudge/process) emptied and made optional, so that no path's
    `filter` attribute can start a program (`git config` itself runs nothing)."""
    base = git_config_env(GIT_SAFE_CONFIG)
    done = git_run(directory, "config", "--null", "--name-only", "--get-regexp", r"^filter\.", env=base)
    names = done.stdout.split("\0") if done is not None and done.returncode == 0 else []
    filters = frozenset(n[len("filter.") : n.rindex(".")] for n in names if n.count(".") >= 2)
    settings = dict(GIT_SAFE_CONFIG)
    for name in sorted(filters):
        for part, value in (("clean", ""), ("smudge", ""), ("process", ""), ("required", "false")):
            settings[f"filter.{name}.{part}"] = value
    return GitEnv(git_config_env(settings), filters)


def git_output(directory: Path, *args: str, env: dict[str, str] | None = None) -> str | None:
    """stdout of `git -C directory ARGS` under env (default: git_env(directory)), or None when git is
    missing, fails or times out."""
    done = git_run(directory, *args, env=env)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


def porcelain_paths(text: str) -> list[str]:
    """The paths of `git status --porcelain -z` output (a rename's second path, its origin, skipped)."""
    tokens, paths = text.split("\0"), []
    it = iter(tokens)
    for token in it:
        if len(token) > 3:
            paths.append(token[3:])
            if token[0] in "RC":
                next(it, None)
    return paths


def strip_url_credentials(url: str) -> str:
    """https://user:token@host/repo.git -> https://host/repo.git (a token in a remote URL is a secret);
    scp-style git@host:repo keeps its user, which is no secret."""
    return re.sub(r"(?<=://)[^/?#]*@", "", url)


def code_version_tags(args, sink: list[str] | None = None) -> dict[str, str]:
    """The git repository holding --code-dir (default: the current folder): commit, branch, remote URL
    without credentials, and whether tracked files (or the --code files) have uncommitted changes. MLflow
    would record the repository of the script it runs, i.e. this skill's, not the strategy's. Outside a
    git repository: no tags (a warning when --code-dir named the folder). Warnings also go to `sink`."""
    directory = Path(args.code_dir).expanduser() if args.code_dir else Path.cwd()
    if args.code_dir and not directory.is_dir():
        raise CliError(EXIT_USAGE, f"--code-dir {args.code_dir}: no such directory")
    safe = git_env(directory)
    probe = git_run(directory, "rev-parse", "--verify", "--quiet", "HEAD", env=safe.env)
    commit = probe.stdout.strip() if probe is not None and probe.returncode == 0 else None
    if not commit:
        if probe is not None and "dubious ownership" in probe.stderr:
            warn(
                f"git refuses the repository at {directory.resolve()}: it belongs to another user (git's "
                "'dubious ownership'); no git tags",
                sink,
            )
        elif args.code_dir:
            warn(f"--code-dir {args.code_dir} is not in a git repository with a commit: no git tags", sink)
        return {}
    tags = {"mlflow.source.git.commit": commit}
    # no branch when HEAD is detached
    branch = git_output(directory, "symbolic-ref", "--quiet", "--short", "HEAD", env=safe.env)
    if branch:
        tags["mlflow.source.git.branch"] = branch
    remotes = (git_output(directory, "remote", env=safe.env) or "").split()
    if remotes:
        remote = "origin" if "origin" in remotes else remotes[0]
        url = git_output(directory, "remote", "get-url", remote, env=safe.env)
        if url:
            tags["mlflow.source.git.repoURL"] = strip_url_credentials(url)[:MAX_TAG_VALUE_LENGTH]
    dirty, reason = git_dirty(directory, [Path(f).expanduser().resolve() for f in args.code or []], safe)
    if dirty is None:
        tags["backtest.git_dirty_unknown"] = reason[:MAX_TAG_VALUE_LENGTH]
        warn(f"git: whether the code has uncommitted changes is unknown: {reason}", sink)
    else:
        tags["backtest.git_dirty"] = "true" if dirty else "false"
    return tags


def git_dirty(directory: Path, code: list[Path], safe: GitEnv) -> tuple[bool | None, str]:
    """(whether tracked files, or the --code files, differ from the commit; None with the reason when
    that cannot be answered safely). Untracked files do not count (the local store ./mlflow.db is one),
    except --code files: a strategy file git does not know is not in the commit."""
    status = ("status", "--porcelain", "-z", "--ignore-submodules=dirty")
    top = git_output(directory, "rev-parse", "--show-toplevel", env=safe.env)
    if top is None:
        return None, "git rev-parse --show-toplevel failed (no work tree?)"
    outside = [str(f) for f in code if not f.is_relative_to(Path(top).resolve())]
    if outside:
        return None, f"--code {outside[0]} is outside the repository, so its commit does not hold it"
    changed = git_output(directory, *status, "--untracked-files=no", env=safe.env)
    untracked = (
        git_output(directory, *status, "--untracked-files=all", "--", *map(str, code), env=safe.env)
        if code
        else ""
    )
    if changed is None or untracked is None:
        return None, "git status failed"
    paths = porcelain_paths(changed)
    if paths and safe.filters:
        # A changed path whose filter we did not let run may only look changed (its clean form may match).
        attrs = git_output(Path(top), "check-attr", "-z", "filter", "--", *paths, env=safe.env) or ""
        named = sorted({v for v in attrs.split("\0")[2::3] if v in safe.filters})
        if named:
            return None, (
                f"the repository's filter {named[0]!r} would have to run to compare its files, and nothing a "
                "repository names is run"
            )
    return bool(paths or untracked), ""


def package_version_tags() -> dict[str, str]:
    """Versions of what computed the numbers: backtest.version.python, .quantstats, .pandas, .numpy, .mlflow
    (read from the installed metadata: nothing imported)."""
    import importlib.metadata
    import platform

    tags = {"backtest.version.python": platform.python_version()}
    for package in PACKAGES:
        for distribution in (package, f"{package}-skinny") if package == "mlflow" else (package,):
            try:
                tags[f"backtest.version.{package}"] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return tags


DEFAULT_CODE_MAX_MB = 10  # a strategy's source is kilobytes: a bigger --code file is a wrong path or data


def code_artifacts(
    files: list[str] | None,
    code_dir: str | None,
    max_mb: float = DEFAULT_CODE_MAX_MB,
    sink: list[str] | None = None,
) -> dict[str, Path]:
    """--code FILE...: checked before anything is written; stored under code/ by their path relative to
    --code-dir (default: the current folder) when inside it, else by file name. Over max_mb MB: exit 2
    (--code-max-mb raises it); a file holding NUL bytes (not source) is attached with a warning."""
    if not (math.isfinite(max_mb) and max_mb > 0):
        raise CliError(EXIT_USAGE, f"--code-max-mb {max_mb:g} must be a positive number of megabytes")
    base = (Path(code_dir).expanduser() if code_dir else Path.cwd()).resolve()
    out: dict[str, Path] = {}
    for text in files or []:
        path = Path(text).expanduser()
        if not path.exists():
            raise CliError(EXIT_USAGE, f"--code {text}: no such file")
        if not path.is_file():
            raise CliError(EXIT_USAGE, f"--code {text} is not a file: give the strategy's source files")
        if not os.access(path, os.R_OK):
            raise CliError(EXIT_USAGE, f"--code {text} is not readable (check its permissions)")
        size = path.stat().st_size
        if size > max_mb * 1024 * 1024:
            raise CliError(
                EXIT_USAGE,
                f"--code {text} is {size / 1024 / 1024:.1f} MB, over the {max_mb:g} MB limit for source files: "
                "attach the strategy's source, or raise the limit with --code-max-mb",
            )
        with open(path, "rb") as handle:
            if b"\0" in handle.read(8192):
                warn(f"--code {text} looks binary (NUL bytes), not source code: attached as it is", sink)
        resolved = path.resolve()
        name = resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else resolved.name
        if name in out and out[name] != resolved:
            raise CliError(EXIT_USAGE, f"--code: two files would be stored as code/{name}; pass --code-dir")
        out[name] = resolved
    return out


def copy_code(req: Request, folder: Path) -> list[str]:
    """The --code files into folder/code/ (logged with the run's other artifacts); their artifact paths."""
    import shutil

    for name, path in req.code_files.items():
        target = folder / "code" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return copy_names(req)


def copy_names(req: Request) -> list[str]:
    return [f"code/{name}" for name in req.code_files]


def artifact_names(folder: Path) -> list[str]:
    """Every file a run logs from its folder, by its artifact path (code/strategy.py)."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def git_summary(tags: dict[str, str]) -> dict | None:
    """The code version for the JSON output: {commit, branch, repo_url, dirty}, or None outside git."""
    if "mlflow.source.git.commit" not in tags:
        return None
    return {
        "commit": tags["mlflow.source.git.commit"],
        "branch": tags.get("mlflow.source.git.branch"),
        "repo_url": tags.get("mlflow.source.git.repoURL"),
        "dirty": {"true": True, "false": False}.get(tags.get("backtest.git_dirty", "")),
        "dirty_unknown": tags.get("backtest.git_dirty_unknown"),  # why dirty is null, when it is
    }


RESERVED_PARAMS = frozenset(
    {"start", "end", "n_bars", "periods_per_year", "rf", "compounded", "frequency", "source_file", "column",
     "benchmark", "benchmark_column", "returns_kind", "oos_start", "oos_first_bar", "is_n_bars", "oos_n_bars"}
)  # fmt: skip


# ---- loading and checking the data (pandas) ----------------------------------------------------------------
@dataclass
class Column:
    """One validated column of returns, ready for QuantStats."""

    name: str
    returns: object  # pandas Series: float64, UTC-naive DatetimeIndex (or synthetic one when bare)
    has_timestamps: bool
    benchmark: object | None = None  # aligned benchmark returns, same index
    benchmark_info: dict | None = None


def read_table(path: Path, flag: str, sep: str | None = None):
    """CSV or Parquet -> DataFrame, each failure a one-line input error."""
    import pandas as pd

    suffix = path.suffix.lower()
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(EXCEL_MAGIC):
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name} is an Excel workbook, not {suffix.lstrip('.').upper() or 'CSV'}: export it as "
            "CSV (File > Save As > CSV) or Parquet",
        )
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            if not isinstance(frame.index, pd.RangeIndex):  # dates (or date and more) in the index: use them
                names = [
                    name or ("timestamp" if pd.api.types.is_datetime64_any_dtype(level) else f"index{i}")
                    for i, (name, level) in enumerate(
                        zip(
                            frame.index.names,
                            [frame.index.get_level_values(i) for i in range(frame.index.nlevels)],
                            strict=True,
                        )
                    )
                ]
                frame = frame.reset_index(names=names)
        else:
            header = head.decode("utf-8", "replace").splitlines()[0] if head.strip() else ""
            if sep is None and "," not in header:  # ; (European Excel) or tab: the header names it
                sep = next((s for s in (";", "\t", "|") if s in header), None)
            given = sep
            frame = pd.read_csv(path, skipinitialspace=True, sep=sep or ",")
            first_cell = str(frame.iloc[0, 0]) if len(frame) else ""
            other = next((s for s in (";", "\t", "|") if s in frame.columns[0] and s in first_cell), None)
            if given is None and other is not None:
                raise CliError(
                    EXIT_USAGE,
                    f"{flag} {path.name} looks separated by {other!r}, not {sep or ','!r}: pass --sep {other!r}",
                )
            if not isinstance(frame.index, pd.RangeIndex):
                # every row has more fields than the header: pandas makes the first column the index and
                # shifts the others left under the wrong names
                raise CliError(
                    EXIT_USAGE,
                    f"{flag} {path.name}: the rows have more fields than the header "
                    f"({len(frame.columns)} names): add the missing column names or remove the extra fields",
                )
    except pd.errors.EmptyDataError:
        raise CliError(EXIT_USAGE, f"{flag} {path.name} is empty: expected a header and rows") from None
    except pd.errors.ParserError as exc:
        fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if not fields:
            raise CliError(
                EXIT_USAGE, f"{flag} {path.name} is not a readable CSV file ({str(exc)[:160]})"
            ) from None
        want, line, saw = fields.groups()
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name}: line {line} has {saw} fields, the header {want}: fix that row "
            f"(a separator inside a value? quote it; another separator? pass --sep)",
        ) from None
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        reason = " ".join(str(exc).split())[:160]
        raise CliError(EXIT_USAGE, f"{flag} {path.name} is not a readable {kind} file ({reason})") from None
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        reason = " ".join(str(exc).split())[:160]
        raise CliError(EXIT_USAGE, f"{flag} {path.name} could not be read ({reason})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty or len(frame.columns) == 0:
        raise CliError(EXIT_USAGE, f"{flag} {path.name} has no data rows (header only?)")
    return frame


def line_of(position: int) -> int:
    """File line of a data row (the header is line 1)."""
    return position + 2


def parse_timestamps(column, flag: str, path: Path, warnings: list[str], date_format: str | None = None):
    """A column of dates/times (strings, datetimes or epoch numbers) -> UTC-naive DatetimeIndex."""
    import pandas as pd

    name = column.name
    missing = column.isna().to_numpy()
    if missing.any():
        first = int(missing.argmax())
        raise CliError(
            EXIT_USAGE, f"{flag} {path.name}: missing timestamp in column {name!r} at line {line_of(first)}"
        )
    # pandas keeps nanosecond timestamps, 1677-09-21 to 2262-04-11: a date outside is bad input, and
    # pandas' "could not infer format" warning is noise on stderr. Both handled here.
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("ignore")
        try:
            return _parse_timestamps(column, flag, path, warnings, date_format)
        except pd.errors.OutOfBoundsDatetime:
            raise CliError(
                EXIT_USAGE,
                f"{flag} {path.name}: a timestamp in column {name!r} is outside 1677-2262, the range pandas "
                "can hold: check the dates (or the epoch unit of numeric timestamps)",
            ) from None


def _parse_timestamps(column, flag: str, path: Path, warnings: list[str], date_format: str | None = None):
    import pandas as pd

    name = column.name
    aware = False
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    explicit = date_format not in (None, "dayfirst", "monthfirst")
    if numeric and (explicit or is_yyyymmdd(column)):
        # 20220103 is a date, not 20 million epoch seconds (1970-08-23)
        text = column.astype("int64").astype(str) if not explicit else column.astype(str)
        parsed = pd.to_datetime(text, format=date_format if explicit else "%Y%m%d", utc=True, errors="coerce")
    elif numeric:
        magnitude = float(column.abs().max())
        unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
        parsed = pd.to_datetime(column, unit=unit, utc=True, errors="coerce")
    elif isinstance(column.dtype, pd.DatetimeTZDtype):
        aware = True
        parsed = column.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_any_dtype(column):
        parsed = column.dt.tz_localize("UTC")
    else:
        text = column.astype(str).str.strip()
        if date_format is None and text.str.match(TIME_ONLY).all():
            raise CliError(
                EXIT_USAGE,
                f"{flag} {path.name}: column {name!r} holds times with no date ({text.iloc[0]!r}): add the date "
                "to every row, e.g. 2024-01-31 09:30",
            )
        dayfirst = date_format == "dayfirst" or (date_format is None and day_first(text, flag, path, name))
        if explicit:
            parsed = pd.to_datetime(text, utc=True, errors="coerce", format=date_format)
        elif date_format or dayfirst:
            parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed", dayfirst=dayfirst)
        else:
            try:
                parsed = pd.to_datetime(text, utc=True)
            except (ValueError, TypeError, OverflowError):
                parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
        aware = bool(re.search(r"(Z|[+-]\d\d:?\d\d)$", text.iloc[0]))
    bad = parsed.isna().to_numpy()
    if bad.any():
        first = int(bad.argmax())
        hint = f"does not match --date-format {date_format!r}" if date_format else "use ISO 8601"
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name}: unparseable timestamp {str(column.iloc[first])[:40]!r} in column {name!r} "
            f"at line {line_of(first)} ({hint}, e.g. 2024-01-31 or 2024-01-31T15:30:00Z)",
        )
    if aware:
        warn(f"{path.name}: time-zone-aware timestamps converted to UTC", warnings)
    return pd.DatetimeIndex(parsed).tz_localize(None).as_unit("ns")


def is_yyyymmdd(column) -> bool:
    """Whole numbers of 8 digits between 19000101 and 21001231 with a plausible month and day: dates."""
    import numpy as np

    values = column.to_numpy(dtype="float64")
    if not (np.isfinite(values).all() and (values == np.floor(values)).all()):
        return False
    if not ((values >= 19000101) & (values <= 21001231)).all():
        return False
    month, day = (values // 100) % 100, values % 100
    return bool(((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)).all())


def day_first(text, flag: str, path: Path, name: str) -> bool:
    """For dates like 01/02/2020: True when some first field is > 12 (day-first), False when some second field
    is (month-first) or the dates are not of this form; refused when every field fits both readings."""
    parts = text.str.extract(NUMERIC_DATE)
    if parts[0].isna().any():
        return False
    first, second = parts[0].astype(int), parts[1].astype(int)
    if (first > 12).any() and (second > 12).any():
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name}: column {name!r} mixes day-first and month-first dates: use one format "
            "(ISO 8601, e.g. 2024-01-31, is unambiguous)",
        )
    if not (first > 12).any() and not (second > 12).any():
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name}: dates like {text.iloc[0]!r} in column {name!r} are ambiguous (day/month or "
            "month/day): pass --date-format dayfirst, monthfirst or a format such as %d/%m/%Y",
        )
    return bool((first > 12).any())


def split_frame(
    frame, path: Path, flag: str, pick: str | None, pick_flag: str, bare_ok: bool, warnings,
    date_format: str | None = None,
):  # fmt: skip
    """-> (DatetimeIndex or None, {column: float Series}): timestamp column found, values checked."""
    import pandas as pd

    lowered = {c.lower(): c for c in frame.columns}
    ts_col = next((lowered[n] for n in TIMESTAMP_COLUMNS if n in lowered), None)
    first = frame.columns[0]
    if ts_col is None and not pd.api.types.is_numeric_dtype(frame[first]):
        ts_col = first
    value_cols = [c for c in frame.columns if c != ts_col]
    if not value_cols:
        raise CliError(EXIT_USAGE, f"{flag} {path.name} has a timestamp column but no value column")
    if pick is not None:
        if pick not in value_cols:
            raise CliError(
                EXIT_USAGE,
                f"{pick_flag} {pick!r} is not a column of {path.name}; "
                f"columns: {', '.join(value_cols)[:200]}",
            )
        value_cols = [pick]
    if ts_col is None and not bare_ok:
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name} has no timestamp column (date, datetime, timestamp or time): add one, or "
            "pass --periods-per-year N to treat the rows as consecutive bars",
        )
    if pick is not None or len(value_cols) > 1:  # each column becomes a run: its name a dataset name too
        for col in value_cols:
            dataset_name = f"{path.stem}[{col}]"
            if len(dataset_name) > MAX_NAME_LENGTH or any(ord(ch) < 32 for ch in col):
                raise CliError(
                    EXIT_USAGE,
                    f"{flag} {path.name}: column name {col[:40]!r}... ({len(col)} characters) cannot name a "
                    f"run and dataset: MLflow takes up to {MAX_NAME_LENGTH} characters for "
                    "file[column] and no control characters; rename the column",
                )
    values = {}
    for col in value_cols:
        raw = frame[col]
        if pd.api.types.is_bool_dtype(raw):
            raise CliError(EXIT_USAGE, f"{flag} {path.name}: column {col!r} holds true/false, not numbers")
        if pd.api.types.is_numeric_dtype(raw):
            numeric = raw.astype("float64")
        else:
            numeric = pd.to_numeric(raw, errors="coerce")
            text_cells = numeric.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
            if text_cells.any():
                at = int(text_cells.to_numpy().argmax())
                hint = f" (pick one column with {pick_flag})" if pick is None and len(value_cols) > 1 else ""
                if EUROPEAN_NUMBER.match(str(raw.iloc[at]).strip()):
                    hint = (
                        ": a decimal comma or thousands dots (European 1.234,56); write the numbers with a "
                        "decimal point and no thousands separator (1234.56)"
                    )
                raise CliError(
                    EXIT_USAGE,
                    f"{flag} {path.name}: non-numeric value {str(raw.iloc[at])[:40]!r} in column {col!r} "
                    f"at line {line_of(at)}{hint}",
                )
            numeric = numeric.astype("float64")
        values[col] = numeric.reset_index(drop=True)
    column = frame[ts_col].reset_index(drop=True) if ts_col else None
    index = parse_timestamps(column, flag, path, warnings, date_format) if ts_col else None
    return index, values


# 1.234,56 / 998,50 / 1.234.567: a decimal comma, or more than one thousands dot (one alone, 1.234, is a number)
EUROPEAN_NUMBER = re.compile(r"^[-+]?(\d{1,3}(\.\d{3})+|\d+),\d+$|^[-+]?\d{1,3}(\.\d{3}){2,}$")


def check_thousands_dots(raw, path: Path, flag: str, name: str) -> None:
    """--prices from a file that writes 1,001 as 1.001 (a European thousands dot and no decimals): pandas
    reads 1.001, a -99.9 % bar next to 999. Two neighbouring prices (file order), one x.yyy (at least 1, a
    whole number of thousandths) whose x1000 is within a factor of 2 of the other, are that misreading: a
    price does not move x1000 in one bar. Exit 2 naming the line of the misread price."""
    import numpy as np

    values = raw.to_numpy(dtype="float64")
    rows = np.flatnonzero(np.isfinite(values) & (values > 0))  # empty cells and bad prices: to_returns' job
    if len(rows) < 2:
        return
    v = values[rows]
    with np.errstate(invalid="ignore"):
        dotted = (v >= 1) & (v < 1000) & (np.abs(v * 1000 - np.round(v * 1000)) < 1e-6)
    ratio = v[1:] / v[:-1]
    up = dotted[:-1] & (ratio >= 500) & (ratio <= 2000)  # 1.001 then 999
    down = dotted[1:] & (ratio >= 1 / 2000) & (ratio <= 1 / 500)  # 999 then 1.001
    hits = np.flatnonzero(up | down)
    if hits.size:
        i = int(hits[0])
        misread, other = (rows[i], rows[i + 1]) if up[i] else (rows[i + 1], rows[i])
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name} column {name!r}: the price {values[misread]:g} at line {line_of(misread)} next "
            f"to {values[other]:g} at line {line_of(other)} is a x1000 jump: a thousands dot read as a decimal "
            f"point (European {values[misread]:g} = {values[misread] * 1000:.0f})? Write the prices with no "
            "thousands separator and a decimal point (1001 or 1001.5)",
        )


def order_index(index, path: Path, flag: str, warnings: list[str]):
    """Sort order for the rows (warned when the file is unsorted); duplicate timestamps are an error."""
    import numpy as np

    order = None
    if not index.is_monotonic_increasing:
        order = np.argsort(index.asi8, kind="stable")
        index = index[order]
        warn(f"{path.name}: timestamps were not in order; sorted them", warnings)
    duplicated = index.duplicated()
    if duplicated.any():
        dups = list(dict.fromkeys(str(t) for t in index[duplicated][:3]))
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name}: {int(duplicated.sum())} duplicate timestamps, e.g. {', '.join(dups)}: "
            "one row per bar (aggregate or drop the duplicates)",
        )
    return index, order


def to_returns(
    values, index, name: str, path: Path, flag: str, prices: bool, percent: bool, warnings, decimal: bool = False
):  # fmt: skip
    """Raw column -> decimal returns Series with the checks of the contract (all before any write)."""
    import numpy as np
    import pandas as pd

    where = f"{flag} {path.name} column {name!r}"
    series = pd.Series(values.to_numpy(), index=index, name=name)
    if series.isna().all():
        raise CliError(EXIT_USAGE, f"{where} has no numbers (all empty/NaN)")
    n_nan = int(series.isna().sum())
    if n_nan:
        series = series.dropna()
        warn(f"{path.name} column {name!r}: dropped {n_nan} empty/NaN rows", warnings)
    infinite = ~np.isfinite(series.to_numpy())
    if infinite.any():
        at = series.index[int(infinite.argmax())]
        raise CliError(EXIT_USAGE, f"{where} has an infinite value at {at}: fix or drop that row")
    if prices:
        if (series <= 0).any():
            at = series.index[int((series <= 0).to_numpy().argmax())]
            raise CliError(EXIT_USAGE, f"{where}: --prices needs prices > 0, found {series[at]} at {at}")
        series = series.pct_change(fill_method=None).iloc[1:]
    elif percent:
        series = series / 100.0
    if len(series) < 2:
        raise CliError(EXIT_USAGE, f"{where} has {len(series)} usable observations: need at least 2")
    values_np = series.to_numpy()
    if not prices:
        lo, hi = float(values_np.min()), float(values_np.max())
        median_abs = float(np.median(np.abs(values_np)))
        # QuantStats itself re-reads a series with min >= 0 and max > 1 as prices: never let it guess.
        if lo >= 0 and (hi > 1 or (median_abs > 0.1 and not decimal)):
            raise CliError(
                EXIT_USAGE,
                f"{where} looks like prices or equity (all >= 0, median {median_abs:.4g}, max {hi:.4g}): "
                "pass --prices to convert them to returns, or --percent if they are percent returns",
            )
        n_big = int(np.sum(np.abs(values_np) >= 1))
        both = "pass --percent if they are percent returns, or --decimal if they are decimal (0.01 = 1 %)"
        if not percent and not decimal and lo < 0:
            spacing_days = float(np.median(np.diff(series.index.asi8))) / 86_400e9
            if n_big >= 3 and n_big > 0.01 * len(values_np):
                raise CliError(
                    EXIT_USAGE,
                    f"{where} looks like percent units (median |value| {median_abs:.4g}, {n_big} values "
                    f"beyond +-1): {both}",
                )
            if median_abs > 0.1 and n_big == 0 and spacing_days >= 25:
                # A monthly (or slower) series moving 10-90 % a bar is a volatile decimal one (crypto, a
                # leveraged book); as percent it would be a near-riskless 0.1-0.9 % a month.
                warn(
                    f"{path.name} column {name!r}: read as decimal returns (median |r| {median_abs:.3g} a bar); "
                    "pass --percent if they are percent",
                    warnings,
                )
            elif median_abs > 0.1:
                raise CliError(
                    EXIT_USAGE,
                    f"{where}: median |value| {median_abs:.4g} a bar is ambiguous (percent or very volatile "
                    f"decimal returns): {both}",
                )
    ruin = values_np <= -1
    if ruin.any():
        at = series.index[int(ruin.argmax())]
        raise CliError(
            EXIT_USAGE,
            f"{where} has a return of {series[at]:.4g} (-100 % or worse) at {at}: a strategy cannot lose "
            "more than everything; check the units (--percent, --prices)",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        equity = np.cumprod(1.0 + values_np)
    if not np.isfinite(equity).all():
        at = series.index[int((~np.isfinite(equity)).argmax())]
        raise CliError(
            EXIT_USAGE,
            f"{where}: compounded equity overflows at {at} (returns up to {values_np.max():.4g}): these are "
            "not decimal returns; check the units (--percent, --prices)",
        )
    if series.index[0].value < 0:
        warn(
            f"{path.name} column {name!r} starts before 1970 ({series.index[0]:%Y-%m-%d}): MLflow takes no "
            "earlier metric timestamps, so the equity/drawdown histories are shifted to start at 1970-01-01; "
            "params start/end hold the real dates",
            warnings,
        )
    if len(series) < MIN_BARS_FOR_RATIOS:
        warn(
            f"{path.name} column {name!r}: only {len(series)} bars: Sharpe, Sortino and the other ratios of so "
            "few bars are noise, not evidence",
            warnings,
        )
    gaps = np.diff(series.index.asi8)
    if len(gaps) and float(gaps.max()) > max(365 * 86_400e9, 20 * float(np.median(gaps))):
        at = int(gaps.argmax())
        warn(
            f"{path.name} column {name!r}: a gap of {gaps[at] / 86_400e9 / 365.25:.1f} years between "
            f"{series.index[at]:%Y-%m-%d} and {series.index[at + 1]:%Y-%m-%d}: metrics treat it as one bar",
            warnings,
        )
    return series.astype("float64")


def load_series(
    path: Path, flag: str, pick: str | None, pick_flag: str, req: Request, bare_ok: bool, warnings: list[str]
):
    """A returns file -> (has_timestamps, {column: returns Series}); warnings appended to `warnings`."""
    import pandas as pd

    frame = read_table(path, flag, req.sep)
    index, values = split_frame(frame, path, flag, pick, pick_flag, bare_ok, warnings, req.date_format)
    if req.prices:  # in file order: the line named is the file's
        for col, raw in values.items():
            check_thousands_dots(raw, path, flag, col)
    has_timestamps = index is not None
    if has_timestamps:
        index, order = order_index(index, path, flag, warnings)
        if order is not None:
            values = {k: v.iloc[order].reset_index(drop=True) for k, v in values.items()}
    else:
        # Bare numbers: bar i is day i of a synthetic calendar, only so that QuantStats functions that need a
        # DatetimeIndex run; metrics marked `calendar` are reported undefined instead of made up.
        index = pd.date_range("1970-01-01", periods=len(frame), freq="D").as_unit("ns")
    out = {}
    for col, raw in values.items():
        out[col] = to_returns(raw, index, col, path, flag, req.prices, req.percent, warnings, req.decimal)
    return has_timestamps, out


def bar_spacing(index) -> float:
    """Median spacing of the bars in nanoseconds."""
    import numpy as np

    return float(np.median(np.diff(index.asi8))) if len(index) > 1 else 0.0


def compound_to_bars(strategy, bars, compounded: bool):
    """The strategy's returns compounded (summed with --simple) into the benchmark's bars.

    Which benchmark bar a strategy bar belongs to: bars stamped at midnight are dates and cover that day
    (a strategy bar at 2024-01-02 10:00 joins 2024-01-02); other bars end at their timestamp and cover the
    time since the previous one (10:00 joins the bar stamped 16:00 that day). Strategy bars outside the
    benchmark's span are dropped. Returns (Series on the benchmark bars that received bars, bars dropped)."""
    import numpy as np
    import pandas as pd

    b, t = bars.asi8, strategy.index.asi8
    step = np.int64(bar_spacing(bars))
    if (bars == bars.normalize()).all():
        pos = np.searchsorted(b, t, side="right") - 1
        keep = (pos >= 0) & ((pos < len(b) - 1) | (t < b[-1] + step))
    else:
        pos = np.searchsorted(b, t, side="left")
        keep = (pos < len(b)) & ((pos > 0) | (t > b[0] - step))
    groups, values = pos[keep], strategy.to_numpy(dtype=float)[keep]
    sums = np.bincount(groups, weights=np.log1p(values) if compounded else values, minlength=len(b))
    present = np.bincount(groups, minlength=len(b)) > 0
    out = np.expm1(sums) if compounded else sums
    return pd.Series(out[present], index=bars[present], name=strategy.name), int((~keep).sum())


def align(
    strategy, benchmark, name: str, warnings: list[str], resample: bool = False, compounded: bool = True
):
    """Inner join on timestamps, done in pandas once (QuantStats' own alignment takes seconds per call).

    Bars of different sizes (an hourly strategy, a daily benchmark) are an error: their common timestamps
    are a few midnight bars and every metric would silently become a daily one. With resample (the flag
    --resample-to-benchmark) the strategy is compounded into the benchmark's bars first, and a warning
    says so."""
    s_space, b_space = bar_spacing(strategy.index), bar_spacing(benchmark.index)
    if min(s_space, b_space) > 0 and max(s_space, b_space) / min(s_space, b_space) > 1.5:
        s_label, b_label = detect_periods(strategy.index)[1], detect_periods(benchmark.index)[1]
        if not resample or s_space > b_space:
            hint = (
                "pass --resample-to-benchmark to compound the strategy into the benchmark's bars"
                if s_space < b_space
                else "give a benchmark with bars at least as long as the strategy's (resample it yourself)"
            )
            raise CliError(
                EXIT_USAGE,
                f"--benchmark bars are {b_label} but column {name!r} is {s_label}: common timestamps would "
                f"silently turn the metrics {b_label}; {hint}",
            )
        n_before = len(strategy)
        strategy, dropped = compound_to_bars(strategy, benchmark.index, compounded)
        outside = f"; {dropped} bars outside the benchmark's span were dropped" if dropped else ""
        warn(
            f"column {name!r}: its {n_before} {s_label} bars were {'compounded' if compounded else 'summed'} "
            f"into {len(strategy)} {b_label} benchmark bars (--resample-to-benchmark){outside}; every metric "
            "is computed on those bars",
            warnings,
        )
    common = strategy.index.intersection(benchmark.index).rename(strategy.index.name)  # the user's name
    info = {
        "common_bars": int(len(common)),
        "strategy_bars_dropped": int(len(strategy) - len(common)),
        "benchmark_bars_dropped": int(len(benchmark) - len(common)),
    }
    if len(common) < 2:
        raise CliError(
            EXIT_USAGE,
            f"--benchmark shares {len(common)} timestamps with column {name!r}: need at least 2 common bars",
        )
    if info["strategy_bars_dropped"]:
        warn(
            f"column {name!r}: {info['strategy_bars_dropped']} bars without a benchmark bar were dropped; "
            f"metrics use the {len(common)} common bars",
            warnings,
        )
    return strategy.loc[common], benchmark.loc[common], info


@dataclass
class Loaded:
    """The input, validated: the columns to log, and the warnings reading them gave."""

    columns: list[Column]
    warnings: list[str]


def load_all(req: Request) -> Loaded:
    """Every column to log, validated and aligned; raises CliError (exit 2) on any input problem."""
    warnings: list[str] = []
    has_ts, columns = load_series(
        req.returns_path, "--returns", req.column, "--column", req, req.periods_per_year is not None, warnings
    )
    bench = None
    if req.benchmark_path is not None:
        bench_ts, bench_cols = load_series(
            req.benchmark_path,
            "--benchmark",
            req.benchmark_column,
            "--benchmark-column",
            req,
            False,
            warnings,
        )
        if len(bench_cols) > 1:
            raise CliError(
                EXIT_USAGE,
                f"--benchmark {req.benchmark_path.name} has {len(bench_cols)} value columns: pick one with "
                f"--benchmark-column ({', '.join(bench_cols)[:120]})",
            )
        if not has_ts:
            raise CliError(EXIT_USAGE, "--benchmark needs timestamps in --returns to align on")
        bench_name, bench = next(iter(bench_cols.items()))
    out = []
    for name, returns in columns.items():
        column = Column(name=name, returns=returns, has_timestamps=has_ts)
        if bench is not None:
            column.returns, column.benchmark, info = align(
                returns, bench, name, warnings, req.resample_to_benchmark, req.compounded
            )
            column.benchmark_info = {"file": req.benchmark_path.name, "column": bench_name, **info}
        out.append(column)
    return Loaded(out, warnings)


def allocators_that_give_back_memory() -> None:
    """Before any data is read: freed large buffers go back to the OS instead of staying in this process's
    heap (and in the RSS of every worker forked from it). glibc raises its mmap threshold to the size of
    each large block freed (up to 32 MB), after which a 1 M-bar array (8 MB) comes from the heap and stays
    there when freed, fragmented among small objects; a fixed threshold (mallopt) turns that off. pyarrow's
    own allocator (mimalloc) keeps a Parquet read's buffers for reuse; with the system allocator they are
    freed like the rest. Together, not either alone: 1 M bars + benchmark ~815 -> ~700 MB summed peak RSS,
    for ~0.35 s more wall time (fresh pages instead of reused ones: bench/RESULTS.md); arrays below 1 MB
    (20 years of daily bars) are not affected."""
    import ctypes

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # read when pyarrow loads; the user's wins
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform == "linux" else None
    if mallopt is not None:  # glibc
        mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (malloc.h): 1 MB blocks and up mmap'd, unmapped when freed


# ---- frequency ------------------------------------------------------------------------------------------
def detect_periods(index) -> tuple[float, str]:
    """Bars per year and a frequency label from the timestamps (median spacing, weekends, bars per day).

    The named convention (252 trading days, 365 calendar days, bars per day x those, 52, 12, ...) is used
    unless the series spans at least a year and its OBSERVED bars per year (bars - 1 over the span in years
    of 365.25 days) contradict it: intraday, where the convention multiplies a guessed day count (EURUSD
    hourly trades ~260 weekdays: ~6,200 bars a year, not 24 x 252 = 6,048), whenever they differ at all;
    daily and slower when they differ by more than 10 % (a daily series with Sunday bars has ~311 a year,
    not 365; a weekday calendar without holidays, 261, stays 252). Shorter series keep the convention: a
    few weeks of bars say little about a year."""
    import numpy as np

    named, label = named_periods(index)
    if len(index) < 3:
        return named, label
    span_years = float(index[-1].value - index[0].value) / (365.25 * 86_400e9)
    if span_years < 1:
        return named, label
    observed = float(round((len(index) - 1) / span_years))
    intraday = float(np.median(np.diff(index.asi8))) < 0.8 * 86_400e9
    if (intraday and observed != named) or abs(observed / named - 1) > 0.10:
        return observed, label
    return named, label


def named_periods(index) -> tuple[float, str]:
    """The named convention for the bar spacing: (bars per year, label)."""
    import numpy as np

    if len(index) < 2:
        return 252.0, "daily"
    ns = np.diff(index.asi8)
    day = 86_400e9
    spacing = float(np.median(ns)) / day
    weekend_share = float(np.mean(index.day_of_week >= 5))
    days_per_year = 365 if weekend_share > 0.1 else 252
    if spacing < 0.8:
        per_day = index.normalize().value_counts()
        bars_per_day = max(1, int(round(float(np.median(per_day.to_numpy())))))
        minutes = max(1, int(round(spacing * 1440)))
        return float(bars_per_day * days_per_year), f"{minutes}min"
    if spacing < 4:
        return float(days_per_year), "daily" if days_per_year == 252 else "daily_calendar"
    if spacing < 10:
        return 52.0, "weekly"
    if spacing < 45:
        return 12.0, "monthly"
    if spacing < 135:
        return 4.0, "quarterly"
    if spacing < 250:
        return 2.0, "semiannual"
    return 1.0, "yearly"


# ---- metrics ------------------------------------------------------------------------------------------
_COMPILED: dict[str, object] = {}


def _code(expression: str):
    if expression not in _COMPILED:
        _COMPILED[expression] = compile(expression, f"<metric {expression}>", "eval")
    return _COMPILED[expression]


def drawdown_details(dd):
    """qs.stats.drawdown_details(dd) for one series, vectorised: episodes with 'start', 'end', 'days' and
    'max drawdown' (percent), as QuantStats computes them (tests compare).

    QuantStats builds each episode with a Python loop, a label slice and a quantile (minutes on 1M bars).
    An episode is a maximal run of bars below the peak: it starts at its first such bar and ends at its last
    (the bar before the recovery, or the last bar when it is still open). Departure: a series that is below
    its peak from the first bar (a first-bar loss: the peak is the starting 1.0) has an episode starting at
    bar 0 even when no later episode exists; QuantStats finds none there, so a series underwater for its
    whole length had no avg_drawdown or longest_drawdown_days.
    """
    import numpy as np
    import pandas as pd

    values = dd.to_numpy(dtype=float)
    under = values < 0
    before = np.concatenate(([False], under[:-1]))
    after = np.concatenate((under[1:], [False]))
    starts = np.flatnonzero(under & ~before)
    ends = np.flatnonzero(under & ~after)
    columns = ["start", "end", "days", "max drawdown"]
    if not len(starts):
        return pd.DataFrame(columns=columns)
    mins = np.minimum.reduceat(values, starts)
    stamps = dd.index
    days = ((stamps[ends] - stamps[starts]) // np.timedelta64(1, "D")).to_numpy() + 1
    return pd.DataFrame(
        {"start": stamps[starts], "end": stamps[ends], "days": days.astype(int), "max drawdown": mins * 100}
    )


def window_start(x, months: int | None = None, period: str | None = None):
    """Where the window of the last N months (or the month/year to date) begins, from the last bar."""
    import pandas as pd
    from dateutil.relativedelta import relativedelta

    last = x.index[-1]
    if period == "mtd":
        return pd.Timestamp(last.year, last.month, 1)
    if period == "ytd":
        return pd.Timestamp(last.year, 1, 1)
    return last - relativedelta(months=months)


def since(x, months: int | None = None, period: str | None = None):
    """The bars of the last N months, or of the month/year to date, counted back from the last bar."""
    return x[x.index >= window_start(x, months, period)]


def shorter_than(x, months: int) -> bool:
    """The series does not reach back `months` from its last bar: its first bar's period (one median bar
    spacing before its timestamp) starts after the window's start. QuantStats then quietly uses the whole
    series for a '3y' or '1y' figure; we report it undefined."""
    import numpy as np

    spacing = np.median(np.diff(x.index.asi8)) if len(x) > 1 else 0
    return x.index[0] - np.timedelta64(int(spacing), "ns") > window_start(x, months)


def dispersion_tests(r):
    """flat(s), downside(s), tiny(v, s) for the metric namespace; the scale is max(|s|, |r|) (r: the data)."""
    import numpy as np

    data_scale = float(np.max(np.abs(r.to_numpy()))) if len(r) else 0.0

    def scale(s) -> float:
        return max(float(np.max(np.abs(np.asarray(s, dtype=float)))) if len(s) else 0.0, data_scale)

    def tiny(value, s) -> bool:
        return not abs(float(value)) > DISPERSION_RTOL * scale(s)

    def flat(s) -> bool:
        values = np.asarray(s, dtype=float)
        return len(values) < 2 or tiny(np.std(values, ddof=1), values)

    def downside(s) -> float:
        values = np.asarray(s, dtype=float)
        return float(np.sqrt(np.sum(np.minimum(values, 0.0) ** 2) / len(values)))

    return {"flat": flat, "tiny": tiny, "downside": downside}


def import_quantstats(req: Request | None = None):
    """QuantStats (for the tearsheet), headless and quiet: Agg backend, no warnings or prints reaching our
    streams. The metrics do not need it (metric_inputs)."""
    import contextlib
    import io
    import warnings

    if req and "quantstats" not in sys.modules:
        phase(req, "importing quantstats")
    os.environ.setdefault("MPLBACKEND", "Agg")

    def load():  # ~100,000 objects (scipy, matplotlib, seaborn): 4 full sweeps, ~0.36 s, without this
        with (
            warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
            without_yfinance() if "quantstats" not in sys.modules else contextlib.nullcontext(),
        ):  # fmt: skip
            warnings.simplefilter("ignore")
            import quantstats as qs
            import quantstats.plots
            import quantstats.reports  # noqa: F401
        return qs

    return kept_from_collector(load)


@contextlib.contextmanager
def without_yfinance():
    """QuantStats 0.0.86 imports yfinance when it loads (quantstats/_compat.py: `import yfinance as yf`), for
    its downloads of a ticker's returns, which the tearsheet never asks for (write_tearsheet passes series,
    never a ticker string). The import costs ~0.3 CPU-s (requests, curl_cffi, ...) on the figures' critical
    path (bench/RESULTS.md). While QuantStats loads, `yfinance` is a placeholder whose download refuses;
    afterwards sys.modules is as before, so a host process's own `import yfinance` is the real one. A
    host that imported yfinance already keeps it (QuantStats then takes that one)."""
    import types

    if "yfinance" in sys.modules:
        yield
        return
    placeholder = types.ModuleType(
        "yfinance", "log_backtest's stand-in: QuantStats' ticker downloads are off"
    )

    def download(*args, **kwargs):
        raise RuntimeError("log_backtest draws tearsheets from series only: QuantStats' downloads are off")

    placeholder.download = placeholder.set_config = download
    sys.modules["yfinance"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("yfinance") is placeholder:
            del sys.modules["yfinance"]


@contextlib.contextmanager
def quantstats_sped_up(qs):
    """Inside this block QuantStats' report (0.0.86) does less work for the same result: where it recomputes
    with slow pandas patterns, the same values computed faster, and no figure rendered twice. Each
    replacement says what it replaces and has a test against QuantStats' own function
    (tests/test_log_backtest.py); the report's file is byte-identical with and without them. Outside the
    block QuantStats and matplotlib are their own again (a host process that called main() keeps its
    libraries as they were). A module that imported a name (`from .._compat import safe_resample`) holds its
    own reference: each is replaced."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    upstream = qs.stats.drawdown_details
    replacements = [
        (qs.utils, "group_returns", grouped_returns),
        (qs.stats, "drawdown_details", lambda drawdown: episode_details(drawdown, upstream)),
        *(
            (module, "safe_resample", resampler_of(module.safe_resample, qs.stats.comp))
            for module in (
                qs.stats,
                sys.modules["quantstats._plotting.core"],
                sys.modules["quantstats._plotting.wrappers"],
            )
        ),
        (FigureCanvasAgg, "draw_idle", no_redraw),
    ]
    saved = [(owner, name, vars(owner).get(name)) for owner, name, _ in replacements]
    try:
        for owner, name, value in replacements:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            if value is None:
                delattr(owner, name)  # FigureCanvasAgg inherits draw_idle from FigureCanvasBase
            else:
                setattr(owner, name, value)


def no_redraw(canvas, *args, **kwargs) -> None:
    """FigureCanvasAgg.draw_idle inside quantstats_sped_up: matplotlib.pyplot.savefig (3.x) ends with
    `fig.canvas.draw_idle()` ("Need this if 'transparent=True', to reset colors": for a figure on screen);
    on the Agg canvas of a headless process that renders the whole figure once more, after its SVG is
    written, for nobody to see. QuantStats saves each of its report's ~12 figures through pyplot.savefig
    and closes it: ~1/6 of the report's CPU (bench/RESULTS.md)."""


def episode_details(drawdown, upstream):
    """quantstats.stats.drawdown_details (0.0.86) with its per-episode loop in numpy: QuantStats slices the
    series by label and takes a pandas quantile for each drawdown episode (~560 episodes in 20 years of daily
    bars, ~1 ms each, three calls per report: its drawdown table, the longest-drawdowns plot and the metrics'
    drawdown rows). The same episodes by QuantStats' own rules, the same columns, dtypes and strings
    (tests/test_log_backtest.py compares frames exactly): an episode starts at a nonzero bar after a zero
    one and ends at the nonzero bar before a zero; a series that starts in a drawdown gets its first bar as
    a start only when some episode ends before the first start (and none at all when no start follows),
    one still open ends at the last bar; "99% max drawdown" is the episode's minimum over the bars whose
    depth is below the episode's 0.99 quantile of depth. Anything unusual (NaN, an index that is not sorted
    unique timestamps) goes to `upstream`, QuantStats' own function."""
    import numpy as np
    import pandas as pd

    if isinstance(drawdown, pd.DataFrame):
        from quantstats._compat import safe_concat

        return safe_concat(
            {col: episode_details(drawdown[col], upstream) for col in drawdown.columns}, axis=1
        )
    columns = ("start", "valley", "end", "days", "max drawdown", "99% max drawdown")
    index = drawdown.index
    values = drawdown.to_numpy(dtype=float)
    if (
        not isinstance(index, pd.DatetimeIndex) or not index.is_monotonic_increasing or not index.is_unique
        or np.isnan(values).any() or len(values) < 2
    ):  # fmt: skip
        return upstream(drawdown)
    zero = values == 0
    starts = list(np.flatnonzero(~zero[1:] & zero[:-1]) + 1)
    ends = list(np.flatnonzero(~zero[:-1] & zero[1:]))
    if not starts:
        return pd.DataFrame(index=[], columns=columns)
    if ends and starts[0] > ends[0]:
        starts.insert(0, 0)
    if not ends or starts[-1] > ends[-1]:
        ends.append(len(values) - 1)
    rows = []
    for start, end in zip(starts, ends[: len(starts)], strict=True):
        episode = values[start : end + 1]
        depth = -episode
        kept = episode[depth < np.quantile(depth, 0.99)]
        rows.append(
            (
                index[start], index[start + int(np.argmin(episode))], index[end], (index[end] - index[start]).days + 1,
                episode.min() * 100, kept.min() * 100 if kept.size else np.nan,
            )
        )  # fmt: skip
    df = pd.DataFrame(data=rows, columns=columns)
    df["days"] = df["days"].astype(int)
    df["max drawdown"] = df["max drawdown"].astype(float)
    df["99% max drawdown"] = df["99% max drawdown"].astype(float)
    for name in ("start", "end", "valley"):
        df[name] = df[name].dt.strftime("%Y-%m-%d")
    return df


def resampler_of(upstream, comp):
    """quantstats._compat.safe_resample (0.0.86), with its `resample(...).apply(qs.stats.comp)` (one Python
    call per week, month, quarter or year: ~1,600 calls, ~6 % of the report's CPU for 20 years of daily
    bars) taken as pandas' one-pass product of (1 + r) per bin, less 1, as grouped_returns does; every other
    aggregation is QuantStats' own (its test: tests/test_log_backtest.py)."""

    def safe_resample(data, freq, func_name=None, **kwargs):
        if func_name is comp and not kwargs:
            return upstream(data + 1, freq, "prod") - 1
        return upstream(data, freq, func_name, **kwargs)

    return safe_resample


def grouped_returns(returns, groupby, compounded: bool = False):
    """quantstats.utils.group_returns, vectorised: QuantStats 0.0.86 compounds each group with
    `groupby(...).apply(stats.comp)`, one Python call per month or year, ~3,400 calls and a fifth of its HTML
    report's CPU for 20 years of daily bars (bench/RESULTS.md). The same product of (1 + r) per group, taken by
    pandas in one pass (its own test: tests/test_log_backtest.py); the sum when not compounded, as there."""
    grouped = (returns + 1 if compounded else returns).groupby(groupby)
    return grouped.prod() - 1 if compounded else grouped.sum()


Z05 = -1.6448536269514729  # statistics.NormalDist().inv_cdf(0.05), scipy.stats.norm.ppf(0.05)


def normal_cdf(z: float) -> float:
    """Phi(z) through erfc, accurate in both tails (scipy's ndtr does the same)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def gaussian_es(s) -> float:
    """QuantStats' parametric 95 % expected shortfall: mean - std x phi(Z05) / 0.05 (the mean when std is 0)."""
    import numpy as np

    values = np.asarray(s, dtype=float)
    mu, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    if sd == 0 or math.isnan(sd):
        return mu
    return mu - sd * math.exp(-(Z05**2) / 2) / math.sqrt(2 * math.pi) / 0.05


def win_rate(s) -> float:
    """Share of the non-zero values that are positive (QuantStats: 0.0 when none is non-zero)."""
    import numpy as np

    values = np.asarray(s, dtype=float)
    nonzero = int(np.count_nonzero(values))
    return int(np.count_nonzero(values > 0)) / nonzero if nonzero else 0.0


def geometric_mean(s) -> float:
    """QuantStats' expected_return: prod(1 + s) ** (1 / len(s)) - 1."""
    import numpy as np

    values = np.asarray(s, dtype=float)
    return float(np.prod(1.0 + values) ** (1.0 / len(values)) - 1.0)


def longest_run(mask) -> int:
    """The longest run of True in a boolean series or array (QuantStats' consecutive wins/losses)."""
    import numpy as np

    flags = np.concatenate(([False], np.asarray(mask, dtype=bool), [False]))
    edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def gain_to_pain(sums) -> float:
    """sum / |sum of the negative ones| (QuantStats' gain_to_pain_ratio of resampled sums; NaN without one)."""
    import numpy as np

    values = np.asarray(sums, dtype=float)
    pain = abs(float(values[values < 0].sum()))
    return float(values.sum()) / pain if pain else math.nan


def profit_ratio(gains, losses) -> float:
    """QuantStats' profit_ratio: |mean gain / gain count| / |mean loss / loss count| (0.0 without a gain)."""
    if not len(gains):
        return 0.0
    if not len(losses):
        return math.nan
    return abs(float(gains.mean()) / len(gains)) / abs(float(losses.mean()) / len(losses))


def autocorr_penalty(values) -> float:
    """QuantStats' autocorr_penalty: sqrt(1 + 2 sum_k (n - k) / n |rho_1| ** k), 1 when rho_1 is undefined."""
    import numpy as np

    n = len(values)
    if n < 2:
        return 1.0
    coef = abs(np.corrcoef(values[:-1], values[1:])[0, 1])
    if np.isnan(coef):
        return 1.0
    lags = np.arange(1, n)
    return float(np.sqrt(1 + 2 * np.sum((n - lags) / n * coef**lags)))


def calendar_groups(index) -> dict:
    """Integer keys of each bar's calendar day, month, quarter and year (cheap to group by)."""
    import numpy as np

    years = index.year.to_numpy()
    return {
        "day": index.asi8 // np.int64(86_400 * 10 ** {"s": 0, "ms": 3, "us": 6, "ns": 9}[index.unit]),
        "month": years * 12 + index.month.to_numpy(),
        "quarter": years * 4 + index.quarter.to_numpy(),
        "year": years,
    }


def metric_inputs(item: Column, rf: float, periods: float, compounded: bool) -> dict:
    """The namespace the metric table's expressions are evaluated in: every intermediate computed once
    (the names are listed above the table)."""
    import numpy as np
    import pandas as pd

    r = item.returns
    a = r.to_numpy(dtype=float)
    n = len(a)
    years = n / periods
    rf_bar = (1.0 + rf) ** (1.0 / periods) - 1.0 if rf else 0.0  # QuantStats' to_excess_returns
    x = a - rf_bar if rf else a

    def total(s) -> float:
        values = np.asarray(s, dtype=float)
        return float(np.prod(1.0 + values) - 1.0) if compounded else float(values.sum())

    def cagr_of(s) -> float:
        wealth = total(s) + 1.0  # QuantStats' order of operations below
        if wealth < 0:
            return math.nan
        try:
            return abs(wealth) ** (1.0 / (len(s) / periods)) - 1.0
        except OverflowError:  # a growth rate beyond any float (1e300 % in 2 bars): undefined, not a crash
            return math.nan

    equity, drawdown = equity_and_drawdown(r, compounded)
    dd = pd.Series(drawdown, index=r.index)
    wins, losses, gains = a[a > 0], a[a < 0], a[a >= 0]
    quantiles = np.percentile(a, [1, 5, 95, 99])  # pandas' (QuantStats') quantile: linear interpolation
    loss_sum, gain_sum = abs(float(losses.sum())), float(gains.sum())
    skew, kurt = float(r.skew()), float(r.kurt())
    mu_x, sd_x = float(np.mean(x)), float(np.std(x, ddof=1)) if n > 1 else math.nan

    def psr(sr: float) -> float:
        spread = (1 - skew * sr + (kurt + 3 - 1) / 4 * sr**2) / (n - 1)
        return normal_cdf(sr / math.sqrt(spread)) if spread > 0 else math.nan

    ns = {
        "np": np, "sqrt": math.sqrt, "n": n, "periods": periods, "compounded": compounded, "years": years,
        "r": r, "x": x, "mu_r": float(np.mean(a)), "sd_r": float(np.std(a, ddof=1)) if n > 1 else math.nan,
        "mu_x": mu_x, "sd_x": sd_x,
        "rf_total": ((1.0 + rf) ** years - 1.0) if compounded else rf * years,
        "total": total, "cagr_of": cagr_of, "cagr": cagr_of(a), "since": since,
        "short": lambda months: shorter_than(r, months),
        "wins": wins, "losses": losses, "gains": gains, "wr": win_rate(a), "win_rate": win_rate,
        "pf": gain_sum / loss_sum if loss_sum else (math.inf if gain_sum else 0.0),
        "payoff": float(wins.mean()) / -float(losses.mean()) if len(wins) and len(losses) else math.nan,
        "tail": abs(quantiles[2] / quantiles[1]) if quantiles[1] else math.nan, "quantiles": quantiles,
        "profit_ratio": profit_ratio, "longest_run": longest_run, "geometric_mean": geometric_mean,
        "gain_to_pain": gain_to_pain, "penalty": autocorr_penalty(a), "psr": psr, "Z05": Z05,
        "gaussian_es": gaussian_es, "exposure": math.ceil(np.count_nonzero(a) / n * 100) / 100,
        "dd": dd, "mdd": float(drawdown.min()), "ulcer": float(np.sqrt(np.sum(drawdown**2) / (n - 1))),
        "episodes": drawdown_details(dd),
        **dispersion_tests(r),
    }  # fmt: skip
    if item.has_timestamps:
        keys = calendar_groups(r.index)
        for name in ("month", "quarter", "year"):
            groups = (r + 1.0 if compounded else r).groupby(keys[name])
            ns[name] = (groups.prod() - 1.0 if compounded else groups.sum()).to_numpy()
        ns["day_sums"] = r.groupby(keys["day"]).sum().to_numpy()
        ns["month_sums"] = r.groupby(keys["month"]).sum().to_numpy() if compounded else ns["month"]
    if item.benchmark is not None:
        # Positionally indexed: both are already aligned on the same timestamps.
        rp, bp = r.reset_index(drop=True), item.benchmark.reset_index(drop=True)
        cov = np.cov(rp.to_numpy(dtype=float), bp.to_numpy(dtype=float))
        ns.update(rp=rp, bp=bp, cov=cov, beta=cov[0, 1] / cov[1, 1] if cov[1, 1] else math.nan)
    return ns


def compute_metrics(
    item: Column, rf: float, periods: float, compounded: bool, only: frozenset[str] | None = None
) -> tuple[dict, list[str]]:
    """Every metric of the table for one series (or `only` these: a walk-forward's choice, a fifth of the
    time) -> ({name: float or nan}, [warnings for the output]).

    The warnings name the metrics that could not be computed (reported undefined) and say when annualised
    figures extrapolate from less than a year of bars."""
    import warnings

    import numpy as np

    values: dict[str, float] = {}
    notes: list[str] = []
    n = len(item.returns)
    years = n / periods
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # means of empty selections (no losing bar): NaN, undefined
        ns = metric_inputs(item, rf, periods, compounded)
        for spec in METRICS if only is None else [s for s in METRICS if s.name in only]:
            if spec.benchmark and item.benchmark is None:
                continue
            if spec.calendar and not item.has_timestamps:
                values[spec.name] = float("nan")
                continue
            try:
                if spec.guard and bool(eval(_code(spec.guard), ns)):
                    values[spec.name] = float("nan")
                    continue
                value = float(eval(_code(spec.call), ns))
                values[spec.name] = value if math.isfinite(value) else float("nan")
            except (ArithmeticError, ValueError, IndexError):  # e.g. a division by zero: undefined, not fatal
                values[spec.name] = float("nan")
                notes.append(f"could not compute {spec.name}; it is reported undefined")
    if years < 1:
        annualised = [s.name for s in METRICS if s.annualised and math.isfinite(values.get(s.name, math.nan))]
        if annualised:
            notes.append(
                f"{n} bars are {years:.2f} of a year at {periods:g} bars per year: annualised metrics "
                f"({', '.join(annualised)}) {SHORT_WINDOW}"
            )
    return values, notes


def split_defined(values: dict) -> tuple[dict[str, float], list[str]]:
    defined = {k: v for k, v in values.items() if math.isfinite(v)}
    undefined = [k for k, v in values.items() if not math.isfinite(v)]
    return defined, undefined


# ---- equity and drawdown histories ----------------------------------------------------------------------
def equity_and_drawdown(returns, compounded: bool):
    """Growth of 1.0 and its drawdown (<= 0, peak includes the starting 1.0) as numpy arrays."""
    import numpy as np

    r = returns.to_numpy(dtype=float)
    equity = np.cumprod(1.0 + r) if compounded else 1.0 + np.cumsum(r)
    peak = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]
    drawdown = equity / peak - 1.0
    return equity, drawdown


def history_steps(n: int, max_points: int, deepest: int):
    """Evenly spaced bar indices, at most max_points, always with the first, last and deepest bar."""
    import numpy as np

    if n <= max_points:
        return np.arange(n)
    steps = np.unique(np.round(np.linspace(0, n - 1, max_points - 1)).astype(np.int64))
    steps = np.union1d(steps, [0, n - 1, deepest])
    while len(steps) > max_points:  # the deepest bar pushed us over: drop its nearest ordinary neighbour
        pos = int(np.searchsorted(steps, deepest))
        neighbour = pos + 1 if pos + 1 < len(steps) - 1 else pos - 1
        steps = np.delete(steps, neighbour)
    return steps


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


# ---- period tables: calendar years, quarters, months and stress windows of one series (pandas) ----
@dataclass(frozen=True)
class PeriodTables:
    """One row per calendar period the bars touch (partial first and last ones included) and per stress
    window the bars overlap (a user's window always, with 0 bars when outside the data): pandas DataFrames."""

    year: object
    quarter: object
    month: object
    stress: object

    def by(self, kind: str):
        return getattr(self, kind)


def segment_stats(values, bench, periods: float, compounded: bool, rf: float) -> dict:
    """return, volatility, sharpe and max_drawdown of one segment of bars (and the benchmark's return, its
    drawdown and the excess), NaN where undefined: the run's own definitions, applied to the segment."""
    import numpy as np

    n = len(values)
    nan = float("nan")
    out = {"n_bars": n, "return": nan, "volatility": nan, "sharpe": nan, "max_drawdown": nan}
    if bench is not None:
        out.update(benchmark_return=nan, benchmark_max_drawdown=nan, excess_return=nan)
    if not n:
        return out

    def total_and_drawdown(a) -> tuple[float, float]:
        equity = np.cumprod(1.0 + a) if compounded else 1.0 + np.cumsum(a)
        peak = np.maximum(np.maximum.accumulate(equity), 1.0)  # the running peak starts at 1 before bar 1
        return float(equity[-1] - 1.0), float(np.min(equity / peak - 1.0))

    out["return"], out["max_drawdown"] = total_and_drawdown(values)
    if n > 1:
        sd = float(np.std(values, ddof=1))
        out["volatility"] = sd * math.sqrt(periods)
        x = values - ((1.0 + rf) ** (1.0 / periods) - 1.0 if rf else 0.0)
        sd_x = float(np.std(x, ddof=1))
        out["sharpe"] = float(np.mean(x)) / sd_x * math.sqrt(periods) if sd_x > 0 else nan
    if bench is not None:
        out["benchmark_return"], out["benchmark_max_drawdown"] = total_and_drawdown(bench)
        out["excess_return"] = out["return"] - out["benchmark_return"]
    return out


def bar_text(stamp, with_time: bool) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ" if with_time else "%Y-%m-%d")


def period_tables(
    returns, periods: float, compounded: bool, rf: float = 0.0, benchmark=None, windows=STRESS_WINDOWS
) -> PeriodTables:
    """The breakdown of one series (pandas Series on a UTC-naive, sorted DatetimeIndex; `benchmark` aligned on
    the same index): its year, quarter and month tables and its stress windows (`windows`: the built-in ones
    that the bars overlap, then the user's, listed even when empty)."""
    import numpy as np
    import pandas as pd

    index = returns.index
    a = returns.to_numpy(dtype=float)
    b = benchmark.to_numpy(dtype=float) if benchmark is not None else None
    with_time = bool((index[[0, -1]] != index[[0, -1]].normalize()).any())
    years, months = index.year.to_numpy(), index.month.to_numpy()
    keys = {"year": years, "quarter": years * 4 + (months - 1) // 3, "month": years * 12 + months - 1}

    def label(kind: str, key: int) -> str:
        if kind == "year":
            return str(key)
        if kind == "quarter":
            return f"{key // 4}Q{key % 4 + 1}"
        return f"{key // 12}-{key % 12 + 1:02d}"

    def rows_of(segments, first: str, last: str) -> list[dict]:
        rows = []
        for head, lo, hi in segments:
            row = dict(head)
            row[first] = bar_text(index[lo], with_time) if hi > lo else None
            row[last] = bar_text(index[hi - 1], with_time) if hi > lo else None
            stats = segment_stats(a[lo:hi], None if b is None else b[lo:hi], periods, compounded, rf)
            rows.append({**row, **stats})
        return rows

    tables = {}
    for kind, key in keys.items():
        edges = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1, [len(key)]))
        segments = [
            ({"period": label(kind, int(key[lo]))}, lo, hi)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ]
        tables[kind] = pd.DataFrame(rows_of(segments, "start", "end"))
    user = {w.name for w in windows} - {w.name for w in STRESS_WINDOWS}
    segments = []
    for w in windows:
        lo = int(np.searchsorted(index, pd.Timestamp(w.start), side="left"))
        hi = int(np.searchsorted(index, pd.Timestamp(w.end) + pd.Timedelta(days=1), side="left"))
        if hi > lo or w.name in user:
            segments.append(({"name": w.name, "label": w.label, "start": w.start, "end": w.end}, lo, hi))
    columns = ["name", "label", "start", "end", "first_bar", "last_bar", "n_bars", *PERIOD_STATS]
    if b is not None:
        columns += ["benchmark_return", "benchmark_max_drawdown", "excess_return"]
    stress = pd.DataFrame(rows_of(segments, "first_bar", "last_bar"), columns=columns)
    return PeriodTables(tables["year"], tables["quarter"], tables["month"], stress)


# ---- a run's period breakdown: its artifacts, stress metrics, year_return history and summary -------------
PERIOD_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
DESCRIPTION_MAX_YEARS = 12  # more years: the description names the best and worst only


def parse_period_windows(texts: list[str]) -> tuple[StressWindow, ...]:
    """--period NAME=START:END (repeatable, dates inclusive) -> the built-in windows and then the user's;
    a bad date, an end before its start or a repeated name is exit 2 before anything is read."""
    windows, names = list(STRESS_WINDOWS), {w.name for w in STRESS_WINDOWS}
    for text in texts:
        name, eq, span = text.partition("=")
        start, colon, end = span.partition(":")
        name, start, end = name.strip(), start.strip(), end.strip()
        if not eq or not colon or not PERIOD_NAME.match(name):
            raise CliError(
                EXIT_USAGE,
                f"--period {text!r}: give NAME=START:END with NAME of letters, digits and _ (at most 64), "
                "e.g. --period brexit=2016-06-23:2016-07-08",
            )
        dates = []
        for date in (start, end):
            try:
                dates.append(datetime.strptime(date, "%Y-%m-%d").date().isoformat())
            except ValueError:
                raise CliError(EXIT_USAGE, f"--period {text!r}: {date!r} is not a date YYYY-MM-DD") from None
        start, end = dates
        if end < start:
            raise CliError(EXIT_USAGE, f"--period {text!r}: the end {end} is before the start {start}")
        if name in names:
            raise CliError(
                EXIT_USAGE,
                f"--period {text!r}: the name {name!r} is already taken"
                + (
                    " by a built-in stress window (references/periods.md)"
                    if name in {w.name for w in STRESS_WINDOWS}
                    else ""
                ),
            )
        names.add(name)
        windows.append(StressWindow(name, name, start, end))
    return tuple(windows)


@dataclass(frozen=True)
class Breakdown:
    """One series' period breakdown, ready to log: the tables (artifacts), the stress_<name>_return metrics,
    the year_return history points (calendar year, epoch ms of the year's last bar, return) and the summary
    for the description and the JSON output."""

    tables: PeriodTables
    metrics: dict[str, float]
    year_points: tuple[tuple[int, int, float], ...]
    summary: dict


def defined(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def period_breakdown(
    column: Column, periods: float, frequency: str, compounded: bool, rf: float, windows, warnings: list[str]
) -> Breakdown | None:
    """The breakdown of one series (a single run, a sweep child, a walk-forward's stitched series); None for
    bars without timestamps (no calendar). A user's window outside the data is a warning, listed with 0 bars."""
    import numpy as np

    if not column.has_timestamps:
        if len(windows) > len(STRESS_WINDOWS):
            warn(
                f"column {column.name!r}: bars without timestamps have no calendar: --period ignored",
                warnings,
            )
        return None
    tables = period_tables(column.returns, periods, compounded, rf, column.benchmark, windows)
    stress = tables.stress
    for name in stress.loc[stress["n_bars"] == 0, "name"]:
        warn(f"column {column.name!r}: --period {name!r} lies outside the data: listed with 0 bars", warnings)
    metrics = {
        f"stress_{name}_return": float(value)
        for name, value, n in zip(stress["name"], stress["return"], stress["n_bars"], strict=True)
        if n and math.isfinite(value)
    }
    index = column.returns.index
    years = index.year.to_numpy()
    last = np.concatenate((np.flatnonzero(np.diff(years)), [len(years) - 1]))
    stamps = history_stamps(index, last, frequency)
    stamps = stamps - min(0, int(history_stamps(index, [0], frequency)[0]))  # shifted like the equity curve
    year = tables.year
    points = tuple(
        (int(y), int(ts), float(v))
        for y, ts, v in zip(years[last].tolist(), stamps.tolist(), year["return"].tolist(), strict=True)
        if math.isfinite(v)
    )
    returns = {p: defined(v) for p, v in zip(year["period"], year["return"], strict=True)}
    ranked = [p for p in sorted(returns, key=lambda p: returns[p]) if returns[p] is not None]
    summary = {
        "best_year": {"period": ranked[-1], "return": returns[ranked[-1]]} if ranked else None,
        "worst_year": {"period": ranked[0], "return": returns[ranked[0]]} if ranked else None,
        "year_returns": returns,
        "stress_returns": {
            name: defined(value) for name, value in zip(stress["name"], stress["return"], strict=True)
        },
    }
    return Breakdown(tables, metrics, points, summary)


def write_period_artifacts(breakdown: Breakdown | None, folder: Path) -> list[str]:
    """periods/year.csv, quarter.csv, month.csv and stress.csv (the heatmap is drawn with the figures)."""
    if breakdown is None:
        return []
    out = folder / "periods"
    out.mkdir(parents=True, exist_ok=True)
    for kind in PERIOD_KINDS:
        breakdown.tables.by(kind).to_csv(out / f"{kind}.csv", index=False, float_format="%.10g")
    return [f"periods/{kind}.csv" for kind in PERIOD_KINDS]


def draw_monthly_heatmap(column: Column, req: Request, folder: Path) -> None:
    """periods/monthly_returns.png: the month x year grid of monthly returns (the rows of periods/month.csv),
    red below 0 and green above on a symmetric scale, each cell labelled in percent. Drawn on every run (also
    with --no-tearsheet) by draw_tearsheet in a worker, while this process writes (matplotlib's import alone
    is ~0.6 CPU-s: bench/RESULTS.md); matplotlib's Figure on the Agg canvas directly: no pyplot state, no GUI
    backend."""
    import logging

    import numpy as np

    if not column.has_timestamps:
        return
    periods = periods_of(column, req)[0]
    month = period_tables(column.returns, periods, req.compounded, req.rf, None, ()).month
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    years = sorted({int(p[:4]) for p in month["period"]})
    grid = np.full((len(years), 12), np.nan)
    for period, value in zip(month["period"], month["return"], strict=True):
        grid[years.index(int(period[:4])), int(period[5:]) - 1] = value
    finite = grid[np.isfinite(grid)]
    scale = float(np.max(np.abs(finite))) if finite.size and np.max(np.abs(finite)) > 0 else 0.01
    height = 1.2 + 0.32 * len(years)
    figure = Figure(figsize=(9, height), dpi=90)
    # Fixed margins in inches (year labels left, the colorbar's labels right, title, month labels) instead of
    # tight_layout(), which draws the whole figure once more to measure it: with its ~240 labels that was a
    # third of the heatmap's time, paid once per sweep child (bench/RESULTS.md).
    figure.subplots_adjust(left=0.5 / 9, right=1 - 0.65 / 9, bottom=0.3 / height, top=1 - 0.35 / height)
    ax = figure.add_subplot()
    image = ax.imshow(grid, cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
    ax.set_xticks(
        range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    )
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    ax.tick_params(length=0, labelsize=8)
    if len(years) <= 60:
        for (row, col), value in np.ndenumerate(grid):
            if math.isfinite(value):
                ax.text(col, row, f"{value * 100:.1f}", ha="center", va="center", fontsize=7)
    ax.set_title("Monthly returns (%)", fontsize=10)
    figure.colorbar(image, ax=ax, fraction=0.03, pad=0.02, format=PercentFormatter(1.0)).ax.tick_params(
        labelsize=7
    )
    (folder / "periods").mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / "periods" / "monthly_returns.png")


def pct(value) -> str:
    return "undefined" if value is None else f"{value * 100:+.2f} %".replace("-", "\N{MINUS SIGN}")


def periods_markdown(summary: dict | None) -> list[str]:
    """The description's year table (or, over DESCRIPTION_MAX_YEARS years, the best and worst by name) and the
    stress windows the data covers."""
    if not summary or not summary["year_returns"]:
        return []
    years = summary["year_returns"]
    lines = ["", "**Years** (all periods in `periods/`)", ""]
    if len(years) <= DESCRIPTION_MAX_YEARS:
        lines += ["| Year | Return |", "|---|---|"] + [f"| {y} | {pct(v)} |" for y, v in years.items()]
    else:
        best, worst = summary["best_year"], summary["worst_year"]
        lines.append(
            f"{len(years)} years · best {best['period']} {pct(best['return'])} · "
            f"worst {worst['period']} {pct(worst['return'])}"
        )
    stress = {name: v for name, v in summary["stress_returns"].items() if v is not None}
    if stress:
        lines += ["", "**Stress windows** " + " · ".join(f"{name} {pct(v)}" for name, v in stress.items())]
    return lines


def periods_output(summary: dict | None, key_only: bool) -> dict | None:
    """The JSON output's `periods`: best and worst year, and (not for a sweep's children) every year's return."""
    if summary is None:
        return None
    if key_only:
        return {"best_year": summary["best_year"], "worst_year": summary["worst_year"]}
    return summary


# ---- fingerprint, description, artifacts ---------------------------------------------------------------
def fingerprint(item: Column, settings: dict, params: dict) -> str:
    digest = hashlib.sha256(b"log_backtest/1\0")
    digest.update(item.returns.index.asi8.tobytes() if item.has_timestamps else b"bare")
    digest.update(item.returns.to_numpy(dtype="float64").tobytes())
    if item.benchmark is not None:
        digest.update(b"\0benchmark\0" + item.benchmark.to_numpy(dtype="float64").tobytes())
    digest.update(json.dumps({"settings": settings, "params": params}, sort_keys=True).encode())
    return digest.hexdigest()


def fingerprinted_settings(req: Request) -> dict:
    """What else changes a run's logged numbers or its meaning, beside the series, the params and the
    settings prepare_column records: the hold-out split, the stress windows, the history's resolution and
    the code version (the strategy's commit and dirty flag, the --code files' contents)."""
    # read again for each column: kilobytes, and never a stale digest of a file edited between two logs
    code = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in req.code_files.items()}
    return {
        "oos_start": req.oos.text if req.oos else None,
        "windows": [[w.name, w.start, w.end] for w in req.windows],
        "max_history_points": req.max_history_points,
        "git": {
            k: v for k, v in req.tags.items() if k.startswith(("mlflow.source.git.commit", "backtest.git_"))
        },
        "code": code,
    }


def series_digest(item: Column) -> str:
    """The logged dataset's digest: the return series alone (timestamps and values), so a rerun or a re-log
    with other settings shows the same series; query_experiments deflate counts one trial per digest."""
    digest = hashlib.sha256(b"series/1\0")
    digest.update(item.returns.index.asi8.tobytes() if item.has_timestamps else b"bare")
    digest.update(item.returns.to_numpy(dtype="float64").tobytes())
    return digest.hexdigest()[:16]


def fmt_value(name: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    spec = SPEC_BY_NAME.get(name)
    if spec and spec.units.startswith("fraction"):
        return f"{value * 100:.2f} %"
    if spec and spec.units in ("bars", "days"):
        return f"{value:.0f}"
    return f"{value:.3f}"


HEADLINE = (("sharpe", "Sharpe"), ("cagr", "CAGR"), ("max_drawdown", "MaxDD"), ("volatility", "Vol"))


def headline(metrics: dict) -> str:
    """The one line a person reads first: Sharpe 0.28 · CAGR 3.64 % · MaxDD −56.78 % · Vol 19.10 %."""
    parts = []
    for name, label in HEADLINE:
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            text = "undefined"
        elif name == "sharpe":
            text = f"{value:.2f}"
        else:
            text = f"{value * 100:.2f} %"
        parts.append(f"{label} " + text.replace("-", "\N{MINUS SIGN}"))
    return " · ".join(parts)


def description_markdown(summary: dict, user_description: str | None) -> str:
    """The run page's description. MLflow's UI shows its first two lines until "Show more" is clicked, so
    the headline numbers come first; its markdown renderer draws tables without cell padding, so the key
    metrics are a list."""
    lines = [headline(summary["metrics"]), ""]
    if summary.get("role"):
        lines += [summary["role"], ""]
    if user_description:
        lines += [user_description.strip(), ""]
    lines += [
        f"**Backtest** `{summary['source']}` column `{summary['column']}` · {summary['n_bars']} bars "
        f"({summary['frequency']}, {summary['periods_per_year']:g} per year)",
        "",
        f"**Period** {summary['start']} → {summary['end']} · rf {summary['rf']:g} · "
        f"{'compounded' if summary['compounded'] else 'simple (not compounded)'}"
        + (f" · benchmark `{summary['benchmark']}`" if summary.get("benchmark") else ""),
        "",
        "**Key metrics**",
        "",
    ]
    metrics = summary["metrics"]
    for name in KEY_METRICS + (("alpha", "beta") if "beta" in metrics else ()):
        lines.append(f"- {name}: **{fmt_value(name, metrics.get(name))}**")
    lines += segments_markdown(summary)
    lines += periods_markdown(summary.get("periods"))
    if summary["undefined_metrics"]:
        lines += ["", "Undefined (not logged): " + ", ".join(summary["undefined_metrics"])]
    lines += ["", f"Logged by {SKILL_NAME} log_backtest.py {SKILL_VERSION}; all metrics in `metrics.json`."]
    return "\n".join(lines)[:MAX_TAG_VALUE_LENGTH]


SPEC_BY_NAME = {spec.name: spec for spec in METRICS}


def write_returns_artifact(item: Column, folder: Path) -> str:
    import pandas as pd

    frame = pd.DataFrame({"returns": item.returns.to_numpy()})
    if item.has_timestamps:
        frame.insert(0, timestamp_name(item), item.returns.index)
    else:
        frame.insert(0, "bar", range(len(frame)))
    if item.benchmark is not None:
        frame["benchmark"] = item.benchmark.to_numpy()
    if len(frame) >= PARQUET_ARTIFACT_MIN_BARS:
        path = folder / "returns.parquet"
        if item.has_timestamps:  # a typed column: say it is UTC
            frame[frame.columns[0]] = frame[frame.columns[0]].dt.tz_localize("UTC")
        frame.to_parquet(path, index=False)
    else:
        # UTC as the user's file had it: dates stay dates (pandas writes midnight-only stamps as dates),
        # times carry no "+00:00", and the column keeps its name, so the file reads like the input
        path = folder / "returns.csv"
        frame.to_csv(path, index=False, float_format="%.17g")
    return path.name


def timestamp_name(column: Column) -> str:
    """The name of the user's timestamp column (kept on the index), for the files we write."""
    return str(column.returns.index.name or "timestamp")


DAILY_OR_SLOWER = ("daily", "daily_calendar", "weekly", "monthly", "quarterly", "semiannual", "yearly")


def history_stamps(index, steps, frequency: str):
    """Milliseconds of the equity/drawdown points. The MLflow UI shows metric times in the browser's time
    zone: a daily-or-slower bar is stored at 12:00 UTC of its date, so that date shows in every zone from
    UTC-11 to UTC+11 (at midnight UTC it would read as the day before anywhere west of Greenwich).
    Intraday bars keep their exact time."""
    import pandas as pd

    stamps = index[steps]
    if frequency in DAILY_OR_SLOWER:
        stamps = stamps.normalize() + pd.Timedelta(hours=12)
    return stamps.as_unit("ms").asi8


def write_tearsheet(
    item: Column, path: Path, rf: float, periods: float, compounded: bool, title: str
) -> str | None:
    """QuantStats' HTML report, headless, never with a ticker string (that would download from the web).
    Returns a note when the report was drawn from daily resampled returns."""
    import contextlib
    import io
    import logging
    import warnings

    import numpy as np

    qs = import_quantstats()
    returns, benchmark, report_periods, note = item.returns, item.benchmark, periods, None
    strategy = title  # the run's name heads the report's columns (a column is often just "returns")
    if not item.has_timestamps:
        note = "bars without timestamps: the tearsheet's calendar tables use a synthetic daily calendar"
    elif periods > 400 and len(returns) > TEARSHEET_MAX_INTRADAY_BARS:

        def daily(x):
            days = x.index.normalize()
            return np.expm1(np.log1p(x).groupby(days).sum()) if compounded else x.groupby(days).sum()

        returns = daily(returns)
        benchmark = daily(benchmark) if benchmark is not None else None
        report_periods = 365 if float(np.mean(returns.index.day_of_week >= 5)) > 0.1 else 252
        note = f"tearsheet drawn from {len(returns)} daily returns (compounded from {len(item.returns)} bars)"
        title = f"{title} (daily from {len(item.returns)} intraday bars)"
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    import matplotlib.pyplot as plt

    with (
        warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()),
        quantstats_sped_up(qs),
    ):  # fmt: skip
        warnings.simplefilter("ignore")
        kwargs = {"strategy_title": strategy}
        if benchmark is not None:
            kwargs["benchmark_title"] = (item.benchmark_info or {}).get("column") or "benchmark"
        qs.reports.html(
            returns.rename(strategy),
            benchmark=benchmark.rename(kwargs.get("benchmark_title")) if benchmark is not None else None,
            rf=rf,
            title=title,
            output=str(path),
            compounded=compounded,
            periods_per_year=int(round(report_periods)),
            **kwargs,
        )
        plt.close("all")
    tidy_tearsheet(path)
    # the report's table is QuantStats' own: say at its top where it disagrees with the run's logged metrics
    values = None if returns is not item.returns else compute_metrics(item, rf, periods, compounded)[0]
    note_corrections(path, strategy, values)
    return note


def tidy_tearsheet(path: Path) -> None:
    """QuantStats 0.0.86 labels CAGR "CAGR﹪" (U+FE6A SMALL PERCENT SIGN, its way to keep the "%" that
    marks percent rows): fonts without that glyph (Debian's defaults) draw a box. A plain % reads the same."""
    html = path.read_text(encoding="utf-8")
    path.write_text(html.replace("\N{SMALL PERCENT SIGN}", "%"), encoding="utf-8")


# QuantStats 0.0.86's "Key Performance Metrics" rows -> the metric the run logs for the same quantity.
TEARSHEET_ROWS = {
    "Time in Market": "exposure", "Cumulative Return": "total_return", "CAGR%": "cagr", "Sharpe": "sharpe",
    "Prob. Sharpe Ratio": "probabilistic_sharpe_ratio", "Smart Sharpe": "smart_sharpe", "Sortino": "sortino",
    "Smart Sortino": "smart_sortino", "Sortino/\N{SQUARE ROOT}2": "adjusted_sortino",
    "Smart Sortino/\N{SQUARE ROOT}2": "smart_adjusted_sortino", "Omega": "omega", "Max Drawdown": "max_drawdown",
    "Longest DD Days": "longest_drawdown_days", "Volatility (ann.)": "volatility", "R^2": "r_squared",
    "Information Ratio": "information_ratio", "Calmar": "calmar", "Skew": "skew", "Kurtosis": "kurtosis",
    "Ulcer Performance Index": "ulcer_performance_index", "Risk-Adjusted Return": "risk_adjusted_return",
    "Risk-Return Ratio": "risk_return_ratio", "Avg. Return": "avg_return", "Avg. Win": "avg_win",
    "Avg. Loss": "avg_loss", "Win/Loss Ratio": "payoff_ratio", "Profit Ratio": "profit_ratio",
    "Expected Daily": "expected_return", "Expected Monthly": "expected_return_monthly",
    "Expected Yearly": "expected_return_yearly", "Kelly Criterion": "kelly_criterion",
    "Risk of Ruin": "risk_of_ruin", "Daily Value-at-Risk": "value_at_risk",
    "Expected Shortfall (cVaR)": "conditional_value_at_risk", "Max Consecutive Wins": "consecutive_wins",
    "Max Consecutive Losses": "consecutive_losses", "Gain/Pain Ratio": "gain_to_pain_ratio",
    "Gain/Pain (1M)": "gain_to_pain_ratio_monthly", "Payoff Ratio": "payoff_ratio",
    "Profit Factor": "profit_factor", "Common Sense Ratio": "common_sense_ratio", "CPC Index": "cpc_index",
    "Tail Ratio": "tail_ratio", "Outlier Win Ratio": "outlier_win_ratio", "Outlier Loss Ratio": "outlier_loss_ratio",
    "MTD": "returns_mtd", "3M": "returns_3m", "6M": "returns_6m", "YTD": "returns_ytd", "1Y": "returns_1y",
    "3Y (ann.)": "cagr_3y", "5Y (ann.)": "cagr_5y", "10Y (ann.)": "cagr_10y", "All-time (ann.)": "cagr",
    "Best Day": "best", "Worst Day": "worst", "Best Month": "best_month", "Worst Month": "worst_month",
    "Best Year": "best_year", "Worst Year": "worst_year", "Avg. Drawdown": "avg_drawdown",
    "Avg. Drawdown Days": "avg_drawdown_days", "Recovery Factor": "recovery_factor", "Ulcer Index": "ulcer_index",
    "Serenity Index": "serenity_index", "Avg. Up Month": "avg_up_month", "Avg. Down Month": "avg_down_month",
    "Win Days": "win_rate", "Win Month": "win_rate_month", "Win Quarter": "win_rate_quarter",
    "Win Year": "win_rate_year", "Beta": "beta", "Alpha": "alpha", "Correlation": "correlation",
    "Treynor Ratio": "treynor_ratio",
}  # fmt: skip
NOTE_MARK = "<!-- log_backtest: logged values -->"


@dataclass(frozen=True)
class Correction:
    """A row of QuantStats' table that disagrees with the run: what the report shows, what the run logs."""

    row: str
    shown: str
    metric: str
    logged: str  # formatted like the report's cell ("12.34%", "1.81", "118"), or "undefined"


def tearsheet_cells(html: str, strategy: str) -> list[tuple[str, str]]:
    """(row label, the strategy's cell) of the report's Key Performance Metrics table (its column headed by
    the strategy's name; a benchmark's column is the other)."""
    start = html.find("Key Performance Metrics")
    if start < 0:
        return []
    table = html[start : html.find("</table>", start)]
    heads = re.findall(r"<th>([^<]*)</th>", table)
    if strategy not in heads[1:]:
        return []
    column = len(heads) - 1 - heads[::-1].index(strategy) - 1  # the last such header, among the value cells
    rows = []
    for label, cells in re.findall(r"<tr><td>([^<]*)</td>((?:<td>[^<]*</td>)+)</tr>", table):
        values = re.findall(r"<td>([^<]*)</td>", cells)
        if column < len(values):
            rows.append((label, values[column]))
    return rows


def tearsheet_corrections(cells: list[tuple[str, str]], values: dict[str, float]) -> list[Correction]:
    """The rows whose shown value differs from the logged one beyond the report's rounding (2 decimals, or
    whole numbers; a "%" cell is the value x 100), or that show a number where the run's metric is
    undefined."""
    out = []
    for label, cell in cells:
        metric = TEARSHEET_ROWS.get(label)
        if metric is None or metric not in values:  # a benchmark metric without a benchmark
            continue
        percent = cell.strip().endswith("%")
        try:
            shown = float(cell.strip().rstrip("%").replace(",", ""))
        except ValueError:
            shown = math.nan  # "-", "nan", "inf": QuantStats has no number
        value = values[metric] * (100 if percent else 1)
        if not math.isfinite(value):
            if math.isfinite(shown):
                out.append(Correction(label, cell, metric, "undefined"))
            continue
        # QuantStats rounds to 2 decimals (1.8 for 1.80), and cuts day counts to whole days (488 for 488.5)
        off = abs(value - shown) >= 1 if "." not in cell else abs(round(value, 2) - shown) > 0.0101
        if not math.isfinite(shown) or off:
            out.append(Correction(label, cell, metric, f"{value:.2f}{'%' if percent else ''}"))
    return out


def note_corrections(path: Path, strategy: str, values: dict[str, float] | None) -> None:
    """A note at the report's top: the rows of QuantStats' table that the run logs differently (its metric
    and value), or that every row agrees; for a report drawn from daily returns of intraday bars, that its
    numbers are of the daily series."""
    import html as html_module

    text = path.read_text(encoding="utf-8")
    if values is None:
        body = (
            "<p>This report is drawn from daily returns compounded from the run's intraday bars: its numbers are "
            "of the daily series. The run's logged metrics are of the bars themselves.</p>"
        )
    else:
        found = tearsheet_corrections(tearsheet_cells(text, strategy), values)
        if not found:
            body = "<p>Every value in the table below agrees with the run's logged metrics (at its rounding).</p>"
        else:
            rows = "".join(
                "<tr>" + "".join(f"<td>{html_module.escape(x)}</td>" for x in (c.row, c.shown, c.metric, c.logged))
                + "</tr>"
                for c in found
            )  # fmt: skip
            body = (
                f"<p>{len(found)} value{'s' if len(found) > 1 else ''} in QuantStats' table below differ from the "
                "run's logged metrics, which are the run's record (references/quantstats-metrics.md says how "
                "each is computed and why it departs from QuantStats):</p><table class='logged-values'>"
                "<tr><th>row</th><th>this report</th><th>logged metric</th><th>logged value</th></tr>"
                f"{rows}</table>"
            )
    note = (
        f'{NOTE_MARK}<div style="border:1px solid #c44e52;padding:6px 10px;margin:8px 0;font-size:13px">'
        f"<b>The run's logged values</b>{body}</div>"
    )
    head = text.find("<hr>", text.find("<h4>"))  # under the report's title and subtitle
    at = head if head >= 0 else text.find("<body")
    path.write_text(text[:at] + note + text[at:] if at >= 0 else note + text, encoding="utf-8")


# ---- one column prepared: everything computed and written to a local folder before MLflow is touched ------
@dataclass(frozen=True)
class Job:
    """One column to log: its place in the input, the run it becomes and the local folder of its files."""

    position: int
    of: int  # columns in the input (a walk-forward: folds): more than one makes a family
    column: Column
    run_name: str
    folder: Path
    prefix: str = ""  # before every metric name it logs: a walk-forward's "oos_" (its test windows)
    periods: tuple[float, str] | None = None  # bars per year and frequency, when not the column's own
    params: dict[str, str] = field(default_factory=dict)  # its role's params (a fold's windows and pick)
    extra: dict[str, float] = field(default_factory=dict)  # its role's metrics (a fold's is_sharpe)
    role: str | None = None  # the description's line saying what the run is (a fold of a walk-forward)


def plan(loaded: Loaded, req: Request, tmp: Path) -> Plan:
    """One job per column: one column is a single run named --run-name (else the file's stem), several a
    sweep whose children are named by column; a walk-forward one job per fold."""
    if req.walk_forward:
        return walk_forward_plan(loaded, req, tmp)
    n = len(loaded.columns)
    name = req.run_name or req.returns_path.stem
    jobs = [
        Job(i, n, column, column.name if n > 1 else name, tmp / f"run{i}")
        for i, column in enumerate(loaded.columns)
    ]
    return Plan(SingleRun if n == 1 else Sweep, jobs)


@dataclass(frozen=True)
class Histories:
    """The equity and drawdown curves as logged: at most --max-history-points bars (first, last, deepest)."""

    steps: object  # numpy int64: bar positions, the MLflow step
    timestamps: object  # numpy int64: epoch milliseconds of those bars (now, for bars without timestamps)
    equity: object  # numpy float64
    drawdown: object  # numpy float64
    year_return: tuple = ()  # (calendar year, epoch ms of its last bar, return): Breakdown.year_points


@dataclass(frozen=True)
class Prepared:
    """What was computed for one column, its files in `folder`; no returns series (cheap to pickle)."""

    column: str
    run_name: str
    n_bars: int
    periods: float
    frequency: str
    metrics: dict[str, float]
    undefined: list[str]
    fingerprint: str
    params: dict[str, str]
    tags: dict[str, str]
    summary: dict
    benchmark: dict | None
    folder: Path
    artifacts: list[str]
    histories: Histories
    warnings: list[str]


def bar_time(column: Column, position: int) -> str | None:
    """ISO 8601 UTC: a date for daily-or-slower bars at midnight, else date and time with Z."""
    if not column.has_timestamps:
        return None
    index = column.returns.index
    if (index[[0, -1]] == index[[0, -1]].normalize()).all():
        return index[position].strftime("%Y-%m-%d")
    return index[position].strftime("%Y-%m-%dT%H:%M:%SZ")


def job_periods(job: Job, req: Request) -> tuple[float, str]:
    """Bars per year and frequency of a job: a walk-forward's windows keep the whole series'."""
    return job.periods or periods_of(job.column, req)


def periods_of(column: Column, req: Request) -> tuple[float, str]:
    """Bars per year (--periods-per-year, else detected) and the frequency's name."""
    if req.periods_per_year is None:
        return detect_periods(column.returns.index)
    frequency = detect_periods(column.returns.index)[1] if column.has_timestamps else "bars"
    return float(req.periods_per_year), frequency


def histories_of(column: Column, req: Request, frequency: str) -> Histories:
    import numpy as np

    equity, drawdown = equity_and_drawdown(column.returns, req.compounded)
    n = len(column.returns)
    steps = history_steps(n, req.max_history_points, int(np.argmin(drawdown)))
    if column.has_timestamps:
        stamps = history_stamps(column.returns.index, steps, frequency)
        # MLflow refuses negative metric timestamps: a history starting before 1970 is shifted as one so that
        # its first bar is at 1970-01-01 (spacing kept; to_returns warns); params start/end keep the dates.
        stamps = stamps - min(0, int(stamps[0]))
    else:
        stamps = np.full(len(steps), int(time.time() * 1000))
    return Histories(steps, stamps, equity[steps], drawdown[steps])


def run_tags(column: Column, req: Request, fp: str, undefined: list[str], summary: dict) -> dict[str, str]:
    """The tags of one column's run (a sweep child gets its parent's id when it is written)."""
    tags = {
        FINGERPRINT_TAG: fp,
        **({UNDEFINED_TAG: ",".join(undefined)} if undefined else {}),  # an empty tag reads like a flag
        VERSION_TAG: SKILL_VERSION,
        DESCRIPTION_TAG: description_markdown(summary, req.description),
        "mlflow.source.name": "log_backtest.py",
        "mlflow.source.type": "LOCAL",
        **req.tags,
    }
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if user:
        tags["mlflow.user"] = user
    return tags


def prepare_column(job: Job, req: Request) -> Prepared:
    """Metrics, histories, params, tags, description and artifacts (all but the tearsheet) of one column."""
    column, warnings = job.column, []
    periods, frequency = job_periods(job, req)
    values, notes = compute_metrics(column, req.rf, periods, req.compounded)
    phase(req, f"{column.name}: {len(values)} metrics")
    for note in notes:
        if not (job.role and SHORT_WINDOW in note):  # a fold's short test window: the family says it once
            warn(f"column {column.name!r}: {note}", warnings)
    segments = split_metrics(column, req, periods) if req.oos else None
    if segments:
        values.update(segments.metrics)
    breakdown = period_breakdown(column, periods, frequency, req.compounded, req.rf, req.windows, warnings)
    if breakdown:
        values.update(breakdown.metrics)
    plain, undefined = split_defined(values)  # the description's names; logged with the job's prefix
    metrics = {**{job.prefix + k: v for k, v in plain.items()}, **split_defined(job.extra)[0]}
    undefined = [job.prefix + k for k in undefined] + split_defined(job.extra)[1]
    settings = {
        "rf": req.rf,
        "periods_per_year": periods,
        "compounded": req.compounded,
        "returns_kind": "prices" if req.prices else "percent" if req.percent else "returns",
    }
    fp = fingerprint(column, {**settings, **fingerprinted_settings(req)}, {**req.params, **job.params})
    n = len(column.returns)
    start, end = bar_time(column, 0) or "bar 0", bar_time(column, n - 1) or f"bar {n - 1}"
    params = dict(req.params)
    params.update(
        {
            "start": start,
            "end": end,
            "n_bars": str(n),
            "periods_per_year": f"{periods:g}",
            "rf": f"{req.rf:g}",
            "compounded": str(req.compounded).lower(),
            "frequency": frequency,
            "source_file": req.returns_path.name,
            "returns_kind": settings["returns_kind"],
            "benchmark": req.benchmark_path.name if req.benchmark_path else "none",
        }
    )
    if job.of > 1 or req.column:
        params["column"] = column.name
    if column.benchmark_info:
        params["benchmark_column"] = str(column.benchmark_info["column"])
    if segments:
        params.update(segments.params)
    params.update(job.params)
    summary = {
        "source": req.returns_path.name,
        "column": column.name,
        "n_bars": n,
        "frequency": frequency,
        "periods_per_year": periods,
        "start": start,
        "end": end,
        "rf": req.rf,
        "compounded": req.compounded,
        "benchmark": req.benchmark_path.name if req.benchmark_path else None,
        "metrics": plain,
        "undefined_metrics": undefined,
        "role": job.role,
        "segments": segments.params if segments else None,
        "periods": breakdown.summary if breakdown else None,
    }
    histories = histories_of(column, req, frequency)
    if breakdown:
        histories = replace(histories, year_return=breakdown.year_points)
    job.folder.mkdir(parents=True, exist_ok=True)
    metrics_doc = {
        "run_name": job.run_name,
        "column": column.name,
        "settings": {**settings, "frequency": frequency, "n_bars": n, "start": start, "end": end},
        "benchmark": column.benchmark_info,
        "metrics": metrics,
        "undefined_metrics": undefined,
        "fingerprint": fp,
        "skill_version": SKILL_VERSION,
    }
    (job.folder / "metrics.json").write_text(json.dumps(json_safe(metrics_doc), indent=2) + "\n")
    artifacts = ["metrics.json", write_returns_artifact(column, job.folder), *copy_code(req, job.folder)]
    artifacts += write_period_artifacts(breakdown, job.folder)
    phase(req, f"{column.name}: histories and artifacts prepared")
    return Prepared(
        column=column.name, run_name=job.run_name, n_bars=n, periods=periods, frequency=frequency,
        metrics=metrics, undefined=undefined, fingerprint=fp, params=params,
        tags=run_tags(column, req, fp, undefined, summary), summary=summary, benchmark=column.benchmark_info,
        folder=job.folder, artifacts=artifacts, histories=histories, warnings=warnings,
    )  # fmt: skip


def draw_tearsheet(job: Job, req: Request, shared_heatmap: bool = False) -> str | None:
    """The job's figures, drawn in a worker: QuantStats' report as tearsheet.html (unless --no-tearsheet) and
    the monthly returns heatmap (always, issue 23); a warning when the report was drawn from daily returns
    (or on a synthetic calendar). shared_heatmap: the heatmap goes to whichever of this worker and the
    process that writes the run asks first (claim_heatmap; heatmap_while_waiting)."""
    job.folder.mkdir(parents=True, exist_ok=True)
    note = None
    if req.tearsheet:
        import_quantstats(req)
        periods = job_periods(job, req)[0]
        note = write_tearsheet(
            job.column, job.folder / "tearsheet.html", req.rf, periods, req.compounded, job.run_name
        )
        phase(req, f"{job.run_name}: tearsheet")
    if not shared_heatmap or claim_heatmap(job):
        draw_monthly_heatmap(job.column, req, job.folder)
        phase(req, f"{job.run_name}: monthly returns heatmap")
    return f"{job.run_name}: {note}" if note else None


def claim_heatmap(job: Job) -> bool:
    """True for the first of the two processes sharing a single run's heatmap to ask: an exclusive create of
    a marker beside the run's folder (not in it: the folder is uploaded), atomic on a local filesystem."""
    job.folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(
            os.open(job.folder.parent / f"{job.folder.name}.heatmap", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        )
    except FileExistsError:
        return False
    return True


def heatmap_while_waiting(job: Job, req: Request, report) -> str | None:
    """A single run's figures as write_run awaits them, once the run's metrics have landed: the tearsheet's
    worker (draw_tearsheet, shared_heatmap) is usually still drawing QuantStats' report (~2.5 CPU-s) while
    this process has nothing left to do but wait, so this process draws the heatmap meanwhile (~0.7 CPU-s
    with matplotlib's import) and the worker skips it; when the report is already done (a slow store: the
    worker had time for both), or the worker got to it first, it stays the worker's. -> the report's note."""
    if not report.done() and claim_heatmap(job):
        draw_monthly_heatmap(job.column, req, job.folder)
        phase(req, f"{job.run_name}: monthly returns heatmap (while the tearsheet is drawn)")
    return awaited(report)


def figures_drawn(req: Request) -> str:
    """What a sweep's progress line says once a column's figures are drawn."""
    return "tearsheet drawn" if req.tearsheet else "heatmap drawn"


def progress(job: Job, text: str) -> None:
    """A sweep's progress line on stderr: [3/10] column: text."""
    if job.of > 1:
        print(f"[{job.position + 1}/{job.of}] {job.run_name}: {text}", file=sys.stderr)


def each_column(work, jobs: list[Job], req: Request, done: str) -> list:
    """work(job, req) for each of these columns of a sweep, in order, with a progress line each
    (work: prepare_column or draw_tearsheet; done: what the line says of it)."""
    results = []
    for job in jobs:
        stop_point()
        started = time.monotonic()
        results.append(work(job, req))
        progress(job, f"{done} in {time.monotonic() - started:.1f}s")
    return results


# ---- worker processes: the same functions, in a pool where that is safe and pays off ------------------------
def worker_processes(req: Request, plan: Plan) -> int:
    """How many worker processes to start (0: every call runs in this process).

    A single run: its figures in one worker while this process prepares, imports mlflow and writes. A sweep:
    one worker per further core, each with a share of the columns, this process with a share of its own
    (bench/RESULTS.md). Workers are forked: they inherit the loaded modules and
    start in milliseconds. Fork is safe only on Linux (on macOS a process that loaded system frameworks,
    as numpy does, can crash or hang in a forked child: Python defaults to spawn there); a host that imported
    mlflow before calling main() must not hand its MLflow state to children; a dry run writes nothing for
    the work to overlap with; one core has nothing to overlap on."""
    cores = os.cpu_count() or 1
    if req.dry_run or cores < 2 or sys.platform != "linux" or "mlflow" in sys.modules:
        return 0
    return plan.kind.workers(req, plan.jobs, cores)


class Deferred:
    """The Future interface for a call made in this process when its result is first asked for: work that
    nobody waits for (a duplicate's tearsheet) is never done."""

    def __init__(self, fn, args: tuple):
        self.fn, self.args, self.done = fn, args, False

    def result(self):
        if not self.done:
            self.value, self.done = self.fn(*self.args), True
        return self.value


class InlineExecutor:
    """The executor interface without processes: every submitted call runs here, deferred."""

    processes = 0

    def submit(self, fn, *args) -> Deferred:
        return Deferred(fn, args)

    def stop(self) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class WorkerPool:
    """concurrent.futures.ProcessPoolExecutor with forked workers that die with this process; a task's
    failure comes back as CliError with our exit code and message."""

    def __init__(self, processes: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.processes = processes
        self.executor = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("fork"), initializer=worker_started,
            initargs=(os.getpid(),),
        )  # fmt: skip

    def submit(self, fn, *args):
        return self.executor.submit(in_worker, fn, *args)

    def __enter__(self):
        return self

    def stop(self) -> None:
        """End the workers now. Every result we need has been awaited when we get here; a task still running
        is one nobody waits for (a duplicate's tearsheet) or one a failure or a signal made moot.
        ProcessPoolExecutor cannot cancel a running task (Python 3.14 adds terminate_workers()) and its
        shutdown() would wait for it: the processes are ours, end them."""
        for process in list((getattr(self.executor, "_processes", None) or {}).values()):
            process.kill()
            process.join()  # gone, not writing, once this returns

    def __exit__(self, *exc) -> None:
        self.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)


def worker_pool(processes: int) -> WorkerPool | InlineExecutor:
    return WorkerPool(processes) if processes else InlineExecutor()


def worker_started(parent: int) -> None:
    """A worker's first act: die with its parent, even one killed by SIGKILL that can clean nothing up."""
    import ctypes
    import gc
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (linux/prctl.h): workers fork on Linux only
    # What the worker inherited is alive in the parent anyway: frozen, the worker's collections sweep only its
    # own objects and never write to the inherited pages (CPython's gc.freeze advice for forked workers).
    gc.freeze()
    # A signal to the whole group (Ctrl-C at a terminal) reaches the workers too: each stops at its next
    # stop_point, marks the child it writes FAILED and hands Stopped back to the parent (no traceback).
    SIGNALS.received, SIGNALS.armed = None, True
    handle_signals(stop_signals())
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def in_worker(fn, *args):
    """fn(*args) in a worker. A failure is returned as CliError (exit code and one-line message): MLflow's
    exceptions lose their error code when pickled. With --debug the worker's traceback comes along."""
    try:
        return fn(*args)
    except CliError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified here, reported by run_cli in the parent
        code, message = classify_error(exc)
        raise CliError(code, message) from exc
    finally:
        sys.stderr.flush()


def import_mlflow() -> None:
    """Run in a sweep's worker once its columns are prepared: its writes start without the import."""
    import mlflow  # noqa: F401


# ---- MLflow I/O ------------------------------------------------------------------------------------------
def dataset_entity(job: Job, prep: Prepared, req: Request):
    """The returns as an MLflow dataset: schema from the head (MLflow infers it row by row: seconds at 1M
    bars), digest of the return series (series_digest), row count of the whole series."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import Dataset

    column = job.column
    head = pd.DataFrame({"returns": column.returns.iloc[:100].to_numpy()})
    if column.has_timestamps:
        head.insert(0, timestamp_name(column), column.returns.index[:100])
    if column.benchmark is not None:
        head["benchmark"] = column.benchmark.iloc[:100].to_numpy()
    name = req.returns_path.stem
    if prep.params.get("column"):
        name = f"{name}[{column.name}]"
    small = mlflow.data.from_pandas(
        head, source=str(req.returns_path.resolve()), name=name, digest=series_digest(column)
    )
    entity = small._to_mlflow_entity()
    profile = json.dumps(
        {"num_rows": len(column.returns), "num_elements": len(column.returns) * len(head.columns)}
    )
    return Dataset(entity.name, entity.digest, entity.source_type, entity.source, entity.schema, profile)


def open_store(req: Request):
    """An MlflowClient on the request's store (this is where mlflow is imported); None for a dry run."""
    if req.dry_run:
        return None
    client = connect(req.tracking_uri, req.debug)
    phase(req, "mlflow imported")
    return client


def ensure_experiment(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment = client.get_experiment(client.create_experiment(name))
        except MlflowException as exc:  # created by someone else between our lookup and our create
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise CliError(
            EXIT_NOT_FOUND,
            f"experiment {name!r} is deleted: restore it (create_experiment.py --name {name!r} --restore) or "
            "choose another --experiment",
        )
    check_s3_credentials(experiment.artifact_location)
    return experiment.experiment_id


def check_s3_credentials(artifact_location: str | None) -> None:
    """A server without --serve-artifacts hands out its artifact root (s3://...): this process uploads the
    artifacts itself. Without AWS credentials that upload would fail after the run exists: refuse first."""
    if not (artifact_location or "").lower().startswith("s3://"):
        return
    import boto3

    if boto3.Session().get_credentials() is None:
        raise CliError(
            EXIT_AUTH,
            f"this experiment's artifacts go straight to S3 ({mask_uri(artifact_location)}) and no AWS "
            "credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and "
            "MLFLOW_S3_ENDPOINT_URL for an S3-compatible store",
        )


def find_duplicate(client, experiment_id: str, fp: str):
    """The first FINISHED run with this fingerprint: earliest end time, ties by run id, so every process that
    looks picks the same one."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fp}' and attributes.status = 'FINISHED'",
        max_results=100,
        order_by=["attributes.end_time ASC"],
    )
    return min(runs, key=lambda run: (run.info.end_time or 0, run.info.run_id), default=None)


def write_once(client, experiment_id: str, fp: str, req: Request, write, run_ids):
    """write() unless a run with this fingerprint is FINISHED, also when other processes log the same
    backtest at the same moment. -> (the earlier identical run, None) or (None, what write() returned).

    A local store: the check and the write happen under a lock on the fingerprint, so the second process
    waits and then finds the first's run. A server (or database) is not locked from here: after writing,
    the runs with this fingerprint are looked up again and every writer keeps the same one, the first
    FINISHED; a later writer deletes what it wrote (run_ids(written): its runs, the fingerprinted one
    first), or marks it KILLED and tagged backtest.duplicate_of where it may not delete, and reports the
    first. (--force: no check, a new run.)"""
    if req.force:
        return None, write()
    with fingerprint_lock(req.tracking_uri, fp):
        existing = find_duplicate(client, experiment_id, fp)
        if existing is not None:
            return existing, None
        written = write()
    first = find_duplicate(client, experiment_id, fp)
    ours = run_ids(written)
    if first is None or first.info.run_id == ours[0]:
        return None, written
    from mlflow.exceptions import MlflowException

    for run_id in ours:
        try:
            client.delete_run(run_id)
        except MlflowException:  # deleting needs MANAGE on a server, writing EDIT: mark it instead
            client.set_tag(run_id, DUPLICATE_TAG, first.info.run_id)
            client.set_terminated(run_id, "KILLED")  # never FINISHED: no check finds it
    return first, None


def fingerprint_lock(tracking_uri: str, fp: str):
    """An exclusive lock on this fingerprint in a local sqlite store, held until the context exits (a
    no-op for other stores). One byte of the store's fingerprints lock file (store_lock_path) per fingerprint: a POSIX record lock, which
    the kernel releases when the process dies, kill -9 included. It must not be connect()'s lock file: a
    sweep's worker takes that one to open the store while this process holds this one."""
    import contextlib

    try:
        import fcntl
    except ImportError:  # not POSIX: MLflow's behaviour (the re-check after writing still applies)
        fcntl = None
    if fcntl is None or not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def locked():
        db = Path(tracking_uri[len("sqlite:///") :].split("?")[0])
        with open(store_lock_path(db, "fingerprints"), "a") as handle:
            offset = int(fp[:15], 16)
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except OSError:
                print("waiting for another process logging the same backtest to this store", file=sys.stderr)
                fcntl.lockf(handle, fcntl.LOCK_EX, 1, offset)
            yield

    return locked()


# MLflow's SQL store logs a dataset in two steps: it looks the dataset up by (experiment, name, digest) and
# inserts it when missing. Two processes logging the same dataset at once both insert it, and one fails with
# "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets..." (PostgreSQL: UniqueViolation, MySQL:
# "Duplicate entry"): an MlflowException in a local store, a 400 from a server. Retried, the lookup finds
# the other's row and links the run to it.
DUPLICATE_ROW = re.compile(r"IntegrityError|UniqueViolation|UNIQUE constraint failed|Duplicate entry")


def log_dataset(client, run_id: str, dataset_input, attempts: int = 5) -> None:
    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts + 1):
        try:
            return client.log_inputs(run_id, datasets=[dataset_input])
        except MlflowException as exc:
            if attempt == attempts or not DUPLICATE_ROW.search(str(exc)):
                raise
            time.sleep(0.05 * attempt)


BATCH_ENTRIES = 1000  # MLflow's limit on the metrics, params and tags of one log_batch request


@dataclass(frozen=True)
class Outcome:
    """What the write stage did for one column."""

    run_id: str | None  # None in a dry run (or a duplicate sweep's child that is gone)
    run_name: str
    deduplicated: bool = False
    artifacts: list[str] = field(default_factory=list)  # as logged (prepared, in a dry run)
    warnings: list[str] = field(default_factory=list)
    stored: Stored | None = None  # a deduplicated run's values as the store holds them


HISTORY_METRICS = ("equity", "drawdown", "year_return")  # logged as histories, not in the metric table


@dataclass(frozen=True)
class Stored:
    """A run found already logged, as the store holds it: a deduplicated output shows these values, never the
    ones this process computed (the same inputs, but maybe another version of the skill or its libraries)."""

    metrics: dict[str, float]
    undefined: list[str]
    tags: dict[str, str]

    @classmethod
    def of(cls, run) -> Stored:
        metrics = {k: v for k, v in run.data.metrics.items() if k not in HISTORY_METRICS}
        undefined = [name for name in run.data.tags.get(UNDEFINED_TAG, "").split(",") if name]
        return cls(metrics, undefined, dict(run.data.tags))

    def ordered(self, like: dict[str, float]) -> dict[str, float]:
        """The stored metrics in the order of `like` (the computed ones), then any others."""
        return {**{k: self.metrics[k] for k in like if k in self.metrics}, **self.metrics}


def write_run(
    client, experiment_id: str, job: Job, prep: Prepared, req: Request, parent_id: str | None = None,
    tearsheet=None,
) -> Outcome:  # fmt: skip
    """Create the run and write everything; FINISHED only when all of it landed, else FAILED and re-raise.
    `tearsheet`, a future of draw_tearsheet for this job, is awaited after the metrics land and before the
    artifacts are logged (a worker draws it meanwhile); if it fails, the run is FAILED and deleted."""
    import contextlib

    from mlflow.entities import DatasetInput, InputTag

    tags = dict(prep.tags)
    if parent_id:
        tags[PARENT_TAG] = parent_id
    stop_point()
    run = client.create_run(experiment_id, run_name=prep.run_name, tags=tags)
    run_id = run.info.run_id
    discard, warnings = False, []
    try:
        log_entries(client, run_id, prep.metrics, prep.params, prep.histories)
        stop_point()
        log_dataset(
            client,
            run_id,
            DatasetInput(dataset_entity(job, prep, req), [InputTag("mlflow.data.context", "backtest")]),
        )
        phase(req, f"{prep.run_name}: metrics, params, histories, dataset logged")
        stop_point()
        if tearsheet is not None:
            discard = True  # not a backtest without its report: out of sight if it fails
            note = awaited(tearsheet)
            if note:
                warn(note, warnings)
            discard = False
        client.log_artifacts(run_id, str(prep.folder))
        stop_point()  # the last: a signal after this finds the run complete
        client.set_terminated(run_id, "FINISHED")
        phase(req, f"{prep.run_name}: artifacts logged, run FINISHED")
    except BaseException:
        mark_failed(client, run_id)
        if discard:
            with contextlib.suppress(Exception):
                client.delete_run(run_id)
        raise
    artifacts = artifact_names(prep.folder)  # metrics.json, returns.*, tearsheet.html, code/...
    return Outcome(run_id, prep.run_name, artifacts=artifacts, warnings=warnings)


def log_entries(
    client, run_id: str, metrics: dict[str, float], params: dict[str, str], histories: Histories | None,
    tags: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """A run's metrics, params, tags and histories in the largest batches a store accepts (BATCH_ENTRIES,
    params and tags in the first), as MlflowClient would split one call; every batch is a transaction in a
    SQL store and a request to a server. Split here, a signal stops the writes after the batch it came in,
    not after thousands of history points."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
    if histories is not None:
        h = histories
        entries += [
            Metric(key, value, ts, step)
            for key, series in (("equity", h.equity), ("drawdown", h.drawdown))
            for step, ts, value in zip(h.steps.tolist(), h.timestamps.tolist(), series.tolist(), strict=True)
        ] + [Metric("year_return", value, ts, year) for year, ts, value in h.year_return]
    head = [Param(k, v) for k, v in params.items()]
    labels = [RunTag(k, v) for k, v in (tags or {}).items()]
    first = max(BATCH_ENTRIES - len(head) - len(labels), 0)
    batches = [entries[:first]] + [
        entries[i : i + BATCH_ENTRIES] for i in range(first, len(entries), BATCH_ENTRIES)
    ]
    for number, batch in enumerate(batches):
        stop_point()
        client.log_batch(
            run_id, metrics=batch, params=head if number == 0 else [], tags=labels if number == 0 else []
        )


def write_children(
    jobs: list[Job], preps: list[Prepared], req: Request, experiment_id: str, parent_id: str, client=None
) -> list[Outcome]:
    """Write these children of a sweep (a worker opens its own client); one Outcome each, in order."""
    client = client or connect(req.tracking_uri, req.debug)
    outcomes = []
    for job, prep in zip(jobs, preps, strict=True):
        started = time.monotonic()
        outcomes.append(write_run(client, experiment_id, job, prep, req, parent_id=parent_id))
        progress(job, f"logged run {outcomes[-1].run_id} ({time.monotonic() - started:.1f}s)")
    return outcomes


def fail_unfinished_children(client, experiment_id: str, parent_id: str) -> None:
    """Mark FAILED every child of this parent still RUNNING (its writer stopped or was ended)."""
    import contextlib

    with contextlib.suppress(Exception):
        for run in client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'",
            max_results=1000,  # at most one per writing process is RUNNING at a time
        ):
            mark_failed(client, run.info.run_id)


def mark_failed(client, run_id: str) -> None:
    import contextlib

    # If the store is what failed, the run stays RUNNING: unfinished, never FINISHED.
    with contextlib.suppress(Exception):
        client.set_terminated(run_id, "FAILED")


# ---- output ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """What main() prints: the output object, and the warnings given after loading (load's come first)."""

    output: dict
    warnings: list[str]


def where_logged(outcome: Outcome, experiment_id, req: Request) -> dict:
    """The head of every output object: which run, where it is (masked URI, UI link), deduplicated or not."""
    uri = None if req.dry_run else req.tracking_uri
    return {
        "run_id": outcome.run_id,
        "run_name": outcome.run_name,
        "experiment_id": experiment_id,
        "experiment": req.experiment,
        "tracking_uri": mask_uri(uri) if uri else None,
        "url": ui_url(uri, experiment_id, outcome.run_id) if uri and outcome.run_id else None,
        "deduplicated": outcome.deduplicated,
        "dry_run": req.dry_run,
    }


def column_output(prep: Prepared, outcome: Outcome, req: Request, experiment_id, key_only: bool) -> dict:
    """The output object of one column's run (a sweep lists one per child, key metrics only)."""
    metrics = outcome.stored.ordered(prep.metrics) if outcome.stored else prep.metrics
    undefined = outcome.stored.undefined if outcome.stored else prep.undefined
    if key_only:  # with --oos-start also each side's values (is_<name>, oos_<name>)
        shown = (
            KEY_METRICS
            + ("alpha", "beta")
            + tuple(f"{side}{k}" for side in ("is_", "oos_") for k in SPLIT_METRICS)
        )
        metrics = {k: metrics[k] for k in shown if k in metrics}
    out = {
        **where_logged(outcome, experiment_id, req),
        "column": prep.column,
        "periods_per_year": prep.periods,
        "frequency": prep.frequency,
        "n_bars": prep.n_bars,
        "start": prep.summary["start"],
        "end": prep.summary["end"],
        "metrics": metrics,
        "undefined_metrics": undefined,
        "artifacts": outcome.artifacts,
        "fingerprint": prep.fingerprint,
        "benchmark": prep.benchmark,
        "periods": periods_output(prep.summary.get("periods"), key_only),
    }
    if not key_only:  # a sweep says it once, for all its runs
        out["git"] = git_summary(req.tags)
    return out


def table_rows(data: dict) -> list[dict] | dict:
    """What a person at a terminal sees: key metrics, one row per run."""
    if "folds" in data:  # a walk-forward: one row per fold
        return [
            {"fold": f["fold"], "run_id": f["run_id"] or "(dry run)", "test": f"{f['test_start']} - {f['test_end']}",
             "chosen": f["chosen_column"], "is_sharpe": fmt_value("sharpe", f["is_sharpe"]),
             **{name: fmt_value(name, f["metrics"].get(f"oos_{name}")) for name in ("sharpe", "total_return", "max_drawdown")},
             "oos_rank": f["oos_rank"]}
            for f in data["folds"]
        ]  # fmt: skip
    runs = data.get("runs") or [data]
    rows = []
    for run in runs:
        row = {"run_name": run["run_name"], "run_id": run["run_id"] or "(dry run)", "bars": run["n_bars"]}
        for name in KEY_METRICS:
            row[name] = fmt_value(name, run["metrics"].get(name))
        if run["deduplicated"]:
            row["note"] = "already logged"
        rows.append(row)
    return rows


# ---- the command line -------------------------------------------------------------------------------------
def build_parser() -> CliParser:
    parser = CliParser(
        prog="log_backtest.py",
        description="Log a backtest's returns to MLflow: every QuantStats metric, equity/drawdown curves, "
        "dataset, tearsheet and description in one run; several columns make a sweep; --walk-forward folds.",
        epilog=f"{EXIT_CODES_HELP}\n  129  hung up (SIGHUP: a closed terminal or ssh session)\n  143  terminated (SIGTERM)\n"
        "  at 129, 130 or 143 the run being written is FAILED (a sweep's unfinished children too); a signal once "
        "the run is FINISHED: exit 0 and its output",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--returns", metavar="PATH", help="CSV or Parquet of returns (or prices); required")
    data.add_argument("--column", metavar="NAME", help="log only this column (default: every numeric column)")
    data.add_argument("--prices", action="store_true", help="values are prices/equity: convert to returns")
    data.add_argument("--percent", action="store_true", help="values are percent returns: divide by 100")
    data.add_argument("--decimal", action="store_true",
                      help="values are decimal returns (0.01 = 1 %%), however volatile: skip the units check")  # fmt: skip
    data.add_argument("--date-format", metavar="FMT",
                      help="dayfirst, monthfirst or a strftime format (%%d/%%m/%%Y) for ambiguous dates")  # fmt: skip
    data.add_argument(
        "--sep", metavar="CHAR", help="CSV separator (default: comma; ; or tab when the header has no comma)"
    )
    data.add_argument("--benchmark", metavar="PATH", help="benchmark returns, aligned on common timestamps")
    data.add_argument("--benchmark-column", metavar="NAME", help="benchmark column when the file has several")
    data.add_argument("--resample-to-benchmark", action="store_true",
                      help="compound a finer-grained strategy (e.g. hourly) into the benchmark's bars (e.g. "
                      "daily); without it, bars of different sizes are an error")  # fmt: skip
    where = parser.add_argument_group("where and what to record")
    where.add_argument(
        "--experiment", metavar="NAME", help=f"default: MLFLOW_EXPERIMENT_NAME, else {DEFAULT_EXPERIMENT!r}"
    )
    where.add_argument(
        "--run-name", metavar="NAME", help="default: the file name (sweep children: the column)"
    )
    where.add_argument(
        "--params", metavar="JSON", help="strategy params as JSON; nested keys joined with dots"
    )
    where.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    where.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    where.add_argument("--description", metavar="TEXT", help="markdown shown first on the run page")
    where.add_argument("--code", nargs="+", metavar="FILE",
                       help="strategy source files to attach (artifacts under code/)")  # fmt: skip
    where.add_argument("--code-max-mb", type=float, default=DEFAULT_CODE_MAX_MB, metavar="MB",
                       help=f"largest --code file accepted (default: {DEFAULT_CODE_MAX_MB} MB)")  # fmt: skip
    where.add_argument("--code-dir", metavar="DIR",
                       help="the strategy's git repository (default: the current folder): commit, branch, "
                       "remote and uncommitted changes become tags")  # fmt: skip
    calc = parser.add_argument_group("calculation")
    calc.add_argument("--rf", "--risk-free-rate", type=float, default=0.0, metavar="RATE",
                      help="annual risk-free rate, decimal (0.04 = 4 %%); default 0")  # fmt: skip
    calc.add_argument("--periods-per-year", type=float, metavar="N", help="default: detected from timestamps")
    calc.add_argument("--simple", action="store_true", help="returns are not compounded")
    calc.add_argument("--period", action="append", default=[], metavar="NAME=START:END",
                      help="a stress window of your own, dates inclusive (repeatable): periods/stress.csv and "
                      "metric stress_NAME_return, next to the built-in ones (references/periods.md)")  # fmt: skip
    search = parser.add_argument_group("selection bias and out-of-sample (references/overfitting.md)")
    search.add_argument("--oos-start", metavar="DATE|FRACTION",
                        help="split each series: bars from DATE on (e.g. 2021-01-01), or after the first FRACTION "
                        "of the bars (e.g. 0.7), are out-of-sample; logs is_<m> and oos_<m> for "
                        + ", ".join(SPLIT_METRICS) + "; a sweep chooses its best in-sample")  # fmt: skip
    search.add_argument("--best-by", default="sharpe", metavar="METRIC",
                        help="a sweep's best child by this metric, in its direction (default sharpe)")  # fmt: skip
    search.add_argument("--pbo-splits", type=int, default=DEFAULT_PBO_SPLITS, metavar="S",
                        help=f"a sweep's PBO: S equal blocks of bars, every half/half combination "
                        f"(default {DEFAULT_PBO_SPLITS}: 12,870 combinations)")  # fmt: skip
    walk = parser.add_argument_group("walk-forward (references/walk-forward.md)")
    walk.add_argument("--walk-forward", action="store_true",
                      help="folds: choose the best column (--best-by) on each training window, trade it on the "
                      "next test window, roll on; one child run per fold, the stitched test windows on the parent")  # fmt: skip
    walk.add_argument(
        "--train", metavar="DURATION", help="training window: Ny, Nm, Nw, Nd (calendar) or N (bars)"
    )
    walk.add_argument("--test", metavar="DURATION", help="test window, same units")
    walk.add_argument(
        "--step", metavar="DURATION", help="roll forward by this much (default: --test; >= --test)"
    )
    walk.add_argument("--embargo", metavar="DURATION",
                      help="gap between a training and its test window, in neither (default 0)")  # fmt: skip
    walk.add_argument("--anchored", action="store_true", help="every training window starts at the first bar")
    execution = parser.add_argument_group("execution and output")
    execution.add_argument(
        "--no-tearsheet",
        action="store_true",
        help="skip QuantStats' HTML tearsheet (faster; periods/monthly_returns.png is drawn anyway)",
    )
    execution.add_argument("--dry-run", action="store_true", help="compute and print; touch no store")
    execution.add_argument("--force", action="store_true", help="log even if an identical backtest is logged")
    execution.add_argument("--max-history-points", type=int, default=DEFAULT_MAX_HISTORY_POINTS, metavar="N",
                           help=f"equity/drawdown points per run ({DEFAULT_MAX_HISTORY_POINTS})")  # fmt: skip
    execution.add_argument(
        "--format", choices=["json", "table", "csv"], help="default: table at a terminal, else json"
    )
    execution.add_argument("--tracking-uri", metavar="URI", help="overrides MLFLOW_TRACKING_URI")
    execution.add_argument(
        "--debug", action="store_true", help="tracebacks, phase timings and library logging on stderr"
    )
    return parser


# ---- signals: noted by the handler, acted on at the next safe point; the temporary folder: every exit ------
# SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal, a dropped ssh session): exit 128 + the signal's
# number, what a shell reports for a process the signal ended, and only with the run FAILED.
SIGNAL_MESSAGES = {2: "interrupted", 15: "terminated", 1: "hung up"}  # POSIX numbers


class Stopped(KeyboardInterrupt):
    """A signal acted on at a safe point (stop_point): like Ctrl-C it passes every `except Exception`, so the
    run being written is marked FAILED, the workers end and the temporary folder is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class Signals:
    """This process's signals: the first one received, and whether it may still stop the work (not once the
    store holds the final state: a run FINISHED, or the identical run found)."""

    received: int | None = None
    armed: bool = True


SIGNALS = Signals()


def note_signal(signum, frame) -> None:
    """The handler: notes the signal and nothing more. Raising here would land wherever the main thread is:
    inside an SQLAlchemy fetch it leaves that SQLite statement open, so the FAILED write that follows on the
    same pooled connection already holds a read lock and SQLite answers "database is locked" at once (no
    busy wait) while a worker writes; inside a garbage-collection callback it is swallowed and the process
    exits 0."""
    if SIGNALS.received is None:
        SIGNALS.received = signum


def stop_point() -> None:
    """Where the work may stop: between steps that leave the store consistent."""
    if SIGNALS.received is not None and SIGNALS.armed:
        raise Stopped(SIGNALS.received)


def final_state_written() -> None:
    """The store holds the result: a later signal lets the process finish and print it (exit 0)."""
    SIGNALS.armed = False


def awaited(future):
    """future.result(), stopping at a signal while it waits (a Deferred runs its work here)."""
    from concurrent.futures import wait

    if not isinstance(future, Deferred):
        while wait([future], timeout=0.2).not_done:
            stop_point()
    return future.result()


def handle_signals(signals: list[int]) -> None:
    import signal

    for signum in signals:
        signal.signal(signum, note_signal)


def stopping_at_signals(action, ours: bool):
    """action() with SIGINT, SIGTERM and SIGHUP noted (note_signal) and acted on at the next stop_point:
    the run is FAILED, the exit 128 + the signal's number with "error: interrupted|terminated|hung up".
    A signal once the result is stored changes nothing (exit 0 and the output). Afterwards the signals are
    ignored in a process that is `ours` (the command line: a signal while it exits would end it by default,
    with the run FINISHED; and uv forwards Ctrl-C to the script ~0.2 s after the terminal sent it to the
    whole group, so the script gets it twice); a host calling main() gets its own handlers back. Forked
    workers install their own (worker_started)."""
    import contextlib
    import signal
    import threading

    def run() -> int:
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            return action()
        previous = {signum: signal.getsignal(signum) for signum in stop_signals()}
        SIGNALS.received, SIGNALS.armed = None, True
        handle_signals(list(previous))
        try:
            code = action()
        except Stopped as exc:
            raise CliError(128 + exc.signum, SIGNAL_MESSAGES[exc.signum]) from None
        except Exception:
            # A failure after a signal is the signal's doing (a hung-up terminal fails every write to it)
            if SIGNALS.received is not None and SIGNALS.armed:
                raise CliError(128 + SIGNALS.received, SIGNAL_MESSAGES[SIGNALS.received]) from None
            raise
        finally:
            # SIG_IGN, not note_signal: Python resets the handlers it set to the default as it exits.
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_IGN if ours else handler)
        if SIGNALS.received is not None:
            name = signal.Signals(SIGNALS.received).name
            with contextlib.suppress(OSError):  # a hung-up terminal takes no more lines
                warn(f"{name} arrived once the result was stored: it is complete, nothing was undone")
        return code

    return run


def stop_signals() -> list[int]:
    import signal

    return [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


TEMP_PREFIX = "log_backtest-"


def work_folder():
    """A folder for this run's files (metrics.json, returns, tearsheets) under the system temp folder,
    removed when this process exits any way it can see: success, error, Ctrl-C, SIGTERM. kill -9 leaves it
    behind, so each folder holds a lock (.lock, flock) for as long as its processes (workers included) live,
    and every run first removes the folders whose lock is free (remove_stale_folders)."""
    import contextlib
    import tempfile

    try:
        import fcntl
    except ImportError:  # not POSIX: removed on the exits this process sees, nothing more
        fcntl = None

    @contextlib.contextmanager
    def folder():
        if fcntl is not None:
            remove_stale_folders()
        with (
            tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp,
            open(Path(tmp) / ".lock.new", "w") as lock,
        ):
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
                # named .lock only once it is held: a run cleaning up never finds this folder's lock free
                os.rename(Path(tmp) / ".lock.new", Path(tmp) / ".lock")
            yield Path(tmp)

    return folder()


def remove_stale_folders() -> None:
    """Remove the temporary folders of log_backtest processes that are gone (killed with -9): those whose
    .lock nobody holds. Folders of live processes, of other users, and being set up are left alone."""
    import fcntl
    import shutil
    import tempfile

    for folder in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):
        try:
            with open(folder / ".lock") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its owner lives
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


# ---- a single run: one column, no parent ----------------------------------------------------------------------
@dataclass(frozen=True)
class SingleRun(Family):
    """One column, one run: its figures (tearsheet, heatmap) drawn in one worker while this process prepares
    the metrics, imports mlflow and writes; write_run awaits the figures after the metrics land (with a
    tearsheet, this process draws the heatmap then if the worker is still busy: heatmap_while_waiting). (A second
    worker for the metrics made three busy processes on two cores, and at 1 M bars a third copy of the
    data's pages: bench/RESULTS.md.)"""

    drawing: object  # a future of the figures (draw_tearsheet; heatmap_while_waiting), None in a dry run

    has_parent: ClassVar[bool] = False

    @classmethod
    def workers(cls, req: Request, jobs: list[Job], cores: int) -> int:
        return 1

    @classmethod
    def start(cls, plan: Plan, req: Request, pool, tmp: Path) -> Callable[[], Family]:
        jobs = plan.jobs
        [job] = jobs
        if req.dry_run:
            drawing = None
        elif (
            req.tearsheet and pool.processes
        ):  # the heatmap to whichever is free first (heatmap_while_waiting)
            drawing = Deferred(heatmap_while_waiting, (job, req, pool.submit(draw_tearsheet, job, req, True)))
        else:
            drawing = pool.submit(draw_tearsheet, job, req)  # the heatmap, at least
        prep = prepare_column(job, req)

        def finish() -> SingleRun:
            return cls([jobs], [prep], prep.fingerprint, prep.run_name, prep.warnings, drawing)

        return finish

    def tearsheet(self):
        return self.drawing

    def output(self, parent: Outcome | None, children: list[Outcome], experiment_id, req: Request) -> dict:
        return column_output(self.preps[0], children[0], req, experiment_id, key_only=False)


# ---- a sweep: a parent run with one complete child run per column ---------------------------------------------
@dataclass(frozen=True)
class Sweep(Family):
    """A sweep's columns prepared: each worker prepares its share of the columns and draws their tearsheets
    while this process prepares its own share and imports mlflow; once all are prepared and no duplicate
    exists, each process writes its own children (MLflow's store spends CPU turning history points into
    rows: split writes are faster, bench/RESULTS.md). The parent summarises the search."""

    best: Prepared
    search: SearchSummary  # n_trials, best_by, expected maximum Sharpe, DSR, PBO, out-of-sample rank
    search_files: object  # a future of write_overfitting_artifacts (cscv.csv, overfitting.json and .png)
    drawn: list  # futures of the figures' notes, one per share the pool draws

    noun: ClassVar[str] = "sweep"

    @classmethod
    def start(cls, plan: Plan, req: Request, pool, tmp: Path) -> Callable[[], Family]:
        jobs = plan.jobs
        shares = share_out(jobs, pool.processes)
        prepared = [pool.submit(each_column, prepare_column, share, req, "prepared") for share in shares[1:]]
        # the workers draw their shares' figures; without tearsheets (only heatmaps) this process's share too
        drawing = shares[1:] if req.tearsheet else shares
        drawn = [
            pool.submit(each_column, draw_tearsheet, share, req, figures_drawn(req)) for share in drawing
        ]
        if not req.dry_run:
            for _ in shares[1:]:
                pool.submit(import_mlflow)  # before the writes reach the worker
        overfitting, search_files = search_statistics(jobs, req, pool, tmp / "parent")
        own = each_column(prepare_column, shares[0], req, "prepared")

        def finish() -> Sweep:
            preps = in_job_order(shares, [own] + [awaited(future) for future in prepared])
            chosen = f"best_by={req.best_by}\npbo_splits={req.pbo_splits}"  # what the parent's statistics use
            fp = hashlib.sha256("\n".join([*(p.fingerprint for p in preps), chosen]).encode()).hexdigest()
            # With --oos-start the best is chosen in-sample (is_<metric>) and judged out-of-sample.
            search = summarise_search(
                [p.metrics for p in preps], [p.periods for p in preps], [p.n_bars for p in preps],
                ("is_" if req.oos else "") + req.best_by, overfitting,
            )  # fmt: skip
            return cls(
                shares, preps, fp, req.run_name or req.returns_path.stem,
                [w for prep in preps for w in prep.warnings], preps[search.best], search, search_files, drawn,
            )  # fmt: skip

        return finish

    def draw_tearsheets(self, req: Request, warnings: list[str]) -> None:
        # Every child is a complete run, its figures included, drawn before the parent run exists: a failing
        # report leaves nothing half-written.
        own = each_column(draw_tearsheet, self.shares[0], req, figures_drawn(req)) if req.tearsheet else []
        for note in filter(None, own + [n for future in self.drawn for n in awaited(future)]):
            warn(note, warnings)

    def parent_tags(self, req: Request) -> dict[str, str]:
        return self.created_parent_tags(
            req,
            {
                SWEEP_TAG: "true",
                "backtest.best_column": self.best.column,
                "backtest.best_by": self.search.best_by,
            },
        )

    def parent_record(self, children: list[Outcome], req: Request, folder: Path) -> ParentRecord:
        """The comparison, the search statistics and the best child's tearsheet; the params all children
        share."""
        if req.tearsheet:  # the parent carries a copy of the best child's
            (folder / "tearsheet.html").write_bytes((self.best.folder / "tearsheet.html").read_bytes())
        comparison_csv(self.preps, children, folder)
        per_column = ("column", "start", "end", "n_bars", "oos_first_bar", "is_n_bars", "oos_n_bars")
        shared = {k: v for k, v in self.best.params.items() if k not in per_column}
        shared["columns"] = ",".join(p.column for p in self.preps)[:MAX_PARAM_VALUE_LENGTH]
        shared.update(best_by=self.search.best_by, pbo_splits=str(req.pbo_splits))
        metrics, undefined = search_metrics(self.preps, self.search, req.oos is not None)
        awaited(self.search_files)  # cscv.csv, overfitting.json and .png are in the folder
        tags = {
            "backtest.best_run_id": children[self.preps.index(self.best)].run_id,
            DESCRIPTION_TAG: self.description(req),
        }
        return ParentRecord(metrics, undefined, shared, tags)

    def description(self, req: Request) -> str:
        """Headline of the best child first (the UI shows two lines), then one list item per column."""
        search = self.search
        verdict = " · ".join(
            f"{label} {value:.2f}" if math.isfinite(value) else f"{label} undefined"
            for label, value in (("DSR", search.deflated_sharpe_ratio), ("PBO", search.pbo))
        )
        lines = [f"Best `{self.best.column}`: {headline(self.best.metrics)} · {verdict}", ""]
        if req.description:
            lines += [req.description.strip(), ""]
        lines += [
            f"**Sweep** of {len(self.preps)} columns of `{req.returns_path.name}`; best by "
            f"{search.best_by}: `{self.best.column}`",
            "",
            *search_markdown(search),
            "",
        ]
        for p in self.preps:
            lines.append(f"- **{p.column}**: {headline(p.metrics)}")
        lines += [
            "",
            f"Logged by {SKILL_NAME} log_backtest.py {SKILL_VERSION}; key metrics per child in `comparison.csv`.",
        ]
        return "\n".join(lines)[:MAX_TAG_VALUE_LENGTH]

    def output(self, parent: Outcome | None, children: list[Outcome], experiment_id, req: Request) -> dict:
        best = children[self.preps.index(self.best)]
        where = where_logged(parent, experiment_id, req)
        search = search_output(self.search)
        best_run_id, best_column = best.run_id, self.best.column
        if parent.stored:  # found already logged: the statistics and the best its parent holds
            search = stored_search(search, parent.stored)
            best_run_id = parent.stored.tags.get("backtest.best_run_id", best_run_id)
            best_column = parent.stored.tags.get("backtest.best_column", best_column)
        return {
            "parent_run_id": where.pop("run_id"),
            "parent_run_name": where.pop("run_name"),
            **where,
            "best_run_id": best_run_id,
            "best_column": best_column,
            **search,  # best_by: the metric that chose best_run_id
            "git": git_summary(req.tags),
            "fingerprint": self.fingerprint,
            "artifacts": parent.artifacts,
            "runs": [
                column_output(p, child, req, experiment_id, key_only=True)
                for p, child in zip(self.preps, children, strict=True)
            ],
        }


# ---- a walk-forward: a parent run (the stitched out-of-sample series) with one child per fold -------------------
WALK_FORWARD_TAG = "backtest.walk_forward"
FOLD_SUMMARY = ("sharpe", "cagr", "total_return", "max_drawdown", "volatility")  # per fold in folds.csv


@dataclass(frozen=True)
class WalkForward(Family):
    """The folds prepared like a sweep's columns (each process its share; no tearsheet per fold) while the
    stitched series is prepared, its tearsheet and walk_forward.png drawn by the pool. The parent IS the
    strategy traded out of sample: its metrics (oos_<name>), equity and drawdown are the stitched series'."""

    plan: WalkForwardPlan
    stitched: Prepared  # the stitched out-of-sample series, prepared into the parent's folder
    summary: dict[str, float]  # is_sharpe, wf_efficiency, n_folds, positive_fold_share, pick_stability
    drawing: object  # a future of the stitched series' figures: tearsheet, heatmap (None in a dry run)
    figure: object  # a future of walk_forward.png (None in a dry run)

    noun: ClassVar[str] = "walk-forward"

    @classmethod
    def start(cls, plan: Plan, req: Request, pool, tmp: Path) -> Callable[[], Family]:
        wf = plan.walk_forward
        shares = share_out(plan.jobs, pool.processes, "walk-forward")
        prepared = [pool.submit(each_column, prepare_column, share, req, "prepared") for share in shares[1:]]
        if not req.dry_run:
            for _ in shares[1:]:
                pool.submit(import_mlflow)
        name = req.run_name or req.returns_path.stem
        parent_job = Job(-1, 1, wf.stitched, name, tmp / "parent", prefix="oos_", periods=wf.periods)
        stitching = pool.submit(prepare_column, parent_job, req)
        drawing = None if req.dry_run else pool.submit(draw_tearsheet, parent_job, req)  # heatmap at least
        figure = None if req.dry_run else pool.submit(draw_walk_forward_png, wf, req, tmp / "parent")
        own = each_column(prepare_column, shares[0], req, "prepared")

        def finish() -> WalkForward:
            preps = in_job_order(shares, [own] + [awaited(future) for future in prepared])
            stitched = awaited(stitching)
            digest = hashlib.sha256(b"walk-forward/1\0")
            digest.update(json.dumps({**wf.spec.settings(), "best_by": req.best_by}, sort_keys=True).encode())
            digest.update("\n".join([stitched.fingerprint] + [p.fingerprint for p in preps]).encode())
            return cls(
                shares, preps, digest.hexdigest(), name, stitched.warnings + fold_warnings(preps),
                wf, stitched, walk_forward_summary(wf, preps, stitched, req), drawing, figure,
            )  # fmt: skip

        return finish

    def draw_tearsheets(self, req: Request, warnings: list[str]) -> None:
        if self.drawing is not None:
            note = awaited(self.drawing)  # before the parent exists: a failing report leaves nothing
            if note:
                warn(note, warnings)

    def parent_tags(self, req: Request) -> dict[str, str]:
        return self.created_parent_tags(req, {WALK_FORWARD_TAG: "true", "backtest.best_by": req.best_by})

    def parent_record(self, children: list[Outcome], req: Request, folder: Path) -> ParentRecord:
        """The stitched series' metrics, params and histories, the walk-forward's summary, folds.csv."""
        folds_csv(self.plan, self.preps, children, req, folder)
        if self.figure is not None:
            awaited(self.figure)
        metrics, undefined = split_defined(self.summary)
        params = {k: v for k, v in self.stitched.params.items() if k != "column"}
        params.update(
            self.plan.spec.settings(), best_by=req.best_by, oos_n_bars=str(self.stitched.n_bars),
            columns=",".join(self.plan.columns)[:MAX_PARAM_VALUE_LENGTH],
        )  # fmt: skip
        return ParentRecord(
            {**self.stitched.metrics, **metrics}, self.stitched.undefined + undefined, params,
            {DESCRIPTION_TAG: self.description(req)}, self.stitched.histories,
        )  # fmt: skip

    def verdict(self, req: Request) -> str:
        s, spec = self.summary, self.plan.spec
        most = max(set(f.chosen for f in self.plan.folds), key=[f.chosen for f in self.plan.folds].count)
        efficiency = f"efficiency {s['wf_efficiency']:.2f}" if math.isfinite(s["wf_efficiency"]) else (
            "efficiency undefined: the in-sample Sharpe is not positive")  # fmt: skip
        chosen = (
            f"`{self.plan.columns[most]}` chosen in {s['pick_stability'] * 100:.0f} % of folds"
            if len(self.plan.columns) > 1 else f"one column, `{self.plan.columns[0]}`"
        )  # fmt: skip
        sharpe = self.stitched.metrics.get("oos_sharpe", math.nan)
        return (
            f"Walk-forward {s['n_folds']:.0f} folds ({spec.train.text}/{spec.test.text}): out-of-sample Sharpe "
            f"{sharpe:.2f} vs in-sample {s['is_sharpe']:.2f} ({efficiency}); {chosen}"
        ).replace("nan", "undefined")

    def description(self, req: Request) -> str:
        """The verdict first (the UI shows two lines), the stitched series' headline, then the folds."""
        spec = self.plan.spec
        lines = [self.verdict(req), ""]
        if req.description:
            lines += [req.description.strip(), ""]
        lines += [
            f"**Stitched out-of-sample** ({self.stitched.n_bars} bars): {headline(self.stitched.summary['metrics'])}",
            "",
            f"**Walk-forward** of {len(self.plan.columns)} column(s) of `{req.returns_path.name}`: train "
            f"{spec.train.text}, test {spec.test.text}, step {spec.step.text}, embargo {spec.embargo.text}"
            f"{', anchored' if spec.anchored else ', rolling'}; each fold chooses by in-sample {req.best_by}",
            "",
            *periods_markdown(self.stitched.summary.get("periods")),
            "",
        ]
        for fold, prep in list(zip(self.plan.folds, self.preps, strict=True))[:DESCRIPTION_MAX_FOLDS]:
            lines.append(
                f"- fold {fold.number} {fold.labels['test_start']} to {fold.labels['test_end']}: "
                f"`{self.plan.columns[fold.chosen]}` · {headline(prep.summary['metrics'])}"
            )
        if len(self.plan.folds) > DESCRIPTION_MAX_FOLDS:
            lines.append(f"- … {len(self.plan.folds) - DESCRIPTION_MAX_FOLDS} more folds in `folds.csv`")
        lines += [
            "",
            f"Logged by {SKILL_NAME} log_backtest.py {SKILL_VERSION}; every fold in `folds.csv`, the stitched series' "
            "metrics in `metrics.json`.",
        ]
        return "\n".join(lines)[:MAX_TAG_VALUE_LENGTH]

    def output(self, parent: Outcome | None, children: list[Outcome], experiment_id, req: Request) -> dict:
        where = where_logged(parent, experiment_id, req)
        metrics, undefined = split_defined(self.summary)
        metrics, undefined = {**self.stitched.metrics, **metrics}, self.stitched.undefined + undefined
        if parent.stored:  # found already logged: what the store holds
            metrics, undefined = parent.stored.ordered(metrics), parent.stored.undefined
        return {
            "parent_run_id": where.pop("run_id"),
            "parent_run_name": where.pop("run_name"),
            **where,
            "walk_forward": {
                **self.plan.spec.settings(), "anchored": self.plan.spec.anchored, "best_by": req.best_by,
                "columns": self.plan.columns,
            },  # fmt: skip
            "n_folds": len(self.plan.folds),
            **{name: defined(metrics.get(name)) for name in ("oos_sharpe", "is_sharpe", "wf_efficiency")},
            "verdict": self.verdict(req).replace("`", ""),
            "metrics": metrics,
            "undefined_metrics": undefined,
            "periods_per_year": self.stitched.periods,
            "git": git_summary(req.tags),
            "fingerprint": self.fingerprint,
            "artifacts": parent.artifacts,
            "folds": [fold_output(f, p, child, self.plan) for f, p, child in
                      zip(self.plan.folds, self.preps, children, strict=True)],
        }  # fmt: skip


DESCRIPTION_MAX_FOLDS = 24  # more: the description points to folds.csv


def fold_warnings(preps: list[Prepared]) -> list[str]:
    """The folds' warnings; the one a test window under a year gives (prepare_column leaves it out), once."""
    notes = [w for p in preps for w in p.warnings]
    short = sum(p.n_bars < p.periods for p in preps)
    if short:
        warn(
            f"{short} of {len(preps)} test windows are under a year: each fold's annualised metrics "
            "extrapolate; the stitched series (the parent's oos_ metrics) is the number to judge",
            notes,
        )
    return notes


def walk_forward_summary(
    wf: WalkForwardPlan, preps: list[Prepared], stitched: Prepared, req: Request
) -> dict:
    """The parent's own metrics: is_sharpe (and is_<best_by>) the mean over folds of the chosen column's
    training value, wf_efficiency = oos_sharpe / is_sharpe (undefined unless is_sharpe > 0), n_folds, the
    share of folds with a positive out-of-sample total return, and pick stability (the share of folds that
    chose the most-chosen column)."""
    import numpy as np

    names = {"is_sharpe", f"is_{req.best_by}"}
    summary = {name: float(np.mean([f.in_sample[name] for f in wf.folds])) for name in sorted(names)}
    oos, ins = stitched.metrics.get("oos_sharpe", math.nan), summary["is_sharpe"]
    summary["wf_efficiency"] = oos / ins if ins > 0 and math.isfinite(oos) else math.nan
    summary["n_folds"] = float(len(wf.folds))
    totals = [p.metrics.get("oos_total_return", math.nan) for p in preps]
    summary["positive_fold_share"] = float(np.mean([t > 0 for t in totals]))
    picks = [f.chosen for f in wf.folds]
    summary["pick_stability"] = max(picks.count(c) for c in set(picks)) / len(picks)
    return summary


def fold_output(fold: Fold, prep: Prepared, child: Outcome, wf: WalkForwardPlan) -> dict:
    metrics = child.stored.metrics if child.stored else prep.metrics
    return {
        "fold": fold.number, "run_id": child.run_id, "run_name": prep.run_name, **fold.labels,
        "chosen_column": wf.columns[fold.chosen], **{k: defined(v) for k, v in fold.in_sample.items()},
        "n_train_bars": fold.n_train_bars, "n_test_bars": fold.n_test_bars, "partial": fold.partial,
        "oos_rank": fold.oos_rank,
        "metrics": {f"oos_{k}": metrics[f"oos_{k}"] for k in KEY_METRICS if f"oos_{k}" in metrics},
    }  # fmt: skip


def folds_csv(
    wf: WalkForwardPlan, preps: list[Prepared], children: list[Outcome], req: Request, folder: Path
) -> str:
    import csv

    path = folder / "folds.csv"
    chosen_by = f"is_{req.best_by}"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["fold", "train_start", "train_end", "test_start", "test_end", "n_train_bars", "n_test_bars",
             "partial", "chosen_column", chosen_by, *[f"oos_{k}" for k in FOLD_SUMMARY], "oos_rank", "run_id"]
        )  # fmt: skip
        for fold, prep, child in zip(wf.folds, preps, children, strict=True):
            value = fold.in_sample[chosen_by]
            writer.writerow(
                [fold.number, *fold.labels.values(), fold.n_train_bars, fold.n_test_bars, str(fold.partial).lower(),
                 wf.columns[fold.chosen], repr(value) if math.isfinite(value) else "",
                 *[repr(prep.metrics[f"oos_{k}"]) if f"oos_{k}" in prep.metrics else "" for k in FOLD_SUMMARY],
                 fold.oos_rank, child.run_id or ""]
            )  # fmt: skip
    return path.name


def draw_walk_forward_png(wf: WalkForwardPlan, req: Request, folder: Path) -> str:
    """walk_forward.png: the stitched out-of-sample equity with the folds' test starts, and each fold's
    in-sample vs out-of-sample --best-by value of the chosen column."""
    import logging

    import numpy as np

    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    equity, _ = equity_and_drawdown(wf.stitched.returns, req.compounded)
    figure = Figure(figsize=(10, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 2))
    x = wf.stitched.returns.index if wf.stitched.has_timestamps else np.arange(len(equity))
    top.plot(x, equity, color="#1f77b4", linewidth=1.2)
    starts = np.cumsum([0] + [f.n_test_bars for f in wf.folds[:-1]])
    for start in starts:
        top.axvline(x[min(start, len(x) - 1)], color="#999999", linewidth=0.5, alpha=0.6)
    top.set_title(f"Walk-forward: stitched out-of-sample equity, {len(wf.folds)} folds (grey: fold starts)")
    top.set_ylabel("growth of 1")
    numbers = np.arange(len(wf.folds))
    bottom.bar(
        numbers - 0.2, [f.in_sample[f"is_{req.best_by}"] for f in wf.folds], 0.4, label="in-sample (chosen)"
    )
    bottom.bar(numbers + 0.2, [f.oos_value for f in wf.folds], 0.4, label="out-of-sample")
    bottom.axhline(0, color="black", linewidth=0.6)
    bottom.set_xlabel("fold")
    bottom.set_ylabel(req.best_by)
    bottom.legend(loc="best", fontsize="small")
    figure.savefig(folder / "walk_forward.png", dpi=100)
    return "walk_forward.png"


def share_out(jobs: list[Job], processes: int, kind: str = "sweep") -> list[list[Job]]:
    """Children (a sweep's columns, a walk-forward's folds) dealt round-robin to this process and each worker."""
    if processes:
        print(f"[{kind}] {len(jobs)} runs: {len(jobs[::processes + 1])} in this process, "
              f"{len(jobs) - len(jobs[::processes + 1])} in {processes} helper process"
              f"{'es' if processes > 1 else ''}", file=sys.stderr)  # fmt: skip
    return [jobs[w :: processes + 1] for w in range(processes + 1)]


def search_statistics(jobs: list[Job], req: Request, pool, folder: Path):
    """PBO by CSCV on the sweep's excess returns (here: milliseconds); its artifacts and figure are drawn by
    the pool (matplotlib's import and the PNG cost ~1 s) while the columns are prepared and written.
    -> (Overfitting, future of the artifact names)."""
    periods = periods_of(jobs[0].column, req)[0]
    matrix = excess_matrix([job.column for job in jobs], req.rf, periods)
    overfitting = probability_of_overfitting(matrix, req.pbo_splits)
    phase(req, f"PBO over {len(overfitting.logits)} combinations")
    folder.mkdir(exist_ok=True)
    names = [job.column.name for job in jobs]
    return overfitting, pool.submit(write_overfitting_artifacts, overfitting, names, periods, folder)


def comparison_csv(preps: list[Prepared], children: list[Outcome], folder: Path) -> str:
    import csv

    path = folder / "comparison.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["column", "run_id", *KEY_METRICS])
        for p, child in zip(preps, children, strict=True):
            writer.writerow(
                [
                    p.column,
                    child.run_id or "",
                    *[repr(p.metrics[k]) if k in p.metrics else "" for k in KEY_METRICS],
                ]
            )
    return path.name


if __name__ == "__main__":
    status = main()
    # The interpreter's shutdown would sweep every object still alive (mlflow's, SQLAlchemy's, pandas'): 1-2 s
    # of a 6 s log (bench/RESULTS.md). Frozen objects are left to the OS; atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(status)
