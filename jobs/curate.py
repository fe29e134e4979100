"""Curator commands over a CapFilt run: summary, keep-list and export of the bootstrapped dataset.

    python jobs/curate.py summary OUT
    python jobs/curate.py keep OUT --threshold 0.5 --source both --to keep.parquet [--columns width,height]
    python jobs/curate.py keep OUT --threshold 0.5 | jq .text   # JSON lines on stdout, the count on stderr
    python jobs/curate.py export OUT --to bootstrapped/ --threshold 0.5 --source both
    python jobs/curate.py export OUT --to bootstrapped/ --samples-per-shard 10000   # 00000.tar, 00001.tar, ...
    python jobs/curate.py keep OUT --top-k 2 --by clip      # BLIP-2's CapFilt: the 2 best captions by CLIP
    python jobs/curate.py report OUT --to report.html       # the same selection options; open it in a browser

Thresholds live here, in queries: changing one never re-runs a model. `capfilt curate ...` is the same command.
`keep` writes only data to stdout (a JSON object a line); what it says about them goes to stderr.
Exit codes: 0 done, 2 a usage or data problem (one `error:` line), 130 interrupted.
"""
# Not named select.py: jobs/ is first on sys.path when run as a script, and would shadow the stdlib select module.
from __future__ import annotations

import json
import sys

import duckdb

from jobs.cli import Parser, UsageError, entry
from pipelines.export import export_dataset
from pipelines.run_report import write_report
from pipelines.select import SCORES, SOURCES, keep_list, open_run, print_summary
from pipelines.sources import LocationError, check_location
from pipelines.writer import parquet_bytes, write_file

INTERRUPTED = "interrupted: run the same command again (an export replaces what it wrote before)"


def main(argv: list[str] | None = None, prog: str = "jobs/curate.py") -> int:
    p = Parser(prog=prog, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, help_text in (("summary", "counts, error types and what the filter keeps"),
                            ("keep", "the keep-list: one row per kept caption"),
                            ("export", "img2dataset-style shards of the kept samples"),
                            ("report", "a self-contained HTML report: score distributions, samples around the cut")):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("run", help="the --output directory of a capfilt run")
        if name == "summary":
            cmd.add_argument("--threshold", type=float, default=0.5, help="count captions with ITM p(match) >= this")
        else:
            cmd.add_argument("--threshold", type=float, help="keep captions with ITM p(match) >= this "
                                                             "(default: 0.5) (with --top-k: none unless given)")
            cmd.add_argument("--top-k", type=int, help="keep the K best captions of each image (ties: the web caption, "
                                                       "then the earlier synthetic one)")
            cmd.add_argument("--by", choices=SCORES, default="itm", help="what --top-k ranks by: ITM, ITC or the "
                                                                         "scorer's CLIP similarity")
            cmd.add_argument("--source", choices=SOURCES, default="both", help="which captions may be kept")
            cmd.add_argument("--to", required=name == "export",
                             help={"keep": "output file (.parquet; default: print the first 20)",
                                   "export": "output directory",
                                   "report": "the HTML file (default: RUN/report.html)"}[name])
        if name == "export":
            cmd.add_argument("--samples-per-shard", type=int, metavar="N",
                             help="write shards of exactly N samples (the last the rest), named 00000.tar, "
                                  "00001.tar, ... (default: one shard per source shard, named by its id)")
        if name == "keep":
            cmd.add_argument("--columns", default="", help="sample columns to add to each kept caption, "
                                                           "comma-separated (e.g. web_caption,width,height)")
    try:
        args = p.parse_args(argv)
        check_location(args.run)
        if args.command == "summary":
            print_summary(args.run, args.threshold)
        elif args.by != "itm" and args.top_k is None:
            raise UsageError("--by ranks for --top-k: give --top-k K as well")
        elif args.command == "keep":
            columns = [name.strip() for name in args.columns.split(",") if name.strip()]
            if args.to:
                check_location(args.to)
            table = keep_list(open_run(args.run), threshold(args), args.source, columns, args.top_k, args.by)
            if args.to:
                write_file(args.to, parquet_bytes(table))
                print(f"{table.num_rows} kept captions -> {args.to}", file=sys.stderr)
            else:
                for row in table.slice(0, 20).to_pylist():
                    print(json.dumps(row, ensure_ascii=False))
                print(f"{table.num_rows} kept captions (first 20 shown; --to FILE writes them all)", file=sys.stderr)
        elif args.command == "report":
            to = args.to or f"{args.run.rstrip('/')}/report.html"
            facts = write_report(args.run, to, threshold(args), args.source, args.top_k, args.by)
            print(f"report of {facts['samples']} samples ({facts['thumbnails']} thumbnails) in {facts['seconds']} s "
                  f"-> {to}")
        else:
            totals = export_dataset(args.run, args.to, threshold(args), args.source, top_k=args.top_k, by=args.by,
                                    samples_per_shard=args.samples_per_shard)
            print(f"exported {totals['samples']} samples in {totals['shards']} shards -> {args.to}")
    except (UsageError, ValueError, LocationError, duckdb.Error, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def threshold(args) -> float | None:
    """The ITM threshold a selection applies: the one given; else 0.5 (BLIP's CapFilt) without --top-k, none with."""
    if args.threshold is not None:
        return args.threshold
    return None if args.top_k is not None else 0.5


if __name__ == "__main__":
    sys.exit(entry(main, interrupted=INTERRUPTED))
