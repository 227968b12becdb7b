"""The rules every script and the bundle keep: shared preamble, locks, light --help, valid skill, no secrets."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from harness import (
    ROOT,
    SCRIPT_NAMES,
    SCRIPTS,
    Result,
    assert_clean_error,
    clean_env,
    require_tool,
    run_script,
)

PREAMBLE_START = (
    "# ---- shared preamble: identical in all four scripts (tests/test_conventions.py checks) ----"
)
PREAMBLE_END = "# ---- end of shared preamble ----"
HEAVY_MODULES = ("mlflow", "quantstats", "pandas", "numpy", "matplotlib", "scipy", "pyarrow")


def script_path(name: str) -> Path:
    return SCRIPTS / f"{name}.py"


def marked_block(name: str, start: str, end: str) -> str:
    """The text between a script's start and end markers, each present exactly once."""
    text = script_path(name).read_text()
    assert text.count(start) == 1 and text.count(end) == 1, f"{name}: block markers {start!r}"
    return text.split(start, 1)[1].split(end, 1)[0]


def preamble(name: str) -> str:
    return marked_block(name, PREAMBLE_START, PREAMBLE_END)


def pep723(name: str) -> dict:
    block = re.search(r"(?ms)^# /// script\n(.*?)^# ///$", script_path(name).read_text())
    assert block, f"{name}: no PEP 723 block"
    return tomllib.loads("".join(line[2:] + "\n" for line in block.group(1).splitlines()))


def test_the_four_scripts_exist():
    assert sorted(p.stem for p in SCRIPTS.glob("*.py")) == sorted(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_shared_preamble_is_identical(name):
    assert preamble(name) == preamble("create_experiment")


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_import_nothing_of_each_other(name):
    text = script_path(name).read_text()
    for other in SCRIPT_NAMES:
        assert not re.search(rf"^\s*(from|import)\s+{other}\b", text, re.M), f"{name} imports {other}"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_pep723_metadata_and_lockfile_is_current(name):
    meta = pep723(name)
    assert meta["requires-python"] == ">=3.11"
    assert any(dep.startswith("mlflow") for dep in meta["dependencies"])
    lock = Path(f"{script_path(name)}.lock")
    assert lock.is_file(), f"run: uv lock --script scripts/{name}.py"
    uv = require_tool("uv")
    check = subprocess.run(
        [uv, "lock", "--script", str(script_path(name)), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert check.returncode == 0, check.stderr
    # The test server and in-process checks run the same mlflow the scripts are locked to.
    locked = re.search(r'\[\[package\]\]\nname = "mlflow(?:-skinny)?"\nversion = "([^"]+)"', lock.read_text())
    assert locked, (locked and locked.group(1), version("mlflow"))
    assert locked.group(1) == version("mlflow"), (locked and locked.group(1), version("mlflow"))


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_help_imports_nothing_heavy_and_lists_exit_codes(name):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(script_path(name))!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        f"print('HEAVY:', sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("HEAVY: []"), done.stdout[-300:]
    help_text = done.stdout
    for code in range(6):
        assert re.search(rf"^\s+{code}\s+\S", help_text, re.M), f"exit code {code} missing from --help"
    assert "--format" in help_text
    assert "--tracking-uri" in help_text
    assert "--debug" in help_text


EXIT_LINE = re.compile(r"^  (\d+)  (\S.*)$")
DOCUMENTED_EXITS = {"README.md": "## Output and exit codes", "SKILL.md": "## Exit codes (every script)"}


def help_exit_codes(name: str) -> dict[str, dict[int, str]]:
    """{parser's prog: {exit code: its line}} from the --help epilog of the script and each subcommand."""
    probe = (
        "import argparse, json, runpy, sys\n"
        f"parser = runpy.run_path({str(script_path(name))!r}, run_name='help_probe')['build_parser']()\n"
        "parsers = [parser] + [p for a in parser._actions if isinstance(a, argparse._SubParsersAction)\n"
        "                      for p in a.choices.values()]\n"
        "print(json.dumps({p.prog: p.format_help() for p in parsers}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    found = {}
    for prog, text in json.loads(done.stdout).items():
        assert text.count("\nexit codes:\n") == 1, f"{prog}: no (single) exit codes list in --help"
        block = text.split("\nexit codes:\n", 1)[1].split("\n\n", 1)[0]
        found[prog] = {int(m.group(1)): m.group(2) for m in map(EXIT_LINE.match, block.splitlines()) if m}
    return found


def documented_exit_codes(doc: str, name: str) -> dict[int, str]:
    """{exit code: its table row} that the doc's exit-code table gives for the script `name`: a row that says
    "`script` only" belongs to that script alone, every other row to all four."""
    section = (ROOT / doc).read_text().split(DOCUMENTED_EXITS[doc] + "\n", 1)[1].split("\n## ", 1)[0]
    codes = {}
    for row in re.findall(r"(?m)^\| ([\d, ]+) \|(.*)$", section):
        only = re.findall(r"`(\w+)` only", row[1])
        if not only or name in only:
            codes.update({int(code): row[1] for code in row[0].split(",")})
    return codes


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_help_exit_codes_are_the_documented_ones(name):
    """Each --help (every subcommand's too) lists exactly the exit codes that README.md and SKILL.md document
    for that script, and a signal's code names the same signal in both."""
    signal_names = {129: "SIGHUP", 130: "Ctrl-C", 143: "SIGTERM"}
    for prog, listed in help_exit_codes(name).items():
        assert {0, 1, 2, 3, 4, 5, 130} <= set(listed), (prog, sorted(listed))
        for doc in DOCUMENTED_EXITS:
            documented = documented_exit_codes(doc, name)
            assert sorted(listed) == sorted(documented), (prog, doc, sorted(listed), sorted(documented))
            for code, signal_name in signal_names.items():
                if code in listed:
                    assert signal_name in listed[code] and signal_name in documented[code], (prog, doc, code)


# The least each script needs to get past argparse's check of required arguments.
MINIMAL_ARGS = {
    "log_backtest": ["--returns", "r.csv"],
    "query_experiments": ["experiments"],
    "create_experiment": ["--name", "x"],
    "get_metric_history": ["--run-id", "x", "--metrics", "equity"],
}


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_usage_error_is_one_line_exit_2(name):
    result = run_script(name, *MINIMAL_ARGS[name], "--no-such-flag")
    assert_clean_error(result, 2, "--no-such-flag", "--help")


# A prefix of a long flag, and the flag argparse took it for while abbreviations were allowed.
ABBREVIATIONS = {
    "log_backtest": ["--returns", "r.csv", "--periods", "252"],  # was --periods-per-year
    "query_experiments": ["runs", "--experiment", "x", "--max-res", "5"],  # was --max-results
    "get_metric_history": ["--run-id", "abc", "--metric", "equity"],  # was --metrics
    "create_experiment": ["--name", "x", "--desc", "text"],  # was --description
}


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_prefix_of_a_flag_is_refused(scripts, name):
    """allow_abbrev=False (in the shared CliParser): a guessed prefix is a usage error, never another flag."""
    argv = ABBREVIATIONS[name]
    parser = getattr(scripts, name).build_parser()
    with pytest.raises(getattr(scripts, name).CliError) as refused:
        parser.parse_args(argv)
    assert refused.value.code == 2
    assert f"unrecognized arguments: {argv[-2]}" in str(refused.value)


def test_skill_md_is_valid_per_agent_skills_spec(tmp_path):
    skill = tmp_path / "mlflow-python"
    skill.mkdir()
    shutil.copy(ROOT / "SKILL.md", skill / "SKILL.md")
    validator = shutil.which("agentskills", path=str(Path(sys.executable).parent)) or require_tool(
        "agentskills"
    )
    done = subprocess.run([validator, "validate", str(skill)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    front = (ROOT / "SKILL.md").read_text().split("---")[1]
    description = re.search(r"^description: (.+)$", front, re.M).group(1)
    assert len(description) <= 1024
    for phrase in (
        "log backtest", "MLflow metrics", "experiment tracking", "search runs", "mlflow query",
        "metric history", "create experiment",
    ):  # fmt: skip
        assert phrase.lower() in description.lower(), phrase
    allowed = re.search(r"^allowed-tools: (.+)$", front, re.M).group(1)
    assert "," not in allowed
    assert len(allowed.split()) >= 2  # the spec's space-separated form


def test_bundle_layout():
    for path in ("SKILL.md", ".mise.toml", ".env.local.example", "README.md", ".gitignore", ".ci/run"):
        assert (ROOT / path).is_file(), path
    for folder in ("scripts", "references", "tests"):
        assert (ROOT / folder).is_dir(), folder


def test_gitignore_keeps_secrets_and_stores_out():
    git = require_tool("git")
    for path in (".env.local", "mlflow.db", "mlruns/0/meta.yaml", "mlartifacts/x", ".venv/bin/python"):
        done = subprocess.run([git, "check-ignore", "-q", path], cwd=ROOT)
        assert done.returncode == 0, f"{path} is not git-ignored"
    tracked = subprocess.run([git, "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [p for p in tracked if p.endswith((".env.local", "mlflow.db")) or p.startswith("mlruns/")]


def test_env_example_has_placeholders_only():
    text = (ROOT / ".env.local.example").read_text()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # fmt: skip
        assert var in text, var
    values = dict(
        line.lstrip("# ").split("=", 1) for line in text.splitlines() if re.match(r"^#? ?MLFLOW_\w+=", line)
    )
    for key in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert values[key].startswith("your-"), f"{key} must be a placeholder"


def test_an_environment_without_mlflow_gets_the_repair_command(tmp_path):
    """uv deletes the files mlflow and mlflow-skinny share when a cached script environment moves from one to
    the other (query_experiments and create_experiment moved to mlflow-skinny). A script that cannot import
    mlflow says how to repair its environment, in one line, exit 1."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), str(script_path("create_experiment")), "--name", "never-created"],
        capture_output=True, text=True, cwd=tmp_path,
        env=clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )  # fmt: skip
    result = Result(done.returncode, done.stdout, done.stderr, 0.0)
    assert_clean_error(result, 1, "mlflow is missing", "uv run --reinstall", "create_experiment.py --help")
    assert not (tmp_path / "mlflow.db").exists()


# ---- what the scripts must agree on but do not share ---------------------------------------------------------
def test_key_metrics_agree(scripts):
    """log_backtest logs (and describes) these first; query_experiments shows them by default."""
    assert set(scripts.log_backtest.KEY_METRICS) == set(scripts.query_experiments.KEY_METRICS)


def test_better_direction_agrees(scripts):
    """Which way is better per metric: query_experiments marks the best value; log_backtest documents it.
    "zero" (closest to 0 wins) is said of metrics logged as negative fractions: there higher is better."""
    specs = {spec.name: spec for spec in scripts.log_backtest.METRICS}
    as_higher = {"higher": True, "lower": False, "zero": True}
    for name, direction in scripts.query_experiments.METRIC_DIRECTIONS.items():
        assert name in specs, f"query_experiments ranks {name!r}, which log_backtest does not log"
        assert specs[name].higher_is_better == as_higher[direction], name


def test_experiment_lookup_is_the_same_code(scripts):
    """Experiment by name or id, with close-name suggestions: one function, copied, kept identical."""
    import inspect

    for function in ("find_experiment", "closest"):
        ours = inspect.getsource(getattr(scripts.query_experiments, function))
        theirs = inspect.getsource(getattr(scripts.get_metric_history, function))
        assert ours == theirs, function


DSR_START = "# ---- deflated Sharpe ratio: identical in query_experiments.py and log_backtest.py"
DSR_END = "# ---- end of deflated Sharpe ratio ----"


def test_deflated_sharpe_is_the_same_in_both_scripts(scripts):
    """The scripts share no code, so the deflated Sharpe ratio lives in log_backtest (sweep parents) and in
    query_experiments (deflate): one identical block, and the same numbers from it."""
    blocks = [marked_block(name, DSR_START, DSR_END) for name in ("log_backtest", "query_experiments")]
    assert blocks[0] == blocks[1]
    lb, qe = scripts.log_backtest, scripts.query_experiments
    for sharpe, trials, bars, skew, kurtosis in (
        (0.158, [0.01, 0.05, 0.158, -0.02, 0.07], 1250, -3.0, 10.0),
        (0.02, [0.02, 0.01], 300, 0.4, 3.2),
        (0.1, [0.1], 300, 0.0, 3.0),
    ):
        got = lb.deflated_sharpe_ratio(sharpe, trials, bars, skew, kurtosis)
        assert got == qe.deflated_sharpe_ratio(sharpe, trials, bars, skew, kurtosis) or all(
            math.isnan(v) for v in got + qe.deflated_sharpe_ratio(sharpe, trials, bars, skew, kurtosis)
        )


PERIODS_START = "# ---- stress windows: identical in query_experiments.py and log_backtest.py"
PERIODS_END = "# ---- end of stress windows ----"


@pytest.mark.parametrize("compounded", [True, False], ids=["compounded", "simple"])
def test_stress_windows_and_period_values_agree_in_both_scripts(scripts, tmp_path, compounded):
    """log_backtest logs the period tables (pandas); query_experiments periods recomputes a run logged before
    they existed from its returns.csv (plain Python: that script has no pandas): one identical block of
    stress windows, and the same values from both."""
    import pandas as pd

    blocks = [
        marked_block(name, PERIODS_START, PERIODS_END) for name in ("log_backtest", "query_experiments")
    ]
    assert blocks[0] == blocks[1]
    index = pd.bdate_range("2007-11-05", periods=700)
    r = pd.Series([0.003 * ((i * 7) % 11 - 5) for i in range(700)], index=index, name="returns")
    r.rename_axis("date").to_csv(tmp_path / "returns.csv", float_format="%.17g")
    params = {"periods_per_year": "252", "compounded": str(compounded).lower(), "rf": "0.03"}
    tables = scripts.log_backtest.period_tables(r, 252.0, compounded, 0.03)
    for kind in scripts.log_backtest.PERIOD_KINDS:
        table = tables.by(kind)
        for metric in scripts.log_backtest.PERIOD_STATS:
            got, why = scripts.query_experiments.recomputed_values(
                tmp_path / "returns.csv", kind, metric, params
            )
            assert why is None
            want = dict(zip(table["name" if kind == "stress" else "period"], table[metric], strict=True))
            assert got == pytest.approx(want, rel=1e-9, nan_ok=True), (kind, metric)
