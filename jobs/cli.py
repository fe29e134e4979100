"""The command line's shared parts, and `capfilt`, the console script over the jobs.

    capfilt run ...        = python jobs/capfilt.py ...      (the CapFilt job)
    capfilt curate ...     = python jobs/curate.py ...       (summary, keep-list, export)
    capfilt evaluate ...   = python jobs/evaluate.py ...     (benchmark suites)
    capfilt train ...      = python jobs/train.py ...        (one training job)
    capfilt bootstrap ...  = python jobs/bootstrap.py ...    (BLIP's loop on the shape world)
    capfilt models ...     = python -m models ...            (the zoo; one model on one image)

Every job answers a user's mistake with one `error:` line and exit 2, checked before torch, transformers or Ray are
imported, and Ctrl-C with one line and exit 130. This module imports nothing heavy: `--help` is fast.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from importlib import import_module

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
COMMANDS = {  # subcommand -> (module with main(argv) -> int, what it does)
    "run": ("jobs.capfilt", "the CapFilt job: caption, score and write Parquet"),
    "curate": ("jobs.curate", "summary, keep-list and export of a CapFilt run"),
    "evaluate": ("jobs.evaluate", "run an evaluation suite, append to its history, report"),
    "train": ("jobs.train", "pre-train or fine-tune a small BLIP"),
    "bootstrap": ("jobs.bootstrap", "BLIP's bootstrapping loop on the shape world"),
    "models": ("models.__main__", "list the zoo; run one model on one image"),
}


class UsageError(ValueError):
    """A mistake in the command line; printed as one `error:` line, exit 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default shown: argparse's "(default: X)" where the
    default is a value; an option whose default is decided at run time (None) says so in its own help."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == "" or default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the project's help format, whose mistakes are one line (UsageError) instead of a usage dump."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message)


def entry(main, argv=None, interrupted: str = "interrupted") -> int:
    """Run `main(argv)` as a command: a UsageError that escapes it is one `error:` line (exit 2), Ctrl-C one line
    (exit 130), never a traceback."""
    try:
        return main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"usage: capfilt {{{','.join(COMMANDS)}}} ...", "", "commands:"]
        lines += [f"  {name:{width}s}  {what}" for name, (_, what) in COMMANDS.items()]
        lines += ["", "`capfilt COMMAND --help` shows a command's options."]
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
            return EXIT_USAGE
        print("\n".join(lines), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USAGE
    module = import_module(COMMANDS[argv[0]][0])
    return entry(partial(module.main, prog=f"capfilt {argv[0]}"), argv[1:], getattr(module, "INTERRUPTED", "interrupted"))


if __name__ == "__main__":
    sys.exit(main())
