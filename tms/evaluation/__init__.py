"""Evaluation: pure metrics (metrics.py), benchmark suites and reports."""
