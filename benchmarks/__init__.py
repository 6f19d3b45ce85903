"""Benchmarks: accuracy, training cost and export, each written as a Markdown table.

Run them all with `python -m benchmarks` (or `--quick`); see `benchmarks/RESULTS.md`.
"""
