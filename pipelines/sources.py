"""Where shards come from and where a run goes: expanding input specs and checking locations before any I/O."""
from __future__ import annotations

import glob as globlib
import hashlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
from braceexpand import braceexpand

# Protocols capfilt reads and writes. Everything else (pipe:, ssh, chained 'a::b' URLs) is refused before I/O.
ALLOWED_PROTOCOLS = {"file", "local", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https", "memory"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Where a deployment lets capfilt read and write: os.pathsep-separated local folders and URL prefixes
# (e.g. "/data:s3://corpus/laion/"). Unset: anywhere the protocol allows.
ROOTS_VARIABLE = "CAPFILT_ALLOWED_ROOTS"


class LocationError(ValueError):
    """An input or output location that cannot or must not be used; the message says why."""


@dataclass(frozen=True)
class Shard:
    id: str  # unique within a run: the file stem, disambiguated by a short hash when stems collide
    url: str


def filesystem(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a location and the location's path in it: how capfilt opens and lists every input
    and output. Without fsspec's listings cache: shards and runs change under a process that holds them (another
    process commits a shard, a re-run adds one), and a listing s3fs remembered (until told otherwise) would hide
    that, or give a file's old size when it is opened."""
    return fsspec.core.url_to_fs(location, use_listings_cache=False)


def check_location(location: str) -> str:
    """Refuse protocol chaining, protocols outside ALLOWED_PROTOCOLS and, when CAPFILT_ALLOWED_ROOTS is set,
    locations outside those roots (`..` resolved, and for local paths symbolic links too); return the protocol."""
    if "::" in location:
        raise LocationError(f"{location!r}: chained fsspec URLs ('a::b') are not accepted")
    protocol = location.split("://", 1)[0].lower() if "://" in location else "file"
    if ":" in location.split("/", 1)[0] and "://" not in location and not _is_windows_drive(location):
        raise LocationError(f"{location!r}: URL scheme without '//' (such as pipe:) is not accepted")
    if protocol not in ALLOWED_PROTOCOLS:
        raise LocationError(f"{location!r}: protocol {protocol!r} is not accepted (use one of {sorted(ALLOWED_PROTOCOLS)})")
    check_within_roots(location)
    return protocol


def allowed_roots() -> list[str]:
    """CAPFILT_ALLOWED_ROOTS as canonical roots (local folders resolved, URL prefixes normalised); [] when unset."""
    value = os.environ.get(ROOTS_VARIABLE, "")
    # os.pathsep is ':' on POSIX, which URLs contain: split, then glue "s3" + "//bucket/..." back together.
    parts, roots = value.split(os.pathsep), []
    while parts:
        part = parts.pop(0).strip()
        if part and parts and parts[0].startswith("//") and "/" not in part:
            part = f"{part}:{parts.pop(0).strip()}"
        if part:
            roots.append(canonical(part))
    return roots


def check_within_roots(location: str) -> None:
    """Raise LocationError when CAPFILT_ALLOWED_ROOTS is set and `location` is not inside one of its roots."""
    roots = allowed_roots()
    if not roots:
        return
    where = canonical(location)
    if not any(where == root or where.startswith(root.rstrip("/") + "/") for root in roots):
        raise LocationError(f"{location!r} is outside the allowed roots ({ROOTS_VARIABLE}={os.environ[ROOTS_VARIABLE]!r})")


def canonical(location: str) -> str:
    """A local path made absolute with `..` and symbolic links resolved; a URL with its path's `..` resolved."""
    if "://" in location and not location.lower().startswith(("file://", "local://")):
        protocol, path = location.split("://", 1)
        return f"{protocol.lower()}://{posixpath.normpath('/' + path).lstrip('/')}"
    path = location.split("://", 1)[1] if "://" in location else location
    return os.path.realpath(os.path.expanduser(path))


def _is_windows_drive(location: str) -> bool:
    return len(location) > 1 and location[1] == ":" and location[0].isalpha()


def expand_shards(spec: str) -> list[Shard]:
    """Shards named by `spec`: a path, a directory of tars (local or an object store's), a glob, a brace range or an
    fsspec URL.

    Several specs may be given separated by whitespace. Local inputs must exist.
    """
    urls: list[str] = []
    for part in spec.split():
        for item in braceexpand(part):
            urls.extend(_expand_one(item))
    if not urls:
        raise LocationError(f"no shards match {spec!r}")
    seen: set[str] = set()
    unique = [u for u in urls if not (u in seen or seen.add(u))]
    return _with_ids(unique)


def _expand_one(item: str) -> list[str]:
    protocol = check_location(item)
    if protocol in ("file", "local"):
        path = item.split("://", 1)[1] if "://" in item else item
        path = os.path.abspath(os.path.expanduser(path))
        if any(c in path for c in "*?["):
            found = sorted(globlib.glob(path))
            if not found:
                raise LocationError(f"no files match {item!r}")
            return _inside(found)
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(TAR_SUFFIXES))
            if not found:
                raise LocationError(f"directory {item!r} holds no .tar shards")
            return _inside(found)
        if not os.path.exists(path):
            raise LocationError(f"no such shard: {item!r}")
        return [path]
    if any(c in item for c in "*?["):
        fs, pattern = filesystem(item)
        found = sorted(fs.glob(pattern))
        if not found:
            raise LocationError(f"no files match {item!r}")
        return _inside([fs.unstrip_protocol(p) for p in found])
    if protocol not in ("http", "https") and not item.endswith(TAR_SUFFIXES):
        return _remote_folder(item)
    return [item]


def _remote_folder(item: str) -> list[str]:
    """The tars of a folder (key prefix) of an object store, as a local folder's: an input URL that names no tar is
    listed once, so `s3://bucket/laion/` is never read as one shard. A URL that is no folder stays one shard (an
    object need not end in .tar), unless it ends with '/'. HTTP has no folders: its URLs are never listed."""
    fs, path = filesystem(item)
    if not fs.isdir(path):
        if item.endswith("/"):
            raise LocationError(f"no such folder: {item!r}")
        return [item]
    found = sorted(p for p in fs.ls(path, detail=False) if p.endswith(TAR_SUFFIXES))
    if not found:
        raise LocationError(f"directory {item!r} holds no .tar shards")
    return _inside([fs.unstrip_protocol(p) for p in found])


def _inside(paths: list[str]) -> list[str]:
    """The files a glob or directory listing found, each checked against the roots (a link may lead outside)."""
    for path in paths:
        check_within_roots(path)
    return paths


def _stem(url: str) -> str:
    name = PurePosixPath(url.split("://", 1)[-1]).name
    for suffix in TAR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _with_ids(urls: list[str]) -> list[Shard]:
    stems = [_stem(u) for u in urls]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    shards = []
    for url, stem in zip(urls, stems):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "shard"
        if counts[stem] > 1 or safe != stem:
            safe = f"{safe}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"
        shards.append(Shard(safe, url))
    return shards
