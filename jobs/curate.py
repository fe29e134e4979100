"""Curator commands over a CapFilt run: summary, keep-list and export of the bootstrapped dataset.

    python jobs/curate.py summary OUT
    python jobs/curate.py keep OUT --threshold 0.5 --source both --to keep.parquet [--columns width,height]
    python jobs/curate.py export OUT --to bootstrapped/ --threshold 0.5 --source both

Thresholds live here, in queries: changing one never re-runs a model. `capfilt curate ...` is the same command.
Exit codes: 0 done, 2 a usage or data problem (one `error:` line), 130 interrupted.
"""
# Not named select.py: jobs/ is first on sys.path when run as a script, and would shadow the stdlib select module.
from __future__ import annotations

import json
import sys

import duckdb
import pyarrow.parquet as pq

from jobs.cli import Parser, UsageError, entry
from pipelines.export import export_dataset
from pipelines.select import SOURCES, keep_list, open_run, print_summary
from pipelines.sources import LocationError

INTERRUPTED = "interrupted: run the same command again (an export replaces what it wrote before)"


def main(argv: list[str] | None = None, prog: str = "jobs/curate.py") -> int:
    p = Parser(prog=prog, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, help_text in (("summary", "counts, error types and what the filter keeps"),
                            ("keep", "the keep-list: one row per kept caption"),
                            ("export", "img2dataset-style shards of the kept samples")):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("run", help="the --output directory of a capfilt run")
        cmd.add_argument("--threshold", type=float, default=0.5, help="keep captions with ITM p(match) >= this")
        if name != "summary":
            cmd.add_argument("--source", choices=SOURCES, default="both", help="which captions may be kept")
            cmd.add_argument("--to", required=name == "export",
                             help="output file (keep: .parquet; default: print the first 20)" if name == "keep"
                             else "output directory")
        if name == "keep":
            cmd.add_argument("--columns", default="", help="sample columns to add to each kept caption, "
                                                           "comma-separated (e.g. web_caption,width,height)")
    try:
        args = p.parse_args(argv)
        if args.command == "summary":
            print_summary(args.run, args.threshold)
        elif args.command == "keep":
            columns = [name.strip() for name in args.columns.split(",") if name.strip()]
            table = keep_list(open_run(args.run), args.threshold, args.source, columns)
            if args.to:
                pq.write_table(table, args.to)
                print(f"{table.num_rows} kept captions -> {args.to}")
            else:
                for row in table.slice(0, 20).to_pylist():
                    print(json.dumps(row, ensure_ascii=False))
                print(f"{table.num_rows} kept captions (first 20 shown; --to FILE writes them all)")
        else:
            totals = export_dataset(args.run, args.to, args.threshold, args.source)
            print(f"exported {totals['samples']} samples in {totals['shards']} shards -> {args.to}")
    except (UsageError, ValueError, LocationError, duckdb.Error, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(entry(main, interrupted=INTERRUPTED))
