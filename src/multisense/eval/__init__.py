"""Evaluation: greedy answers, metrics, reports."""
