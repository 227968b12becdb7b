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
# ]
# ///
"""Create an MLflow experiment, or make sure it exists (idempotent).

Usage (as an agent types it; `mise x --` loads credentials from .env.local):
  uv run scripts/create_experiment.py --name momentum
  uv run scripts/create_experiment.py --name momentum --description "12-1 momentum on S&P 500" \\
      --tag team=quant --tag asset_class=equity
  uv run scripts/create_experiment.py --name momentum --tags '{"team": "quant"}' --format json
  uv run scripts/create_experiment.py --name momentum --restore      # bring back a deleted experiment
  mise x -- uv run scripts/create_experiment.py --name momentum      # tracking server from .env.local

An active experiment of that name is not an error: it is reported with "created": false, and a given
description or tags are applied to it. A deleted one is exit 3 unless --restore is given.

Output (JSON when stdout is not a terminal, a table when it is; --format overrides): one object with
experiment_id, name, created, restored, lifecycle_stage, artifact_location, description, tags,
tracking_uri (credentials masked) and url (http(s) servers only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
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

DESCRIPTION_TAG = "mlflow.note.content"  # the experiment description the MLflow UI shows
MAX_EXPERIMENT_NAME_LENGTH = 500  # mlflow.utils.validation
MAX_EXPERIMENT_TAG_VALUE_LENGTH = 20000


def parse_tags(pairs: list[str], tags_json: str | None) -> dict[str, str]:
    """--tag KEY=VALUE (repeatable) merged over --tags JSON; every key and value checked as MLflow would."""
    tags: dict[str, str] = {}
    if tags_json:
        try:
            loaded = json.loads(tags_json)
        except json.JSONDecodeError as exc:
            raise CliError(EXIT_USAGE, f"--tags is not valid JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(loaded, dict):
            raise CliError(EXIT_USAGE, '--tags must be a JSON object, e.g. \'{"team": "quant"}\'')
        for key, value in loaded.items():
            if isinstance(value, dict | list):
                raise CliError(EXIT_USAGE, f"--tags value for {key!r} must be a string or number, not JSON")
            tags[key] = "" if value is None else str(value)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(EXIT_USAGE, f"--tag {pair!r} is not KEY=VALUE")
        tags[key.strip()] = value
    for key, value in tags.items():
        if not key or len(key) > MAX_KEY_LENGTH or not KEY_PATTERN.match(key):
            raise CliError(
                EXIT_USAGE,
                f"tag key {key[:60]!r} is invalid: 1-{MAX_KEY_LENGTH} characters of letters, digits, "
                "and _ - . / : or space",
            )
        if key.startswith("mlflow."):
            raise CliError(EXIT_USAGE, f"tag key {key!r} is reserved by MLflow (use --description)")
        if len(value) > MAX_EXPERIMENT_TAG_VALUE_LENGTH:
            raise CliError(EXIT_USAGE, f"tag {key!r} value is longer than {MAX_EXPERIMENT_TAG_VALUE_LENGTH}")
    return tags


def validate_request(args) -> tuple[str, dict[str, str]]:
    """Everything checked before MLflow is imported or the store touched. Returns (name, tags to set)."""
    name = args.name.strip()
    if not name:
        raise CliError(EXIT_USAGE, "--name is empty: give the experiment a name")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise CliError(EXIT_USAGE, f"--name is longer than {MAX_EXPERIMENT_NAME_LENGTH} characters")
    if any(ord(ch) < 32 for ch in name):
        raise CliError(EXIT_USAGE, "--name contains control characters (newline, tab, ...)")
    tags = parse_tags(args.tag, args.tags)
    if args.description is not None:
        if len(args.description) > MAX_EXPERIMENT_TAG_VALUE_LENGTH:
            raise CliError(EXIT_USAGE, f"--description is longer than {MAX_EXPERIMENT_TAG_VALUE_LENGTH}")
        tags[DESCRIPTION_TAG] = args.description
    return name, tags


def ensure_experiment(client, name: str, tags: dict[str, str], artifact_location: str | None, restore: bool):
    """Create, restore or reuse the experiment, apply tags; returns (experiment, created, restored)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    created = restored = False
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifact_location, tags=tags)
            created = True
        except MlflowException as exc:  # created by someone else between our lookup and our create
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(name).experiment_id
        experiment = client.get_experiment(experiment_id)
    elif experiment.lifecycle_stage == "deleted":
        if not restore:
            raise CliError(
                EXIT_NOT_FOUND,
                f"experiment {name!r} (id {experiment.experiment_id}) is deleted: rerun with --restore to "
                "bring it back, or choose another --name",
            )
        client.restore_experiment(experiment.experiment_id)
        restored = True
    if not created:
        if artifact_location and artifact_location != experiment.artifact_location:
            print(
                f"warning: experiment exists with artifact location {experiment.artifact_location}; "
                "--artifact-location applies only when creating",
                file=sys.stderr,
            )
        for key, value in tags.items():
            if experiment.tags.get(key) != value:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        experiment = client.get_experiment(experiment.experiment_id)
    return experiment, created, restored


def describe(experiment, created: bool, restored: bool, tracking_uri: str) -> dict:
    tags = {k: v for k, v in experiment.tags.items() if not k.startswith("mlflow.")}
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "created": created,
        "restored": restored,
        "lifecycle_stage": experiment.lifecycle_stage,
        "artifact_location": redact(experiment.artifact_location),
        "description": experiment.tags.get(DESCRIPTION_TAG),
        "tags": tags,
        "tracking_uri": mask_uri(tracking_uri),
        "url": ui_url(tracking_uri, experiment.experiment_id),
    }


def build_parser() -> CliParser:
    parser = CliParser(
        prog="create_experiment.py",
        description="Create an MLflow experiment, or make sure it exists (idempotent).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="experiment name")
    parser.add_argument("--description", help="shown on the experiment page of the MLflow UI")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    parser.add_argument("--tags", metavar="JSON", help='tags as a JSON object, e.g. \'{"team": "quant"}\'')
    parser.add_argument("--artifact-location", metavar="URI", help="where runs store artifacts (create only)")
    parser.add_argument("--restore", action="store_true", help="restore a deleted experiment of that name")
    parser.add_argument("--format", choices=["json", "table"], help="default: table at a terminal, else json")
    parser.add_argument("--tracking-uri", metavar="URI", help="overrides MLFLOW_TRACKING_URI")
    parser.add_argument("--debug", action="store_true", help="tracebacks and MLflow logging on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv

    def action() -> int:
        args = build_parser().parse_args(argv)
        name, tags = validate_request(args)
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
        client = connect(tracking_uri, debug)
        experiment, created, restored = ensure_experiment(
            client, name, tags, args.artifact_location, args.restore
        )
        emit(describe(experiment, created, restored, tracking_uri), output_format(args.format))
        return EXIT_OK

    return run_cli(action, debug)


if __name__ == "__main__":
    status = main()
    # The interpreter's shutdown would sweep every object still alive (mlflow's, SQLAlchemy's, pandas'): 1-2 s
    # of a 6 s log (bench/RESULTS.md). Frozen objects are left to the OS; atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(status)
