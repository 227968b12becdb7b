# /// script
# requires-python = ">=3.11"
# dependencies = ["mlflow>=3.17,<3.18", "quantstats==0.0.86", "pandas>=2.2"]
# ///
"""What a user writes by hand: 30 qs.stats metrics of one returns column, then mlflow.log_metrics.

    uv run bench/baseline_log_backtest.py RETURNS.csv [COLUMN]
The benchmark's yardstick for log_backtest.py (bench/run.py); not part of the skill.
"""

import sys

import mlflow
import pandas as pd
import quantstats as qs

METRICS = [
    "sharpe", "sortino", "calmar", "omega", "cagr", "volatility", "max_drawdown", "win_rate",
    "profit_factor", "payoff_ratio", "kelly_criterion", "recovery_factor", "ulcer_index", "tail_ratio",
    "skew", "kurtosis", "value_at_risk", "conditional_value_at_risk", "avg_return", "avg_win", "avg_loss",
    "consecutive_wins", "consecutive_losses", "best", "worst", "common_sense_ratio", "gain_to_pain_ratio",
    "risk_of_ruin", "serenity_index", "expected_return",
]  # fmt: skip

frame = pd.read_csv(sys.argv[1], index_col=0, parse_dates=True)
returns = frame[sys.argv[2]] if len(sys.argv) > 2 else frame.iloc[:, 0]
values = {name: float(getattr(qs.stats, name)(returns)) for name in METRICS}
with mlflow.start_run(run_name="baseline"):
    mlflow.log_metrics({k: v for k, v in values.items() if v == v and abs(v) != float("inf")})
print(len(values))
