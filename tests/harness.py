"""Test harness: a real MLflow tracking server with basic auth, real local stores, scripts run as users run them.

Imported by conftest.py (fixtures) and by tests that need a server of their own (fault tests kill theirs).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import inspect
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DATA = ROOT / "tests" / "data"
SCRIPT_NAMES = ("log_backtest", "query_experiments", "create_experiment", "get_metric_history")
# CI=true: a missing tool (mise, uv) is a failure, never a skip; conftest also fails a CI run with skips.
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Variables a user may have set that would leak into the scripts under test.
MLFLOW_ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_RUN_ID",
)


# Every secret the suite makes (registered where it is made) and every script output, for the secret scan
# that conftest.py runs when the session ends.
SECRETS: set[str] = set()
OUTPUTS: list[str] = []


# What starts a real server process (an MLflow tracking server, PostgreSQL, the S3 emulator, README's `mlflow
# ui`). conftest.py marks `server` every test whose code or fixtures reach one of these names, through the
# suite's own helpers too (starts_a_server), so `-m "not server"` starts none; the starters here also refuse
# to run inside a test that is not so marked (a start the static check missed fails loudly, once).
SERVER_STARTERS = frozenset({"MlflowServer", "PostgresServer", "ReadmeUi", "ThreadedMotoServer"})
# Set by conftest.py while a test without the `server` marker runs: its node id.
UNMARKED_TEST: str | None = None


def starts_a_server(func) -> bool:
    """Whether calling func may start a real server: its code (nested functions, lambdas and comprehensions
    too) names one of SERVER_STARTERS, or names a function or class of the project's own code (not the
    standard library's, not an installed package's) whose code does. Static, so it never runs anything; a
    name reached only through a string (getattr) is missed, and the starters' own guard
    (refuse_unmarked_start) catches that at run time."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None:
        return False
    if code not in _STARTS:
        _STARTS[code] = False  # while looking: a recursive helper does not loop
        _STARTS[code] = _names_a_starter(code, getattr(func, "__globals__", {}))
    return _STARTS[code]


_STARTS: dict[types.CodeType, bool] = {}
_INSTALLED = tuple(
    {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def _names_a_starter(code: types.CodeType, scope: dict) -> bool:
    names: set[str] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    if names & SERVER_STARTERS:
        return True
    modules = [m for m in scope.values() if isinstance(m, types.ModuleType) and _ours(m)]
    for name in names:
        for target in (scope.get(name), *(getattr(m, name, None) for m in modules)):
            if any(starts_a_server(f) for f in _our_functions(target)):
                return True
    return False


def _ours(obj) -> bool:
    """Defined in the project's own files (tests, their helpers), not in Python's or a package's."""
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return False
    if source is None:
        return False
    path = Path(source).resolve()
    return not any(path.is_relative_to(root) for root in _INSTALLED)


def _our_functions(target) -> list:
    """The functions a name of the project's stands for: itself, or a class's methods (properties too)."""
    if isinstance(target, types.FunctionType) and _ours(target):
        return [target]
    if isinstance(target, type) and _ours(target):
        members = [
            m.fget if isinstance(m, property) else getattr(m, "__func__", m) for m in vars(target).values()
        ]
        return [m for m in members if isinstance(m, types.FunctionType)]
    return []


def refuse_unmarked_start(what: str) -> None:
    """Called by each server starter: a test that starts a server must carry the `server` marker."""
    if UNMARKED_TEST is not None:
        pytest.fail(
            f"{UNMARKED_TEST} starts {what} but is not marked `server`: name its starter in"
            " harness.SERVER_STARTERS, or mark the test (-m 'not server' must start no server)",
            pytrace=False,
        )


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip without it locally, fail without it in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def strong_password() -> str:
    # MLflow >= 3.16.1 refuses weak admin passwords: mix classes and keep it long.
    password = "Pw-" + secrets.token_urlsafe(18) + "-9aZ"
    SECRETS.add(password)
    return password


@dataclass
class User:
    username: str
    password: str


@dataclass
class MlflowServer:
    """A real `mlflow server --app-name basic-auth` on 127.0.0.1 with proxied artifacts; its backend store is
    sqlite in root unless backend_store_uri names another (a PostgreSQL database)."""

    root: Path
    backend_store_uri: str | None = None
    # how artifacts are stored; default: proxied, the server writes them under root/artifacts
    artifact_args: tuple[str, ...] | None = None
    port: int = field(default_factory=free_port)
    admin: User = field(default_factory=lambda: User("admin", strong_password()))
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> MlflowServer:
        refuse_unmarked_start("an MLflow tracking server")
        self.root.mkdir(parents=True, exist_ok=True)
        auth_ini = self.root / "basic_auth.ini"
        auth_ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # MLflow 3.17 checks the password hash (PBKDF2) on every request unless this cache is on; it
            # caches successful checks only, so wrong passwords still fail every time.
            "auth_cache_ttl_seconds = 300\n"
        )
        env = clean_env()
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(auth_ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=self.admin.password,
            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
            # MLflow 3.x servers start a huey job runner and its worker processes by default (GenAI scorer
            # jobs; 13 processes instead of 5): the tracking API the scripts use never queues a job, and the
            # runner cost each start ~14 s of CPU and kept busy while idle (measured: 37.5 s vs 23.4 s).
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )
        self.log_path = self.root / "server.log"
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--app-name", "basic-auth",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--backend-store-uri", self.backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}",
            *(self.artifact_args or ("--artifacts-destination", str(self.root / "artifacts"))),
            "--workers", "2",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_group(self.process, 15)

    def kill(self) -> None:
        """Die abruptly, as a crashed server does."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, method: str, path: str, body: dict | None = None, user: User | None = None) -> dict:
        """Call the server's REST API as a user (admin by default)."""
        user = user or self.admin
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        token = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        return json.loads(text) if text.strip() else {}

    def create_user(self, username: str, password: str | None = None) -> User:
        user = User(username, password or strong_password())
        SECRETS.add(user.password)
        self.api(
            "POST", "/api/2.0/mlflow/users/create", {"username": user.username, "password": user.password}
        )
        return user

    def grant(self, user: User, experiment_id: str, permission: str = "READ") -> None:
        """Give a user a permission (READ, USE, EDIT, MANAGE) on one experiment (MLflow 3.17 API)."""
        body = {
            "username": user.username,
            "resource_type": "experiment",
            "resource_id": str(experiment_id),
            "permission": permission,
        }
        self.api("POST", "/api/3.0/mlflow/users/permissions/grant", body)

    def env(self, user: User | None = None) -> dict[str, str]:
        """Environment for a script talking to this server as a user (admin by default)."""
        user = user or self.admin
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": user.username,
            "MLFLOW_TRACKING_PASSWORD": user.password,
        }

    def client(self, user: User | None = None):
        """An MlflowClient in the test process, authenticated as a user (admin by default). MlflowClient reads
        credentials from os.environ on every request, so they stay set there (module-scoped seeding uses this;
        tests use the `client_for` fixture, which undoes its change)."""
        from mlflow import MlflowClient

        env = self.env(user)
        os.environ.update({k: v for k, v in env.items() if k.startswith("MLFLOW_TRACKING_")})
        return MlflowClient(env["MLFLOW_TRACKING_URI"])


def stop_group(process: subprocess.Popen | None, grace: float) -> None:
    """End a process group the suite started: SIGTERM, then SIGKILL after `grace` seconds."""
    if process and process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def shared_process(state: Path, start) -> dict:
    """One server process for every xdist worker of a session: the first worker to ask calls start() (under a
    lock on state's folder, so the others wait for it instead of starting their own), which returns what the
    others need as JSON: `pid` (the process group the controller stops when the session ends,
    stop_shared_process), `root` (the folder that controller scans for secrets then), `secrets`; it is
    written into state, and the others read it. Every worker registers the secrets: each one's secret scan
    looks for them."""
    import fcntl

    with open(state.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if state.exists():
            saved = json.loads(state.read_text())
        else:
            saved = start()
            state.write_text(json.dumps(saved))
    SECRETS.update(saved["secrets"])
    return saved


def shared_server(state: Path, start) -> MlflowServer:
    """The session's MlflowServer (start() makes it, with users alice and reader), one for all xdist
    workers (shared_process)."""

    def started() -> dict:
        server = start()
        users = {name: vars(getattr(server, name)) for name in ("alice", "reader")}
        return {
            "root": str(server.root), "port": server.port, "pid": server.process.pid,
            "admin": vars(server.admin), "users": users,
            "secrets": [server.admin.password, *(u["password"] for u in users.values())],
        }  # fmt: skip

    saved = shared_process(state, started)
    server = MlflowServer(Path(saved["root"]), port=saved["port"], admin=User(**saved["admin"]))
    server.log_path = server.root / "server.log"
    for name, user in saved["users"].items():
        setattr(server, name, User(**user))
    return server


def stop_shared_process(state: Path) -> list[str]:
    """Stop the process group shared_process started (if one was), then scan its folder for the session's
    secrets: what it wrote after the starting worker's own scan. Returns where they leaked."""
    if not state.exists():
        return []
    saved = json.loads(state.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(saved["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _group_alive(saved["pid"]):
            time.sleep(0.2)
        os.killpg(saved["pid"], signal.SIGKILL)
    state.unlink()
    SECRETS.update(saved["secrets"])
    leaks, _ = scan_for_secrets([Path(saved["root"])])
    return leaks


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies do not: its parent, the worker, has gone)."""
    import psutil

    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


@dataclass
class ReadmeUi:
    """README's `mlflow ui` line exactly as written, plus --host 127.0.0.1 --port N, run in folder (so it
    serves folder's ./mlflow.db). Its environment turns off what the UI does not need, as for MlflowServer:
    `mlflow ui` is `mlflow server`, which by default starts 4 workers and a job runner (13 processes, ~60 s
    to answer on a busy 2-core machine); 2 workers and no job runner serve the same pages."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240) -> ReadmeUi:
        """Returns once /health answers."""
        refuse_unmarked_start("README's mlflow ui")
        line = re.findall(r"(?m)^uvx .*mlflow ui.*$", (ROOT / "README.md").read_text())[0]
        uvx = shutil.which("uvx") or require_tool("uvx")
        env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_WORKERS="2")
        with open(self.folder / "ui.log", "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {line.replace('uvx', uvx, 1)} --host 127.0.0.1 --port {self.port}"],
                cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                        if response.status == 200:
                            return self
                except OSError:
                    pass
                log_tail = (self.folder / "ui.log").read_text()[-2000:]
                assert self.process.poll() is None, f"mlflow ui exited:\n{log_tail}"
                assert time.monotonic() < deadline, (
                    f"README's mlflow ui did not answer within {timeout:.0f} s"
                )
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_group(self.process, 30)


def shared_ui(state: Path, start) -> ReadmeUi:
    """The session's ReadmeUi (start() makes it), one for all xdist workers (shared_process)."""

    def started() -> dict:
        ui = start()
        return {"root": str(ui.folder), "port": ui.port, "pid": ui.process.pid, "secrets": []}

    saved = shared_process(state, started)
    return ReadmeUi(Path(saved["root"]), port=saved["port"])


def postgres_bindir() -> Path:
    """Where PostgreSQL's server programs are: Debian keeps them off PATH, in /usr/lib/postgresql/<ver>/bin
    (the newest version wins); elsewhere initdb is on PATH. Skip without them locally, fail in CI."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(part) for part in p.parent.parent.name.split(".") if part.isdigit()],
        reverse=True,
    )
    found = debian[0] if debian else (Path(shutil.which("initdb")) if shutil.which("initdb") else None)
    if found is None or not (found.parent / "pg_ctl").exists():
        message = "PostgreSQL (initdb, pg_ctl) is not installed (.ci/run installs Debian's postgresql)"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return found.parent


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) in its own temp folder, on 127.0.0.1 and a free port,
    password-authenticated (scram-sha-256). initdb refuses to run as root (CI runs as root), so as root the
    cluster belongs to an unprivileged system user: `postgres` where the package made it, else `nobody`."""

    port: int = field(default_factory=free_port)
    user: str = "mlflow"
    password: str = field(default_factory=strong_password)
    folder: Path | None = None

    def _as_owner(self) -> dict:
        """subprocess arguments that run a command as the cluster's owner."""
        if os.geteuid() != 0:
            return {}
        import pwd

        owner = next(pwd.getpwnam(n) for n in ("postgres", "nobody") if _user_exists(n))
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def _run(self, *command: str) -> None:
        as_owner = self._as_owner()
        env = clean_env(LC_ALL="C", LANG="C")
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.folder, **as_owner)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self) -> PostgresServer:
        refuse_unmarked_start("a PostgreSQL cluster")
        bindir = postgres_bindir()
        # Not under pytest's temp folder: that is private to root (0700), which the owner cannot enter.
        self.folder = Path(tempfile.mkdtemp(prefix="mlflow-python-pg-"))
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        as_owner = self._as_owner()
        if as_owner:
            for path in (self.folder, pwfile):
                os.chown(path, as_owner["user"], as_owner["group"])
        try:
            self._run(
                str(bindir / "initdb"), "--pgdata", str(self.folder / "data"), "--username", self.user,
                "--pwfile", str(pwfile), "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-sync",
            )  # fmt: skip
        finally:
            pwfile.unlink()
        # fsync off: a throwaway cluster need not survive a power cut, and 2 cores are busy enough
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off -c max_connections=200"
        self._run(
            str(bindir / "pg_ctl"), "--pgdata", str(self.folder / "data"), "--log", str(self.folder / "pg.log"),
            "--options", options, "--wait", "--timeout", "120", "start",
        )  # fmt: skip
        return self

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def sql(self, database: str, statement: str) -> None:
        """Run one statement outside a transaction (CREATE DATABASE, ANALYZE)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=database,
            autocommit=True,
        ) as connection:  # fmt: skip
            connection.execute(statement)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URI (as a user writes it: the password in the URI)."""
        self.sql("postgres", f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def stop(self) -> None:
        if self.folder is None or not self.folder.exists():
            return
        with contextlib.suppress(RuntimeError):
            self._run(
                str(postgres_bindir() / "pg_ctl"), "--pgdata", str(self.folder / "data"), "--mode", "immediate",
                "--wait", "stop",
            )  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any MLflow settings a developer may have exported, and with
    Python's bytecode cache on: PYTHONDONTWRITEBYTECODE=1 (set in many containers and CI images; the scripts
    turn it off for themselves) made every server the suite starts, and each of its workers, compile MLflow
    from source again (a test server's start: 22 s of CPU, 11 s once the cache is written)."""
    env = {k: v for k, v in os.environ.items() if k not in (*MLFLOW_ENV_VARS, "PYTHONDONTWRITEBYTECODE")}
    env.update(extra)
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self):
        return json.loads(self.stdout)


@dataclass(frozen=True)
class ProcessState:
    """What a script's main() may change in the process that calls it, and the in-process runner restores
    after every call: the environment (the scripts setdefault MLflow's HTTP limits, its log level and
    MPLBACKEND), the folder, the signal handlers, sys.stdout/sys.stderr, the loggers' levels the scripts set,
    MLflow's global tracking URI (mlflow.set_tracking_uri, which also sets MLFLOW_TRACKING_URI), and the
    objects connect() froze out of the collector (gc.freeze: a test process that kept them frozen would never
    collect the garbage cycles alive at each call)."""

    environ: dict[str, str]
    cwd: str
    handlers: dict[int, object]
    streams: tuple
    levels: dict[str, int]
    tracking_uri: str | None

    LOGGERS: ClassVar[tuple[str, ...]] = ("mlflow", "alembic", "urllib3", "sqlalchemy")

    @classmethod
    def now(cls) -> ProcessState:
        import logging

        from mlflow.tracking._tracking_service import utils

        return cls(
            environ=dict(os.environ),
            cwd=os.getcwd(),
            handlers={s: signal.getsignal(s) for s in STOP_SIGNALS},
            streams=(sys.stdout, sys.stderr),
            levels={name: logging.getLogger(name).level for name in cls.LOGGERS},
            tracking_uri=utils._tracking_uri,  # private: MLflow has no getter for the unresolved value
        )

    def restore(self) -> None:
        import logging

        from mlflow.tracking._tracking_service import utils

        utils._tracking_uri = self.tracking_uri
        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)
        sys.stdout, sys.stderr = self.streams
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        gc.unfreeze()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Under pytest (conftest.scratch_folders): the folder under the session's basetemp in which a script runs when
# its test names none. A run writes relative to its folder (a new sqlite store's experiments keep their
# artifacts in ./mlruns there): in the repository that was out of the tests' tmp folders and of the secret scan.
SCRATCH: Path | None = None


def default_cwd() -> Path:
    """A fresh folder under SCRATCH for one run; the repository outside pytest."""
    return Path(tempfile.mkdtemp(dir=SCRATCH)) if SCRATCH is not None else ROOT


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> Result:
    """Run `uv run scripts/NAME.py ARGS` exactly as a user would; stdout is a pipe, so output is JSON."""
    uv = require_tool("uv")
    command = [uv, "run", "--quiet", str(SCRIPTS / f"{name}.py"), *args]
    started = time.monotonic()
    completed = subprocess.run(
        command,
        cwd=cwd or default_cwd(),
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    OUTPUTS.append(completed.stdout + completed.stderr)
    return Result(completed.returncode, completed.stdout, completed.stderr, time.monotonic() - started)


def scan_for_secrets(roots: list[Path]) -> tuple[list[str], int]:
    """Where any registered secret appears: script outputs, files under roots, the git tree.
    Files that hold a secret by design (.env.local written by the mise tests) are not scanned."""
    leaks: list[str] = []
    needles = [s.encode() for s in SECRETS]
    for i, text in enumerate(OUTPUTS):
        leaks += [f"script output #{i}" for n in needles if n.decode() in text]
    scanned = 0
    for root in roots:
        for path in root.rglob("*") if root.exists() else []:
            if not path.is_file() or path.is_symlink() or path.name == ".env.local":
                continue
            scanned += 1
            data = path.read_bytes()
            leaks += [str(path) for n in needles if n in data]
    for secret in SECRETS:
        found = subprocess.run(["git", "grep", "-q", "-F", secret], cwd=ROOT, capture_output=True)
        if found.returncode == 0:
            leaks.append("git tree")
    return sorted(set(leaks)), scanned


def assert_clean_error(result: Result, code: int, *needles: str) -> None:
    """A failure the way our contract says: the exit code, one line on stderr, no traceback, empty stdout."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message on stderr"
    error_lines = [line for line in lines if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    for needle in needles:
        assert needle.lower() in error_lines[0].lower(), (needle, error_lines[0])


class BlackHoleServer:
    """Accepts TCP connections on 127.0.0.1 and never answers: a hung tracking server."""

    def __init__(self):
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[float] = []  # monotonic time of each accepted connection
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self._connections.append(connection)

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self.sock.close()


class StatusServer:
    """An HTTP server on 127.0.0.1 that answers every request with one status (e.g. 503), counting them."""

    def __init__(
        self, status: int = 503, body: bytes = b"upstream failure", content_type: str = "text/plain"
    ):
        import http.server
        import threading

        outer = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                outer.requests.append(f"{self.command} {self.path}")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
