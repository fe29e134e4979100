"""Evaluation: benchmark readers in their official formats, metrics, suites, task runners and the history."""
