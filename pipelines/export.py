"""Export the bootstrapped dataset as img2dataset-style webdataset shards, chosen by a DuckDB keep-list.

Image bytes are copied from the source shards unchanged; KEY.txt is the best kept caption (highest ITM, or highest
by the score a `--top-k` selection ranks by),
KEY.json is the original metadata plus every kept caption with its scores. `{shard}_stats.json` is written
after its tar, as img2dataset does; `export.json`, the manifest listing every file of the export, is written last.

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
import json
import os
import shutil
import tarfile
import time
import uuid
from collections import defaultdict

from pipelines.fingerprint import check_inputs_unchanged
from pipelines.reader import read_shard
from pipelines.select import keep_list, open_run
from pipelines.sources import LocationError, canonical, check_location, check_within_roots, expand_shards
from pipelines.writer import RunDir
from schemas.capfilt import EXPORT_FORMAT, EXPORT_MANIFEST, FINGERPRINT_FIELD, RUN_FILE

STAGING, RETIRED = ".capfilt-export-", ".capfilt-replaced-"  # hidden siblings of a local target: <name> + tag + id


class ExportTargetError(ValueError):
    """A destination export must not write to; the message says why."""


def export_dataset(run: str, destination: str, threshold: float | None = 0.5, source: str = "both", log=print,
                   top_k: int | None = None, by: str = "itm") -> dict:
    """Write one tar per source shard that has kept samples, chosen as `keep_list` chooses them; returns counts."""
    check_location(destination)
    source_run = RunDir(run)
    con = open_run(run)
    markers = source_run.markers()
    check_target(destination, run_inputs(source_run, markers), run)
    kept = keep_list(con, threshold, source, top_k=top_k, by=by).to_pylist()
    formats = dict(((r[0], r[1]), r[2]) for r in con.execute(
        "SELECT shard, key, image_format FROM samples WHERE status = 'ok'").fetchall())
    by_shard: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in kept:
        by_shard[row["shard"]][row["key"]].append(
            {"text": row["text"], "source": row["source"], "itm": row["itm"], "itc": row["itc"], "clip": row["clip"]})
    for samples in by_shard.values():  # best first by the score the selection ranks by
        for captions in samples.values():
            captions.sort(key=lambda c: -(c[by] if c[by] is not None else float("-inf")))
    for shard_id in by_shard:
        if "url" not in markers.get(shard_id, {}):
            raise ValueError(f"shard {shard_id!r} of {run!r} has no done-marker with its source url")
    # Every source read below is checked first: a changed tar would silently lose kept samples.
    check_inputs_unchanged({markers[s]["url"]: markers[s].get(FINGERPRINT_FIELD) for s in by_shard})
    selection = {"threshold": threshold, "source": source, "top_k": top_k, "by": by}
    totals = {"shards": 0, "samples": 0, "captions": len(kept), **selection}
    files = sorted(name for shard_id in by_shard for name in (f"{shard_id}.tar", f"{shard_id}_stats.json"))
    replacement = _Replacement(destination, files)
    with replacement as out:
        for shard_id in sorted(by_shard):
            url = markers[shard_id]["url"]
            started = time.time()
            written = _export_shard(url, by_shard[shard_id], formats, shard_id, out)
            if written < len(by_shard[shard_id]):  # a run from before fingerprints, over a changed tar
                raise ValueError(f"{url}: {len(by_shard[shard_id]) - written} of the {len(by_shard[shard_id])} "
                                 f"kept samples of shard {shard_id!r} are no longer in it (the file changed after "
                                 f"the run read it); the export stopped, an earlier one is left as it was")
            out.write_json(out.path(f"{shard_id}_stats.json"), {
                "shard": shard_id, "source_url": url, "count": written, **selection,
                "seconds": round(time.time() - started, 3)})
            totals["shards"] += 1
            totals["samples"] += written
            log(f"exported {shard_id}: {written} samples")
        replacement.manifest.update(totals, run=run)
    return totals


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
    """The files of `files` that an earlier export says it wrote: those its manifest lists, or for an export from
    before manifests listed files, its {shard}.tar, {shard}_stats.json and export.json. Empty without a manifest."""
    manifest = _manifest(target)
    if manifest is None:
        return set()
    if manifest.get("format") == EXPORT_FORMAT:
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


def _export_shard(url: str, captions: dict[str, list[dict]], formats: dict, shard_id: str, out: RunDir) -> int:
    """Stream the kept samples of one source shard into its tar: memory holds one sample, not the shard.
    Each sample's captions come best first; the first is its caption."""
    written = 0
    with out.open_atomic(out.path(f"{shard_id}.tar")) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        for sample in read_shard(url):
            if not hasattr(sample, "key") or sample.key not in captions or sample.problem is not None:
                continue
            extension = formats.get((shard_id, sample.key))
            if extension not in sample.members:
                continue
            chosen = captions[sample.key]
            meta = _metadata(sample.members.get("json"))
            meta["capfilt"] = {"captions": chosen}
            meta["caption"] = chosen[0]["text"]
            for name, data in ((f"{sample.key}.{extension}", sample.members[extension]),
                               (f"{sample.key}.txt", chosen[0]["text"].encode("utf-8")),
                               (f"{sample.key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
            written += 1
    return written


def _metadata(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        value = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
