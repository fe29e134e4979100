"""A run's progress as structured events (dicts with an "event" key), and the console line of each.

Both runners emit the same events; `run_capfilt(..., on_event=)` / `run_local(..., on_event=)` hand them to a
caller (a notebook, a benchmark), and `log` gets their lines.
"""
from __future__ import annotations


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


def summary_line(summary: dict) -> str:
    return (f"capfilt done: {summary['committed']}/{summary['shards']} shards, {summary['samples']} samples "
            f"({summary['ok']} ok, {summary['errors']} errors{retries_text(summary['retries'])}) "
            f"in {summary['seconds']}s ({summary['samples_per_second']} samples/s) -> {summary['output']}")


_LINES = {
    "start": lambda e: (f"capfilt: {e['shards']} shards ({e['already']} already done), {e['actors']} model actor(s) "
                        f"on {e['device']} ({e['precision']}), captioner {e['captioner']}, filter {e['filter']}"
                        f"{', scorer ' + e['scorer'] if e.get('scorer') else ''}"
                        f"{' (one vision pass for both)' if e.get('shared_vision') else ''}"),
    "shard": lambda e: (f"[{e['committed']}/{e['total']} shards] {e['shard']}: {e['samples']} samples, {e['ok']} ok"
                        f"{retries_text(e['retries'])} | run: {e['run_samples']} samples, {e['run_rate']:.1f}/s, "
                        f"{e['errors']} errors"),
    "progress": lambda e: (f"[{e['committed']}/{e['total']} shards] {e['open']} open, {e['scored']} samples scored, "
                           f"{e['rate']:.1f}/s, {e['errors']} errors in committed shards"
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


def reporter(log=print, on_event=None):
    """One `emit(event)` for a run: the event to `on_event`, its line to `log`."""
    def emit(event: dict) -> None:
        if on_event is not None:
            on_event(event)
        if log is not None:
            log(line(event))
    return emit
