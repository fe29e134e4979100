"""Process-tree helpers for tests that start jobs and clusters: kill only what the test itself started."""
from __future__ import annotations

import os
import signal


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc; None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below `root`, so that only what the test started is ever killed."""
    table = {int(e): s for e in os.listdir("/proc") if e.isdigit() and (s := _stat(int(e))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = table[child][1]
            todo.append(child)
    return found


def kill_started(processes: dict[int, str]) -> None:
    """SIGKILL each process of `processes` still running (same pid and start time: never a reused pid)."""
    for pid, started in processes.items():
        state = _stat(pid)
        if state is not None and state[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
