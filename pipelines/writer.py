"""Committing a shard: Parquet to a hidden temporary name, renamed into place, then the done-marker.

A reader of `OUT/**/*.parquet` never sees a partial file (temporary names do not end in .parquet, and object
stores publish an object only when its upload completes); a shard counts as done only once its marker exists.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.capfilt import MARKER_SUFFIX, PARQUET_SUFFIX, SHARD_DIR


class RunDir:
    """The output location of a run (local path or fsspec URL)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def parquet_path(self, shard_id: str) -> str:
        return self.path(SHARD_DIR, shard_id + PARQUET_SUFFIX)

    def marker_path(self, shard_id: str) -> str:
        return self.path(SHARD_DIR, shard_id + MARKER_SUFFIX)

    def done_shards(self) -> set[str]:
        """Ids of the shards whose done-marker exists."""
        directory = self.path(SHARD_DIR)
        if not self.fs.exists(directory):
            return set()
        names = (p.rsplit("/", 1)[-1] for p in self.fs.ls(directory, detail=False))
        return {n[: -len(MARKER_SUFFIX)] for n in names if n.endswith(MARKER_SUFFIX)}

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
        """The shard's Parquet, then its done-marker: the marker is the commit."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(self.parquet_path(shard_id), sink.getvalue().to_pybytes())
        self.write_json(self.marker_path(shard_id), stats)

    def clear(self) -> None:
        """Remove the run's committed shards (for --overwrite; run.json is rewritten right after)."""
        for path in (self.path(SHARD_DIR),):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
