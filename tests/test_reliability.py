"""Faults across all four scripts, against real servers on 127.0.0.1: refused, hung, failing, wrong credentials."""

from __future__ import annotations

import uuid

import harness
import pytest
from harness import DATA, BlackHoleServer, StatusServer, assert_clean_error, free_port, run_script

# One read or write call per script, enough to reach the tracking server.
CALLS = {
    "create_experiment": ["--name", "reliability"],
    "log_backtest": ["--returns", str(DATA / "example_returns.csv"), "--no-tearsheet", "--experiment", "rel"],
    "query_experiments": ["experiments"],
    "get_metric_history": ["--run-id", "0123456789abcdef0123456789abcdef", "--metrics", "equity"],
}


@pytest.mark.parametrize("name", CALLS)
def test_refused_port_is_exit_5_within_15_seconds(name):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_script(name, *CALLS[name], env={"MLFLOW_TRACKING_URI": uri})
    assert_clean_error(result, 5, "MLFLOW_TRACKING_URI")
    assert result.seconds < 15, result.seconds  # the contract; MLflow's own defaults take ~4 minutes


@pytest.mark.parametrize("name", CALLS)
def test_hung_server_is_exit_5_within_the_configured_timeout(name):
    """The server accepts and never answers. The user set a 2 s timeout and 1 retry: the client must give
    up after 2 attempts of 2 s plus 1 s of backoff. Measured on the server side (first connection to exit),
    so the script's start-up time does not count."""
    server = BlackHoleServer()
    try:
        env = {
            "MLFLOW_TRACKING_URI": server.url,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        }
        result = run_script(name, *CALLS[name], env=env)
        import time

        waited = time.monotonic() - server.accepted[0]
    finally:
        server.close()
    assert_clean_error(result, 5, "MLFLOW_TRACKING_URI")
    assert len(server.accepted) == 2, server.accepted  # the user's retry setting was respected
    assert waited < 2 * 2 + 1 + 3, waited  # + 3 s for the interpreter to report and exit


@pytest.mark.parametrize("name", CALLS)
def test_5xx_is_retried_a_bounded_number_of_times_then_exit_5(name):
    server = StatusServer(503)
    try:
        result = run_script(name, *CALLS[name], env={"MLFLOW_TRACKING_URI": server.url})
    finally:
        server.close()
    assert_clean_error(result, 5, "MLFLOW_TRACKING_URI")
    assert 1 <= len(server.requests) <= 3, server.requests  # 1 try + our default of 2 retries


@pytest.mark.server
@pytest.mark.parametrize("name", CALLS)
def test_wrong_password_is_exit_4_and_never_echoed(name, mlflow_server):
    env = mlflow_server.env()
    env["MLFLOW_TRACKING_PASSWORD"] = canary = "Canary-" + uuid.uuid4().hex
    harness.SECRETS.add(canary)
    result = run_script(name, *CALLS[name], env=env)
    assert_clean_error(result, 4, "MLFLOW_TRACKING_PASSWORD")
    assert canary not in result.stdout + result.stderr


def test_secret_scan_finds_a_planted_secret(tmp_path):
    """The session-end scan must be able to fail: plant a canary in a file and an output and find both."""
    canary = "Canary-" + uuid.uuid4().hex
    scan_root = tmp_path / "planted"
    scan_root.mkdir()
    (scan_root / "params.txt").write_text(f"password={canary}")
    harness.SECRETS.add(canary)
    harness.OUTPUTS.append(f"leaked {canary}")
    try:
        leaks, scanned = harness.scan_for_secrets([scan_root])
    finally:
        harness.SECRETS.discard(canary)
        harness.OUTPUTS.pop()
        (scan_root / "params.txt").unlink()
    assert scanned == 1
    assert str(scan_root / "params.txt") in leaks and any(leak.startswith("script output") for leak in leaks)
