r"""Evaluation job: run a suite of benchmark tasks on the model actors, append the results to a history, report.

    python jobs/evaluate.py --suite evaluation/suites/blip_seed_table.yaml --data-root /data/benchmarks \
        --output evals/ [--model captioner=NAME ...] [--limit N] [--compare [--tolerance 0.5]]

`--suite` is a YAML file (or the name of one in evaluation/suites/). Results are appended to
EVALDIR/results.parquet; the report is printed and saved as EVALDIR/report-<run id>.md and EVALDIR/latest.md.
`--compare` compares with the previous run of the same suite and models and exits 3 when a metric dropped by more
than the tolerance. Exit codes: 0 done, 2 a usage, suite, data or model problem (one `error:` line), 3 a regression.
Runs on an embedded local Ray, or on the cluster named by RAY_ADDRESS (`ray job submit --working-dir . -- python
jobs/evaluate.py ...`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python jobs/evaluate.py` from any directory

from evaluation.compare import DEFAULT_TOLERANCE, compare_runs  # noqa: E402
from evaluation.datasets import DatasetFormatError  # noqa: E402
from evaluation.metrics import MetricUnavailableError  # noqa: E402
from evaluation.suite import SUITE_DIR, SuiteError, load_suite, parse_model_overrides  # noqa: E402
from models.device import DeviceError  # noqa: E402
from models.images import ImageError  # noqa: E402
from models.loading import ModelLoadError  # noqa: E402
from schemas.evaluation import FIXTURES_DIR, HISTORY_FILE, LATEST_REPORT, REPORT_PATTERN  # noqa: E402

USER_ERRORS = (SuiteError, DatasetFormatError, ModelLoadError, DeviceError, ImageError, MetricUnavailableError)
EXIT_USAGE, EXIT_REGRESSION = 2, 3


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other user mistake, instead of argparse's usage dump
        raise UsageError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="jobs/evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True, help="suite YAML file, or the name of one in evaluation/suites/")
    p.add_argument("--output", required=True, help="evaluation directory: results.parquet, reports, predictions")
    p.add_argument("--model", action="append", metavar="ROLE=NAME",
                   help="use model NAME (zoo name, hub repo id or directory) for a role of the suite; repeatable")
    p.add_argument("--data-root", help="folder the suite's dataset paths are relative to (replaces its data_root)")
    p.add_argument("--limit", type=int, help="evaluate only the first N records of each task (a quick check)")
    p.add_argument("--tasks", help="comma-separated task names: run only these")
    p.add_argument("--compare", action="store_true", help="compare with the previous run; exit 3 on a regression")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"points a metric may drop before --compare calls it a regression (default {DEFAULT_TOLERANCE})")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--model-threads", type=int, help="torch threads per CPU model actor (default: all cores)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.tolerance < 0:
        raise UsageError("--tolerance must be at least 0")
    if args.model_threads is not None and args.model_threads < 1:
        raise UsageError("--model-threads must be at least 1")
    submitted = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))  # set by `ray job submit` for the entrypoint
    if submitted and not os.path.isabs(args.output):
        raise UsageError("under `ray job submit` the working directory is a temporary copy that Ray deletes; "
                         "give --output as an absolute path")
    return args


def suite_path(value: str) -> Path:
    path = Path(value)
    named = SUITE_DIR / f"{value}.yaml"
    return named if not path.is_file() and path.suffix == "" and named.is_file() else path


def evaluate(args: argparse.Namespace, log=print) -> int:
    from evaluation.fixtures import ensure_fixtures
    from evaluation.report import render_report
    from evaluation.results import read_history, write_text
    from evaluation.runner import Options, run_suite

    evaldir = Path(args.output)
    try:
        evaldir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--output {args.output}: cannot create the evaluation directory ({exc.strerror})") from None
    fixtures = evaldir / FIXTURES_DIR
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        overrides = parse_model_overrides(args.model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    suite = load_suite(suite_path(args.suite), data_root=args.data_root, variables={"FIXTURES": str(fixtures)},
                       models=overrides, tasks=tasks)
    if suite.uses_fixtures:
        ensure_fixtures(fixtures)
    result = run_suite(suite, Options(evaldir, args.limit, args.device, args.precision, args.model_threads), log)
    comparison = compare_runs(read_history(evaldir), result.run.run_id, args.tolerance) if args.compare else None
    report = render_report(result.run, result.rows, result.titles, comparison)
    write_text(evaldir / REPORT_PATTERN.format(run_id=result.run.run_id), report)
    write_text(evaldir / LATEST_REPORT, report)
    log(render_report(result.run, result.rows, result.titles, comparison, full=False))
    log(f"evaluate: results appended to {evaldir / HISTORY_FILE}; report {evaldir / LATEST_REPORT}")
    if comparison is not None and comparison.regressions:
        return EXIT_REGRESSION
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return evaluate(parse_args(argv))
    except (UsageError, *USER_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
