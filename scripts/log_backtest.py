# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "mlflow>=3.17,<3.18",
#     "quantstats==0.0.86",
#     "pandas>=2.2",
#     "pyarrow>=15",
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
import hashlib
import json
import math
import os
import re
import sys
import time
import traceback
import warnings as warnings_module  # `warnings` is the name of our list of user-facing warnings
from dataclasses import dataclass, field
from pathlib import Path

# ---- shared preamble: identical in all four scripts (tests/test_conventions.py checks) ----
EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4, 5
EXIT_CODES_HELP = """exit codes:
  0  ok
  1  unexpected error (rerun with --debug for the traceback)
  2  bad usage or bad input (nothing was written)
  3  not found: experiment, run or metric
  4  authentication or permission: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN
  5  tracking server unreachable, timed out or failing: MLFLOW_TRACKING_URI"""
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
# PYTHONDONTWRITEBYTECODE=1 (set in many containers and CI images, this machine's too) makes Python compile
# mlflow, pandas and quantstats from source on every run: `import mlflow` takes 3.4 s instead of 1.2 s
# (measured). Everything this script imports beyond the standard library lives in uv's cached environment,
# never in your tree, so its bytecode is cached there. (uv's `compile-bytecode` setting was measured too: it
# re-checks the whole environment on every `uv run`, +0.26 s even for --help.)
sys.dont_write_bytecode = False


class CliError(Exception):
    """An expected failure: a one-line message for stderr and the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class CliParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2) instead of usage text plus error."""

    def error(self, message: str):
        raise CliError(EXIT_USAGE, f"{message} (see --help)")


# The credentials of a URI: everything from "://" to the LAST "@" of the authority (a password may hold "@"),
# in any scheme (http, postgresql+psycopg2, mysql, ...).
URI_CREDENTIALS = re.compile(r"(?<=://)[^/?#\s]*@")


def mask_uri(uri: str) -> str:
    """Hide credentials in a URI: user:p@ss@host -> ***@host."""
    return URI_CREDENTIALS.sub("***@", uri or "")


def redact(text: str) -> str:
    """Mask URI credentials and the values of secret env vars in text that will be shown or stored."""
    text = URI_CREDENTIALS.sub("***@", str(text))
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def resolve_tracking_uri(cli_uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded local store ./mlflow.db (absolute)."""
    uri = (cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        # MLflow >= 3.7 defaults to sqlite:///mlflow.db in the working directory, but a leftover ./mlruns
        # switches it to the file store, which raises. Spelling the default out avoids that and tells the
        # user which file holds their runs.
        uri = "sqlite:///" + str(Path.cwd() / "mlflow.db")
    return uri


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI address of an experiment or run, for http(s) tracking servers only. The UI (3.17)
    opens in GenAI mode (traces, "Evaluations"); ?workflowType=machine_learning opens the runs view."""
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return None
    base = URI_CREDENTIALS.sub("", tracking_uri).rstrip("/")
    path = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}{path}?workflowType=machine_learning"


def connect(tracking_uri: str, debug: bool = False):
    """Configure bounded HTTP retries and quiet logging, then return an MlflowClient (imports mlflow)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        import logging
        import warnings

        warnings.filterwarnings("ignore")
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
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return mlflow.MlflowClient(tracking_uri)
    # MLflow creates its tables (tracking and model registry) the first time a process opens a new sqlite
    # store; processes starting together on a new file race and fail ("table ... already exists"). Open the
    # store one process at a time.
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, MLflow's own behaviour
        fcntl = None
    with open(tracking_uri[len("sqlite:///") :].split("?")[0] + ".lock", "a") as lock:
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
    """Run action(); turn every failure into one redacted line on stderr and a documented exit code."""
    try:
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


# ---- the metric table: the one place that says what each metric is --------------------------------------
# `call` is evaluated as written (it IS the code that computes the metric), in a namespace where:
#   qs          quantstats;  np  numpy
#   r           the normalised returns (pandas Series, DatetimeIndex, decimal units)
#   rf          annual risk-free rate (--rf);  periods  bars per year;  compounded  False with --simple
#   x           excess returns per bar: r - ((1 + rf) ** (1 / periods) - 1), QuantStats' de-annualisation
#   years       len(r) / periods (QuantStats' CAGR convention: bars, not calendar time)
#   rf_total    the risk-free growth over the run's span: (1 + rf) ** years - 1 (rf x years with --simple)
#   total(x)    qs.stats.comp(x) when compounded, else x.sum()   (QuantStats' report does the same)
#   cagr        qs.stats.cagr(r, 0.0, compounded, periods)
#   dd, mdd     OUR drawdown series (equity_and_drawdown: the logged `drawdown` history) and its minimum.
#               QuantStats re-reads a non-negative series whose max is exactly 1.0 as prices in its drawdown
#               functions (_looks_like_returns: max < 1) and always compounds: every drawdown-based metric here
#               comes from the run's own equity curve instead (same numbers on ordinary series, tests check).
#   ulcer       sqrt(sum(dd ** 2) / (n - 1)), QuantStats' ulcer index on our dd
#   since(x, months=N | period="mtd"/"ytd")  the bars of the last N months / month / year to date
#   short(N)    the series does not reach back N months (its first bar's period starts after the window)
#   dd_details(dd)  a vectorised qs.stats.drawdown_details(dd) that also counts an episode open at the last
#               bar and one open from the first bar (QuantStats drops the latter)
#   flat(s)     the dispersion of s is ~0 relative to the data's scale (std <= DISPERSION_RTOL x max|s|, |r|)
#   downside(s) sqrt(sum(min(s, 0) ** 2) / n): the Sortino denominator;  tiny(v, s)  |v| ~0 at s's scale
#   rp, bp      strategy and benchmark aligned on common timestamps, positionally indexed (QuantStats' own
#               alignment compares Python sets of timestamps: seconds at 1M bars)
# prepare_returns=False skips QuantStats' re-cleaning of r where the function allows it: r is already what
# _prepare_returns would return (validated: no prices, no inf, no NaN; tests check the identity).
# `guard`: when true, the metric is undefined (QuantStats would return 0, inf or a meaningless huge number).
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
NP = "prepare_returns=False"
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
    MetricSpec("sharpe", "qs.stats.sharpe(r, rf, periods)",
               "mean(x) / std(x, ddof=1) x sqrt(periods)", "ratio", True, guard=SHARPE_GUARD,
               annualised=True, departure="undefined when std(x) is ~0 (QuantStats: ~1e16)"),
    MetricSpec("smart_sharpe", "qs.stats.smart_sharpe(r, rf, periods)",
               "sharpe / autocorr_penalty", "ratio", True, guard=SHARPE_GUARD, annualised=True,
               departure="undefined when std(x) is ~0"),
    MetricSpec("sortino", "qs.stats.sortino(r, rf, periods)",
               "mean(x) / downside(x) x sqrt(periods); downside(x) = sqrt(sum(min(x, 0)^2) / n)", "ratio",
               True, guard=SORTINO_GUARD, annualised=True, departure="undefined when downside(x) is ~0"),
    MetricSpec("smart_sortino", "qs.stats.smart_sortino(r, rf, periods)",
               "sortino / autocorr_penalty", "ratio", True, guard=SORTINO_GUARD, annualised=True,
               departure="undefined when downside(x) is ~0"),
    MetricSpec("adjusted_sortino", "qs.stats.adjusted_sortino(r, rf, periods)",
               "sortino / sqrt(2) (Jack Schwager), comparable with Sharpe", "ratio", True, guard=SORTINO_GUARD,
               annualised=True, departure="undefined when downside(x) is ~0"),
    MetricSpec("smart_adjusted_sortino", "qs.stats.adjusted_sortino(r, rf, periods, smart=True)",
               "smart_sortino / sqrt(2)", "ratio", True, guard=SORTINO_GUARD, annualised=True,
               departure="undefined when downside(x) is ~0"),
    MetricSpec("probabilistic_sharpe_ratio", "qs.stats.probabilistic_sharpe_ratio(r, rf, periods)",
               "Phi(SR / sqrt((1 - skew SR + (kurt - 1) / 4 SR^2) / (n - 1))), SR the per-bar Sharpe, "
               "skew and kurt (non-excess) the bias-corrected sample moments of r",
               "probability", True, guard=SHARPE_GUARD, departure="undefined when std(x) is ~0"),
    MetricSpec("probabilistic_smart_sharpe_ratio",
               "qs.stats.probabilistic_sharpe_ratio(r, rf, periods, smart=True)",
               "probabilistic_sharpe_ratio of the per-bar smart Sharpe", "probability", True,
               guard=SHARPE_GUARD, departure="undefined when std(x) is ~0"),
    MetricSpec("probabilistic_sortino_ratio", "qs.stats.probabilistic_sortino_ratio(r, rf, periods)",
               "probabilistic_sharpe_ratio's formula with the per-bar Sortino in place of SR", "probability",
               True, guard=SORTINO_GUARD, departure="undefined when downside(x) is ~0"),
    MetricSpec("probabilistic_adjusted_sortino_ratio",
               "qs.stats.probabilistic_adjusted_sortino_ratio(r, rf, periods)",
               "probabilistic_sharpe_ratio's formula with the per-bar adjusted Sortino", "probability", True,
               guard=SORTINO_GUARD, departure="undefined when downside(x) is ~0"),
    MetricSpec("omega", "qs.stats.omega(r, rf, 0.0, periods)",
               "sum(x[x > 0]) / -sum(x[x < 0]) (threshold 0)", "ratio", True, guard="tiny(x[x < 0].sum(), x)",
               departure="undefined when the losses sum to ~0"),
    MetricSpec("calmar", "cagr / -mdd", "cagr / |max_drawdown|", "ratio", True, guard="mdd == 0",
               annualised=True, departure=OWN_DD),
    MetricSpec("risk_return_ratio", f"qs.stats.risk_return_ratio(r, {NP})",
               "mean(r) / std(r, ddof=1) (per-bar Sharpe without rf)", "ratio", True, guard="flat(r)",
               departure="undefined when std(r) is ~0 (QuantStats: ~1e15)"),
    MetricSpec("gain_to_pain_ratio", "qs.stats.gain_to_pain_ratio(r, rf)",
               "sum of daily sums / |sum of losing daily sums| (Jack Schwager; rf not applied)", "ratio", True,
               calendar=True),
    MetricSpec("gain_to_pain_ratio_monthly", "qs.stats.gain_to_pain_ratio(r, rf, 'ME')",
               "gain_to_pain_ratio on monthly sums", "ratio", True, calendar=True),
    MetricSpec("ulcer_performance_index", "(total(r) - rf_total) / ulcer",
               "(total_return - rf_total) / ulcer_index", "ratio", True, guard="ulcer == 0",
               departure=f"{OWN_DD}; {SPAN_RF}; total return simple with --simple"),
    MetricSpec("serenity_index",
               f"(total(r) - rf_total) / (ulcer * -qs.stats.conditional_value_at_risk(dd, {NP}) / r.std())",
               "(total_return - rf_total) / (ulcer_index x pitfall), pitfall = -CVaR95(dd) / std(r) "
               "(KeyQuant)", "ratio", True, guard="flat(r) or ulcer == 0",
               departure=f"{OWN_DD}; {SPAN_RF}; numerator total_return (QuantStats: plain sum of r)"),
    MetricSpec("recovery_factor", "total(r) / -mdd",
               "total_return / |max_drawdown| (negative for a losing run)", "ratio", True, guard="mdd == 0",
               departure="sign-correct: QuantStats takes |sum of returns|, so a run that lost 40 % scores "
               f"+0.88; total return compounded (simple with --simple); {OWN_DD}"),
    MetricSpec("risk_adjusted_return", f"cagr / qs.stats.exposure(r, {NP})", "cagr / exposure",
               "fraction per year", True, guard=NO_NONZERO_BAR, annualised=True,
               departure="QuantStats' rar calls cagr() without periods (always 252) and measures exposure "
               "on rf-adjusted returns (every bar exposed when --rf > 0)"),
    # returns
    MetricSpec("total_return", "total(r)", "prod(1 + r) - 1, or sum(r) with --simple", "fraction", True),
    MetricSpec("cagr", "qs.stats.cagr(r, 0.0, compounded, periods)",
               "(1 + total_return) ** (1 / years) - 1, years = bars / periods",
               "fraction per year", True, annualised=True),
    MetricSpec("expected_return", f"qs.stats.expected_return(r, compounded=compounded, {NP})",
               "Geometric mean return per bar", "fraction per bar", True),
    MetricSpec("expected_return_monthly",
               f"qs.stats.expected_return(r, aggregate='ME', compounded=compounded, {NP})",
               "Geometric mean monthly return", "fraction per month", True, calendar=True),
    MetricSpec("expected_return_yearly",
               f"qs.stats.expected_return(r, aggregate='YE', compounded=compounded, {NP})",
               "Geometric mean calendar-year return", "fraction per year", True, calendar=True),
    MetricSpec("avg_return", f"qs.stats.avg_return(r, {NP})", "Mean of non-zero bar returns",
               "fraction per bar", True),
    MetricSpec("avg_win", f"qs.stats.avg_win(r, {NP})", "Mean of positive bar returns", "fraction per bar",
               True),
    MetricSpec("avg_loss", f"qs.stats.avg_loss(r, {NP})", "Mean of negative bar returns (< 0)",
               "fraction per bar", True),
    MetricSpec("avg_up_month", f"qs.stats.avg_win(r, aggregate='ME', compounded=compounded, {NP})",
               "Mean of positive monthly returns", "fraction per month", True, calendar=True),
    MetricSpec("avg_down_month", f"qs.stats.avg_loss(r, aggregate='ME', compounded=compounded, {NP})",
               "Mean of negative monthly returns (< 0)", "fraction per month", True, calendar=True),
    MetricSpec("best", f"qs.stats.best(r, {NP})", "Best single bar", "fraction per bar", True),
    MetricSpec("worst", f"qs.stats.worst(r, {NP})", "Worst single bar", "fraction per bar", True),
    MetricSpec("best_month", f"qs.stats.best(r, aggregate='ME', compounded=compounded, {NP})",
               "Best calendar month", "fraction", True, calendar=True),
    MetricSpec("worst_month", f"qs.stats.worst(r, aggregate='ME', compounded=compounded, {NP})",
               "Worst calendar month", "fraction", True, calendar=True),
    MetricSpec("best_quarter", f"qs.stats.best(r, aggregate='QE', compounded=compounded, {NP})",
               "Best calendar quarter", "fraction", True, calendar=True),
    MetricSpec("worst_quarter", f"qs.stats.worst(r, aggregate='QE', compounded=compounded, {NP})",
               "Worst calendar quarter", "fraction", True, calendar=True),
    MetricSpec("best_year", f"qs.stats.best(r, aggregate='YE', compounded=compounded, {NP})",
               "Best calendar year", "fraction", True, calendar=True),
    MetricSpec("worst_year", f"qs.stats.worst(r, aggregate='YE', compounded=compounded, {NP})",
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
    MetricSpec("cagr_3y", "qs.stats.cagr(since(r, months=35), 0.0, compounded, periods)",
               "CAGR of the last 3 years (35 months back, as QuantStats' report)", "fraction per year", True,
               guard="short(35)", calendar=True, annualised=True, departure=SHORT),
    MetricSpec("cagr_5y", "qs.stats.cagr(since(r, months=59), 0.0, compounded, periods)",
               "CAGR of the last 5 years (59 months back)", "fraction per year", True, guard="short(59)",
               calendar=True, annualised=True, departure=SHORT),
    MetricSpec("cagr_10y", "qs.stats.cagr(since(r, months=119), 0.0, compounded, periods)",
               "CAGR of the last 10 years (119 months back)", "fraction per year", True, guard="short(119)",
               calendar=True, annualised=True, departure=SHORT),
    # trade-style (computed from bars, not from discrete trades)
    MetricSpec("win_rate", f"qs.stats.win_rate(r, {NP})", "Share of non-zero bars that are positive",
               "fraction", True, guard=NO_NONZERO_BAR),
    MetricSpec("win_rate_month", f"qs.stats.win_rate(r, aggregate='ME', compounded=compounded, {NP})",
               "Share of non-zero months that are positive", "fraction", True, guard=NO_NONZERO_BAR,
               calendar=True),
    MetricSpec("win_rate_quarter", f"qs.stats.win_rate(r, aggregate='QE', compounded=compounded, {NP})",
               "Share of non-zero quarters that are positive", "fraction", True, guard=NO_NONZERO_BAR,
               calendar=True),
    MetricSpec("win_rate_year", f"qs.stats.win_rate(r, aggregate='YE', compounded=compounded, {NP})",
               "Share of non-zero years that are positive", "fraction", True, guard=NO_NONZERO_BAR,
               calendar=True),
    MetricSpec("profit_factor", f"qs.stats.profit_factor(r, {NP})",
               "Sum of bars >= 0 / |sum of bars < 0|; undefined without a losing bar", "ratio", True,
               guard="(r < 0).sum() == 0"),
    MetricSpec("payoff_ratio", f"qs.stats.payoff_ratio(r, {NP})", "Average win / |average loss| per bar",
               "ratio", True),
    MetricSpec("profit_ratio", f"qs.stats.profit_ratio(r, {NP})",
               "(Mean win / win count) / (mean loss / loss count), absolute", "ratio", True),
    MetricSpec("common_sense_ratio", f"qs.stats.common_sense_ratio(r, {NP})", "Profit factor x tail ratio",
               "ratio", True),
    MetricSpec("cpc_index", f"qs.stats.cpc_index(r, {NP})", "Profit factor x win rate x payoff ratio",
               "ratio", True),
    MetricSpec("kelly_criterion", f"qs.stats.kelly_criterion(r, {NP})",
               "Kelly fraction p - (1 - p) / payoff ratio, from bar win rate and payoff",
               "fraction of capital", True),
    MetricSpec("consecutive_wins", f"qs.stats.consecutive_wins(r, {NP})", "Longest run of positive bars",
               "bars", True),
    MetricSpec("consecutive_losses", f"qs.stats.consecutive_losses(r, {NP})", "Longest run of negative bars",
               "bars", False),
    MetricSpec("exposure", f"qs.stats.exposure(r, {NP})",
               "Time in market: share of bars with a non-zero return, rounded up to 1 %", "fraction", None),
    # risk and tail
    MetricSpec("volatility", f"qs.stats.volatility(r, periods, {NP})",
               "std(r, ddof=1) x sqrt(periods)", "fraction per year", False, annualised=True),
    MetricSpec("max_drawdown", "mdd",
               "min(equity / running peak - 1), the peak including the starting 1.0; equity prod(1 + r), "
               "1 + cumsum(r) with --simple (<= 0; closer to 0 is better)", "fraction", True,
               departure=f"{OWN_DD}; simple equity with --simple (QuantStats always compounds)"),
    MetricSpec("avg_drawdown", "dd_details(dd)['max drawdown'].mean() / 100",
               "Mean depth of the drawdown episodes (<= 0)", "fraction", True, departure=EPISODES),
    MetricSpec("longest_drawdown_days", "dd_details(dd)['days'].max()",
               "Longest drawdown episode: whole days elapsed from its first to its last bar below the peak "
               "+ 1",
               "days", False, calendar=True, departure=EPISODES),
    MetricSpec("avg_drawdown_days", "dd_details(dd)['days'].mean()",
               "Mean drawdown episode length in calendar days", "days", False, calendar=True,
               departure=EPISODES),
    MetricSpec("ulcer_index", "ulcer", "sqrt(sum(dd^2) / (n - 1)) (QuantStats' n - 1)", "fraction", False,
               departure=OWN_DD),
    MetricSpec("value_at_risk", f"qs.stats.value_at_risk(r, {NP})",
               "Parametric 95 % value at risk of one bar (normal with the bars' mean and std; < 0)",
               "fraction per bar", True),
    MetricSpec("conditional_value_at_risk", f"qs.stats.conditional_value_at_risk(r, {NP})",
               "Parametric 95 % expected shortfall of one bar (< 0)", "fraction per bar", True),
    MetricSpec("tail_ratio", f"qs.stats.tail_ratio(r, {NP})", "|95th / 5th percentile| of bar returns",
               "ratio", True),
    MetricSpec("outlier_win_ratio", f"qs.stats.outlier_win_ratio(r, {NP})",
               "99th percentile bar / mean of bars >= 0", "ratio", None),
    MetricSpec("outlier_loss_ratio", f"qs.stats.outlier_loss_ratio(r, {NP})",
               "1st percentile bar / mean of losing bars", "ratio", None),
    MetricSpec("risk_of_ruin", f"qs.stats.risk_of_ruin(r, {NP})",
               "((1 - win rate) / (1 + win rate)) ** bars", "probability", False, guard=NO_NONZERO_BAR,
               departure="undefined when no bar is non-zero, like win_rate (QuantStats: 1.0)"),
    MetricSpec("skew", f"qs.stats.skew(r, {NP})", "Bias-corrected sample skewness of bar returns",
               "unitless", True, guard="flat(r)", departure="undefined when std(r) is ~0 (pandas: 0)"),
    MetricSpec("kurtosis", f"qs.stats.kurtosis(r, {NP})",
               "Bias-corrected sample excess kurtosis of bar returns (normal = 0)", "unitless", False,
               guard="flat(r)", departure="undefined when std(r) is ~0 (pandas: 0)"),
    MetricSpec("autocorr_penalty", "qs.stats.autocorr_penalty(r)",
               "Lag-1 autocorrelation penalty used by the smart ratios (>= 1)", "unitless", None),
    # against the benchmark (--benchmark)
    MetricSpec("alpha", f"qs.stats.greeks(rp, bp, periods, {NP})['alpha']",
               "(mean(rp) - beta x mean(bp)) x periods: arithmetic, rf ignored (QuantStats' convention)",
               "fraction per year", True, guard=FLAT_BENCHMARK, benchmark=True, annualised=True),
    MetricSpec("beta", f"qs.stats.greeks(rp, bp, periods, {NP})['beta']",
               "Beta: cov(strategy, benchmark) / var(benchmark)", "ratio", None, guard=FLAT_BENCHMARK,
               benchmark=True),
    MetricSpec("correlation", "bp.corr(rp)", "Pearson correlation with the benchmark (QuantStats' report)",
               "unitless", None, guard="flat(rp) or flat(bp)", benchmark=True),
    MetricSpec("r_squared", f"qs.stats.r_squared(rp, bp, {NP})", "R^2 of the regression on the benchmark",
               "unitless", None, guard="flat(rp) or flat(bp)", benchmark=True),
    MetricSpec("information_ratio", f"qs.stats.information_ratio(rp, bp, {NP})",
               "Mean active return / tracking error, per bar (not annualised)", "ratio", True,
               guard="flat(rp - bp)", benchmark=True),
    MetricSpec("treynor_ratio", f"(total(r) - rf_total) / qs.stats.greeks(rp, bp, periods, {NP})['beta']",
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
    warnings: list[str] = field(default_factory=list)
    resample_to_benchmark: bool = False
    code_files: dict[str, Path] = field(default_factory=dict)  # --code: artifact path -> file


def warn(message: str, sink: list[str] | None = None) -> None:
    """A warning on stderr (and in the output's `warnings` when a sink is given)."""
    print(f"warning: {message}", file=sys.stderr)
    if sink is not None:
        sink.append(message)


_T0 = time.monotonic()
DEBUG_TIMES = "--debug" in sys.argv


def phase(label: str) -> None:
    """With --debug: how long since the process started, per phase (where the time goes)."""
    if DEBUG_TIMES:
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
    if not math.isfinite(args.rf) or args.rf < 0:
        raise CliError(
            EXIT_USAGE, f"--rf {args.rf} must be a finite annual rate >= 0 (QuantStats ignores < 0)"
        )
    if args.rf > MAX_RF:
        raise CliError(
            EXIT_USAGE, f"--rf {args.rf} looks like percent: give a decimal annual rate, e.g. 0.04"
        )
    if args.periods_per_year is not None and not (
        math.isfinite(args.periods_per_year) and args.periods_per_year > 0
    ):
        raise CliError(
            EXIT_USAGE, "--periods-per-year must be a positive number (252 daily, 12 monthly, ...)"
        )
    if args.max_history_points < 3:
        raise CliError(EXIT_USAGE, "--max-history-points must be at least 3 (first, last and deepest bar)")
    experiment = (args.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT).strip()
    if not experiment or any(ord(ch) < 32 for ch in experiment):
        raise CliError(EXIT_USAGE, "--experiment is empty or contains control characters")
    if args.run_name is not None and (not args.run_name.strip() or len(args.run_name) > MAX_KEY_LENGTH):
        raise CliError(EXIT_USAGE, f"--run-name must be 1-{MAX_KEY_LENGTH} characters")
    if args.description is not None and len(args.description) > MAX_DESCRIPTION_LENGTH:
        raise CliError(EXIT_USAGE, f"--description is longer than {MAX_DESCRIPTION_LENGTH} characters")
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
        tags={**parse_tags(args.tag), **code_version_tags(args), **package_version_tags()},
        description=args.description,
        rf=float(args.rf),
        periods_per_year=args.periods_per_year,
        compounded=not args.simple,
        tearsheet=not args.no_tearsheet,
        dry_run=args.dry_run,
        force=args.force,
        max_history_points=args.max_history_points,
        resample_to_benchmark=args.resample_to_benchmark,
        code_files=code_artifacts(args.code, args.code_dir),
    )


# ---- the code version: which strategy code produced the returns ---------------------------------------------
GIT_TIMEOUT = 5  # seconds per git call: a hung filesystem or credential helper must not hang a backtest
PACKAGES = ("quantstats", "pandas", "numpy", "mlflow")


def git_output(directory: Path, *args: str) -> str | None:
    """stdout of `git -C directory ARGS`, or None when git is missing, fails or times out."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def strip_url_credentials(url: str) -> str:
    """https://user:token@host/repo.git -> https://host/repo.git (a token in a remote URL is a secret);
    scp-style git@host:repo keeps its user, which is no secret."""
    return re.sub(r"(?<=://)[^/?#]*@", "", url)


def code_version_tags(args) -> dict[str, str]:
    """The git repository holding --code-dir (default: the current folder): commit, branch, remote URL
    without credentials, and whether tracked files (or the --code files) have uncommitted changes. MLflow
    would record the repository of the script it runs, i.e. this skill's, not the strategy's. Outside a
    git repository: no tags (a warning when --code-dir named the folder)."""
    directory = Path(args.code_dir).expanduser() if args.code_dir else Path.cwd()
    if args.code_dir and not directory.is_dir():
        raise CliError(EXIT_USAGE, f"--code-dir {args.code_dir}: no such directory")
    commit = git_output(directory, "rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        if args.code_dir:
            warn(f"--code-dir {args.code_dir} is not in a git repository with a commit: no git tags")
        return {}
    tags = {"mlflow.source.git.commit": commit}
    branch = git_output(directory, "symbolic-ref", "--quiet", "--short", "HEAD")  # none when detached
    if branch:
        tags["mlflow.source.git.branch"] = branch
    remotes = (git_output(directory, "remote") or "").split()
    if remotes:
        remote = "origin" if "origin" in remotes else remotes[0]
        url = git_output(directory, "remote", "get-url", remote)
        if url:
            tags["mlflow.source.git.repoURL"] = strip_url_credentials(url)[:MAX_TAG_VALUE_LENGTH]
    # Untracked files do not count (the local store ./mlflow.db is one), except --code files: a strategy
    # file git does not know is not in the commit.
    changed = git_output(directory, "status", "--porcelain", "--untracked-files=no")
    code = [str(Path(f).expanduser().resolve()) for f in args.code or []]
    untracked = (
        git_output(directory, "status", "--porcelain", "--untracked-files=all", "--", *code) if code else ""
    )
    if changed is not None and untracked is not None:
        tags["backtest.git_dirty"] = "true" if changed or untracked else "false"
    return tags


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


def code_artifacts(files: list[str] | None, code_dir: str | None) -> dict[str, Path]:
    """--code FILE...: checked before anything is written; stored under code/ by their path relative to
    --code-dir (default: the current folder) when inside it, else by file name."""
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


def git_summary(tags: dict[str, str]) -> dict | None:
    """The code version for the JSON output: {commit, branch, repo_url, dirty}, or None outside git."""
    if "mlflow.source.git.commit" not in tags:
        return None
    return {
        "commit": tags["mlflow.source.git.commit"],
        "branch": tags.get("mlflow.source.git.branch"),
        "repo_url": tags.get("mlflow.source.git.repoURL"),
        "dirty": {"true": True, "false": False}.get(tags.get("backtest.git_dirty", "")),
    }


RESERVED_PARAMS = frozenset(
    {"start", "end", "n_bars", "periods_per_year", "rf", "compounded", "frequency", "source_file", "column",
     "benchmark", "benchmark_column", "returns_kind"}
)  # fmt: skip


# ---- loading and checking the data (pandas) ----------------------------------------------------------------
@dataclass
class Series:
    """One validated return series, ready for QuantStats."""

    name: str
    returns: object  # pandas Series: float64, UTC-naive DatetimeIndex (or synthetic one when bare)
    has_timestamps: bool
    benchmark: object | None = None  # aligned benchmark returns, same index
    benchmark_info: dict | None = None


def read_table(path: Path, flag: str):
    """CSV or Parquet -> DataFrame, each failure a one-line input error."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            if isinstance(frame.index, pd.DatetimeIndex):
                frame = frame.reset_index(names=frame.index.name or "timestamp")
        else:
            frame = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise CliError(EXIT_USAGE, f"{flag} {path.name} is empty: expected a header and rows") from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError, OSError) as exc:
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


def parse_timestamps(column, flag: str, path: Path, warnings: list[str]):
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
            return _parse_timestamps(column, flag, path, warnings)
        except pd.errors.OutOfBoundsDatetime:
            raise CliError(
                EXIT_USAGE,
                f"{flag} {path.name}: a timestamp in column {name!r} is outside 1677-2262, the range pandas "
                "can hold: check the dates (or the epoch unit of numeric timestamps)",
            ) from None


def _parse_timestamps(column, flag: str, path: Path, warnings: list[str]):
    import pandas as pd

    name = column.name
    aware = False
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
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
        try:
            parsed = pd.to_datetime(text, utc=True)
        except (ValueError, TypeError, OverflowError):
            parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
        aware = bool(re.search(r"(Z|[+-]\d\d:?\d\d)$", text.iloc[0]))
    bad = parsed.isna().to_numpy()
    if bad.any():
        first = int(bad.argmax())
        raise CliError(
            EXIT_USAGE,
            f"{flag} {path.name}: unparseable timestamp {str(column.iloc[first])[:40]!r} in column {name!r} "
            f"at line {line_of(first)} (use ISO 8601, e.g. 2024-01-31 or 2024-01-31T15:30:00Z)",
        )
    if aware:
        warn(f"{path.name}: time-zone-aware timestamps converted to UTC", warnings)
    return pd.DatetimeIndex(parsed).tz_localize(None).as_unit("ns")


def split_frame(frame, path: Path, flag: str, pick: str | None, pick_flag: str, bare_ok: bool, warnings):
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
                raise CliError(
                    EXIT_USAGE,
                    f"{flag} {path.name}: non-numeric value {str(raw.iloc[at])[:40]!r} in column {col!r} "
                    f"at line {line_of(at)}{hint}",
                )
            numeric = numeric.astype("float64")
        values[col] = numeric.reset_index(drop=True)
    index = parse_timestamps(frame[ts_col].reset_index(drop=True), flag, path, warnings) if ts_col else None
    return index, values


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


def to_returns(values, index, name: str, path: Path, flag: str, prices: bool, percent: bool, warnings):
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
        if lo >= 0 and (hi > 1 or median_abs > 0.1):
            raise CliError(
                EXIT_USAGE,
                f"{where} looks like prices or equity (all >= 0, median {median_abs:.4g}, max {hi:.4g}): "
                "pass --prices to convert them to returns, or --percent if they are percent returns",
            )
        n_big = int(np.sum(np.abs(values_np) >= 1))
        if not percent and lo < 0 and (median_abs > 0.1 or (n_big >= 3 and n_big > 0.01 * len(values_np))):
            raise CliError(
                EXIT_USAGE,
                f"{where} looks like percent units (median |value| {median_abs:.4g}, "
                f"{n_big} values beyond +-1): pass --percent, or give decimal "
                "returns (0.01 = 1 %)",
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
    return series.astype("float64")


def load_series(path: Path, flag: str, pick: str | None, pick_flag: str, req: Request, bare_ok: bool):
    """A returns file -> (has_timestamps, {column: returns Series})."""
    import pandas as pd

    frame = read_table(path, flag)
    index, values = split_frame(frame, path, flag, pick, pick_flag, bare_ok, req.warnings)
    has_timestamps = index is not None
    if has_timestamps:
        index, order = order_index(index, path, flag, req.warnings)
        if order is not None:
            values = {k: v.iloc[order].reset_index(drop=True) for k, v in values.items()}
    else:
        # Bare numbers: bar i is day i of a synthetic calendar, only so that QuantStats functions that need a
        # DatetimeIndex run; metrics marked `calendar` are reported undefined instead of made up.
        index = pd.date_range("1970-01-01", periods=len(frame), freq="D").as_unit("ns")
    out = {}
    for col, raw in values.items():
        out[col] = to_returns(raw, index, col, path, flag, req.prices, req.percent, req.warnings)
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


def load_all(req: Request) -> list[Series]:
    """Every column to log, validated and aligned; raises CliError (exit 2) on any input problem."""
    has_ts, columns = load_series(
        req.returns_path, "--returns", req.column, "--column", req, bare_ok=req.periods_per_year is not None
    )
    bench = None
    if req.benchmark_path is not None:
        bench_ts, bench_cols = load_series(
            req.benchmark_path, "--benchmark", req.benchmark_column, "--benchmark-column", req, bare_ok=False
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
        item = Series(name=name, returns=returns, has_timestamps=has_ts)
        if bench is not None:
            item.returns, item.benchmark, info = align(
                returns, bench, name, req.warnings, req.resample_to_benchmark, req.compounded
            )
            item.benchmark_info = {"file": req.benchmark_path.name, "column": bench_name, **info}
        out.append(item)
    return out


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


def import_quantstats(full: bool = True):
    """QuantStats, headless and quiet: Agg backend, no warnings or prints reaching our streams.

    `import quantstats` loads its plotting stack (matplotlib, seaborn: ~3 s) even when only qs.stats is
    needed. For metrics alone (full=False) the package module is created without running its __init__ and
    only quantstats.stats (+ utils) is imported: the same code, loaded lazily. The tearsheet (full=True)
    then adds reports and plots to that same package. Any surprise falls back to the plain import."""
    import contextlib
    import io
    import warnings

    if "quantstats" not in sys.modules or (full and not hasattr(sys.modules["quantstats"], "reports")):
        phase("importing quantstats" + ("" if full else " (stats only)"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if "quantstats" not in sys.modules and not full:
            import importlib.util
            import types

            spec = importlib.util.find_spec("quantstats")
            package = types.ModuleType("quantstats")
            package.__path__ = list(spec.submodule_search_locations or [])
            package.__spec__, package.__file__ = spec, spec.origin
            sys.modules["quantstats"] = package
            try:
                import quantstats.stats  # noqa: F401
                import quantstats.version

                package.__version__ = quantstats.version.version
            except Exception:  # noqa: BLE001 - fall back to QuantStats' own package import
                for name in [m for m in sys.modules if m == "quantstats" or m.startswith("quantstats.")]:
                    del sys.modules[name]
        import quantstats as qs

        if full:
            import quantstats.plots
            import quantstats.reports  # noqa: F401
    return qs


def compute_metrics(item: Series, rf: float, periods: float, compounded: bool) -> tuple[dict, list[str]]:
    """Every metric of the table for one series -> ({name: float or nan}, [warnings for the output]).

    The warnings name the metrics QuantStats could not compute (reported undefined) and say when annualised
    figures extrapolate from less than a year of bars."""
    import contextlib
    import io
    import logging
    import warnings

    import numpy as np
    import pandas as pd

    qs = import_quantstats(full=False)
    # pandas' reductions (std, mean, ...) take other code paths when bottleneck is installed and differ in the
    # last bits: the same series must give the same numbers in any environment (this script's own has none).
    pd.set_option("compute.use_bottleneck", False)
    r = item.returns
    n = len(r)
    years = n / periods
    equity, drawdown = equity_and_drawdown(r, compounded)
    dd = pd.Series(drawdown, index=r.index)
    rf_bar = (1.0 + rf) ** (1.0 / periods) - 1.0 if rf else 0.0  # QuantStats' to_excess_returns
    ns = {
        "qs": qs,
        "np": np,
        "r": r,
        "x": r - rf_bar if rf else r,
        "rf": rf,
        "periods": periods,
        "compounded": compounded,
        "years": years,
        "rf_total": ((1.0 + rf) ** years - 1.0) if compounded else rf * years,
        "total": (lambda s: qs.stats.comp(s)) if compounded else (lambda s: s.sum()),
        "since": since,
        "short": lambda months: shorter_than(r, months),
        "dd_details": drawdown_details,
        "dd": dd,
        "mdd": float(drawdown.min()),
        "ulcer": float(np.sqrt(np.sum(drawdown**2) / (n - 1))),
        **dispersion_tests(r),
    }
    values: dict[str, float] = {}
    notes: list[str] = []
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        ns["cagr"] = float(qs.stats.cagr(r, 0.0, compounded, periods))
        if item.benchmark is not None:
            # Positionally indexed copies: QuantStats' _prepare_benchmark skips its set-of-timestamps
            # comparison (seconds at 1M bars) for a non-datetime index; both are already aligned, so the
            # numbers are the same as with the dated series (tests compare).
            ns["rp"] = r.reset_index(drop=True)
            ns["bp"] = item.benchmark.reset_index(drop=True)
        for spec in METRICS:
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
            except Exception:  # noqa: BLE001 - a metric QuantStats cannot compute is undefined, not fatal
                values[spec.name] = float("nan")
                notes.append(f"QuantStats could not compute {spec.name}; it is reported undefined")
    if years < 1:
        annualised = [s.name for s in METRICS if s.annualised and math.isfinite(values.get(s.name, math.nan))]
        if annualised:
            notes.append(
                f"{n} bars are {years:.2f} of a year at {periods:g} bars per year: annualised metrics "
                f"({', '.join(annualised)}) extrapolate less than a year of history"
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


# ---- fingerprint, description, artifacts ---------------------------------------------------------------
def fingerprint(item: Series, settings: dict, params: dict) -> str:
    digest = hashlib.sha256(b"log_backtest/1\0")
    digest.update(item.returns.index.asi8.tobytes() if item.has_timestamps else b"bare")
    digest.update(item.returns.to_numpy(dtype="float64").tobytes())
    if item.benchmark is not None:
        digest.update(b"\0benchmark\0" + item.benchmark.to_numpy(dtype="float64").tobytes())
    digest.update(json.dumps({"settings": settings, "params": params}, sort_keys=True).encode())
    return digest.hexdigest()


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
    if summary["undefined_metrics"]:
        lines += ["", "Undefined (not logged): " + ", ".join(summary["undefined_metrics"])]
    lines += ["", f"Logged by {SKILL_NAME} log_backtest.py {SKILL_VERSION}; all metrics in `metrics.json`."]
    return "\n".join(lines)[:MAX_TAG_VALUE_LENGTH]


SPEC_BY_NAME = {spec.name: spec for spec in METRICS}


def write_returns_artifact(item: Series, folder: Path) -> str:
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


def timestamp_name(item: Series) -> str:
    """The name of the user's timestamp column (kept on the index), for the files we write."""
    return str(item.returns.index.name or "timestamp")


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
    item: Series, path: Path, rf: float, periods: float, compounded: bool, title: str
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

    with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
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
    return note


def tidy_tearsheet(path: Path) -> None:
    """QuantStats 0.0.86 labels CAGR "CAGR﹪" (U+FE6A SMALL PERCENT SIGN, its way to keep the "%" that
    marks percent rows): fonts without that glyph (Debian's defaults) draw a box. A plain % reads the same."""
    html = path.read_text(encoding="utf-8")
    path.write_text(html.replace("\N{SMALL PERCENT SIGN}", "%"), encoding="utf-8")


# ---- one prepared run: everything computed and written to a local folder before MLflow is touched ---------
@dataclass
class Prepared:
    item: Series
    run_name: str
    periods: float
    frequency: str
    metrics: dict[str, float]
    undefined: list[str]
    fingerprint: str
    params: dict[str, str]
    tags: dict[str, str]
    summary: dict
    folder: Path
    artifacts: list[str] = field(default_factory=list)
    history: tuple | None = None
    run_id: str | None = None
    deduplicated: bool = False


def bar_time(item: Series, position: int) -> str | None:
    """ISO 8601 UTC: a date for daily-or-slower bars at midnight, else date and time with Z."""
    if not item.has_timestamps:
        return None
    index = item.returns.index
    if (index[[0, -1]] == index[[0, -1]].normalize()).all():
        return index[position].strftime("%Y-%m-%d")
    return index[position].strftime("%Y-%m-%dT%H:%M:%SZ")


def periods_of(item: Series, req: Request) -> tuple[float, str]:
    """Bars per year (--periods-per-year, else detected) and the frequency's name."""
    if req.periods_per_year is None:
        return detect_periods(item.returns.index)
    frequency = detect_periods(item.returns.index)[1] if item.has_timestamps else "bars"
    return float(req.periods_per_year), frequency


def prepare(item: Series, req: Request, run_name: str, folder: Path, column_param: bool) -> Prepared:
    """Metrics, histories, params, tags, description and artifacts (except the tearsheet) for one series."""
    import numpy as np

    periods, frequency = periods_of(item, req)
    values, notes = compute_metrics(item, req.rf, periods, req.compounded)
    phase(f"{item.name}: {len(values)} metrics")
    for note in notes:
        warn(f"column {item.name!r}: {note}", req.warnings)
    metrics, undefined = split_defined(values)
    settings = {
        "rf": req.rf,
        "periods_per_year": periods,
        "compounded": req.compounded,
        "returns_kind": "prices" if req.prices else "percent" if req.percent else "returns",
    }
    fp = fingerprint(item, settings, req.params)
    n = len(item.returns)
    start, end = bar_time(item, 0) or "bar 0", bar_time(item, n - 1) or f"bar {n - 1}"
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
    if column_param:
        params["column"] = item.name
    if item.benchmark_info:
        params["benchmark_column"] = str(item.benchmark_info["column"])
    summary = {
        "source": req.returns_path.name,
        "column": item.name,
        "n_bars": n,
        "frequency": frequency,
        "periods_per_year": periods,
        "start": start,
        "end": end,
        "rf": req.rf,
        "compounded": req.compounded,
        "benchmark": req.benchmark_path.name if req.benchmark_path else None,
        "metrics": metrics,
        "undefined_metrics": undefined,
    }
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
    equity, drawdown = equity_and_drawdown(item.returns, req.compounded)
    steps = history_steps(n, req.max_history_points, int(np.argmin(drawdown)))
    if item.has_timestamps:
        stamps = history_stamps(item.returns.index, steps, frequency)
    else:
        stamps = np.full(len(steps), int(time.time() * 1000))
    prep = Prepared(
        item=item, run_name=run_name, periods=periods, frequency=frequency, metrics=metrics,
        undefined=undefined, fingerprint=fp, params=params, tags=tags, summary=summary, folder=folder,
        history=(steps, stamps, equity[steps], drawdown[steps]),
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    metrics_doc = {
        "run_name": run_name,
        "column": item.name,
        "settings": {**settings, "frequency": frequency, "n_bars": n, "start": start, "end": end},
        "benchmark": item.benchmark_info,
        "metrics": metrics,
        "undefined_metrics": undefined,
        "fingerprint": fp,
        "skill_version": SKILL_VERSION,
    }
    (folder / "metrics.json").write_text(json.dumps(json_safe(metrics_doc), indent=2) + "\n")
    prep.artifacts = ["metrics.json", write_returns_artifact(item, folder), *copy_code(req, folder)]
    phase(f"{item.name}: histories and artifacts prepared")
    return prep


def draw_tearsheet(item: Series, req: Request, run_name: str, folder: Path) -> str | None:
    """QuantStats' report into folder/tearsheet.html; returns the note write_tearsheet gives, if any."""
    folder.mkdir(parents=True, exist_ok=True)
    note = write_tearsheet(
        item, folder / "tearsheet.html", req.rf, periods_of(item, req)[0], req.compounded, run_name
    )
    phase(f"{run_name}: tearsheet")
    return note


def add_tearsheet(prep: Prepared, req: Request, note: str | None = None, drawn: bool = False) -> None:
    """Draw the tearsheet (unless a helper process already did) and list it among the run's artifacts."""
    if not drawn:
        note = draw_tearsheet(prep.item, req, prep.run_name, prep.folder)
    prep.artifacts.append("tearsheet.html")
    if note:
        warn(f"{prep.run_name}: {note}", req.warnings)


# ---- helper processes: the work of one run overlaps the imports and work of another --------------------------
def can_fork() -> bool:
    """Helper processes need fork (they inherit the loaded data: nothing is pickled on the way in), a second
    core, and no MLflow state to inherit: a host that imported mlflow before calling main() in-process gets
    the sequential path, which does the same work in the same order."""
    import multiprocessing

    return (
        (os.cpu_count() or 1) > 1
        and "fork" in multiprocessing.get_all_start_methods()
        and "mlflow" not in sys.modules
    )


class Helper:
    """job(inbox) in a forked process. Each value it yields, or its failure as (exit code, message,
    traceback), comes back pickled through a pipe; send() passes values to its inbox."""

    def __init__(self, job):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=self._main, args=(job, child), daemon=True)
        self.process.start()
        child.close()

    @staticmethod
    def _main(job, conn) -> None:
        try:
            for value in job(conn.recv):
                conn.send(("ok", value))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which exits with it
            code, message = (exc.code, str(exc)) if isinstance(exc, CliError) else classify_error(exc)
            conn.send(("error", code, message, traceback.format_exc()))
        finally:
            sys.stderr.flush()

    def send(self, value) -> None:
        self.conn.send(value)

    def result(self):
        """The next value the job yields; its failure re-raised here as CliError."""
        try:
            reply = self.conn.recv()
        except EOFError:
            self.process.join()
            reply = (
                "error",
                EXIT_UNEXPECTED,
                f"a helper process died (exit code {self.process.exitcode})",
                "",
            )
        if reply[0] == "ok":
            return reply[1]
        if DEBUG_TIMES and reply[3]:
            print(reply[3], file=sys.stderr, end="")
        raise CliError(reply[1], reply[2])

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()


def exported(prep: Prepared) -> dict:
    """A prepared run without its series (the parent has that): plain values, cheap to pickle."""
    return {k: v for k, v in vars(prep).items() if k != "item"}


def adopt(helper: Helper, items: list, req: Request) -> dict[int, Prepared]:
    """The runs a column_job helper prepared, whole again; its warnings join ours (it printed them)."""
    fields, new_warnings = helper.result()
    req.warnings.extend(new_warnings)
    return {i: Prepared(item=items[i], **f) for i, f in fields.items()}


def prepare_columns(items, names, folders, req: Request, positions, column_param: bool, tearsheets: bool):
    """{position: Prepared} for these columns of the input, tearsheets drawn when asked for."""
    preps = {}
    for i in positions:
        started = time.monotonic()
        preps[i] = prepare(items[i], req, names[i], folders[i], column_param)
        if tearsheets:
            add_tearsheet(preps[i], req)
        if len(items) > 1:
            print(f"[{i + 1}/{len(items)}] {names[i]}: prepared in {time.monotonic() - started:.1f}s",
                  file=sys.stderr)  # fmt: skip
    return preps


def write_columns(client, experiment_id: str, parent_id: str, preps: dict, req: Request, total: int) -> dict:
    """Write these prepared children of a sweep; {position: run id}."""
    ids = {}
    for i, p in preps.items():
        started = time.monotonic()
        ids[i] = write_run(client, experiment_id, p, req, parent_id=parent_id)
        print(f"[{i + 1}/{total}] {p.item.name}: logged run {p.run_id} ({time.monotonic() - started:.1f}s)",
              file=sys.stderr)  # fmt: skip
    return ids


def column_job(items, names, folders, req: Request, positions, column_param: bool, writes: bool):
    """The job of a helper process: prepare these columns (tearsheets too when it writes) and yield
    ({position: exported prep}, [warnings]). With writes, it then imports mlflow while the parent checks the
    experiment and duplicates; told ("write", tracking_uri, experiment_id, parent_id) it writes its runs and
    yields {position: run id}. A duplicate sweep writes nothing: the parent stops it."""

    def job(inbox):
        first = len(req.warnings)
        tearsheets = writes and req.tearsheet
        preps = prepare_columns(items, names, folders, req, positions, column_param, tearsheets)
        yield {i: exported(p) for i, p in preps.items()}, req.warnings[first:]
        if not writes:
            return
        import mlflow  # noqa: F401

        order = inbox()
        if order[0] == "write":
            _, tracking_uri, experiment_id, parent_id = order
            yield write_columns(
                connect(tracking_uri, DEBUG_TIMES), experiment_id, parent_id, preps, req, len(items)
            )

    return job


def dataset_entity(prep: Prepared, req: Request):
    """The returns as an MLflow dataset: schema from the head (MLflow infers it row by row: seconds at 1M
    bars), digest from our fingerprint, row count of the whole series."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import Dataset

    item = prep.item
    head = pd.DataFrame({"returns": item.returns.iloc[:100].to_numpy()})
    if item.has_timestamps:
        head.insert(0, timestamp_name(item), item.returns.index[:100])
    if item.benchmark is not None:
        head["benchmark"] = item.benchmark.iloc[:100].to_numpy()
    name = req.returns_path.stem
    if prep.params.get("column"):
        name = f"{name}[{item.name}]"
    small = mlflow.data.from_pandas(
        head, source=str(req.returns_path.resolve()), name=name, digest=prep.fingerprint[:16]
    )
    entity = small._to_mlflow_entity()
    profile = json.dumps(
        {"num_rows": len(item.returns), "num_elements": len(item.returns) * len(head.columns)}
    )
    return Dataset(entity.name, entity.digest, entity.source_type, entity.source, entity.schema, profile)


# ---- MLflow I/O ------------------------------------------------------------------------------------------
def ensure_experiment(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
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
    return experiment.experiment_id


def find_duplicate(client, experiment_id: str, fp: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fp}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def write_run(
    client, experiment_id: str, prep: Prepared, req: Request, parent_id: str | None = None, tearsheet=None
) -> str:
    """Create the run and write everything; FINISHED only when all of it landed, else FAILED and re-raise.
    tearsheet(), if given, is called after the metrics land and before the artifacts are logged (a helper
    process draws it meanwhile); if it fails, the run is FAILED and deleted."""
    import contextlib

    from mlflow.entities import DatasetInput, InputTag, Metric, Param

    tags = dict(prep.tags)
    if parent_id:
        tags[PARENT_TAG] = parent_id
    run = client.create_run(experiment_id, run_name=prep.run_name, tags=tags)
    run_id = prep.run_id = run.info.run_id
    discard = False
    try:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in prep.metrics.items()],
            params=[Param(k, v) for k, v in prep.params.items()],
        )
        steps, stamps, equity, drawdown = prep.history
        points = [
            Metric(key, float(value), int(ts), int(step))
            for key, series in (("equity", equity), ("drawdown", drawdown))
            for step, ts, value in zip(steps.tolist(), stamps.tolist(), series.tolist(), strict=True)
        ]
        client.log_batch(run_id, metrics=points)  # MlflowClient splits into requests of <= 1000
        client.log_inputs(
            run_id,
            datasets=[DatasetInput(dataset_entity(prep, req), [InputTag("mlflow.data.context", "backtest")])],
        )
        phase(f"{prep.run_name}: metrics, params, histories, dataset logged")
        if tearsheet is not None:
            discard = True  # not a backtest without its report: out of sight if it fails
            tearsheet()
            discard = False
        client.log_artifacts(run_id, str(prep.folder))
        client.set_terminated(run_id, "FINISHED")
        phase(f"{prep.run_name}: artifacts logged, run FINISHED")
    except BaseException:
        mark_failed(client, run_id)
        if discard:
            with contextlib.suppress(Exception):
                client.delete_run(run_id)
        raise
    return run_id


def mark_failed(client, run_id: str) -> None:
    import contextlib

    # If the store is what failed, the run stays RUNNING: unfinished, never FINISHED.
    with contextlib.suppress(Exception):
        client.set_terminated(run_id, "FAILED")


# ---- output ---------------------------------------------------------------------------------------------
def run_output(prep: Prepared, req: Request, experiment_id, tracking_uri: str | None, key_only: bool) -> dict:
    metrics = prep.metrics
    if key_only:
        metrics = {k: metrics[k] for k in KEY_METRICS + ("alpha", "beta") if k in metrics}
    out = {
        "run_id": prep.run_id,
        "run_name": prep.run_name,
        "experiment_id": experiment_id,
        "experiment": req.experiment,
        "tracking_uri": mask_uri(tracking_uri) if tracking_uri else None,
        "url": ui_url(tracking_uri, experiment_id, prep.run_id) if tracking_uri and prep.run_id else None,
        "deduplicated": prep.deduplicated,
        "dry_run": req.dry_run,
        "column": prep.item.name,
        "periods_per_year": prep.periods,
        "frequency": prep.frequency,
        "n_bars": len(prep.item.returns),
        "start": prep.summary["start"],
        "end": prep.summary["end"],
        "metrics": metrics,
        "undefined_metrics": prep.undefined,
        "artifacts": prep.artifacts if not prep.deduplicated else [],
        "fingerprint": prep.fingerprint,
        "benchmark": prep.item.benchmark_info,
    }
    if not key_only:  # a sweep says it once, for all its runs
        out["git"] = git_summary(req.tags)
    return out


def table_rows(data: dict) -> list[dict] | dict:
    """What a person at a terminal sees: key metrics, one row per run."""
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


# ---- main -------------------------------------------------------------------------------------------------
def build_parser() -> CliParser:
    parser = CliParser(
        prog="log_backtest.py",
        description="Log a backtest's returns to MLflow: every QuantStats metric, equity/drawdown curves, "
        "dataset, tearsheet and description in one run; several columns make a sweep.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--returns", metavar="PATH", help="CSV or Parquet of returns (or prices); required")
    data.add_argument("--column", metavar="NAME", help="log only this column (default: every numeric column)")
    data.add_argument("--prices", action="store_true", help="values are prices/equity: convert to returns")
    data.add_argument("--percent", action="store_true", help="values are percent returns: divide by 100")
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
    where.add_argument("--code-dir", metavar="DIR",
                       help="the strategy's git repository (default: the current folder): commit, branch, "
                       "remote and uncommitted changes become tags")  # fmt: skip
    calc = parser.add_argument_group("calculation")
    calc.add_argument("--rf", "--risk-free-rate", type=float, default=0.0, metavar="RATE",
                      help="annual risk-free rate, decimal (0.04 = 4 %%); default 0")  # fmt: skip
    calc.add_argument("--periods-per-year", type=float, metavar="N", help="default: detected from timestamps")
    calc.add_argument("--simple", action="store_true", help="returns are not compounded")
    run = parser.add_argument_group("run")
    run.add_argument("--no-tearsheet", action="store_true", help="skip QuantStats' HTML tearsheet (faster)")
    run.add_argument("--dry-run", action="store_true", help="compute and print; touch no store")
    run.add_argument("--force", action="store_true", help="log even if an identical backtest is logged")
    run.add_argument("--max-history-points", type=int, default=DEFAULT_MAX_HISTORY_POINTS, metavar="N",
                     help=f"equity/drawdown points per run ({DEFAULT_MAX_HISTORY_POINTS})")  # fmt: skip
    run.add_argument(
        "--format", choices=["json", "table", "csv"], help="default: table at a terminal, else json"
    )
    run.add_argument("--tracking-uri", metavar="URI", help="overrides MLFLOW_TRACKING_URI")
    run.add_argument("--debug", action="store_true", help="tracebacks and library logging on stderr")
    return parser


def best_of(preps: list[Prepared]) -> Prepared:
    """The sweep's best child: highest sharpe. An undefined sharpe (a flat column: zero dispersion, or a
    value that is not finite) ranks last, below any defined one; ties keep the column order."""

    def rank(p: Prepared) -> float:
        value = p.metrics.get("sharpe", math.nan)
        return value if isinstance(value, float | int) and math.isfinite(value) else -math.inf

    return max(preps, key=rank)


def comparison_csv(preps: list[Prepared], folder: Path) -> str:
    import csv

    path = folder / "comparison.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["column", "run_id", *KEY_METRICS])
        for p in preps:
            writer.writerow(
                [
                    p.item.name,
                    p.run_id or "",
                    *[repr(p.metrics[k]) if k in p.metrics else "" for k in KEY_METRICS],
                ]
            )
    return path.name


def sweep_description(preps: list[Prepared], best: Prepared, req: Request) -> str:
    """Headline of the best child first (the UI shows two lines), then one list item per column."""
    lines = [f"Best `{best.item.name}`: {headline(best.metrics)}", ""]
    if req.description:
        lines += [req.description.strip(), ""]
    lines += [
        f"**Sweep** of {len(preps)} columns of `{req.returns_path.name}`; best by sharpe: `{best.item.name}`",
        "",
    ]
    for p in preps:
        lines.append(f"- **{p.item.name}**: {headline(p.metrics)}")
    lines += [
        "",
        f"Logged by {SKILL_NAME} log_backtest.py {SKILL_VERSION}; key metrics per child in `comparison.csv`.",
    ]
    return "\n".join(lines)[:MAX_TAG_VALUE_LENGTH]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv

    def action() -> int:
        import contextlib
        import io
        import tempfile

        args = build_parser().parse_args(argv)
        req = build_request(args)
        phase("arguments checked")
        items = load_all(req)  # pandas from here on; every input error is still exit 2 with nothing written
        phase("data loaded and validated")
        sweep = len(items) > 1
        stem = req.returns_path.stem
        with tempfile.TemporaryDirectory(prefix="log_backtest-") as tmp:
            names = [item.name if sweep else (req.run_name or stem) for item in items]
            folders = [Path(tmp) / f"run{i}" for i in range(len(items))]
            # MLflow prints run links ("View run ... at ...") to stdout for http servers: stdout is ours.
            with contextlib.redirect_stdout(sys.stderr if debug else io.StringIO()):
                if sweep:
                    out = run_sweep(items, names, folders, req, Path(tmp), debug, args)
                else:
                    out = run_single(items[0], names[0], folders[0], req, debug, args)
            out["warnings"] = req.warnings
            fmt = output_format(args.format)
            emit(table_rows(out) if fmt == "table" else out, fmt)
            return EXIT_OK

    return run_cli(action, debug)


def run_single(item: Series, name: str, folder: Path, req: Request, debug: bool, args) -> dict:
    parallel = not req.dry_run and can_fork()
    helpers: list[Helper] = []
    if parallel:
        # Metrics in one helper process and the tearsheet in another while this one imports mlflow and then
        # writes the metrics and histories; the tearsheet joins the run last (2 cores: bench/RESULTS.md).
        helpers.append(Helper(column_job([item], [name], [folder], req, [0], bool(req.column), writes=False)))
        if req.tearsheet:
            helpers.append(Helper(lambda inbox: iter([draw_tearsheet(item, req, name, folder)])))
    else:
        prep = prepare(item, req, name, folder, column_param=bool(req.column))
        if req.dry_run:
            return run_output(prep, req, None, None, key_only=False)
    try:
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
        client = connect(tracking_uri, debug)
        phase("mlflow imported")
        if parallel:
            prep = adopt(helpers[0], [item], req)[0]
        experiment_id = ensure_experiment(client, req.experiment)
        existing = None if req.force else find_duplicate(client, experiment_id, prep.fingerprint)
        phase("experiment and dedupe checked")
        if existing is not None:
            prep.run_id, prep.deduplicated = existing.info.run_id, True
            prep.run_name = existing.info.run_name
            warn(
                f"an identical backtest is already logged as run {prep.run_id}; pass --force to log again",
                req.warnings,
            )
        elif req.tearsheet and parallel:
            tearsheet = helpers[1]
            write_run(
                client, experiment_id, prep, req,
                tearsheet=lambda: add_tearsheet(prep, req, tearsheet.result(), drawn=True),
            )  # fmt: skip
        else:
            if req.tearsheet:
                add_tearsheet(prep, req)
            write_run(client, experiment_id, prep, req)
    finally:
        for helper in helpers:
            helper.stop()
    return run_output(prep, req, experiment_id, tracking_uri, key_only=False)


def write_sweep(
    client, experiment_id, preps, best, req, tmp: Path, parent_fp, parent_name, helpers, tracking_uri, own
) -> str:
    """The parent run, then every child (this process's share here, the rest by the helpers), then the
    parent's comparison, metrics and artifacts; FINISHED last. Returns the parent's run id."""
    parent_dir = tmp / "parent"
    parent_dir.mkdir()
    copy_code(req, parent_dir)
    if req.tearsheet:
        # Every child is a complete run, tearsheet included (QuantStats' report costs ~3-5 s a series;
        # --no-tearsheet skips them all). The parent carries a copy of the best child's. All are drawn
        # before the parent run exists, so a failing report leaves nothing half-written.
        for i, p in enumerate(preps):
            if "tearsheet.html" not in p.artifacts:  # not drawn yet: the sequential path
                add_tearsheet(p, req)
                print(f"[{i + 1}/{len(preps)}] {p.item.name}: tearsheet drawn", file=sys.stderr)
        (parent_dir / "tearsheet.html").write_bytes((best.folder / "tearsheet.html").read_bytes())
    parent_tags = {
        FINGERPRINT_TAG: parent_fp,
        VERSION_TAG: SKILL_VERSION,
        SWEEP_TAG: "true",
        "backtest.best_column": best.item.name,
        "mlflow.source.name": "log_backtest.py",
        "mlflow.source.type": "LOCAL",
        DESCRIPTION_TAG: "sweep in progress",
        **req.tags,
    }
    parent = client.create_run(experiment_id, run_name=parent_name, tags=parent_tags)
    parent_id = parent.info.run_id
    try:
        for helper in helpers:
            helper.send(("write", tracking_uri, experiment_id, parent_id))
        failures = []
        try:
            write_columns(client, experiment_id, parent_id, {i: preps[i] for i in own}, req, len(preps))
        except Exception as exc:  # noqa: BLE001 - the helpers finish their runs first, then this is raised
            failures.append(exc)
        for helper in helpers:
            try:
                for i, run_id in helper.result().items():
                    preps[i].run_id = run_id
            except CliError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
        from mlflow.entities import Metric, Param, RunTag

        comparison_csv(preps, parent_dir)
        now = int(time.time() * 1000)
        shared = {k: v for k, v in best.params.items() if k not in ("column", "start", "end", "n_bars")}
        shared["columns"] = ",".join(p.item.name for p in preps)[:MAX_PARAM_VALUE_LENGTH]
        client.log_batch(
            parent_id,
            metrics=[Metric(k, best.metrics[k], now, 0) for k in KEY_METRICS if k in best.metrics],
            params=[Param(k, v) for k, v in shared.items()],
            tags=[
                RunTag("backtest.best_run_id", best.run_id),
                RunTag(DESCRIPTION_TAG, sweep_description(preps, best, req)),
            ],
        )
        client.log_artifacts(parent_id, str(parent_dir))
        client.set_terminated(parent_id, "FINISHED")
    except BaseException:
        mark_failed(client, parent_id)
        raise
    return parent_id


def run_sweep(
    items: list, names: list[str], folders: list[Path], req: Request, tmp: Path, debug: bool, args
) -> dict:
    """A parent run with one complete child run per column. With a second core the columns are split
    between this process and helper processes (one per core): each prepares its columns, tearsheets
    included, while this one imports mlflow; once all are prepared and no duplicate exists, each writes its
    own runs (MLflow's store spends ~0.7 s of CPU a run turning 10,000 history points into rows)."""
    n = len(items)
    parallel = not req.dry_run and can_fork()
    workers = min(os.cpu_count() or 1, n) if parallel else 1
    shares = [list(range(w, n, workers)) for w in range(workers)]
    helpers = [
        Helper(column_job(items, names, folders, req, share, True, writes=True)) for share in shares[1:]
    ]
    if helpers:
        print(f"[sweep] {n} columns: {len(shares[0])} in this process, {n - len(shares[0])} in {len(helpers)} helper "
              f"process{'es' if len(helpers) > 1 else ''}", file=sys.stderr)  # fmt: skip
    try:
        prepared = prepare_columns(items, names, folders, req, shares[0], True, parallel and req.tearsheet)
        tracking_uri = client = experiment_id = parent_id = None
        if not req.dry_run:
            tracking_uri = resolve_tracking_uri(args.tracking_uri)
            client = connect(tracking_uri, debug)
            phase("mlflow imported")
        for helper in helpers:
            prepared.update(adopt(helper, items, req))
        preps = [prepared[i] for i in range(n)]
        best = best_of(preps)
        parent_fp = hashlib.sha256("\n".join(p.fingerprint for p in preps).encode()).hexdigest()
        parent_name = req.run_name or req.returns_path.stem
        deduplicated = False
        if not req.dry_run:
            experiment_id = ensure_experiment(client, req.experiment)
            existing = None if req.force else find_duplicate(client, experiment_id, parent_fp)
            if existing is not None:
                deduplicated, parent_id = True, existing.info.run_id
                warn(
                    f"an identical sweep is already logged as run {parent_id}; pass --force to log again",
                    req.warnings,
                )
                children = client.search_runs(
                    [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'"
                )
                by_fp = {run.data.tags.get(FINGERPRINT_TAG): run for run in children}
                for p in preps:
                    found = by_fp.get(p.fingerprint)
                    p.deduplicated, p.run_id = True, found.info.run_id if found else None
            else:
                parent_id = write_sweep(client, experiment_id, preps, best, req, tmp, parent_fp, parent_name,
                                        helpers, tracking_uri, shares[0])  # fmt: skip
    finally:
        for helper in helpers:
            helper.stop()
    runs = [run_output(p, req, experiment_id, tracking_uri, key_only=True) for p in preps]
    out = {
        "parent_run_id": parent_id,
        "parent_run_name": parent_name,
        "experiment_id": experiment_id,
        "experiment": req.experiment,
        "tracking_uri": mask_uri(tracking_uri) if tracking_uri else None,
        "url": ui_url(tracking_uri, experiment_id, parent_id) if tracking_uri and parent_id else None,
        "deduplicated": deduplicated,
        "dry_run": req.dry_run,
        "best_run_id": best.run_id,
        "best_column": best.item.name,
        "best_by": "sharpe",  # the metric that chose best_run_id
        "git": git_summary(req.tags),
        "fingerprint": parent_fp,
        "artifacts": []
        if deduplicated or req.dry_run
        else ["comparison.csv"] + (["tearsheet.html"] if req.tearsheet else []) + copy_names(req),
        "runs": runs,
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
