# /// script
# requires-python = ">=3.11"
# dependencies = [
#     # the MLflow client without the server and data-science stack; no pandas either: `import mlflow`
#     # imports pandas whenever it is installed (mlflow.data), and this script does not need it
#     "mlflow-skinny>=3.17,<3.18",
#     # what full mlflow adds for SQL stores, the embedded local store (sqlite:///mlflow.db) included
#     "sqlalchemy>=1.4,<3",
#     "alembic>=1.10.1,<2",
#     "numpy>=1.26",
#     "orjson>=3.9",  # parses a server's bulk responses (~2.5 MB each) 2.5x faster than json
#     "pyarrow>=15",  # .parquet output
#     "matplotlib>=3.8",  # --plot
#     # the PostgreSQL driver for a direct MLFLOW_TRACKING_URI=postgresql://… (imported only then; SQLAlchemy
#     # >= 2.1 maps postgresql:// to psycopg 3)
#     "psycopg[binary]>=3.2",
# ]
# ///
"""Get the metric time series of one or many MLflow runs: rows, per-series summaries, files and plots.

Usage (as an agent types it; `mise x --` loads credentials from .env.local):
  uv run scripts/get_metric_history.py --run-id 3f2a... --metrics equity,drawdown
  uv run scripts/get_metric_history.py --run-id ID1,ID2 --metrics equity --max-points 20 --format table
  uv run scripts/get_metric_history.py --experiment momentum --metrics equity --summary
  uv run scripts/get_metric_history.py --experiment momentum --filter "metrics.sharpe > 1" \\
      --order-by "metrics.sharpe DESC" --max-runs 5 --metrics equity,drawdown --plot equity.png
  uv run scripts/get_metric_history.py --run-id ID --all --output history.parquet   # full series to a file

Which runs: --run-id (repeatable or comma-separated) or --experiment NAME (or id) with --filter, --order-by
and --max-runs (default 10). Which metrics: --metrics a,b or --all (every metric the runs have).

Output (JSON when stdout is not a terminal, a table when it is; --format overrides):
  default     rows {run_id, run_name, metric, step, timestamp, value}, timestamp ISO 8601 UTC (the
              bar's date, YYYY-MM-DD, for equity/drawdown of daily-or-slower backtests), each
              (run, metric) series evenly downsampled to --max-points (default 100), always keeping its
              first, last, minimum and maximum points.
  --summary   one row per (run, metric): points, first/last step, first/last time, first/last/min/max value.
  --output PATH (.csv, .parquet, .json) and/or --plot PATH.png write the FULL series (unless --max-points
              is given) and stdout carries one object saying what was written (rows, panels, lines per panel).
A metric missing from some runs is a warning on stderr; missing from every run, or an unknown run, is exit 3.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
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

RUN_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")  # mlflow.utils.validation._validate_run_id
DEFAULT_MAX_POINTS = 100  # per (run, metric) series on stdout
MIN_MAX_POINTS = 4  # first, last, minimum and maximum are always kept
DEFAULT_MAX_RUNS = 10
MAX_MAX_RUNS = 1000
# Concurrent history requests to a tracking server. Measured (50 runs x 2 series x 5,000 points, 2-core
# machine, server with 2 workers): 4 workers 13 s, 8 workers 19 s, 2 workers 17 s.
FETCH_WORKERS = 4
HISTORY_PAGE_SIZE = 25000  # the server's own page cap (mlflow.store.tracking.GET_METRIC_HISTORY_MAX_RESULTS)
BULK_MAX_RESULTS = 25000  # get-history-bulk returns at most this many points per response, over all its runs
BULK_MAX_RUNS = 100  # and accepts at most this many run ids
OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".json": "json"}
COLUMNS = ("run_id", "run_name", "metric", "step", "timestamp", "value")


class Request:
    """What the user asked for, validated before MLflow is imported."""

    def __init__(self, args):
        self.run_ids = parse_run_ids(args.run_id)
        self.experiment = (args.experiment or "").strip() or None
        if bool(self.run_ids) == bool(self.experiment):
            raise CliError(EXIT_USAGE, "give either --run-id ID[,ID...] or --experiment NAME (not both)")
        if not self.experiment and (args.filter or args.order_by or args.max_runs is not None):
            raise CliError(EXIT_USAGE, "--filter, --order-by and --max-runs select runs of --experiment only")
        self.filter = args.filter or ""
        self.order_by = [s.strip() for s in args.order_by if s.strip()]
        self.max_runs = DEFAULT_MAX_RUNS if args.max_runs is None else args.max_runs
        if not 1 <= self.max_runs <= MAX_MAX_RUNS:
            raise CliError(EXIT_USAGE, f"--max-runs must be between 1 and {MAX_MAX_RUNS}")
        self.metrics = parse_metric_names(args.metrics, args.all)
        self.all_metrics = args.all
        if args.max_points is not None and args.max_points != 0 and args.max_points < MIN_MAX_POINTS:
            raise CliError(
                EXIT_USAGE,
                f"--max-points must be 0 (no limit) or at least {MIN_MAX_POINTS}: first, last, minimum and "
                "maximum are always kept",
            )
        self.output = output_path(args.output, OUTPUT_FORMATS, "--output") if args.output else None
        self.plot = output_path(args.plot, {".png": "png"}, "--plot") if args.plot else None
        writes = self.output is not None or self.plot is not None
        # stdout rows are downsampled by default; files and plots get the full series unless asked otherwise
        if args.max_points is None:
            self.max_points = None if writes else DEFAULT_MAX_POINTS
        else:
            self.max_points = args.max_points or None
        self.summary = args.summary
        self.x_axis = args.x
        if args.x == "step" and self.plot is None:
            raise CliError(EXIT_USAGE, "--x applies to --plot only")


def parse_run_ids(values: list[str]) -> list[str]:
    """--run-id repeatable and comma-separated; duplicates dropped, order kept, each id checked."""
    run_ids: list[str] = []
    for value in values:
        for part in value.split(","):
            run_id = part.strip()
            if not run_id:
                continue
            if not RUN_ID_PATTERN.match(run_id):
                raise CliError(
                    EXIT_USAGE, f"--run-id {run_id[:80]!r} is not a valid run id (32 hex characters)"
                )
            if run_id not in run_ids:
                run_ids.append(run_id)
    if values and not run_ids:
        raise CliError(EXIT_USAGE, "--run-id is empty: give one or more run ids")
    return run_ids


def parse_metric_names(value: str | None, all_metrics: bool) -> list[str]:
    if all_metrics and value:
        raise CliError(EXIT_USAGE, "give either --metrics a,b or --all (not both)")
    if all_metrics:
        return []
    if not value:
        raise CliError(EXIT_USAGE, "say which metrics: --metrics equity,drawdown or --all")
    names = list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if not names:
        raise CliError(EXIT_USAGE, "--metrics is empty: give metric names, e.g. --metrics equity,drawdown")
    for name in names:
        if len(name) > MAX_KEY_LENGTH or not KEY_PATTERN.match(name):
            raise CliError(EXIT_USAGE, f"--metrics: {name[:60]!r} is not a valid MLflow metric name")
    return names


def output_path(value: str, formats: dict[str, str], flag: str) -> tuple[Path, str]:
    """(absolute path, format) from the file's extension; its folder must exist."""
    path = Path(value).expanduser()
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise CliError(EXIT_USAGE, f"{flag} {value!r}: the name must end in {', '.join(formats)}")
    path = path.resolve()
    if not path.parent.is_dir():
        raise CliError(EXIT_USAGE, f"{flag}: folder {str(path.parent)!r} does not exist; create it first")
    if path.is_dir():
        raise CliError(EXIT_USAGE, f"{flag}: {str(path)!r} is a folder; give a file name")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(
            EXIT_USAGE, f"{flag}: cannot write {str(path)!r} (permissions): choose a folder you can write"
        )
    return path, fmt


# ---- pure functions: series, downsampling, summaries, rows ----


class Points:
    """One (run, metric) series as three numpy arrays, in series order: by step, then time (stable, so
    points with the same step and time keep the order the store gave them). Iterating yields
    (step, timestamp_ms, value) tuples of Python numbers."""

    __slots__ = ("steps", "times", "values")

    def __init__(self, steps, times, values, ordered: bool = False):
        import numpy as np

        steps = np.asarray(steps, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if not ordered and len(steps) > 1:
            order = np.lexsort((times, steps))  # stable: the last key is the primary one
            steps, times, values = steps[order], times[order], values[order]
        self.steps, self.times, self.values = steps, times, values

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return zip(self.steps.tolist(), self.times.tolist(), self.values.tolist(), strict=True)


def extreme_indices(values) -> tuple[int | None, int | None]:
    """Indices of the first minimum and first maximum, ignoring NaN; None when every value is NaN."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    finite = np.flatnonzero(~np.isnan(values))
    if not len(finite):
        return None, None
    kept = values[finite]
    return int(finite[np.argmin(kept)]), int(finite[np.argmax(kept)])  # argmin/argmax: first occurrence


def downsample_indices(values, max_points: int | None) -> list[int]:
    """At most max_points indices, evenly spaced, always including first, last, minimum and maximum.

    The even grid has max_points slots; each extreme not already on it replaces the grid point nearest to
    it (never first/last or another extreme), so the result has exactly max_points points when n > max."""
    n = len(values)
    if max_points is None or n <= max_points:
        return list(range(n))
    lo, hi = extreme_indices(values)
    required = {0, n - 1} | {i for i in (lo, hi) if i is not None}
    step = (n - 1) / (max_points - 1)
    grid = sorted({round(k * step) for k in range(max_points)})
    chosen = set(grid)
    for r in sorted(required - chosen):
        candidates = [g for g in chosen if g not in required]
        nearest = min(candidates, key=lambda g: (abs(g - r), g))
        chosen.discard(nearest)
        chosen.add(r)
    return sorted(chosen)


def iso_times(ms, millis: bool) -> list[str]:
    """Milliseconds since the epoch as ISO 8601 UTC with a Z, e.g. 2005-01-03T00:00:00Z."""
    import numpy as np

    stamps = np.asarray(ms, dtype=np.int64).astype("datetime64[ms]")
    return [f"{s}Z" for s in np.datetime_as_string(stamps, unit="ms" if millis else "s").tolist()]


# log_backtest's `frequency` param of a backtest whose bars are a day or longer: it stores each such bar at
# 12:00 UTC of its date (so the MLflow UI shows that date in any time zone); we give back the date.
DAILY_OR_SLOWER = ("daily", "daily_calendar", "weekly", "monthly", "quarterly", "semiannual", "yearly")
DAY_MS, NOON_MS = 86_400_000, 43_200_000


def bar_dates(runs: list[dict], series: dict) -> set:
    """The (run_id, metric) series that are dated bars: every point at 12:00 UTC, in a run whose frequency
    is daily or slower (its other metrics carry the time they were logged)."""
    daily = {run["run_id"] for run in runs if run.get("frequency") in DAILY_OR_SLOWER}
    return {
        key
        for key, points in series.items()
        if key[0] in daily and len(points) and bool((points.times % DAY_MS == NOON_MS).all())
    }


def time_texts(columns: dict, runs: list[dict], series: dict) -> list[str]:
    """The rows' timestamps as text: ISO 8601 UTC, or the bar's date (YYYY-MM-DD) for dated bars."""
    import numpy as np

    texts = iso_times(columns["timestamp"], needs_millis(series))
    dated = bar_dates(runs, series)
    if dated:
        per_series = np.array([(label[0], label[2]) in dated for label in columns["labels"]], dtype=bool)
        texts = [
            s[:10] if d else s for s, d in zip(texts, per_series[columns["series"]].tolist(), strict=True)
        ]
    return texts


def needs_millis(series: dict) -> bool:
    """Show milliseconds only when some timestamp has them (daily bars stay readable)."""
    return any(bool((points.times % 1000).any()) for points in series.values())


def series_columns(runs: list[dict], series: dict, max_points: int | None) -> dict:
    """The rows as columns {run_id, run_name, metric, step, timestamp (ms), value}: run by run, metric by
    metric, as numpy arrays; also "series" (each row's index in "labels") and "labels" ((run_id, run_name,
    metric) per series)."""
    import numpy as np

    names = runs_by_id(runs)
    labels, counts, steps, times, values = [], [], [], [], []
    for (run_id, metric), points in series.items():
        keep = None if max_points is None else downsample_indices(points.values, max_points)
        part = [points.steps, points.times, points.values]
        if keep is not None and len(keep) < len(points):
            part = [column[keep] for column in part]
        labels.append((run_id, names[run_id]["run_name"], metric))
        counts.append(len(part[0]))
        steps.append(part[0])
        times.append(part[1])
        values.append(part[2])
    columns: dict = {"labels": labels, "series": np.repeat(np.arange(len(labels), dtype=np.int32), counts)}
    for i, key in enumerate(("run_id", "run_name", "metric")):
        column = np.empty(len(labels), dtype=object)
        column[:] = [label[i] for label in labels]
        columns[key] = np.repeat(column, counts)
    for key, parts in (("step", steps), ("timestamp", times), ("value", values)):
        columns[key] = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    return columns


def series_rows(runs: list[dict], series: dict, max_points: int | None) -> list[dict]:
    """Rows {run_id, run_name, metric, step, timestamp, value}, run by run, metric by metric."""
    columns = series_columns(runs, series, max_points)
    columns["timestamp"] = time_texts(columns, runs, series)
    columns = {key: columns[key] if key == "timestamp" else columns[key].tolist() for key in COLUMNS}
    return [dict(zip(COLUMNS, row, strict=True)) for row in zip(*(columns[c] for c in COLUMNS), strict=True)]


def runs_by_id(runs: list[dict]) -> dict[str, dict]:
    return {run["run_id"]: run for run in runs}


def summarize(runs: list[dict], series: dict) -> list[dict]:
    """Per (run, metric): number of points, first/last step and time, first/last/min/max value."""
    millis = needs_millis(series)
    dated = bar_dates(runs, series)
    names = runs_by_id(runs)
    out = []
    for (run_id, metric), points in series.items():
        values = points.values
        lo, hi = extreme_indices(values)
        first_time, last_time = iso_times(points.times[[0, -1]], millis)
        if (run_id, metric) in dated:
            first_time, last_time = first_time[:10], last_time[:10]
        out.append(
            {
                "run_id": run_id,
                "run_name": names[run_id]["run_name"],
                "metric": metric,
                "points": len(points),
                "first_step": int(points.steps[0]),
                "last_step": int(points.steps[-1]),
                "first_time": first_time,
                "last_time": last_time,
                "first": float(values[0]),
                "last": float(values[-1]),
                "min": None if lo is None else float(values[lo]),
                "max": None if hi is None else float(values[hi]),
            }
        )
    return out


def legend_labels(runs: list[dict]) -> dict[str, str]:
    """Run name per run id; a name shared by several runs gets the run id's first 8 characters."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["run_name"] or ""] = counts.get(run["run_name"] or "", 0) + 1
    labels = {}
    for run in runs:
        name = run["run_name"] or ""
        labels[run["run_id"]] = (
            name if name and counts[name] == 1 else f"{name} ({run['run_id'][:8]})".strip()
        )
    return labels


# ---- MLflow I/O ----


def resolve_runs(client, request: Request) -> list[dict]:
    """The selected runs as {run_id, run_name, experiment_id, metrics (latest keys)}; exit 3 if none."""
    from mlflow.exceptions import MlflowException

    if request.run_ids:

        def get(run_id):
            try:
                return client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

        with ThreadPoolExecutor(min(FETCH_WORKERS, len(request.run_ids))) as pool:
            found = list(pool.map(get, request.run_ids))
        missing = [rid for rid, run in zip(request.run_ids, found, strict=True) if run is None]
        if missing:
            raise CliError(
                EXIT_NOT_FOUND,
                f"run {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} not found "
                f"({len(missing)} of {len(request.run_ids)}): check the ids with query_experiments.py",
            )
        runs = found
        for run in runs:
            if run.info.lifecycle_stage == "deleted":
                print(
                    f"warning: run {run.info.run_id} ({run.info.run_name}) is deleted (in the trash); its history "
                    "is shown anyway",
                    file=sys.stderr,
                )
    else:
        experiment = find_experiment(client, request.experiment)
        try:
            runs = client.search_runs(
                [experiment.experiment_id],
                filter_string=request.filter,
                order_by=request.order_by or None,
                max_results=request.max_runs,
            )
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            flags = "--filter" + (" or --order-by" if request.order_by else "")
            raise CliError(
                EXIT_USAGE,
                f"{flags} refused by MLflow: {' '.join(exc.message.split())[:200]} (grammar and examples: "
                "references/query-patterns.md)",
            ) from None
        if not runs:
            where = f" matching --filter {request.filter!r}" if request.filter else ""
            raise CliError(
                EXIT_NOT_FOUND,
                f"no runs in experiment {experiment.name!r}{where}: loosen --filter or check the experiment",
            )
    return [
        {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "metrics": set(run.data.metrics),
            "frequency": run.data.params.get("frequency"),  # log_backtest's: daily bars come back as dates
            # the step of each metric's latest point: a hint at its number of points (fetch_series).
            # RunData keeps the latest Metric objects only in its private _metric_objs (MLflow 3.17).
            "last_steps": {m.key: m.step for m in getattr(run.data, "_metric_objs", None) or ()},
        }
        for run in runs
    ]


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


def plan_series(runs: list[dict], request: Request) -> tuple[list[str], list[tuple[str, str]], list[dict]]:
    """(metric names, (run_id, metric) pairs to fetch, missing pairs). Exit 3 if a metric is in no run."""
    if request.all_metrics:
        metrics = sorted(set().union(*(run["metrics"] for run in runs)))
        if not metrics:
            raise CliError(EXIT_NOT_FOUND, f"none of the {len(runs)} run(s) has any metric")
    else:
        metrics = request.metrics
        available = set().union(*(run["metrics"] for run in runs))
        absent = [m for m in metrics if m not in available]
        if absent:
            known = ", ".join(sorted(available)[:20]) or "none"
            raise CliError(
                EXIT_NOT_FOUND,
                f"metric {', '.join(repr(m) for m in absent)} not found in any of the {len(runs)} run(s); "
                f"their metrics: {known}",
            )
    pairs, missing = [], []
    for run in runs:
        for metric in metrics:
            if metric in run["metrics"]:
                pairs.append((run["run_id"], metric))
            elif not request.all_metrics:
                missing.append({"run_id": run["run_id"], "run_name": run["run_name"], "metric": metric})
    return metrics, pairs, missing


def fetch_series(
    client, tracking_uri: str, pairs: list[tuple[str, str]], workers: int = FETCH_WORKERS, sizes=None
) -> dict:
    """{(run_id, metric): Points} for every pair that has points.

    sizes: {(run_id, metric): expected number of points}, a hint for grouping runs into requests (the
    latest step + 1); results never depend on it. Against a tracking server, requests to its
    metrics/get-history-bulk endpoint each carry several runs of one metric, as many as fit in one response,
    and run on a bounded thread pool; per (run, metric) get-history calls through MlflowClient cost more,
    mostly in the server turning every point into a protobuf message (bench/bench_get_metric_history.py).
    Servers without that endpoint get the public paged get-history.
    """
    if not pairs:
        return {}
    rest = RestHistory.for_client(client, tracking_uri)
    if rest is None:
        # A local store is read in this process: SQLAlchemy's sqlite pool is thread-safe, but the work is
        # Python under the GIL, so threads do not help (measured: 16 s sequential, 19 s with 4 threads).
        found = {
            pair: Points([m.step for m in ms], [m.timestamp for m in ms], [m.value for m in ms])
            for pair in pairs
            if (ms := client.get_metric_history(*pair))
        }
    else:
        found = rest.fetch(pairs, sizes or {}, workers)
    return {pair: found[pair] for pair in pairs if pair in found and len(found[pair])}


class RestHistory:
    """Metric histories straight from a tracking server's REST API.

    The work is a queue of bulk requests, each for some runs of one metric. Pool threads only move bytes:
    each sends its next request as soon as a response is in, so the server always has work. This thread
    reads the responses, and a cut response puts its unfinished runs back in the queue."""

    BULK = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
    SINGLE = "/api/2.0/mlflow/metrics/get-history"
    # A server with several worker processes (mlflow server --workers) hands a kept-alive connection to one of
    # them for good: with a few connections that can leave one worker with most of the work and the other
    # idle (measured: 3.8 s and 10.9 s of CPU in one run). A new connection per request goes to a worker
    # that is free to accept it. It is also quicker on MLflow's server (uvicorn): a request on a kept-alive
    # connection waited ~40 ms for the server's delayed ACK, a new connection ~8 ms (measured, loopback).
    HEADERS = {"Connection": "close"}

    def __init__(self, get_host_creds):
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        self.get_host_creds = get_host_creds
        self.http_request = http_request
        self.verify = verify_rest_response
        self.bulk = True  # only ever switched off, by the first request that finds no bulk endpoint
        self.typical: dict[str, int] = {}  # metric -> most points seen in one complete run

    @classmethod
    def for_client(cls, client, tracking_uri: str):
        """None unless the client talks to an http(s) server through MLflow's RestStore."""
        store = getattr(getattr(client, "_tracking_client", None), "store", None)
        get_host_creds = getattr(store, "get_host_creds", None)
        if not tracking_uri.lower().startswith(("http://", "https://")) or get_host_creds is None:
            return None
        return cls(get_host_creds)

    def get(self, endpoint: str, params: dict):
        return self.http_request(
            self.get_host_creds(), endpoint, "GET", params=params, extra_headers=self.HEADERS
        )

    def fetch(self, pairs: list[tuple[str, str]], sizes: dict, workers: int) -> dict:
        from concurrent.futures import FIRST_COMPLETED, wait

        by_metric: dict[str, list[str]] = {}
        for run_id, metric in pairs:
            by_metric.setdefault(metric, []).append(run_id)
        estimates = dict(sizes)
        jobs = [job for metric, run_ids in by_metric.items() for job in self.plan(run_ids, metric, estimates)]
        # the biggest first, so that the last requests, which some threads wait on, are short ones
        jobs.sort(key=lambda job: -sum(estimates.get((run_id, job[1]), 1) for run_id in job[0]))
        found: dict = {}
        with ThreadPoolExecutor(max(1, workers)) as pool:
            running = {pool.submit(self.request, job): job for job in jobs}
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    result, again = self.absorb(job, future.result(), estimates)
                    found.update(result)
                    running.update({pool.submit(self.request, job): job for job in again})
        return found

    def plan(self, run_ids: list[str], metric: str, estimates: dict, paged: bool = False) -> list[tuple]:
        """Runs of one metric in groups whose expected points stay under one response's cap: a response that
        is not full is complete. Runs without an estimate count as one point until a response says more."""
        if paged:
            return [([run_id], metric, True) for run_id in run_ids]
        groups: list[list[str]] = []
        total = 0
        typical = self.typical.get(metric, 1)
        for run_id in sorted(run_ids):  # the server orders a response by run id
            expected = max(1, typical, estimates.get((run_id, metric), 1))
            if not groups or total + expected >= BULK_MAX_RESULTS or len(groups[-1]) >= BULK_MAX_RUNS:
                groups.append([])
                total = 0
            groups[-1].append(run_id)
            total += expected
        return [(group, metric, False) for group in groups]

    def request(self, job: tuple) -> bytes | dict:
        """In a pool thread: the bulk response's bytes; for a paged job, or when the server has no bulk
        endpoint, {(run_id, metric): Points} read with the public paged get-history."""
        asked, metric, paged = job
        if self.bulk and not paged:
            params = {"run_id": asked, "metric_key": metric, "max_results": BULK_MAX_RESULTS}
            response = self.get(self.BULK, params)
            if response.status_code == 200:
                return response.content
            if response.status_code not in (404, 405, 501) or "error_code" in response.text:
                self.verify(response, self.BULK)  # raises MLflow's error for the failed request
            self.bulk = False  # an older server or a gateway without MLflow's UI endpoints
        return {(run_id, metric): self.single(run_id, metric) for run_id in asked}

    def absorb(self, job: tuple, payload: bytes | dict, estimates: dict) -> tuple[dict, list]:
        """({(run_id, metric): Points} for the runs a response completed, follow-up jobs for the others).

        One response holds at most BULK_MAX_RESULTS points over all its runs, ordered by run and cut at the
        end, so a full response is trusted up to its last run only; the rest is asked again. A single run
        longer than the cap is read with the public paged get-history."""
        if isinstance(payload, dict):
            return payload, []
        asked, metric, _ = job
        metrics = parse_json(payload).get("metrics", []) if payload.strip() else []
        by_run = bulk_points(metrics)
        again: list = []
        if len(metrics) < BULK_MAX_RESULTS:
            complete = asked
        else:  # possibly cut: the response's last run may be partial, and runs after it are not there
            last = metrics[-1]["run_id"]
            complete = [run_id for run_id in asked if run_id in by_run and run_id != last]
            rest = [run_id for run_id in asked if run_id not in complete]
            if not complete:  # one run alone fills a response: read it page by page
                again = self.plan([last], metric, estimates, paged=True)
                rest.remove(last)
            # learn from what came back: the cut run has more points than it showed
            estimates[(last, metric)] = max(estimates.get((last, metric), 1), len(by_run.get(last, ())) + 1)
            seen = max((len(by_run[run_id]) for run_id in complete), default=0)
            self.typical[metric] = max(self.typical.get(metric, 0), seen)
            again += self.plan(rest, metric, estimates)
        empty = Points([], [], [], ordered=True)
        return {(run_id, metric): by_run.get(run_id, empty) for run_id in complete}, again

    def single(self, run_id: str, metric: str) -> Points:
        """The public GetMetricHistory endpoint, page by page."""
        metrics, token = [], None
        while True:
            params = {"run_id": run_id, "metric_key": metric, "max_results": HISTORY_PAGE_SIZE}
            if token:
                params["page_token"] = token
            response = self.get(self.SINGLE, params)
            if response.status_code != 200 or not response.content.strip():
                body = self.verify(response, self.SINGLE).json()  # raises MLflow's error for a failed request
            else:
                body = parse_json(response.content)
            metrics += body.get("metrics", [])
            token = body.get("next_page_token")
            if not token:
                return Points(*metric_columns(metrics))


def parse_json(data: bytes):
    """JSON from bytes, parsed once (a bulk response is ~2.5 MB: orjson 8 ms, json 21 ms). orjson refuses the
    NaN and Infinity literals that MLflow's server writes for such metric values: json reads those."""
    try:
        import orjson
    except ImportError:  # orjson is in this script's dependencies; the stdlib does the same, slower
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def metric_columns(metrics: list[dict]):
    """(steps, times, values) arrays from REST metric dicts (NaN and infinities come as JSON's NaN /
    Infinity literals, which Python's json reads; protobuf JSON may leave out a field that is 0)."""
    import numpy as np

    n = len(metrics)
    try:
        steps = np.fromiter((m["step"] for m in metrics), np.int64, n)
        times = np.fromiter((m["timestamp"] for m in metrics), np.int64, n)
        values = np.fromiter((m["value"] for m in metrics), np.float64, n)
    except (KeyError, TypeError, ValueError):  # a field left out or odd: the careful way, point by point
        steps = np.array([int(m.get("step") or 0) for m in metrics], dtype=np.int64)
        times = np.array([int(m.get("timestamp") or 0) for m in metrics], dtype=np.int64)
        values = np.array([as_float(m.get("value")) for m in metrics], dtype=np.float64)
    return steps, times, values


def bulk_points(metrics: list[dict]) -> dict[str, Points]:
    """{run_id: Points} from a get-history-bulk response's metrics (each has run_id, step, timestamp, value)."""
    import numpy as np

    if not metrics:
        return {}
    n = len(metrics)
    run_ids = [m["run_id"] for m in metrics]
    steps, times, values = metric_columns(metrics)
    out: dict[str, Points] = {}
    start = 0
    for i in range(1, n + 1):  # the server sends each run's points together
        if i == n or run_ids[i] != run_ids[start]:
            run_id = run_ids[start]
            part = slice(start, i)
            if run_id in out:  # not together after all: join the pieces (order within a run is kept)
                old = out[run_id]
                out[run_id] = Points(
                    np.concatenate([old.steps, steps[part]]),
                    np.concatenate([old.times, times[part]]),
                    np.concatenate([old.values, values[part]]),
                )
            else:
                out[run_id] = Points(steps[part], times[part], values[part])
            start = i
    return out


def as_float(value) -> float:
    """A metric value from REST JSON: a number, or "NaN" / "Infinity" / "-Infinity" (or NaN literals)."""
    if value is None:
        return 0.0  # protobuf JSON may leave out a value of 0.0
    return float(value)


# ---- writing files and plots ----


def write_output(path: Path, fmt: str, runs: list[dict], series: dict, max_points: int | None) -> dict:
    """Write the rows to .csv / .parquet / .json; returns what was written."""
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "json":
        rows = series_rows(runs, series, max_points)
        count = len(rows)
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(json_safe(rows), handle, ensure_ascii=False)
            handle.write("\n")
    else:
        columns = series_columns(runs, series, max_points)
        count = len(columns["step"])
        if fmt == "csv":
            import csv

            columns["timestamp"] = time_texts(columns, runs, series)
            # repr of each float (what str() gives), NaN as an empty cell: what pandas' to_csv writes
            columns["value"] = [None if v != v else v for v in columns["value"].tolist()]
            columns = {
                key: columns[key] if key in ("timestamp", "value") else columns[key].tolist()
                for key in COLUMNS
            }
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(COLUMNS)
                writer.writerows(zip(*(columns[c] for c in COLUMNS), strict=True))
        else:
            import numpy as np
            import pyarrow as pa
            import pyarrow.parquet as pq

            codes = columns["series"]

            def strings(i: int):  # one value per series and a code per row: no 500k Python strings
                values = [label[i] for label in columns["labels"]]
                nulls = np.array([v is None for v in values], dtype=bool)
                dictionary = pa.array([v or "" for v in values], pa.string())
                return pa.DictionaryArray.from_arrays(
                    codes, dictionary, mask=nulls[codes] if nulls.any() else None
                )

            table = pa.table(
                {
                    "run_id": strings(0),
                    "run_name": strings(1),
                    "metric": strings(2),
                    "step": pa.array(columns["step"], pa.int64()),
                    # from datetime64 as is: no conversion, and no pyarrow.compute import (~70 ms)
                    "timestamp": pa.array(
                        columns["timestamp"].astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")
                    ),
                    "value": pa.array(columns["value"], pa.float64()),
                }
            )
            # Dictionary columns write in a third of the time (0.05 s for 500k rows). Without the stored Arrow
            # schema, readers (pyarrow, pandas) see the parquet types: plain strings, as before.
            pq.write_table(table, tmp, store_schema=False)
    tmp.replace(path)
    return {"path": str(path), "format": fmt, "rows": count, "bytes": path.stat().st_size}


def draw_plot(path: Path, runs: list[dict], metrics: list[str], series: dict, x_axis: str, max_points):
    """One panel per metric, one line per run (same colour in every panel), legend by run name. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = legend_labels(runs)
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20" if len(runs) <= 20 else "viridis")
    colors = {
        run["run_id"]: palette(i if len(runs) <= 20 else i / max(1, len(runs) - 1))
        for i, run in enumerate(runs)
    }
    panels_metrics = [m for m in metrics if any((run["run_id"], m) in series for run in runs)]
    fig, axes = plt.subplots(
        len(panels_metrics), 1, figsize=(11, 1.2 + 3.0 * len(panels_metrics)), sharex=True, squeeze=False
    )
    panels = []
    for ax, metric in zip(axes[:, 0], panels_metrics, strict=True):
        drawn = []
        for run in runs:
            points = series.get((run["run_id"], metric))
            if not points:
                continue
            keep = downsample_indices(points.values, max_points)
            x = points.steps[keep] if x_axis == "step" else points.times[keep].astype("datetime64[ms]")
            ax.plot(x, points.values[keep], label=labels[run["run_id"]], color=colors[run["run_id"]],
                    linewidth=1.2, marker="o" if len(keep) == 1 else None)  # fmt: skip
            drawn.append(labels[run["run_id"]])
        ax.set_title(metric, loc="left", fontsize=11)
        ax.grid(alpha=0.3)
        panels.append({"metric": metric, "lines": len(ax.get_lines()), "runs": drawn})
    axes[-1, 0].set_xlabel("step" if x_axis == "step" else "time (UTC)")
    axes[0, 0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      ncol=1 if len(runs) <= 25 else 2, frameon=False)  # fmt: skip
    if x_axis != "step":
        fig.autofmt_xdate()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    width, height = (int(round(v)) for v in fig.get_size_inches() * 100)
    plt.close(fig)
    tmp.replace(path)
    return {
        "path": str(path),
        "format": "png",
        "width": width,
        "height": height,
        "x": x_axis,
        "panels": panels,
    }


# ---- main ----


def preload(*modules: str) -> None:
    """Import modules in a background thread (an import the main thread needs later waits for it to finish;
    a failure there is raised again by the main thread's own import)."""

    def load():
        import importlib

        for name in modules:
            try:
                if name.startswith("matplotlib"):
                    import matplotlib

                    matplotlib.use("Agg")
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the main thread's import reports it
                return

    if modules:
        import threading

        threading.Thread(target=load, daemon=True).start()


def build_parser() -> CliParser:
    parser = CliParser(
        prog="get_metric_history.py",
        description="Get the metric time series of MLflow runs: rows, summaries, files (.csv/.parquet/.json) "
        "and plots.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_argument_group("which runs")
    which.add_argument("--run-id", action="append", default=[], metavar="ID", help="repeatable or ID1,ID2")
    which.add_argument("--experiment", metavar="NAME", help="experiment name (or id) to search for runs")
    which.add_argument("--filter", metavar="S", help='MLflow search filter, e.g. "metrics.sharpe > 1"')
    which.add_argument("--order-by", action="append", default=[], metavar="S",
                       help='e.g. "metrics.sharpe DESC" (repeatable); default: newest first')  # fmt: skip
    which.add_argument("--max-runs", type=int, metavar="N", help=f"default {DEFAULT_MAX_RUNS}")
    what = parser.add_argument_group("which metrics and how much")
    what.add_argument("--metrics", metavar="A,B", help="metric names, comma-separated")
    what.add_argument("--all", action="store_true", help="every metric the runs have")
    what.add_argument(
        "--max-points",
        type=int,
        metavar="N",
        help="per series, evenly spaced, keeping first/last/min/max "
        f"(default {DEFAULT_MAX_POINTS} on stdout, all in --output/--plot; 0: all)",
    )
    what.add_argument("--summary", action="store_true", help="one row per (run, metric) instead of points")
    out = parser.add_argument_group("files")
    out.add_argument("--output", metavar="PATH", help="write the series to PATH (.csv, .parquet or .json)")
    out.add_argument("--plot", metavar="PATH.png", help="one panel per metric, one line per run")
    out.add_argument("--x", choices=["time", "step"], default="time", help="plot x axis (default time)")
    parser.add_argument(
        "--format", choices=["json", "table", "csv"], help="default: table at a tty, else json"
    )
    parser.add_argument("--tracking-uri", metavar="URI", help="overrides MLFLOW_TRACKING_URI")
    parser.add_argument("--debug", action="store_true", help="tracebacks and MLflow logging on stderr")
    return parser


def run(request: Request, tracking_uri: str, debug: bool):
    """Fetch and shape; returns the data for stdout."""
    client = connect(tracking_uri, debug, writes=False)
    runs = resolve_runs(client, request)
    metrics, pairs, missing = plan_series(runs, request)
    for item in missing[:20]:
        print(f"warning: run {item['run_id']} ({item['run_name']}) has no metric {item['metric']!r}",
              file=sys.stderr)  # fmt: skip
    if len(missing) > 20:
        print(f"warning: ... and {len(missing) - 20} more (run, metric) pairs missing", file=sys.stderr)
    # what the files and plot need is imported while the server works on the histories
    parquet = request.output is not None and request.output[1] == "parquet"
    preload(*(["pyarrow.parquet"] if parquet else []),
            *(["matplotlib.pyplot"] if request.plot else []))  # fmt: skip
    last_steps = {run["run_id"]: run["last_steps"] for run in runs}
    sizes = {(run_id, m): last_steps[run_id][m] + 1 for run_id, m in pairs if m in last_steps[run_id]}
    series = fetch_series(client, tracking_uri, pairs, sizes=sizes)
    if not series:
        raise CliError(EXIT_NOT_FOUND, "the selected runs have no points for these metrics")
    if request.output is None and request.plot is None:
        if request.summary:
            return summarize(runs, series)
        return series_rows(runs, series, request.max_points)
    written: dict = {
        "runs": len(runs),
        "metrics": metrics,
        "series": len(series),
        "points": sum(len(points) for points in series.values()),
        "max_points": request.max_points,
        "missing": missing,
        "tracking_uri": mask_uri(tracking_uri),
    }
    if request.output is not None:
        written["output"] = write_output(*request.output, runs, series, request.max_points)
    if request.plot is not None:
        plot_path = request.plot[0]
        written["plot"] = draw_plot(plot_path, runs, metrics, series, request.x_axis, request.max_points)
    if request.summary:
        written["summary"] = summarize(runs, series)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv

    def action() -> int:
        args = build_parser().parse_args(argv)
        request = Request(args)
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
        emit(run(request, tracking_uri, debug), output_format(args.format))
        return EXIT_OK

    return run_cli(action, debug)


if __name__ == "__main__":
    status = main()
    # The interpreter's shutdown would sweep every object still alive (mlflow's, SQLAlchemy's, pandas'): 1-2 s
    # of a 6 s log (bench/RESULTS.md). Frozen objects are left to the OS; atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(status)
