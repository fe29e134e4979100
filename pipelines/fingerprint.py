"""What a run read of an input shard, to notice later that the file changed: its size, its modification time when
the filesystem gives one, and the sha256 of its first and last MiB (the whole file when it is smaller).

Cheap on any filesystem (one stat, two ranged reads), so the driver can take it for every shard. It catches a tar
rewritten with other samples (its size or its ends differ); a same-size change inside the middle only is not seen.
The time is recorded to name in an error, never compared (a copy or `touch` changes it, not the content).
Imports neither torch nor ray.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pipelines.sources import filesystem

CHUNK = 1 << 20  # bytes hashed at each end
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


class InputChangedError(ValueError):
    """An input shard differs from what the run read; the message names the file and what differs."""


def input_fingerprint(url: str, chunk: int = CHUNK) -> dict:
    """{"size", "mtime", "sha256_ends", "chunk"} of the file at `url` (local path or fsspec URL).

    Never raises for the file itself: one that cannot be read gives {"error": reason} (the run reads such a shard
    as one error row, and there is nothing to compare later)."""
    try:
        fs, path = filesystem(url)
        info = fs.info(path)
        if info.get("type") == "directory":
            return {"error": "a directory, not a file"}
        size = info.get("size")
        digest = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            if size is None or size <= 2 * chunk:
                data = handle.read()
                size = len(data) if size is None else size
                digest.update(data)
            else:
                digest.update(handle.read(chunk))
                handle.seek(size - chunk)
                digest.update(handle.read(chunk))
    except (OSError, ValueError) as exc:  # FileNotFoundError, permissions, a server without ranges
        return {"error": f"{type(exc).__name__}: {exc}"}
    mtime = next((info[key] for key in _TIME_KEYS if info.get(key) is not None), None)
    return {"size": int(size), "mtime": None if mtime is None else str(mtime), "sha256_ends": digest.hexdigest(),
            "chunk": chunk}


def changed(recorded: dict | None, url: str) -> str | None:
    """Why the file at `url` is not the one `recorded` describes, or None when it is (or nothing was recorded)."""
    if not recorded or "error" in recorded or "size" not in recorded:
        return None  # a run before fingerprints, or a shard the run could not read: nothing to compare
    now = input_fingerprint(url, recorded.get("chunk", CHUNK))
    when = f" (modified {now['mtime']})" if now.get("mtime") and now.get("mtime") != recorded.get("mtime") else ""
    if "error" in now:
        return f"{url}: the run read {recorded['size']} bytes there, now it cannot be read ({now['error']})"
    if now["size"] != recorded["size"]:
        return f"{url}: {now['size']} bytes now, {recorded['size']} when the run read it{when}"
    if now["sha256_ends"] != recorded.get("sha256_ends"):
        return f"{url}: same size, but its content changed since the run read it{when}"
    return None


def check_inputs_unchanged(recorded: dict[str, dict], urls: Iterable[str] | None = None) -> None:
    """Raise InputChangedError naming every input of `urls` (default: all of `recorded`, url -> fingerprint) that
    is no longer what the run read. Urls without a recorded fingerprint are not checked."""
    problems = [why for url in (recorded if urls is None else urls) if (why := changed(recorded.get(url), url))]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputChangedError(f"{len(problems)} input shard{'s' if len(problems) > 1 else ''} changed after the "
                                f"run read {'them' if len(problems) > 1 else 'it'}: {shown}. The run's rows describe "
                                f"what it read: restore the file, or run CapFilt again over the new one "
                                f"(--overwrite, or another --output)")
