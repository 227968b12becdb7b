"""Benchmark: get_metric_history.py vs a sequential MlflowClient.get_metric_history loop, real server.

    uv run python bench/bench_get_metric_history.py [--runs 50] [--points 5000]

Seeds RUNS runs x 2 series (equity, drawdown) x POINTS points into a sqlite file (through MlflowClient on
that file: much faster than through the server), starts a real `mlflow server --app-name basic-auth` on it
(tests/harness.py), then times, best of 2 each:
  1. sequential MlflowClient.get_metric_history per run and metric (the baseline),
  2. the script's fetch_series in this process (what the script does after start-up),
  3. the whole script as a user runs it: uv run scripts/get_metric_history.py --experiment bench
     --max-runs RUNS --metrics equity,drawdown --output history.parquet (start-up included).
Goal (issue 5): 2. <= 0.3 x 1. Prints one JSON object.

Measured 2026-11-23 on the 2-core dev machine, shared with other test runs (load average in brackets):
  server without auth cache, load 1.7:  sequential 66.4 s, fetch 13.4 s (0.20x)
  server without auth cache, load 12:   sequential 105.3 s, fetch 28.7 s (0.27x), whole CLI 42.2 s (0.40x)
  server with auth_cache_ttl, load 13:  sequential 49.4 s, fetch 20.2 s (0.41x), whole CLI 39.1 s (0.79x)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import MlflowServer, run_script  # noqa: E402


def seed(db: Path, runs: int, points: int) -> None:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(f"sqlite:///{db}")
    experiment_id = client.create_experiment("bench")
    rng = np.random.default_rng(1)
    days = [int(d.timestamp()) * 1000 for d in pd.bdate_range("2005-01-03", periods=points, tz="UTC")]
    for r in range(runs):
        run = client.create_run(experiment_id, run_name=f"bench-{r}")
        equity = np.cumprod(1 + rng.normal(0.0003, 0.01, points))
        drawdown = equity / np.maximum.accumulate(equity) - 1
        metrics = [
            Metric(key, float(v), days[i], i)
            for key, series in (("equity", equity), ("drawdown", drawdown))
            for i, v in enumerate(series)
        ]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id)


def best_of(n: int, fn) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(n):
        started = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - started)
    return round(best, 2), count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--points", type=int, default=5000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-gmh-"))
    started = time.perf_counter()
    seed(root / "mlflow.db", args.runs, args.points)
    seeded = time.perf_counter() - started
    server = MlflowServer(root).start()
    try:
        os.environ.update(server.env())
        spec = importlib.util.spec_from_file_location("gmh", ROOT / "scripts" / "get_metric_history.py")
        gmh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gmh)
        client = gmh.connect(server.url)
        experiment = client.get_experiment_by_name("bench")
        found = client.search_runs([experiment.experiment_id], max_results=args.runs)
        run_ids = [r.info.run_id for r in found]
        pairs = [(run_id, key) for run_id in run_ids for key in ("equity", "drawdown")]
        # the size hints the script passes: each metric's latest step + 1 (resolve_runs)
        sizes = {(r.info.run_id, m.key): m.step + 1 for r in found for m in r.data._metric_objs}

        def sequential():
            return sum(len(client.get_metric_history(run_id, key)) for run_id, key in pairs)

        def script_fetch():
            return sum(
                len(points) for points in gmh.fetch_series(client, server.url, pairs, sizes=sizes).values()
            )

        def script_cli():
            out = root / "history.parquet"
            result = run_script(
                "get_metric_history", "--experiment", "bench", "--max-runs", str(args.runs),
                "--metrics", "equity,drawdown", "--output", str(out), env=server.env(),
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            return result.json()["points"]

        baseline = best_of(2, sequential)
        fetch = best_of(2, script_fetch)
        cli = best_of(2, script_cli)
        assert baseline[1] == fetch[1] == cli[1] == args.runs * 2 * args.points
        print(json.dumps({
            "runs": args.runs, "series": 2 * args.runs, "points": baseline[1], "seed_seconds": round(seeded, 1),
            "sequential_client_seconds": baseline[0], "script_fetch_seconds": fetch[0],
            "script_cli_seconds": cli[0], "fetch_ratio": round(fetch[0] / baseline[0], 3),
            "cli_ratio": round(cli[0] / baseline[0], 3), "cpus": os.cpu_count(),
            "loadavg": os.getloadavg()[0],
        }, indent=2))  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
