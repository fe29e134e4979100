r"""Evaluation job: run a suite of benchmark tasks on the model actors, append the results to a history, report.

    python jobs/evaluate.py --suite evaluation/suites/blip_seed_table.yaml --data-root /data/benchmarks \
        --output evals/ [--model captioner=NAME ...] [--limit N] [--compare [--tolerance 0.5]]
    capfilt evaluate ...   (the same job, as a console script)

`--suite` is a YAML file (or the name of one in evaluation/suites/). Results are appended to
EVALDIR/results.parquet, all rows of a run at once (an interrupted run appends none); the report is printed and
saved as EVALDIR/report-<run id>.md and EVALDIR/latest.md. A task that crashes is reported as failed with its
reason, and the other tasks still run. `--compare` compares with the previous run of the same suite and models.
Exit codes: 0 done; 2 a usage, suite, data or model problem, or a task that failed (one `error:` line); 3 a
regression beyond the tolerance (--compare; a failed task takes precedence: 2); 130 interrupted.
Runs on an embedded local Ray, or on the cluster named by RAY_ADDRESS (`ray job submit --working-dir . -- python
jobs/evaluate.py ...`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from evaluation.compare import DEFAULT_TOLERANCE, compare_runs
from evaluation.datasets import DatasetFormatError
from evaluation.metrics import MetricUnavailableError
from evaluation.suite import SUITE_DIR, SuiteError, load_suite, parse_model_overrides
from jobs.cli import Parser, UsageError, entry
from models.images import ImageError
from models.names import DeviceError, ModelLoadError, check_device
from schemas.evaluation import FIXTURES_DIR, HISTORY_FILE, LATEST_REPORT, REPORT_PATTERN

USER_ERRORS = (SuiteError, DatasetFormatError, ModelLoadError, DeviceError, ImageError, MetricUnavailableError)
EXIT_USAGE, EXIT_REGRESSION = 2, 3
INTERRUPTED = "interrupted: nothing of this run was added to the history; run the same command again"


def parse_args(argv: list[str] | None, prog: str = "jobs/evaluate.py") -> argparse.Namespace:
    p = Parser(prog=prog, description=__doc__)
    where = p.add_argument_group("suite and output")
    where.add_argument("--suite", required=True, help="suite YAML file, or the name of one in evaluation/suites/")
    where.add_argument("--output", required=True, help="evaluation directory: results.parquet, reports, predictions")
    where.add_argument("--data-root", help="folder the suite's dataset paths are relative to (default: the "
                                           "suite's data_root)")
    models = p.add_argument_group("models")
    models.add_argument("--model", action="append", metavar="ROLE=NAME",
                        help="use model NAME (zoo name, hub repo id or directory) for a role of the suite; "
                             "its tasks then follow NAME's family's protocol (BLIP or BLIP-2); repeatable "
                             "(default: the suite's models)")
    selection = p.add_argument_group("what to run")
    selection.add_argument("--tasks", help="comma-separated task names: run only these (default: every task)")
    selection.add_argument("--limit", type=int, help="evaluate only the first N records of each task, a quick "
                                                     "check (default: the whole split)")
    comparison = p.add_argument_group("comparison")
    comparison.add_argument("--compare", action="store_true",
                            help="compare with the previous run; exit 3 on a regression")
    comparison.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                            help="points a metric may drop before --compare calls it a regression")
    resources = p.add_argument_group("resources")
    resources.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    resources.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                           help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    resources.add_argument("--model-threads", type=int, help="torch threads per CPU model actor (default: all cores)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.tolerance < 0:
        raise UsageError("--tolerance must be at least 0")
    if args.model_threads is not None and args.model_threads < 1:
        raise UsageError("--model-threads must be at least 1")
    check_device(args.device, args.precision)
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
    fixtures = (evaldir / FIXTURES_DIR).resolve()  # the suite resolves a relative variable against its own folder
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
    if result.failed:
        failed = "; ".join(f"{task}: {reason}" for task, reason in result.failed.items())
        print(f"error: {len(result.failed)} task(s) failed ({failed}); the others ran and are recorded",
              file=sys.stderr)
        return EXIT_USAGE
    if comparison is not None and comparison.regressions:
        return EXIT_REGRESSION
    return 0


def main(argv: list[str] | None = None, prog: str = "jobs/evaluate.py") -> int:
    try:
        return evaluate(parse_args(argv, prog))
    except (UsageError, *USER_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(entry(main, interrupted=INTERRUPTED))
