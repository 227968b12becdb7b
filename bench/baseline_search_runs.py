# /// script
# requires-python = ">=3.11"
# dependencies = ["mlflow>=3.17,<3.18", "pandas>=2.2"]
# ///
"""What a user writes by hand: mlflow.search_runs over the experiment, then a pandas sort for the top 20.

    uv run bench/baseline_search_runs.py EXPERIMENT_NAME
The benchmark's yardstick for query_experiments.py (bench/run.py); not part of the skill.
"""

import sys

import mlflow

frame = mlflow.search_runs(experiment_names=[sys.argv[1]])
top = frame.sort_values("metrics.sharpe", ascending=False).head(20)
print(top[["run_id", "metrics.sharpe"]].to_json(orient="records"))
