"""Export the bootstrapped dataset as img2dataset-style webdataset shards, chosen by a DuckDB keep-list.

Per exported shard, what img2dataset writes (issue 28):
- `{name}.tar`: the image bytes copied from the source shard unchanged; `KEY.txt` the chosen caption (the best kept
  one: highest ITM, or highest by the score a `--top-k` selection ranks by); `KEY.json` the source's KEY.json with
  every field as img2dataset wrote it (its "caption" the original alt-text), plus capfilt's own under "capfilt":
  {"caption": the chosen text, "captions": every kept caption with its source, caption_index and scores, best
  first, "shard": the source shard, "selection": the keep-list's options};
- `{name}.parquet`: a row per sample of the tar, img2dataset's columns then capfilt's (schemas/capfilt.py,
  EXPORT_COLUMNS);
- `{name}_stats.json`, after the tar and the parquet: img2dataset's keys (count, successes, failed_to_download,
  failed_to_resize, duration, start_time, end_time, status_dict), true of an export (every sample written is a
  success), and capfilt's under "capfilt": the source shards read and the selection.
`export.json`, the manifest listing every file of the export, is written last.

Samples are exported in (source shard, key) order: one shard per source shard with kept samples, named by its id,
or with `samples_per_shard` N, shards of exactly N (the last the rest) named 00000, 00001, ... Each source shard is
read once, as a stream; a sample met before its turn (a source tar not in key order, as img2dataset's threads
write them) waits in a local temporary file, so memory holds one sample, never a shard.

What export will not do:
- write into a folder that holds an input shard of the run (`..` and symbolic links resolved), or into a non-empty
  folder that is not an earlier export (every file in it listed by its manifest): `ExportTargetError`;
- read a source shard that is no longer what the run read (its done-marker's fingerprint): `InputChangedError`,
  naming the file, before anything is written;
- leave a mix: a re-export replaces the earlier one as a whole. Locally the new export is written to a hidden
  sibling folder and swapped in by two renames (a reader sees the old export or the new one, or for an instant
  none). On object stores, which cannot rename a folder, the manifest first lists the old and new files, the new
  files are written, the old ones no longer wanted deleted, and the manifest rewritten with the new files only
  ("state": "complete"); a reader that takes the files the manifest lists when its state is complete never mixes
  two exports, and a crash at any point leaves a folder the next export recognises as its own.
One export at a time per folder.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.fingerprint import check_inputs_unchanged
from pipelines.reader import read_shard
from pipelines.select import keep_list, open_run
from pipelines.sources import LocationError, canonical, check_location, check_within_roots, expand_shards
from pipelines.writer import RunDir
from schemas.capfilt import (EXPORT_COLUMNS, EXPORT_FORMAT, EXPORT_KEY, EXPORT_LISTING_FORMATS, EXPORT_MANIFEST,
                             EXPORT_SHARD_DIGITS, EXPORT_SHARD_FILES, FINGERPRINT_FIELD, IMG2DATASET_COLUMNS, RUN_FILE,
                             export_schema)

STAGING, RETIRED = ".capfilt-export-", ".capfilt-replaced-"  # hidden siblings of a local target: <name> + tag + id
ROW_GROUP = 1000  # rows of a shard's .parquet gathered before they are written out


class ExportTargetError(ValueError):
    """A destination export must not write to; the message says why."""


@dataclass
class Choice:
    """What the selection chose for one sample: its kept captions, best first (the first is its KEY.txt), and what
    the run knows of its image."""

    shard: str
    key: str
    image_format: str
    width: int | None
    height: int | None
    captions: list[dict]


def export_dataset(run: str, destination: str, threshold: float | None = 0.5, source: str = "both", log=print,
                   top_k: int | None = None, by: str = "itm", samples_per_shard: int | None = None) -> dict:
    """Write the samples `keep_list` keeps, in (source shard, key) order: one shard per source shard that has kept
    samples, or shards of exactly `samples_per_shard` (the last the rest); returns the totals (export.json's)."""
    if samples_per_shard is not None and samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    check_location(destination)
    source_run = RunDir(run)
    con = open_run(run)
    markers = source_run.markers()
    check_target(destination, run_inputs(source_run, markers), run)
    selection = {"threshold": threshold, "source": source, "top_k": top_k, "by": by}
    kept = keep_list(con, threshold, source, ["image_format", "width", "height"], top_k, by).to_pylist()
    choices = choose(kept, by)
    of_source: dict[str, list[Choice]] = {}  # source shard -> its choices, in key order
    for choice in choices:
        of_source.setdefault(choice.shard, []).append(choice)
    for shard_id in of_source:
        if "url" not in markers.get(shard_id, {}):
            raise ValueError(f"shard {shard_id!r} of {run!r} has no done-marker with its source url")
    urls = {shard_id: markers[shard_id]["url"] for shard_id in of_source}
    # Every source read below is checked first: a changed tar would silently lose kept samples.
    check_inputs_unchanged({urls[s]: markers[s].get(FINGERPRINT_FIELD) for s in of_source})
    plan = shard_plan(choices, samples_per_shard)
    totals = {"shards": 0, "samples": 0, "captions": len(kept), **selection, "samples_per_shard": samples_per_shard}
    files = sorted(name + part for name, _ in plan for part in EXPORT_SHARD_FILES)
    replacement = _Replacement(destination, files)
    # One stream of every kept sample in (source shard, key) order, cut into the plan's shards as it goes.
    stream = itertools.chain.from_iterable(_in_key_order(urls[s], s, of_source[s]) for s in of_source)
    with replacement as out:
        for name, count in plan:
            stats = _write_shard(out, name, itertools.islice(stream, count), urls, selection)
            totals["shards"] += 1
            totals["samples"] += stats["successes"]
            log(f"exported {name}: {stats['successes']} samples")
        replacement.manifest.update(totals, run=run)
    return totals


def choose(kept: list[dict], by: str) -> list[Choice]:
    """The keep-list's rows (one per kept caption) as one Choice per sample, in (source shard, key) order, each
    sample's captions best first by `by` (ties keep the keep-list's order: the web caption, then the earlier)."""
    samples: dict[tuple[str, str], Choice] = {}
    for row in kept:
        choice = samples.get((row["shard"], row["key"]))
        if choice is None:
            choice = samples[(row["shard"], row["key"])] = Choice(row["shard"], row["key"], row["image_format"],
                                                                  row["width"], row["height"], [])
        choice.captions.append({name: row[name] for name in ("text", "source", "caption_index", "itm", "itc",
                                                             "clip")})
    for choice in samples.values():
        choice.captions.sort(key=lambda c: -(c[by] if c[by] is not None else float("-inf")))
    return [samples[place] for place in sorted(samples)]


def shard_plan(choices: list[Choice], samples_per_shard: int | None) -> list[tuple[str, int]]:
    """(name, samples) of each exported shard, over `choices` in order: a shard per source shard, named by its id;
    or with `samples_per_shard`, img2dataset's numbered shards of that many. Samples of two source shards that
    share a key and would land in one tar are refused: webdataset would read them as one sample."""
    if samples_per_shard is None:
        counts: dict[str, int] = {}
        for choice in choices:
            counts[choice.shard] = counts.get(choice.shard, 0) + 1
        return list(counts.items())
    shards = math.ceil(len(choices) / samples_per_shard)
    digits = max(EXPORT_SHARD_DIGITS, len(str(shards - 1)))
    plan = []
    for index in range(shards):
        name = f"{index:0{digits}d}"
        members = choices[index * samples_per_shard:(index + 1) * samples_per_shard]
        seen: dict[str, str] = {}
        for choice in members:
            if choice.key in seen:
                raise ValueError(f"shards {seen[choice.key]!r} and {choice.shard!r} both have a sample {choice.key!r}, "
                                 f"and exported shard {name} would hold both: export without --samples-per-shard")
            seen[choice.key] = choice.shard
        plan.append((name, len(members)))
    return plan


def run_inputs(run: RunDir, markers: dict[str, dict]) -> list[str]:
    """The run's input shards: those its markers name, and those its run.json input still expands to."""
    urls = [m["url"] for m in markers.values() if m.get("url")]
    record = run.read_json(run.path(RUN_FILE)) or {}
    if record.get("input"):
        try:
            urls += [shard.url for shard in expand_shards(record["input"])]
        except (LocationError, OSError):
            pass  # inputs gone or moved: the markers' urls remain
    return urls


def check_target(destination: str, inputs: list[str], run: str = "") -> None:
    """ExportTargetError when `destination` holds one of `inputs`, or is a non-empty folder capfilt's export did
    not write (a file not listed by its manifest)."""
    where = canonical(destination).rstrip("/")
    for url in inputs:
        path = canonical(url)
        if path == where or path.startswith(where + "/"):
            raise ExportTargetError(f"{destination!r} holds {url}, an input shard of the run {run!r}: export would "
                                    f"write over the data it reads; choose another --to")
    target = RunDir(destination)
    foreign = _foreign_files(target)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ExportTargetError(f"{destination!r} is not empty and is not an export of capfilt (it holds {shown}, "
                                f"which no {EXPORT_MANIFEST} of an earlier export lists); export replaces only "
                                f"its own output: choose a new or empty folder")


def _files(target: RunDir) -> list[str] | None:
    """Every file under the target, relative to it; None when the target does not exist; a file is refused."""
    if not target.fs.exists(target.root):
        return None
    if not target.fs.isdir(target.root):
        raise ExportTargetError(f"{target.url!r} is a file, not a folder")
    root = target.root.rstrip("/") + "/"
    return sorted(p[len(root):] if p.startswith(root) else p for p in target.fs.find(target.root))


def _manifest(target: RunDir) -> dict | None:
    try:
        value = target.read_json(target.path(EXPORT_MANIFEST))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _own_files(target: RunDir, files: list[str]) -> set[str]:
    """The files of `files` that an earlier export says it wrote: those its manifest lists (any format that lists
    them), or for an export from before manifests listed files, its {shard}.tar, {shard}_stats.json and
    export.json. Empty without a manifest."""
    manifest = _manifest(target)
    if manifest is None:
        return set()
    if manifest.get("format") in EXPORT_LISTING_FORMATS:
        return {*manifest.get("files", []), EXPORT_MANIFEST}
    if {"run", "shards", "samples", "threshold"} <= manifest.keys():
        stems = {name[: -len(".tar")] for name in files if name.endswith(".tar") and "/" not in name}
        return {EXPORT_MANIFEST} | {f"{s}.tar" for s in stems} | {f"{s}_stats.json" for s in stems}
    return set()


def _foreign_files(target: RunDir) -> list[str]:
    files = _files(target) or []
    own = _own_files(target, files) if files else set()
    return [name for name in files if name not in own]


class _Replacement:
    """The new export, written where no reader looks until it is complete, then put in place of the old one.

    `with replacement as out`: write the files named at the start through `out` (a RunDir); put the totals in
    `replacement.manifest` before the block ends. An error inside the block leaves the old export as it was
    (locally) or listed (on object stores)."""

    def __init__(self, destination: str, files: list[str]):
        self.target = RunDir(destination)
        self.files = files
        self.manifest: dict = {}
        self.out = self.target
        self.stale: list[str] = []

    def __enter__(self) -> RunDir:
        if self.target.local:
            self.target = RunDir(os.path.realpath(self.target.root))  # a link to a folder: replace what it names
            parent, name = os.path.split(self.target.root)
            os.makedirs(parent, exist_ok=True)
            for leftover in os.listdir(parent):  # the hidden siblings of an earlier export that crashed
                if leftover.startswith((f".{name}{STAGING}", f".{name}{RETIRED}")):
                    shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
            staging = os.path.join(parent, f".{name}{STAGING}{uuid.uuid4().hex}")
            try:
                check_within_roots(staging)
            except LocationError as exc:
                raise ExportTargetError(f"export writes the new export beside {self.target.root!r} and swaps it in, "
                                        f"but the folder above it is outside the allowed roots ({exc})") from None
            self.out = RunDir(staging)
            self.out.fs.makedirs(self.out.root, exist_ok=True)
            return self.out
        present = _files(self.target) or []
        self.stale = sorted((_own_files(self.target, present) & set(present)) - set(self.files) - {EXPORT_MANIFEST})
        # While old and new files may both be there, the manifest lists both: a crash leaves a folder known as ours.
        self._write_manifest(sorted(set(self.files) | set(self.stale)), "replacing", self.target)
        return self.out

    def __exit__(self, kind, value, traceback) -> None:
        if self.target.local:
            if kind is not None:
                shutil.rmtree(self.out.root, ignore_errors=True)
                return
            self._write_manifest(self.files, "complete", self.out)
            root = self.target.root
            if os.path.lexists(root):
                retired = os.path.join(os.path.dirname(root), f".{os.path.basename(root)}{RETIRED}{uuid.uuid4().hex}")
                os.rename(root, retired)
                os.rename(self.out.root, root)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(self.out.root, root)
        elif kind is None:
            for name in self.stale:
                self.target.fs.rm(self.target.path(name))
            self._write_manifest(self.files, "complete", self.target)

    def _write_manifest(self, files: list[str], state: str, into: RunDir) -> None:
        into.write_json(into.path(EXPORT_MANIFEST), {**self.manifest, "format": EXPORT_FORMAT, "state": state,
                                                     "files": files})


def _in_key_order(url: str, shard_id: str, choices: list[Choice]) -> Iterator[tuple[Choice, dict[str, bytes]]]:
    """The kept samples of one source shard (`choices`, in key order) with their members (image, txt, json), in
    key order, reading the tar once: a sample met before its turn waits in a `_Spool` until then."""
    wanted = {choice.key: choice for choice in choices}
    position = 0
    with _Spool() as early:
        for sample in read_shard(url):
            if not hasattr(sample, "key") or sample.problem is not None or sample.key not in wanted:
                continue
            choice = wanted[sample.key]
            if choice.image_format not in sample.members:
                continue
            members = {ext: sample.members[ext] for ext in (choice.image_format, "txt", "json")
                       if ext in sample.members}
            if choice.key != choices[position].key:
                early.put(choice.key, members)
                continue
            yield choice, members
            position += 1
            while position < len(choices) and choices[position].key in early:
                yield choices[position], early.pop(choices[position].key)
                position += 1
            if position == len(choices):
                break  # every kept sample is out: the rest of the tar is not read
        missing = len(choices) - position - len(early)
    if position < len(choices):  # a run from before fingerprints, over a changed tar
        raise ValueError(f"{url}: {missing} of the {len(choices)} kept samples of shard {shard_id!r} are no longer "
                         f"in it (the file changed after the run read it); the export stopped, an earlier one is "
                         f"left as it was")


class _Spool:
    """Samples set aside in a local temporary file (made at the first one): memory holds where each one is."""

    def __init__(self):
        self.file = None
        self.index: dict[str, list[tuple[str, int, int]]] = {}  # key -> (extension, offset, size) of each member

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def put(self, key: str, members: dict[str, bytes]) -> None:
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="capfilt-export-")
        self.file.seek(0, os.SEEK_END)
        self.index[key] = []
        for extension, data in members.items():
            self.index[key].append((extension, self.file.tell(), len(data)))
            self.file.write(data)

    def pop(self, key: str) -> dict[str, bytes]:
        members = {}
        for extension, offset, size in self.index.pop(key):
            self.file.seek(offset)
            members[extension] = self.file.read(size)
        return members


def _write_shard(out: RunDir, name: str, samples: Iterable[tuple[Choice, dict[str, bytes]]], urls: dict[str, str],
                 selection: dict) -> dict:
    """One exported shard, as img2dataset writes one: the tar streamed to the destination, then the .parquet (its
    rows gathered in a local temporary file meanwhile: one upload at a time), then the stats, which it returns."""
    started = time.time()
    sources: dict[str, dict] = {}
    with tempfile.TemporaryFile(prefix="capfilt-export-") as rows_file:
        with _Rows(rows_file) as rows, out.open_atomic(out.path(f"{name}.tar")) as handle, \
                tarfile.open(fileobj=handle, mode="w") as tar:
            for choice, members in samples:
                meta = _metadata(members.get("json"))
                for member, data in _tar_members(choice, members, meta, selection):
                    info = tarfile.TarInfo(member)
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
                rows.add(_row(choice, members, meta))
                read = sources.setdefault(choice.shard, {"shard": choice.shard, "url": urls[choice.shard],
                                                         "samples": 0})
                read["samples"] += 1
        rows_file.seek(0)
        with out.open_atomic(out.path(f"{name}.parquet")) as handle:
            shutil.copyfileobj(rows_file, handle)
    stats = _stats(sum(s["samples"] for s in sources.values()), started, time.time(), list(sources.values()),
                   selection)
    out.write_json(out.path(f"{name}_stats.json"), stats)
    return stats


def _tar_members(choice: Choice, members: dict[str, bytes], meta: dict, selection: dict) -> list[tuple[str, bytes]]:
    """The sample's members in the exported tar: its image unchanged, KEY.txt the chosen caption, KEY.json the
    source's fields as they were plus capfilt's entry (which replaces one an earlier export put there)."""
    best = choice.captions[0]["text"]
    meta = {**meta, EXPORT_KEY: {"caption": best, "captions": choice.captions, "shard": choice.shard,
                                 "selection": selection}}
    return [(f"{choice.key}.{choice.image_format}", members[choice.image_format]),
            (f"{choice.key}.txt", best.encode("utf-8")),
            (f"{choice.key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))]


def _row(choice: Choice, members: dict[str, bytes], meta: dict) -> dict:
    """The sample's row of its shard's .parquet: img2dataset's columns from its KEY.json where it has them (else
    the source's KEY.txt for the caption, the run's decoded size, 'success'), the tar's key, then capfilt's."""
    text = members.get("txt")
    fallback = {"caption": text.decode("utf-8", errors="replace") if text is not None else None,
                "status": "success", "width": choice.width, "height": choice.height}
    types = {name: dtype for name, dtype, _ in EXPORT_COLUMNS}
    row = {}
    for name in IMG2DATASET_COLUMNS:
        value = _typed(meta.get(name), types[name])
        row[name] = value if value is not None else fallback.get(name)
    best = choice.captions[0]
    row.update(key=choice.key, capfilt_caption=best["text"], capfilt_source=best["source"],
               capfilt_caption_index=best["caption_index"], capfilt_itm=best["itm"], capfilt_itc=best["itc"],
               capfilt_clip=best["clip"], capfilt_captions=len(choice.captions), capfilt_shard=choice.shard)
    return row


def _typed(value, dtype: pa.DataType):
    """A KEY.json value as the column's type, or None when it is not one (a string where a number belongs)."""
    if pa.types.is_string(dtype):
        return value if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool) and -2**31 <= value < 2**31:
        return value
    return None


class _Rows:
    """An exported shard's .parquet rows, written to `sink` in row groups as they come; the file is complete when
    the `with` block ends without error."""

    def __init__(self, sink):
        self.writer = pq.ParquetWriter(sink, export_schema(), compression="zstd")
        self.pending: list[dict] = []

    def __enter__(self) -> _Rows:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self._flush()
        self.writer.close()

    def add(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=export_schema()))
            self.pending = []


def _stats(written: int, started: float, ended: float, sources: list[dict], selection: dict) -> dict:
    """{name}_stats.json: the keys img2dataset's write_stats writes (img2dataset/logger.py), true of an export
    (every sample written is a success, none failed to download or resize), and capfilt's entry."""
    return {"count": written, "successes": written, "failed_to_download": 0, "failed_to_resize": 0,
            "duration": ended - started, "start_time": started, "end_time": ended, "status_dict": {"success": written},
            EXPORT_KEY: {"sources": sources, "selection": selection}}


def _metadata(data: bytes | None) -> dict:
    """The source's KEY.json as a dict; {} when it has none, or one that is not a JSON object."""
    if not data:
        return {}
    try:
        value = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
