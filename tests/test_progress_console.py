"""The job's console (pipelines/progress.py): the ETA from known inputs, plain lines off a terminal, the line updated
in place on one, the command named after the summary, and the job's wiring of it. No Ray, no models (but one
in-process run of the tiny ones)."""
from __future__ import annotations

import io
import os
import time

from pipelines import progress
from pipelines.progress import Console, duration, eta_seconds, line, next_command, reporter
from schemas.capfilt import no_retries


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as the job's stdout does when a person runs it."""

    def isatty(self) -> bool:
        return True


def run_part(committed: int, total: int, run_samples: int, run_rate: float) -> dict:
    """The run's part of a `shard` or `progress` event (pipelines/ledger.py's `_run`)."""
    return {"committed": committed, "total": total, "run_samples": run_samples, "run_rate": run_rate, "errors": 0,
            "run_retries": no_retries()}


def start(shards: int, already: int = 0) -> dict:
    return {"event": "start", "shards": shards, "already": already, "actors": 1, "device": "cpu",
            "precision": "fp32", "captioner": "tiny-random_caption", "filter": "tiny-random_retrieval",
            "scorer": None, "shared_vision": False}


def progressed(scored: int, rate: float, **run) -> dict:
    return {"event": "progress", "open": 2, "scored": scored, "rate": rate, **run_part(**run)}


def shard(name: str, samples: int, **run) -> dict:
    return {"event": "shard", "shard": name, "samples": samples, "ok": samples, "retries": no_retries(),
            **run_part(**run)}


def summary(output: str = "out/run1") -> dict:
    return {"event": "summary", "summary": {"shards": 4, "committed": 4, "samples": 80, "ok": 80, "errors": 0,
                                            "retries": no_retries(), "seconds": 20.0, "samples_per_second": 4.0,
                                            "output": output}}


def a_run() -> list[dict]:
    """A run of 4 shards of 20 samples, 1 done before it: progress before and after its first commit, an
    isolated batch, the summary."""
    return [start(4, already=1),
            progressed(10, 5.0, committed=1, total=4, run_samples=0, run_rate=0.0),
            shard("00001", 20, committed=2, total=4, run_samples=20, run_rate=4.0),
            {"event": "isolated", "shard": "00002", "batch": 1, "span": "a..d", "tries": 2, "samples": 4,
             "reason": "RuntimeError: boom"},
            progressed(30, 6.0, committed=2, total=4, run_samples=20, run_rate=4.0),
            summary()]


def test_eta_from_the_shards_this_run_committed():
    # nothing committed yet by this run (one shard was done before it): unknown
    assert eta_seconds(progressed(10, 5.0, committed=1, total=4, run_samples=0, run_rate=0.0), already=1) is None
    # one shard of 20 committed of this run's 3: 60 expected, 20 scored, 40 left at 4/s
    assert eta_seconds(shard("s", 20, committed=2, total=4, run_samples=20, run_rate=4.0), already=1) == 10.0
    # open shards have scored 10 more, and the rate counts them: 30 left at 6/s
    assert eta_seconds(progressed(30, 6.0, committed=2, total=4, run_samples=20, run_rate=4.0), already=1) == 5.0
    # open shards larger than the mean so far: the estimate says nothing
    assert eta_seconds(progressed(70, 6.0, committed=2, total=4, run_samples=20, run_rate=4.0), already=1) is None
    assert eta_seconds(progressed(0, 0.0, committed=2, total=4, run_samples=20, run_rate=0.0), already=1) is None
    assert eta_seconds(shard("s", 20, committed=4, total=4, run_samples=60, run_rate=4.0), already=1) == 0.0


def test_durations_and_the_unknown_eta_in_lines():
    assert [duration(s) for s in (None, 0, 4.2, 65, 3600 + 7 * 60 + 5)] == ["?", "0s", "5s", "1m05s", "1h07m"]
    event = progressed(10, 5.0, committed=0, total=4, run_samples=0, run_rate=0.0)
    assert ", 5.0/s, ETA ?, 0 errors" in line(event)  # an event straight from the ledger has no eta_seconds
    assert ", 5.0/s, ETA 1m05s, " in line({**event, "eta_seconds": 64.3})


def test_the_reporter_adds_the_eta_and_keeps_every_field():
    events, lines = [], []
    emit = reporter(lines.append, events.append)
    for event in a_run():
        emit(event)
    for given, sent in zip(a_run(), events):
        assert {k: v for k, v in sent.items() if k != "eta_seconds"} == given
        assert ("eta_seconds" in sent) == (given["event"] in ("shard", "progress"))
    assert [e.get("eta_seconds") for e in events if "eta_seconds" in e] == [None, 10.0, 5.0]
    assert lines == [line(e) for e in events]
    emit.last_progress -= 31.0
    assert not emit.due() and emit.due(30.0)  # no live console: the runner's own pace only


def test_a_live_console_asks_for_progress_every_second():
    emit = reporter(None, Console(Terminal()))
    assert not emit.due()
    emit.last_progress -= progress.LIVE_EVERY + 0.1
    assert emit.due() and emit.due(30.0)
    emit(progressed(1, 1.0, committed=0, total=1, run_samples=0, run_rate=0.0))
    assert not emit.due(30.0)


def test_off_a_terminal_plain_lines_with_rate_and_eta():
    stream = io.StringIO()
    console = Console(stream)
    emit = reporter(None, console)
    assert not console.live
    for event in a_run():
        emit(event)
    out = stream.getvalue()
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == len(a_run()) + 1  # one line an event, and the next command
    assert lines[1].startswith("[1/4 shards] 2 open, 10 samples scored, 5.0/s, ETA ?, ")
    assert lines[2].startswith("[2/4 shards] 00001: 20 samples, 20 ok | run: 20 samples, 4.0/s, ETA 10s, ")
    assert ", 6.0/s, ETA 5s, " in lines[4]
    assert lines[-2].startswith("capfilt done: 4/4 shards, 80 samples") and lines[-2].endswith("-> out/run1")
    assert lines[-1] == "next: python jobs/curate.py report out/run1 --to out/run1/report.html"


def test_on_a_terminal_one_line_updated_in_place():
    stream = Terminal()
    emit = reporter(None, Console(stream))
    for event in a_run()[:-1]:
        emit(event)
    out = stream.getvalue()
    # the progress line is rewritten after a carriage return, never on a new line
    first = out.index("10 samples scored, 5.0 samples/s, ETA ?")
    last = out.index("30 samples scored, 6.0 samples/s, ETA 5s")
    assert first < last and "\r" in out[first:last]
    shown = out.rsplit("\r", 1)[-1].rstrip(" ")
    assert shown.startswith("2/4 shards |") and shown.endswith("| 30 samples scored, 6.0 samples/s, ETA 5s")
    # progress events are not printed as lines; the other events are, whole, each on a line of its own
    printed = [text.rsplit("\r", 1)[-1] for text in out.split("\n")[:-1]]
    assert printed == [line(start(4, 1)), line({**a_run()[2], "eta_seconds": 10.0}), line(a_run()[3])]
    emit(summary())
    tail = stream.getvalue()[len(out):]
    # the in-place line is cleared, then the summary and the next command
    assert tail.strip(" \r").splitlines() == [progress.summary_line(summary()["summary"]), next_command("out/run1")]


def test_a_terminal_that_reports_no_width_still_shows_the_line():
    """A pseudo-terminal nobody sized (0 columns, as under `script` or `docker run -t`): tqdm alone draws nothing."""
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8") as stream:
            emit = reporter(None, Console(stream))
            emit(start(4))
            emit(progressed(8, 4.0, committed=0, total=4, run_samples=0, run_rate=0.0))
            stream.flush()
            drawn = read_pty(master, "| 8 samples scored, 4.0 samples/s, ETA ?")
    finally:
        os.close(master)
    assert "0/4 shards |" in drawn and "| 8 samples scored, 4.0 samples/s, ETA ?" in drawn


def read_pty(master: int, until: str, timeout: float = 5.0) -> str:
    """What the terminal shows, read until `until` appears or `timeout` passes (a pty delivers writes a little
    later, in pieces)."""
    import select

    drawn, deadline = "", time.time() + timeout
    while until not in drawn and time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            drawn += os.read(master, 65536).decode()
    return drawn


def test_the_next_command_is_quoted_for_a_shell():
    assert next_command("s3://bucket/runs/a/") == ("next: python jobs/curate.py report s3://bucket/runs/a/ --to "
                                                   "s3://bucket/runs/a/report.html")
    assert next_command("out/my run") == "next: python jobs/curate.py report 'out/my run' --to 'out/my run/report.html'"


def test_the_job_prints_through_the_console(tmp_path, capsys, monkeypatch):
    """jobs/capfilt.py gives the runner a Console and no `log`: each event one line, the next command last."""
    import pipelines.ray_runner as ray_runner
    from jobs.capfilt import main
    from shapeworld.demo import build_demo_shards

    seen = {}

    def fake_run(config, log=print, on_event=None, shards=None):
        seen.update(log=log, on_event=on_event)
        emit = reporter(log, on_event)
        for event in a_run()[:-1]:
            emit(event)
        emit(summary(config.output))
        return summary(config.output)["summary"]

    monkeypatch.setattr(ray_runner, "run_capfilt", fake_run)
    shards = build_demo_shards(tmp_path / "in", shards=1, per_shard=2)
    out = tmp_path / "out"
    assert main(["--input", str(shards[0]), "--output", str(out)]) == 0
    assert seen["log"] is None and isinstance(seen["on_event"], Console)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("capfilt done: ") and lines[-1] == next_command(str(out))
    assert any(", ETA 5s, " in text for text in lines)


def test_run_local_emits_progress_for_a_live_console(tmp_path):
    """In process, progress events come between batches only when a console updates its line in place."""
    from pipelines.config import CapFiltConfig
    from pipelines.local_runner import run_local
    from shapeworld.demo import build_demo_shards

    class LiveRecorder(list):
        progress_every = 0.0  # a progress event after every batch

        def __call__(self, event):
            self.append(event)

    shards = build_demo_shards(tmp_path / "in", shards=1, per_shard=4)
    events = LiveRecorder()
    run_local(CapFiltConfig(input=str(shards[0]), output=str(tmp_path / "out"), batch_size=2), log=None,
              on_event=events)
    assert [e["event"] for e in events] == ["start", "progress", "progress", "shard", "summary"]
    assert [e["scored"] for e in events if e["event"] == "progress"] == [2, 4]
    assert events[3]["eta_seconds"] == 0.0
