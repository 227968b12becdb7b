# /// script
# requires-python = ">=3.11"
# dependencies = ["mlflow>=3.17,<3.18"]
# ///
"""What a user writes by hand: a sequential loop of MlflowClient.get_metric_history per run and metric.

    uv run bench/baseline_metric_history.py EXPERIMENT_NAME equity,drawdown
The benchmark's yardstick for get_metric_history.py (bench/run.py); not part of the skill.
"""

import sys

from mlflow import MlflowClient

client = MlflowClient()
experiment = client.get_experiment_by_name(sys.argv[1])
runs = client.search_runs([experiment.experiment_id], max_results=1000)
points = 0
for run in runs:
    for metric in sys.argv[2].split(","):
        points += len(client.get_metric_history(run.info.run_id, metric))
print(points)
