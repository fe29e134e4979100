"""Committing a shard: Parquet to a hidden temporary name, renamed into place, then the done-marker.

The done-marker (shards/_done/{shard}.json) is the only commit point: a shard is in the run when its marker exists,
and readers list the run's files from the markers (`RunDir.committed_parquet`). A Parquet file without its marker
(a crash between the rename and the marker) is outside the run, and the next run of the same command redoes it.
Temporary names start with "." and do not end in .parquet, and the marker folder starts with "_": a reader of
`OUT/shards` (pyarrow.dataset, pandas, DuckDB's *.parquet glob) never sees a partial file or a marker. Object
stores publish an object only when its upload completes. Runs written before issue 24 keep their markers at
shards/{shard}.done.json, and still count as committed.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.fingerprint import input_fingerprint
from pipelines.sources import filesystem
from schemas.capfilt import (FINGERPRINT_FIELD, LEGACY_MARKER_SUFFIX, MARKER_DIR, MARKER_SUFFIX, PARQUET_SUFFIX,
                             SHARD_DIR, marker_name, parquet_name)


class RunDirError(ValueError):
    """A run directory that is not in a state its reader can trust; the message says what and where."""


class RunDir:
    """The output location of a run (local path or fsspec URL)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = filesystem(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def parquet_path(self, shard_id: str) -> str:
        return self.path(SHARD_DIR, parquet_name(shard_id))

    def marker_path(self, shard_id: str) -> str:
        """Where this version writes the shard's done-marker (see legacy_marker_path for older runs)."""
        return self.path(SHARD_DIR, marker_name(shard_id))

    def legacy_marker_path(self, shard_id: str) -> str:
        """The marker of a run written before issue 24: beside the Parquet."""
        return self.path(SHARD_DIR, shard_id + LEGACY_MARKER_SUFFIX)

    def _names(self, *parts: str) -> list[str]:
        directory = self.path(*parts)
        if not self.fs.isdir(directory):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(directory, detail=False)]

    def done_shards(self) -> set[str]:
        """Ids of the shards whose done-marker exists (at this version's place or at the old one)."""
        current = {n[: -len(MARKER_SUFFIX)] for n in self._names(SHARD_DIR, MARKER_DIR) if n.endswith(MARKER_SUFFIX)}
        legacy = {n[: -len(LEGACY_MARKER_SUFFIX)] for n in self._names(SHARD_DIR) if n.endswith(LEGACY_MARKER_SUFFIX)}
        return current | legacy

    def read_marker(self, shard_id: str) -> dict | None:
        """The shard's done-marker, wherever its run wrote it; None when the shard is not committed."""
        marker = self.read_json(self.marker_path(shard_id))
        return marker if marker is not None else self.read_json(self.legacy_marker_path(shard_id))

    def markers(self) -> dict[str, dict]:
        """shard id -> done-marker, for every committed shard, in shard order."""
        return {shard_id: self.read_marker(shard_id) or {} for shard_id in sorted(self.done_shards())}

    def committed_parquet(self) -> list[str]:
        """The Parquet files of the committed shards, in shard order (paths of `self.fs`): the run, exactly.

        A Parquet file without its marker is left out; a marker whose Parquet is missing is a RunDirError."""
        present = set(self._names(SHARD_DIR))
        files, missing = [], []
        for shard_id in sorted(self.done_shards()):
            name = parquet_name(shard_id)
            if name not in present and shard_id + PARQUET_SUFFIX in present:
                name = shard_id + PARQUET_SUFFIX  # a run before issue 24 named every Parquet {shard}.parquet
            if name in present:
                files.append(self.path(SHARD_DIR, name))
            else:
                missing.append(shard_id)
        if missing:
            raise RunDirError(f"{self.url!r}: shard{'s' if len(missing) > 1 else ''} {', '.join(missing[:5])} "
                              f"{'have' if len(missing) > 1 else 'has'} a done-marker but no Parquet file; delete "
                              f"{'those markers' if len(missing) > 1 else 'that marker'} "
                              f"({SHARD_DIR}/{MARKER_DIR}/) and run the job again to redo them")
        return files

    def recorded_inputs(self) -> dict[str, dict]:
        """input url -> the fingerprint its marker recorded (pipelines/fingerprint.py), for every committed shard
        whose marker has one; feed it to fingerprint.check_inputs_unchanged."""
        return {m["url"]: m[FINGERPRINT_FIELD] for m in self.markers().values()
                if m.get("url") and m.get(FINGERPRINT_FIELD)}

    def url_of(self, path: str) -> str:
        """A path of `self.fs` as a location any reader (DuckDB, pyarrow, fsspec) opens."""
        return path if self.local else self.fs.unstrip_protocol(path)

    @contextmanager
    def open_atomic(self, path: str) -> Iterator:
        """A file to write as you go, whose content appears at `path` only when the block ends without error:
        a temporary sibling renamed into place, or on object stores an upload published when it completes and
        discarded on error."""
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if not self.local:
            # fsspec's transaction commits the upload on success and discards it on error (a plain `with open`
            # would complete the upload of a half-written file when the block raises).
            with self.fs.transaction, self.fs.open(path, "wb") as handle:
                yield handle
            return
        tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as handle:
                yield handle
        except BaseException:
            self.fs.rm(tmp)
            raise
        self.fs.mv(tmp, path)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write atomically (see open_atomic)."""
        with self.open_atomic(path) as handle:
            handle.write(data)

    def read_json(self, path: str) -> dict | None:
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as handle:
            return json.loads(handle.read())

    def write_json(self, path: str, value: dict) -> None:
        self.write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def commit_shard(self, shard_id: str, table: pa.Table, stats: dict) -> None:
        """The shard's Parquet, then its done-marker: the marker is the commit.

        `stats` is the marker's content; when it has the input's "url" but no "fingerprint", the input file's
        fingerprint is taken now and added (to `stats` too). A runner that takes it when it starts reading the
        shard (pipelines.fingerprint.input_fingerprint) records what it read more exactly."""
        if stats.get("url") and FINGERPRINT_FIELD not in stats:
            stats[FINGERPRINT_FIELD] = input_fingerprint(stats["url"])
        self.write_bytes(self.parquet_path(shard_id), parquet_bytes(table, compression="zstd"))
        self.write_json(self.marker_path(shard_id), stats)

    def clear(self) -> None:
        """Remove the run's committed shards (for --overwrite; run.json is rewritten right after)."""
        for path in (self.path(SHARD_DIR),):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)


def parquet_bytes(table: pa.Table, **options) -> bytes:
    """`table` as the bytes of a Parquet file (pyarrow.parquet.write_table's `options`), to be written whole."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue().to_pybytes()


def write_file(url: str, data: bytes) -> None:
    """One whole file at `url` (a local path or fsspec URL), written as a run's files are (RunDir.open_atomic): a
    reader finds the earlier file or the new one, never a part. For the curator's outputs (keep --to, report --to)."""
    place = RunDir(url)
    place.write_bytes(place.root, data)
