"""Tools that serve both paths: sensitivity, the planner, the summary, the monitor, plots,
data batching and the fine-tuning schedule."""
