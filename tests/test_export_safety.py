"""Export never destroys data (issue 24, defect 4): it refuses a folder holding the run's inputs or anything it did
not write; a re-export replaces its own earlier output as a whole (no stale shard, no mix, even when it fails);
a source tar that changed since the run read it is an error naming it, before anything is written."""
from __future__ import annotations

import os
import tarfile

import pytest

from jobs.curate import main as curate
from pipelines import export as export_module
from pipelines.export import ExportTargetError, export_dataset
from pipelines.fingerprint import InputChangedError, check_inputs_unchanged, input_fingerprint
from pipelines.writer import RunDir
from schemas.capfilt import EXPORT_FORMAT, EXPORT_MANIFEST
from tests.runs import files, make_run, marker, read_json, write_source

# 00001's captions all score 0.3: kept at threshold 0.0, dropped at 0.5.
SHARDS = {"00000": (4, 0.9), "00001": (3, 0.3), "00002": (2, 0.8)}
QUIET = {"log": lambda line: None}


@pytest.fixture()
def run(tmp_path):
    return make_run(tmp_path, SHARDS)


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_export_into_the_runs_input_folder_is_refused(run, tmp_path, capsys):
    """The story: `curate.py export` into the input folder replaced a source shard. Now it exits 2 with one line
    naming the input, however the folder is spelled (`..`, a link, file://, a folder above it), and every source
    byte is intact."""
    inputs, out = run
    before = files(inputs)
    os.symlink(inputs, tmp_path / "link")
    for target in (inputs, tmp_path / "run" / ".." / "inputs", tmp_path / "link", f"file://{inputs}", tmp_path,
                   inputs / "00000.tar"):
        assert curate(["export", str(out), "--to", str(target), "--threshold", "0.0"]) == 2, target
        line = one_error_line(capsys)
        assert "an input shard of the run" in line and str(inputs / "0000") in line, line
    assert files(inputs) == before


def test_a_folder_export_did_not_write_is_refused(run, tmp_path):
    """A non-empty folder without an export's manifest, or with files its manifest does not list, is refused and
    left as it was; an empty folder and a new one are fine."""
    _, out = run
    other = tmp_path / "my-dataset"
    other.mkdir()
    (other / "00000.tar").write_bytes(b"someone's shard")
    with pytest.raises(ExportTargetError, match="not an export of capfilt .*00000.tar"):
        export_dataset(str(out), str(other), threshold=0.0, **QUIET)
    assert files(other) == {"00000.tar": b"someone's shard"}

    (tmp_path / "empty").mkdir()
    export_dataset(str(out), str(tmp_path / "empty"), threshold=0.0, **QUIET)
    (tmp_path / "empty" / "notes.txt").write_text("mine")  # a user's file inside an export: not ours to delete
    with pytest.raises(ExportTargetError, match="notes.txt"):
        export_dataset(str(out), str(tmp_path / "empty"), threshold=0.5, **QUIET)
    assert (tmp_path / "empty" / "notes.txt").read_text() == "mine" and (tmp_path / "empty" / "00001.tar").exists()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_stricter_re_export_leaves_no_stale_shard(run, tmp_path, where):
    """The story: re-exporting at a stricter threshold left the first export's shards beside the new ones. Now the
    folder holds exactly the new export, as its manifest lists, and no hidden sibling is left behind."""
    _, out = run
    target = str(tmp_path / "boot") if where == "local" else f"memory://boot-{tmp_path.name}"
    first = export_dataset(str(out), target, threshold=0.0, **QUIET)
    dest = RunDir(target)
    listing = lambda: sorted(p.rsplit("/", 1)[-1] for p in dest.fs.find(dest.root))  # noqa: E731
    assert first["shards"] == 3 and "00001.tar" in listing()

    second = export_dataset(str(out), target, threshold=0.5, **QUIET)
    assert (second["shards"], second["samples"]) == (2, 6)
    expected = ["00000.parquet", "00000.tar", "00000_stats.json", "00002.parquet", "00002.tar", "00002_stats.json"]
    assert listing() == sorted([*expected, EXPORT_MANIFEST])
    manifest = dest.read_json(dest.path(EXPORT_MANIFEST))
    assert (manifest["format"], manifest["state"], manifest["files"]) == (EXPORT_FORMAT, "complete", expected)
    assert (manifest["threshold"], manifest["samples"]) == (0.5, 6)
    if where == "local":
        assert sorted(os.listdir(tmp_path)) == ["boot", "inputs", "run"]


def test_a_failed_re_export_leaves_the_earlier_one_whole(run, tmp_path, monkeypatch):
    """An export that fails half-way (here on its second shard) leaves the earlier export exactly as it was, and
    a crash's leftover hidden sibling is removed by the next export."""
    _, out = run
    export_dataset(str(out), str(tmp_path / "boot"), threshold=0.0, **QUIET)
    before = files(tmp_path / "boot")
    real = export_module._write_shard
    calls = []

    def failing(dest, name, samples, urls, selection):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(dest, name, samples, urls, selection)

    monkeypatch.setattr(export_module, "_write_shard", failing)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(str(out), str(tmp_path / "boot"), threshold=0.5, **QUIET)
    assert files(tmp_path / "boot") == before and sorted(os.listdir(tmp_path)) == ["boot", "inputs", "run"]

    monkeypatch.setattr(export_module, "_write_shard", real)
    (tmp_path / f".boot{export_module.STAGING}dead").mkdir()  # what a killed export leaves
    export_dataset(str(out), str(tmp_path / "boot"), threshold=0.5, **QUIET)
    assert sorted(os.listdir(tmp_path)) == ["boot", "inputs", "run"]
    assert not (tmp_path / "boot" / "00001.tar").exists()


def test_an_export_from_before_manifests_is_replaced(run, tmp_path):
    """An export folder written before manifests listed files ({shard}.tar, {shard}_stats.json, export.json with
    the totals) is recognised and replaced whole."""
    _, out = run
    old = tmp_path / "boot"
    old.mkdir()
    for name in ("00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json"):
        (old / name).write_bytes(b"old")
    (old / EXPORT_MANIFEST).write_text('{"run": "x", "shards": 2, "samples": 5, "threshold": 0.0}')
    export_dataset(str(out), str(old), threshold=0.5, **QUIET)
    assert sorted(os.listdir(old)) == ["00000.parquet", "00000.tar", "00000_stats.json", "00002.parquet",
                                       "00002.tar", "00002_stats.json", EXPORT_MANIFEST]


def test_a_changed_source_tar_is_an_error_naming_it(run, tmp_path, capsys):
    """The story: a source tar changed after the run, and export silently dropped kept samples. Now the marker's
    fingerprint (size, sha256 of both ends) is checked before any source is read: one error line naming the tar,
    exit 2, nothing written, an earlier export intact. A same-size change is caught too."""
    inputs, out = run
    fingerprint = read_json(marker(out, "00000"))["fingerprint"]
    assert fingerprint == input_fingerprint(str(inputs / "00000.tar"))
    assert set(fingerprint) == {"size", "mtime", "sha256_ends", "chunk"}
    export_dataset(str(out), str(tmp_path / "boot"), threshold=0.0, **QUIET)
    before = files(tmp_path / "boot")

    write_source(inputs / "00002.tar", 1, seed=2)  # rewritten with one sample of its two
    assert curate(["export", str(out), "--to", str(tmp_path / "boot2"), "--threshold", "0.0"]) == 2
    line = one_error_line(capsys)
    assert str(inputs / "00002.tar") in line and "bytes now" in line, line
    assert not (tmp_path / "boot2").exists()
    with pytest.raises(InputChangedError, match="00002.tar"):
        export_dataset(str(out), str(tmp_path / "boot"), threshold=0.0, **QUIET)
    assert files(tmp_path / "boot") == before

    data = bytearray((inputs / "00000.tar").read_bytes())
    data[600] ^= 0xFF  # inside the first member's bytes: same size, other content
    (inputs / "00000.tar").write_bytes(bytes(data))
    with pytest.raises(InputChangedError, match=r"2 input shards changed.*00000.tar: same size"):
        export_dataset(str(out), str(tmp_path / "boot3"), threshold=0.0, **QUIET)
    # Shards with nothing to export are not read, so not checked: at 0.85 only 00000 is kept.
    with pytest.raises(InputChangedError, match="1 input shard changed"):
        export_dataset(str(out), str(tmp_path / "boot3"), threshold=0.85, **QUIET)


def test_a_changed_source_of_an_old_run_is_still_an_error(run, tmp_path):
    """A run from before fingerprints (markers without one): a kept sample missing from its source is an error
    naming the tar, and nothing is exported."""
    inputs, out = run
    for shard_id in SHARDS:
        path = marker(out, shard_id)
        value = read_json(path)
        del value["fingerprint"]
        RunDir(str(out)).write_json(str(path), value)
    write_source(inputs / "00002.tar", 1, seed=2)
    with pytest.raises(ValueError, match=r"00002.tar: 1 of the 2 kept samples"):
        export_dataset(str(out), str(tmp_path / "boot"), threshold=0.0, **QUIET)
    assert not (tmp_path / "boot").exists()


def test_fingerprint_functions_for_the_runner(tmp_path):
    """What the runner records per input shard and checks on resume: recorded_inputs reads the markers;
    check_inputs_unchanged names every changed file; unreadable inputs and unrecorded ones are not compared."""
    inputs, out = make_run(tmp_path, {"a": (2, 0.9), "b": (2, 0.9)})
    recorded = RunDir(str(out)).recorded_inputs()
    assert sorted(recorded) == [str(inputs / "a.tar"), str(inputs / "b.tar")]
    check_inputs_unchanged(recorded)
    (inputs / "b.tar").unlink()
    with pytest.raises(InputChangedError, match="b.tar: the run read .* bytes there, now it cannot be read"):
        check_inputs_unchanged(recorded, [str(inputs / "a.tar"), str(inputs / "b.tar")])
    check_inputs_unchanged(recorded, [str(inputs / "a.tar")])
    missing = input_fingerprint(str(inputs / "b.tar"))
    assert set(missing) == {"error"}
    check_inputs_unchanged({str(inputs / "b.tar"): missing})  # the run could not read it either: nothing to compare
    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as tar:
        info = tarfile.TarInfo("x.bin")
        info.size = 3 << 20
        tar.addfile(info, open("/dev/zero", "rb"))
    recorded = {str(big): input_fingerprint(str(big))}
    with open(big, "r+b") as handle:  # the middle of a large file is not hashed: documented
        handle.seek(3 << 19)
        handle.write(b"x")
    check_inputs_unchanged(recorded)


def test_an_export_reads_back_with_webdataset_as_img2dataset_shards_do(run, tmp_path):
    """The export is what training loaders read: webdataset (without its pickle-capable default decoder) yields
    every kept sample with its image bytes, its caption text and its metadata JSON."""
    import json

    import webdataset as wds

    _, out = run
    target = tmp_path / "export"
    export_dataset(str(out), str(target), threshold=0.5, **QUIET)
    tars = sorted(str(p) for p in target.glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == SHARDS["00000"][0] + SHARDS["00002"][0]  # 00001's captions all score below 0.5
    for sample in samples:
        assert sample["png"][:8] == b"\x89PNG\r\n\x1a\n" and sample["txt"].decode().strip()  # the source images
        assert isinstance(json.loads(sample["json"]), dict)
