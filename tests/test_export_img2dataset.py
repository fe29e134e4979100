"""The export as img2dataset users expect it (issue 28), checked against a real img2dataset download: KEY.json keeps
every field img2dataset wrote (its caption the alt-text) with capfilt's choice under "capfilt"; {shard}_stats.json
has img2dataset's keys; a {shard}.parquet of the tar's rows sits beside each tar; --samples-per-shard reshards into
img2dataset's numbered shards, in (source shard, key) order, with memory bounded even for a tar out of key order."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.curate import main as curate
from pipelines.assemble import shard_stats, shard_table
from pipelines.decode import decode_samples
from pipelines.export import export_dataset
from pipelines.reader import read_shard
from pipelines.tars import sample_members, write_tar
from pipelines.writer import RunDir
from schemas.capfilt import EXPORT_KEY, EXPORT_MANIFEST, IMG2DATASET_COLUMNS, export_schema
from tests.hostile import image_bytes
from tests.runs import commit, make_run

QUIET = {"log": lambda line: None}
IMAGES = 6  # served as file:// URLs; one more URL points at nothing and fails to download

DOWNLOAD = """
import sys
from img2dataset import download

if __name__ == "__main__":  # img2dataset starts its workers with spawn, which imports this file again
    download(url_list=sys.argv[1], input_format="parquet", url_col="url", caption_col="caption",
             output_format="webdataset", output_folder=sys.argv[2], image_size=32, processes_count=1,
             thread_count=3, timeout=10, retries=0)
"""


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes}, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    for name, data in tar_members(path):
        key, _, extension = name.partition(".")
        samples.setdefault(key, {})[extension] = data
    return samples


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory) -> Path:
    """What a real img2dataset download writes (00000.tar, 00000.parquet, 00000_stats.json), from file:// URLs."""
    root = tmp_path_factory.mktemp("i2d")
    urls = []
    for i in range(IMAGES):
        (root / f"photo{i}.png").write_bytes(image_bytes("PNG", size=(40 + i, 30), seed=i))
        urls.append((root / f"photo{i}.png").as_uri())
    urls.append((root / "missing.png").as_uri())
    pq.write_table(pa.table({"url": urls, "caption": [f"alt text {i}" for i in range(len(urls))]}),
                   root / "urls.parquet")
    (root / "download.py").write_text(DOWNLOAD)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(root / "download.py"), str(root / "urls.parquet"), str(root / "i2d")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (root / "i2d").iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    return root / "i2d"


@pytest.fixture(scope="module")
def exported(downloaded, tmp_path_factory) -> tuple[Path, Path]:
    """A run over the download (its rows as the job decodes them, scores fixed) and its export at ITM >= 0.5.

    Sample i's web caption scores 0.9 when i is even, 0.2 when odd; its first synthetic caption 0.6 + 0.05 i; its
    second is the web caption again (a duplicate the captions view drops). So even samples keep the web caption as
    KEY.txt, odd ones the synthetic one."""
    root = tmp_path_factory.mktemp("i2d-export")
    source = downloaded / "00000.tar"
    rows = decode_samples("00000", [s for s in read_shard(str(source))], sizes=[]).rows
    for row in rows:
        i = int(row["key"])
        web_itm = 0.9 if i % 2 == 0 else 0.2
        row.update(web_itm=web_itm, web_itc=0.1, image_embedding=[1.0, 0.0],
                   synthetic=[{"text": f"synthetic {i}", "itm": 0.6 + 0.05 * i, "itc": 0.3, "clip": None},
                              {"text": row["web_caption"], "itm": web_itm, "itc": 0.1, "clip": None}])
    assert {row["status"] for row in rows} == {"ok"} and len(rows) == IMAGES
    run = RunDir(str(root / "run"))
    run.commit_shard("00000", shard_table(rows, 2), shard_stats("00000", str(source), rows, time.time()))
    export_dataset(run.url, str(root / "export"), threshold=0.5, **QUIET)
    return downloaded, root / "export"


def test_key_json_keeps_every_field_img2dataset_wrote(exported):
    """The story: KEY.json's "caption" was overwritten with the chosen caption, and the alt-text lost. Now every
    field is as img2dataset wrote it, capfilt's choice sits under "capfilt", and KEY.txt is the chosen caption;
    webdataset reads it all back."""
    import webdataset as wds

    downloaded, export = exported
    source = tar_samples(downloaded / "00000.tar")
    samples = list(wds.WebDataset([str(export / "00000.tar")], shardshuffle=False, empty_check=False))
    assert sorted(s["__key__"] for s in samples) == sorted(source)
    for sample in samples:
        key, meta, text = sample["__key__"], json.loads(sample["json"]), sample["txt"].decode()
        original = json.loads(source[key]["json"])
        i = int(key)
        assert {k: v for k, v in meta.items() if k != EXPORT_KEY} == original
        assert list(meta)[:-1] == list(original)  # the same fields in the same order, capfilt's last
        assert meta["caption"] == f"alt text {i}" and sample["jpg"] == source[key]["jpg"]
        choice = meta[EXPORT_KEY]
        assert text == choice["caption"] == choice["captions"][0]["text"]
        assert text == (f"alt text {i}" if i % 2 == 0 else f"synthetic {i}")
        assert choice["shard"] == "00000"
        assert choice["selection"] == {"threshold": 0.5, "source": "both", "top_k": None, "by": "itm"}
        assert [(c["source"], c["caption_index"]) for c in choice["captions"]] == (
            [("web", 0), ("synthetic", 1)] if i % 2 == 0 else [("synthetic", 1)])  # the duplicate is dropped
        assert set(choice["captions"][0]) == {"text", "source", "caption_index", "itm", "itc", "clip"}


def test_stats_have_img2dataset_keys(exported):
    """{shard}_stats.json has exactly the keys img2dataset wrote in its own, with values true of the export, and
    capfilt's under "capfilt"."""
    downloaded, export = exported
    theirs = json.loads((downloaded / "00000_stats.json").read_text())
    ours = json.loads((export / "00000_stats.json").read_text())
    assert set(ours) - {EXPORT_KEY} == set(theirs)
    assert (ours["count"], ours["successes"], ours["failed_to_download"], ours["failed_to_resize"]) == (
        IMAGES, IMAGES, 0, 0)
    assert ours["status_dict"] == {"success": IMAGES}
    assert ours["duration"] == pytest.approx(ours["end_time"] - ours["start_time"]) and ours["duration"] >= 0
    assert abs(ours["start_time"] - time.time()) < 600
    assert ours[EXPORT_KEY] == {
        "sources": [{"shard": "00000", "url": str(downloaded / "00000.tar"), "samples": IMAGES}],
        "selection": {"threshold": 0.5, "source": "both", "top_k": None, "by": "itm"}}


def test_a_parquet_of_the_tars_rows_beside_each_tar(exported):
    """{shard}.parquet has a row per sample of the tar, in its order: every column img2dataset's own parquet has,
    with the same values, then capfilt's; the manifest lists it."""
    downloaded, export = exported
    theirs = {row["key"]: row for row in pq.read_table(downloaded / "00000.parquet").to_pylist()}
    table = pq.read_table(export / "00000.parquet")
    assert table.schema.equals(export_schema()) and set(theirs[next(iter(theirs))]) <= set(IMG2DATASET_COLUMNS)
    samples = tar_samples(export / "00000.tar")
    rows = table.to_pylist()
    assert [row["key"] for row in rows] == list(samples)
    for row in rows:
        assert {name: row[name] for name in theirs[row["key"]]} == theirs[row["key"]]
        assert row["status"] == "success" and row["caption"] == f"alt text {int(row['key'])}"
        assert row["capfilt_caption"] == samples[row["key"]]["txt"].decode()
        assert row["capfilt_source"] == ("web" if int(row["key"]) % 2 == 0 else "synthetic")
        assert row["capfilt_itm"] == pytest.approx(0.9 if int(row["key"]) % 2 == 0 else 0.6 + 0.05 * int(row["key"]))
        assert row["capfilt_shard"] == "00000"
    manifest = json.loads((export / EXPORT_MANIFEST).read_text())
    assert manifest["files"] == ["00000.parquet", "00000.tar", "00000_stats.json"]


def test_parquet_falls_back_to_what_the_run_knows(tmp_path):
    """A source whose KEY.json lacks img2dataset's fields (or has none): the row takes the tar's key, the decoded
    size, the KEY.txt caption, status success; nothing KEY.json does not say is made up."""
    members = [("plain.png", image_bytes("PNG", size=(20, 10))), ("plain.txt", b"only a txt")]
    source = write_tar(tmp_path / "inputs" / "s.tar", members)
    rows = decode_samples("s", [s for s in read_shard(str(source))], sizes=[]).rows
    rows[0].update(web_itm=0.9, web_itc=0.1, image_embedding=[1.0, 0.0], synthetic=[])
    run = RunDir(str(tmp_path / "run"))
    run.commit_shard("s", shard_table(rows, 2), shard_stats("s", str(source), rows, time.time()))
    export_dataset(run.url, str(tmp_path / "export"), threshold=0.5, **QUIET)
    row = pq.read_table(tmp_path / "export" / "s.parquet").to_pylist()[0]
    assert {name: row[name] for name in IMG2DATASET_COLUMNS} == {
        "url": None, "caption": "only a txt", "key": "plain", "status": "success", "error_message": None,
        "width": 20, "height": 10, "original_width": None, "original_height": None, "exif": None, "sha256": None}
    assert json.loads(tar_samples(tmp_path / "export" / "s.tar")["plain"]["json"]) == {
        EXPORT_KEY: {"caption": "only a txt", "shard": "s",
                     "captions": [{"text": "only a txt", "source": "web", "caption_index": 0, "itm": pytest.approx(0.9),
                                   "itc": pytest.approx(0.1), "clip": None}],
                     "selection": {"threshold": 0.5, "source": "both", "top_k": None, "by": "itm"}}}


# ------------------------------------------------------------------------------------------------ resharding
ORDERS = {"a": [0, 1, 2, 3, 4], "b": [3, 2, 1, 0], "c": [2, 0, 1]}  # key positions in tar order: b, c out of order


def reordered_source(path: Path, shard_id: str, order: list[int], padding: int = 0) -> Path:
    """A tar whose samples (keys {shard_id}000, ...) come in `order`; `padding` bytes after each image's end."""
    members = []
    for i in order:
        key = f"{shard_id}{i:03d}"
        image = image_bytes("PNG", seed=ord(shard_id) * 100 + i) + bytes(padding)
        members += sample_members(key, image, f"alt {key}", f"https://x/{key}", extension="png").items()
    return write_tar(path, members)


@pytest.fixture()
def sources(tmp_path) -> tuple[Path, Path]:
    """Three source shards (5, 4 and 3 samples, unique keys, two of them not in key order) and a run keeping
    every caption at 0.5."""
    run = RunDir(str(tmp_path / "run"))
    for shard_id, order in ORDERS.items():
        commit(run, shard_id, reordered_source(tmp_path / "inputs" / f"{shard_id}.tar", shard_id, order), 0.9)
    return tmp_path / "inputs", tmp_path / "run"


def exported_keys(export: Path, names: list[str]) -> list[str]:
    return [key for name in names for key in tar_samples(export / f"{name}.tar")]


def test_samples_per_shard_writes_exact_shards_in_source_then_key_order(sources, tmp_path, capsys):
    """`export --samples-per-shard 5` over 12 kept samples: 00000 and 00001 of 5, 00002 of 2, each with its
    parquet and stats; the samples in (source shard, key) order, whatever their order in the source tars."""
    inputs, run = sources
    export = tmp_path / "export"
    assert curate(["export", str(run), "--to", str(export), "--samples-per-shard", "5"]) == 0
    names = ["00000", "00001", "00002"]
    assert sorted(os.listdir(export)) == sorted([EXPORT_MANIFEST] + [f"{n}{part}" for n in names
                                                                     for part in (".tar", ".parquet", "_stats.json")])
    every_key = [f"{s}{i:03d}" for s, order in ORDERS.items() for i in sorted(order)]
    assert exported_keys(export, names) == every_key
    counts = [len(tar_samples(export / f"{n}.tar")) for n in names]
    assert counts == [5, 5, 2]
    for name, count in zip(names, counts):
        stats = json.loads((export / f"{name}_stats.json").read_text())
        assert (stats["count"], stats["successes"], stats["status_dict"]) == (count, count, {"success": count})
        rows = pq.read_table(export / f"{name}.parquet").to_pylist()
        assert [r["key"] for r in rows] == list(tar_samples(export / f"{name}.tar"))
    assert json.loads((export / "00001_stats.json").read_text())[EXPORT_KEY]["sources"] == [
        {"shard": "b", "url": str(inputs / "b.tar"), "samples": 4}, {"shard": "c", "url": str(inputs / "c.tar"),
                                                                     "samples": 1}]
    source_images = {k: m["png"] for s in ORDERS for k, m in tar_samples(inputs / f"{s}.tar").items()}
    exported_images = {k: m["png"] for n in names for k, m in tar_samples(export / f"{n}.tar").items()}
    assert exported_images == source_images
    manifest = json.loads((export / EXPORT_MANIFEST).read_text())
    assert (manifest["shards"], manifest["samples"], manifest["samples_per_shard"]) == (3, 12, 5)

    # Again without the option: one shard per source shard, by its id, also in key order; no numbered one is left.
    assert export_dataset(str(run), str(export), threshold=0.5, **QUIET)["shards"] == 3
    assert sorted(os.listdir(export)) == sorted([EXPORT_MANIFEST] + [f"{n}{part}" for n in ORDERS
                                                                     for part in (".tar", ".parquet", "_stats.json")])
    assert exported_keys(export, list(ORDERS)) == every_key
    # One shard of all, and shards of one.
    export_dataset(str(run), str(export), threshold=0.5, samples_per_shard=100, **QUIET)
    assert exported_keys(export, ["00000"]) == every_key and not (export / "00001.tar").exists()
    export_dataset(str(run), str(export), threshold=0.5, samples_per_shard=1, **QUIET)
    assert exported_keys(export, [f"{i:05d}" for i in range(12)]) == every_key


@pytest.mark.parametrize("value", ["0", "-3"])
def test_samples_per_shard_below_one_is_one_error_line(sources, tmp_path, capsys, value):
    _, run = sources
    assert curate(["export", str(run), "--to", str(tmp_path / "export"), "--samples-per-shard", value]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"error: --samples-per-shard must be at least 1, got {value}"]
    assert not (tmp_path / "export").exists()


def test_resharding_refuses_two_samples_of_one_key_in_a_tar(tmp_path, capsys):
    """Source shards that share keys (k00, k01, ... in each) cannot share a tar: one error line, nothing written;
    without --samples-per-shard they export as before."""
    _, run = make_run(tmp_path, {"00000": (2, 0.9), "00001": (2, 0.9)})
    assert curate(["export", str(run), "--to", str(tmp_path / "export"), "--samples-per-shard", "3"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: shards '00000' and '00001' both have a sample 'k00'") and "\n" not in line
    assert not (tmp_path / "export").exists()
    assert export_dataset(str(run), str(tmp_path / "export"), threshold=0.5, **QUIET)["shards"] == 2


def test_a_tar_out_of_key_order_is_resharded_with_bounded_memory(tmp_path):
    """12 samples of 1 MB in reverse key order: the export writes them in key order, and Python memory peaks at a
    small part of the 12 MB (the samples met early wait on disk)."""
    run = RunDir(str(tmp_path / "run"))
    commit(run, "r", reordered_source(tmp_path / "inputs" / "r.tar", "r", list(range(11, -1, -1)), 1 << 20), 0.9)
    tracemalloc.start()
    try:
        totals = export_dataset(run.url, str(tmp_path / "export"), threshold=0.5, samples_per_shard=5, **QUIET)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert totals["samples"] == 12 and peak < 4 << 20, f"export peaked at {peak / 2**20:.1f} MiB"
    assert exported_keys(tmp_path / "export", ["00000", "00001", "00002"]) == [f"r{i:03d}" for i in range(12)]
