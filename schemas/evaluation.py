"""The evaluation history contract: one Arrow schema for EVALDIR/results.parquet, one row per (run, task, metric)."""
from __future__ import annotations

import pyarrow as pa

HISTORY_SCHEMA_VERSION = "1"

COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "id of the evaluation run (UTC start time plus a random suffix)"),
    ("time", pa.timestamp("us", tz="UTC"), "when the run started"),
    ("suite", pa.string(), "the suite's name"),
    ("suite_file", pa.string(), "the suite file the run read"),
    ("task", pa.string(), "the task's name in the suite"),
    ("task_type", pa.string(), "caption | vqa | retrieval | nlvr | grounding"),
    ("benchmark", pa.string(), "the benchmark the task measures (the key of the published numbers)"),
    ("dataset", pa.string(), "the dataset format (coco_karpathy, vqa, ...)"),
    ("dataset_file", pa.string(), "the task's main annotation file"),
    ("split", pa.string(), "the split evaluated"),
    ("metric", pa.string(), "metric name (BLEU-4, CIDEr, accuracy, i2t_r1, itc:i2t_r1, ...); null for a skipped task"),
    ("value", pa.float64(), "the metric in percent points (captioning x100, as the papers print it); null unless status = ok"),
    ("status", pa.string(), "ok | unavailable (the metric cannot run here) | skipped (the task could not run) | "
     "failed (the task raised while it ran)"),
    ("note", pa.string(), "why a metric is unavailable or a task skipped; else details of the measurement"),
    ("samples", pa.int64(), "images (caption, retrieval), questions (VQA) or examples scored"),
    ("limit", pa.int64(), "--limit of the run (the first N records of each task), null for the whole split"),
    ("model_role", pa.string(), "the role the task used (captioner, filter, answerer, ...)"),
    ("model", pa.string(), "model name as given (zoo name, hub repo id or directory)"),
    ("model_fingerprint", pa.string(), "hub revision, content hash of local weights, or tiny seed; null when not loaded"),
    ("device", pa.string(), "device the model ran on"),
    ("precision", pa.string(), "bf16 or fp32"),
    ("capfilt_version", pa.string(), "the capfilt package version"),
    ("git_commit", pa.string(), "git commit of the capfilt code (suffix -dirty for uncommitted changes), when known"),
    ("protocol", pa.string(), "the task's full protocol, as JSON text"),
]

COLUMN_NAMES = [name for name, _, _ in COLUMNS]


def history_schema() -> pa.Schema:
    return pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in COLUMNS],
                     metadata={"capfilt_history_schema_version": HISTORY_SCHEMA_VERSION})


# Layout of an evaluation directory.
HISTORY_FILE = "results.parquet"  # every run's rows, appended
LATEST_REPORT = "latest.md"  # the newest run's report
REPORT_PATTERN = "report-{run_id}.md"
PREDICTIONS_DIR = "predictions"  # predictions/{run_id}/{task}.json, in the benchmarks' result formats
FIXTURES_DIR = "fixtures"  # where ${FIXTURES} is built on demand
