"""Docs as tests: every command shown in SKILL.md, README.md and references/*.md runs, and succeeds.

Rules for writing the docs (this test enforces them):
- Every ```bash block is run, one command at a time (a line ending in `\\` continues), in a folder holding
  the skill's scripts and sample files: returns.csv, prices.csv, sweep.csv, benchmark.csv (daily, seeded)
  and tests/data/example_returns.csv.
- Plain `uv run scripts/…` commands run against a local store seeded with log_backtest runs: experiment
  `backtests` (runs `returns` and `prices`) and experiment `sweeps` (a 3-column sweep). Commands starting
  with `mise x --` or `mise run` run through real mise, with a .env.local that points at the test server,
  which is seeded the same way.
- Placeholders are replaced with real values from the seeded store: <RUN_ID>, <RUN_ID_2> (the two runs of
  `backtests`), <PARENT_RUN_ID> (the sweep's parent run), <COMMIT_PREFIX> (the folder is a git repository;
  the first 8 characters of the commit the runs were logged at).
- A command expected to fail ends with the comment `# exit N`; every other command must exit 0.
- A block that cannot run here says why on the line before its fence: `<!-- not-run: reason -->`.
- ```python blocks run with the test environment's Python, in the same folder, after the bash blocks of the
  same file (they may read files the bash commands wrote).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import DATA, OUTPUTS, ROOT, clean_env, require_tool

DOC_FILES = [ROOT / "SKILL.md", ROOT / "README.md", *sorted((ROOT / "references").glob("*.md"))]
BLOCK = re.compile(
    r"(?ms)^(?:<!-- (?P<marker>not-run: [^>]+|test-command) -->\n)?```(?P<lang>bash|sh|shell|python)\n(?P<body>.*?)^```"
)
EXPECTED_EXIT = re.compile(r"\s+#\s*exit\s+(\d+)\s*$")


@dataclass
class Command:
    doc: str
    text: str
    expected: int
    lang: str


def extract(path: Path) -> tuple[list[Command], list[str]]:
    """Commands to run and the reasons of blocks that are not run."""
    commands, not_run = [], []
    for match in BLOCK.finditer(path.read_text()):
        marker, lang, body = match.group("marker"), match.group("lang"), match.group("body")
        if marker:
            not_run.append(marker)
            continue
        if lang == "python":
            commands.append(Command(path.name, body, 0, "python"))
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            expected = EXPECTED_EXIT.search(line)
            code = int(expected.group(1)) if expected else 0
            line = EXPECTED_EXIT.sub("", line) if expected else re.sub(r"\s+#.*$", "", line)
            commands.append(Command(path.name, line, code, "bash"))
    return commands, not_run


def test_every_block_runs_or_says_why_not():
    for path in DOC_FILES:
        text = path.read_text()
        fences = re.findall(r"(?m)^```(?:bash|sh|shell|python)\n", text)
        blocks = list(BLOCK.finditer(text))
        assert len(blocks) == len(fences), f"{path.name}: a code block the extractor cannot read"
        for block in blocks:
            marker = block.group("marker") or ""
            if marker.startswith("not-run:"):
                assert len(marker) > len("not-run: ") + 10, f"{path.name}: say why a block is not run"
        untyped = re.findall(r"(?m)^```\n(?:uv|mise|python) ", text)
        assert not untyped, f"{path.name}: command blocks need a language (```bash)"


def sample_files(folder: Path) -> None:
    rng = np.random.default_rng(7)
    index = pd.bdate_range("2019-01-02", periods=504, name="date")
    returns = pd.Series(rng.normal(0.0005, 0.01, len(index)), index=index, name="returns")
    returns.to_frame().to_csv(folder / "returns.csv")
    (100 * (1 + returns).cumprod()).rename("close").to_frame().to_csv(folder / "prices.csv")
    sweep = pd.DataFrame(
        rng.normal(0.0004, 0.01, (len(index), 3)), index=index, columns=["fast", "medium", "slow"]
    )
    sweep.to_csv(folder / "sweep.csv")
    pd.Series(rng.normal(0.0003, 0.009, len(index)), index=index, name="spy").to_frame().to_csv(
        folder / "benchmark.csv"
    )


def seed(run_in_process, env: dict[str, str], folder: Path) -> dict[str, str]:
    """The docs' world: experiment `backtests` with two runs, experiment `sweeps` with one sweep. Logged in
    this process (in the docs' folder, so the git commit is recorded as a process would): the documented
    commands that run against it are the processes under test."""
    ids = {}
    for key, args in (
        ("<RUN_ID>", ["--returns", "returns.csv", "--run-name", "returns"]),
        ("<RUN_ID_2>", ["--returns", "prices.csv", "--prices", "--run-name", "prices"]),
        ("<PARENT_RUN_ID>", ["--returns", "sweep.csv", "--experiment", "sweeps", "--no-tearsheet"]),
    ):
        if key != "<PARENT_RUN_ID>":
            args = [*args, "--experiment", "backtests", "--no-tearsheet"]
        result = run_in_process("log_backtest", *args, env=env, cwd=folder)
        assert result.returncode == 0, result.stderr
        out = result.json()
        ids[key] = out.get("parent_run_id") or out["run_id"]
    return ids


@pytest.fixture(scope="module")
def docs_world(tmp_path_factory, mlflow_server, run_in_process):
    folder = tmp_path_factory.mktemp("docs") / "mlflow-python"
    folder.mkdir()
    for item in ("scripts", "references", "SKILL.md", "README.md", ".mise.toml", ".env.local.example"):
        (folder / item).symlink_to(ROOT / item)
    (folder / "tests").mkdir()
    (folder / "tests" / "data").symlink_to(DATA)
    sample_files(folder)
    commit = commit_samples(folder)
    local = {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'docs-store.db'}"}
    server_user = mlflow_server.alice
    (folder / ".env.local").write_text(
        f"MLFLOW_TRACKING_URI={mlflow_server.url}\n"
        f"MLFLOW_TRACKING_USERNAME={server_user.username}\n"
        f"MLFLOW_TRACKING_PASSWORD={server_user.password}\n"
    )
    home = folder.parent / "home"
    home.mkdir()
    mise_env = {"HOME": str(home), "MISE_TRUSTED_CONFIG_PATHS": str(folder), "MISE_YES": "1"}
    code = {"<COMMIT_PREFIX>": commit[:8]}
    return {
        "folder": folder,
        "local": (local, {**seed(run_in_process, local, folder), **code}),
        "server": (mise_env, {**seed(run_in_process, mlflow_server.env(server_user), folder), **code}),
    }


def commit_samples(folder: Path) -> str:
    """The docs' folder is a user's project under git (branch main), as log_backtest records it."""
    git = [require_tool("git"), "-C", str(folder), "-c", "user.name=quant", "-c", "user.email=q@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "returns.csv", "prices.csv", "sweep.csv", "benchmark.csv"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "samples"], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def run_command(command: Command, world) -> subprocess.CompletedProcess:
    uses_mise = command.text.startswith("mise ")
    env, ids = world["server"] if uses_mise else world["local"]
    text = command.text
    for placeholder, value in ids.items():
        text = text.replace(placeholder, value)
    assert not re.search(r"<[A-Z_]+>", text), f"unknown placeholder in: {command.text}"
    if uses_mise:
        require_tool("mise")
    if command.lang == "python":
        argv = [sys.executable, "-c", text]
    else:
        argv = ["bash", "-c", f"set -o pipefail\n{text}"]
    done = subprocess.run(
        argv, cwd=world["folder"], env=clean_env(**env), capture_output=True, text=True, timeout=600
    )
    OUTPUTS.append(done.stdout + done.stderr)  # the session's secret scan reads these too
    return done


ALL_COMMANDS = [c for path in DOC_FILES for c in extract(path)[0]]


@pytest.mark.server
@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[f"{c.doc}:{i}" for i, c in enumerate(ALL_COMMANDS)])
def test_documented_command_works(command, docs_world):
    done = run_command(command, docs_world)
    assert done.returncode == command.expected, (command.text, done.returncode, done.stderr[-800:])
    assert "Traceback" not in done.stderr, done.stderr[-800:]


def test_docs_have_commands_to_run():
    assert len(ALL_COMMANDS) >= 10, "the docs show fewer than 10 runnable commands"
    assert any(c.text.startswith("mise x -- uv run scripts/") for c in ALL_COMMANDS)


def test_readme_ui_command_serves_the_local_store(mlflow_ui):
    """README's `mlflow ui` line, run as written (plus a free port; the session's, tests/conftest.py), answers
    /health and serves the store of the folder it runs in (tests/test_browser.py looks at what it shows)."""
    import urllib.request

    with urllib.request.urlopen(f"{mlflow_ui.url}/health", timeout=10) as response:
        assert response.status == 200
    assert (mlflow_ui.folder / "mlflow.db").is_file()


def test_metrics_reference_is_generated_from_the_script_table(scripts):
    """references/quantstats-metrics.md ends with exactly the table log_backtest.py computes from."""
    text = (ROOT / "references" / "quantstats-metrics.md").read_text()
    table = scripts.log_backtest.metric_table_markdown()
    assert text.endswith(table), "regenerate the table: it no longer matches log_backtest.METRICS"
    assert text.count("\n| `") == len(scripts.log_backtest.METRICS)
