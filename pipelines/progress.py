"""A run's progress as structured events (dicts with an "event" key), the console line of each, and the job's console.

Both runners emit the same events; `run_capfilt(..., on_event=)` / `run_local(..., on_event=)` hand them to a
caller (a notebook, a benchmark), and `log` gets their lines. `shard` and `progress` events carry `eta_seconds`
(None until it can be estimated). `Console` is the job's console: on a terminal, one line updated in place (tqdm);
elsewhere (CI, a pipe, `ray job logs`), plain lines.
"""
from __future__ import annotations

import math
import os
import shlex
import sys
import time

from tqdm import tqdm

LIVE_EVERY = 1.0  # seconds between progress events while a console updates its line in place
UNSIZED_WIDTH = 80  # columns drawn on a terminal that reports none
BAR_FORMAT = "{n_fmt}/{total_fmt} shards |{bar:24}| {desc}"  # not tqdm's rate and ETA: they count shards only


def retries_text(counts: dict) -> str:
    """', 2 batches retried, 1 isolated (8 samples alone, 1 retried), 1 decode restart', or '' when all are 0."""
    parts = []
    if counts["batches_retried"]:
        parts.append(f"{counts['batches_retried']} batch{'es' if counts['batches_retried'] > 1 else ''} retried")
    if counts["batches_isolated"]:  # samples run (and retried) alone only come from an isolated batch
        alone = f"{counts['samples_isolated']} sample{'s' if counts['samples_isolated'] != 1 else ''} alone"
        if counts["samples_retried"]:
            alone += f", {counts['samples_retried']} retried"
        parts.append(f"{counts['batches_isolated']} isolated ({alone})")
    if counts["decode_restarts"]:
        parts.append(f"{counts['decode_restarts']} decode restart{'s' if counts['decode_restarts'] > 1 else ''}")
    return "".join(f", {part}" for part in parts)


def scored_and_rate(event: dict) -> tuple[int, float]:
    """Samples scored and samples/s of a `progress` event (open shards included) or a `shard` event (committed)."""
    if event["event"] == "progress":
        return event["scored"], event["rate"]
    return event["run_samples"], event["run_rate"]


def eta_seconds(event: dict, already: int) -> float | None:
    """Seconds left for the run of a `shard` or `progress` event, from what it has measured; None when unknown.

    The run's total of samples is unknown until every shard is read, so it is estimated from the shards this run
    committed: their mean samples times this run's shards, less what is scored so far (open shards included), at
    the run's rate. `already`: shards committed before this run (no time spent on them here). None before this
    run's first commit, at a rate of 0, or when the open shards have scored more than the estimate leaves.
    """
    if event["committed"] >= event["total"]:
        return 0.0
    done = event["committed"] - already
    scored, rate = scored_and_rate(event)
    if done <= 0 or rate <= 0:
        return None
    remaining = event["run_samples"] / done * (event["total"] - already) - scored
    return remaining / rate if remaining >= 0 else None


def duration(seconds: float | None) -> str:
    """'45s', '3m05s', '2h07m'; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = math.ceil(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_text(event: dict) -> str:
    return f"ETA {duration(event.get('eta_seconds'))}"


def summary_line(summary: dict) -> str:
    return (f"capfilt done: {summary['committed']}/{summary['shards']} shards, {summary['samples']} samples "
            f"({summary['ok']} ok, {summary['errors']} errors{retries_text(summary['retries'])}) "
            f"in {summary['seconds']}s ({summary['samples_per_second']} samples/s) -> {summary['output']}")


def next_command(output: str) -> str:
    """The line naming what to run after a run: its HTML report. The paths are quoted for a shell."""
    report = f"{output.rstrip('/')}/report.html"
    return f"next: python jobs/curate.py report {shlex.quote(output)} --to {shlex.quote(report)}"


_LINES = {
    "start": lambda e: (f"capfilt: {e['shards']} shards ({e['already']} already done), {e['actors']} model actor(s) "
                        f"on {e['device']} ({e['precision']}), captioner {e['captioner']}, filter {e['filter']}"
                        f"{', scorer ' + e['scorer'] if e.get('scorer') else ''}"
                        f"{' (one vision pass for both)' if e.get('shared_vision') else ''}"),
    "shard": lambda e: (f"[{e['committed']}/{e['total']} shards] {e['shard']}: {e['samples']} samples, {e['ok']} ok"
                        f"{retries_text(e['retries'])} | run: {e['run_samples']} samples, {e['run_rate']:.1f}/s, "
                        f"{eta_text(e)}, {e['errors']} errors"),
    "progress": lambda e: (f"[{e['committed']}/{e['total']} shards] {e['open']} open, {e['scored']} samples scored, "
                           f"{e['rate']:.1f}/s, {eta_text(e)}, {e['errors']} errors in committed shards"
                           f"{retries_text(e['run_retries'])}"),
    "isolated": lambda e: (f"{e['shard']}: batch {e['batch']} (samples {e['span']}) failed {e['tries']} times; its "
                           f"{e['samples']} samples now run one at a time, each alone on its actor (slower): "
                           f"{e['reason']}"),
    "decode_restart": lambda e: (f"{e['shard']}: a decode process died ({e['reason']}); decoding resumes at sample "
                                 f"{e['at']}"),
    "actor_back": lambda e: f"model actor {e['actor']} is back after a crash; its work is retried",
    "summary": lambda e: summary_line(e["summary"]),
}


def line(event: dict) -> str:
    return _LINES[event["event"]](event)


def console_lines(event: dict) -> list[str]:
    """What the job's console prints for an event: its line, and after the summary the command to run next."""
    if event["event"] == "summary":
        return [line(event), next_command(event["summary"]["output"])]
    return [line(event)]


class Reporter:
    """One run's `emit(event)`: the event, `eta_seconds` added to `shard` and `progress` ones, to `on_event`, its
    line to `log`. It also paces the runner's `progress` events (`due`): an `on_event` with a `progress_every` (a
    live `Console`) gets them at that pace, so its in-place line moves between commits."""

    def __init__(self, log=print, on_event=None):
        self.log, self.on_event = log, on_event
        self.already = 0  # shards committed before this run, from its start event
        self.live_every = getattr(on_event, "progress_every", math.inf)
        self.last_progress = time.time()

    def __call__(self, event: dict) -> None:
        if event["event"] == "start":
            self.already = event["already"]
        elif event["event"] in ("shard", "progress"):
            event = {**event, "eta_seconds": eta_seconds(event, self.already)}
            if event["event"] == "progress":
                self.last_progress = time.time()
        if self.on_event is not None:
            self.on_event(event)
        if self.log is not None:
            self.log(line(event))

    def due(self, every: float = math.inf) -> bool:
        """Whether a `progress` event is due: more than `every` seconds (the runner's pace), or the live console's,
        since the last one (or since the run started)."""
        return time.time() - self.last_progress > min(every, self.live_every)


def reporter(log=print, on_event=None) -> Reporter:
    """One `emit(event)` for a run: the event to `on_event`, its line to `log`."""
    return Reporter(log, on_event)


def is_terminal(stream) -> bool:
    """Whether `stream` is a terminal (not a file, a pipe, CI's capture or `ray job logs`)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def unsized(stream) -> bool:
    """Whether `stream` is a terminal that reports 0 columns (a pseudo-terminal nobody sized, as under `script` or
    `docker run -t`): tqdm, following that width, would draw nothing."""
    try:
        return os.get_terminal_size(stream.fileno()).columns == 0
    except (AttributeError, OSError, ValueError):  # no file descriptor: tqdm's own default width
        return False


class Console:
    """The job's console, an `on_event` consumer (`run_capfilt(config, log=None, on_event=Console())`).

    On a terminal: one line updated in place (tqdm: shards committed / total, samples scored, samples/s, ETA), the
    other events' lines printed above it (tqdm.write), so they never garble it. Elsewhere: every event's plain line,
    flushed, without a carriage return or an ANSI code. After the summary, the command to run next. `close()` clears
    the in-place line (an interrupted run's last words start on a fresh line).
    """

    def __init__(self, stream=None):
        self.stream = sys.stdout if stream is None else stream
        self.live = is_terminal(self.stream)
        self.progress_every = LIVE_EVERY if self.live else math.inf
        self.bar = None
        self.scored = 0  # samples scored, shown never decreasing (a shard event counts committed samples only)

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "summary":
            self.close()
        if not (self.live and kind == "progress"):
            for text in console_lines(event):
                self._print(text)
        if self.live and kind == "start":
            self._open(event["shards"], event["already"])
        elif self.live and kind in ("shard", "progress"):
            self._show(event)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _print(self, text: str) -> None:
        if self.bar is not None:
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _open(self, total: int, already: int) -> None:
        self.close()
        self.scored = 0
        fixed = UNSIZED_WIDTH if unsized(self.stream) else None  # else the terminal's width, followed as it changes
        self.bar = tqdm(total=total, initial=already, desc="0 samples scored, ETA ?", file=self.stream,
                        bar_format=BAR_FORMAT, ncols=fixed, dynamic_ncols=fixed is None, leave=False)

    def _show(self, event: dict) -> None:
        if self.bar is None:
            self._open(event["total"], 0)
        scored, rate = scored_and_rate(event)
        self.scored = max(self.scored, scored)
        self.bar.n = event["committed"]
        self.bar.set_description_str(f"{self.scored} samples scored, {rate:.1f} samples/s, {eta_text(event)}")
