"""Evaluation: benchmark annotation readers in their official formats and the metrics the papers report."""
