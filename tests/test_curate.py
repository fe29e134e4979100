"""Curator commands on a run written without models: user column names are checked against the schema before any
SQL, `keep` prints only JSON lines on stdout, the captions view keeps each caption of an image once (issue 28), and
export streams each tar to its destination with memory bounded by one sample."""
from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.curate import main as curate
from pipelines.assemble import shard_stats, shard_table
from pipelines.decode import new_row
from pipelines.tars import sample_members, write_tar
from pipelines.export import export_dataset
from pipelines.reader import read_shard
from pipelines.select import keep_list, open_run, summary
from pipelines.writer import RunDir
from tests.hostile import image_bytes

SAMPLES = 12
IMAGE_BYTES = 1 << 20  # a 12 MB shard: an export that held it in memory would show it


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A source shard of 1 MB images and a committed run over it (every sample ok, scores fixed), no Ray."""
    root = tmp_path_factory.mktemp("curate")
    members = {}
    for i in range(SAMPLES):
        image = image_bytes("PNG", seed=i) + bytes(IMAGE_BYTES)  # bytes after the image end are never decoded
        members.update(sample_members(f"k{i:02d}", image, f"web caption {i}", f"https://x/{i}"))
    shard = write_tar(root / "00000.tar", members)
    rows = []
    for i, sample in enumerate(read_shard(str(shard))):
        row = new_row("00000", sample.key)
        row.update(url=f"https://x/{i}", web_caption=f"web caption {i}", web_itm=i / SAMPLES, web_itc=0.1,
                   synthetic=[{"text": f"synthetic {i}", "itm": 1 - i / SAMPLES, "itc": 0.2}],
                   image_embedding=[1.0, 0.0], width=40, height=30, image_format="jpg")
        rows.append(row)
    out = RunDir(str(root / "run"))
    out.commit_shard("00000", shard_table(rows, 2), shard_stats("00000", str(shard), rows, time.time()))
    return root / "run"


def test_keep_carries_the_columns_asked_for(run, tmp_path):
    """`keep --columns` adds sample columns of the schema beside each kept caption."""
    target = tmp_path / "keep.parquet"
    assert curate(["keep", str(run), "--threshold", "0.5", "--columns", "width, web_caption,key,width", "--to",
                   str(target)]) == 0
    table = pq.read_table(target)
    assert table.column_names == ["shard", "key", "url", "source", "caption_index", "text", "itm", "itc", "clip",
                                  "width", "web_caption"]
    plain = keep_list(open_run(str(run)), 0.5)
    assert table.select(plain.column_names).equals(plain) and set(table.column("width").to_pylist()) == {40}


@pytest.mark.parametrize("columns", ["widht", "width,nope", 'width" FROM samples; --', "key; DROP TABLE samples",
                                     "*", "1"])
def test_unknown_columns_are_one_error_line(run, capsys, columns):
    """A name that is not a column of schemas/capfilt.py (a typo, SQL, a star) exits 2 with one `error:` line that
    lists the columns; nothing reaches DuckDB."""
    assert curate(["keep", str(run), "--columns", columns]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown column") and "web_caption" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    with pytest.raises(ValueError, match="unknown column"):
        keep_list(open_run(str(run)), 0.5, "both", columns.split(","))


def test_export_streams_each_tar(run, tmp_path):
    """The exported tar is written as it is read: Python memory peaks at a small part of the 12 MB shard; a memory://
    destination (the object-store path) gets the same bytes as a local one."""
    tracemalloc.start()
    try:
        totals = export_dataset(str(run), str(tmp_path / "boot"), threshold=0.0, log=lambda line: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tar = (tmp_path / "boot" / "00000.tar").read_bytes()
    assert totals["samples"] == SAMPLES and len(tar) > SAMPLES * IMAGE_BYTES
    assert peak < 4 * IMAGE_BYTES, f"export peaked at {peak / 2**20:.1f} MiB"
    source = {s.key: s.members["jpg"] for s in read_shard(str(Path(run).parent / "00000.tar"))}
    exported = {s.key: s.members["jpg"] for s in read_shard(str(tmp_path / "boot" / "00000.tar"))}
    assert exported == source

    export_dataset(str(run), "memory://boot", threshold=0.0, log=lambda line: None)
    remote = RunDir("memory://boot")
    with remote.fs.open(remote.path("00000.tar"), "rb") as handle:
        assert handle.read() == tar
    assert remote.fs.exists(remote.path("00000_stats.json"))


def test_keep_stdout_is_json_lines_only(run, tmp_path, capsys):
    """The story: `keep` without --to printed a trailer line after its JSON lines, which broke `| jq`. Now every
    stdout line is a JSON object and the count goes to stderr; with --to, stdout stays empty."""
    assert curate(["keep", str(run), "--threshold", "0.0"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 20 and all(isinstance(r, dict) and r["text"] for r in rows)
    assert captured.err.strip() == f"{2 * SAMPLES} kept captions (first 20 shown; --to FILE writes them all)"
    assert curate(["keep", str(run), "--threshold", "0.0", "--to", str(tmp_path / "k.parquet")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and f"{2 * SAMPLES} kept captions -> " in captured.err


@pytest.fixture(scope="module")
def repeated(tmp_path_factory) -> Path:
    """A run whose images repeat captions: k00's first synthetic caption is its web caption and its third the same
    as its second; k01 has no web caption and two identical synthetic ones (the second scored higher)."""
    root = tmp_path_factory.mktemp("repeated")
    members = {}
    for i in range(2):
        members.update(sample_members(f"k{i:02d}", image_bytes("PNG", seed=i), None, f"https://x/{i}"))
    shard = write_tar(root / "00000.tar", members)
    synthetic = {"k00": [("a dog", 0.7), ("a brown dog", 0.6), ("a brown dog", 0.6), ("a dog on grass", 0.5)],
                 "k01": [("a cat", 0.4), ("a cat", 0.8)]}
    rows = []
    for sample in read_shard(str(shard)):
        row = new_row("00000", sample.key)
        web = {"web_caption": "a dog", "web_itm": 0.7, "web_itc": 0.1} if sample.key == "k00" else {}
        row.update(url="https://x", image_embedding=[1.0, 0.0], width=40, height=30, image_format="jpg", **web,
                   synthetic=[{"text": text, "itm": itm, "itc": 0.2} for text, itm in synthetic[sample.key]])
        rows.append(row)
    RunDir(str(root / "run")).commit_shard("00000", shard_table(rows, 2),
                                           shard_stats("00000", str(shard), rows, time.time()))
    return root / "run"


def test_identical_captions_of_an_image_are_kept_once(repeated, tmp_path):
    """The story: a synthetic caption identical to the web caption, or to an earlier synthetic one, was kept twice.
    The captions view keeps the first occurrence (the web caption, then the earlier synthetic one), so keep,
    summary and export agree; caption_index stays where each caption came from (0 web, 1..N sampling order)."""
    con = open_run(str(repeated))
    view = con.sql("SELECT key, source, caption_index, text FROM captions ORDER BY key, caption_index").fetchall()
    assert view == [("k00", "web", 0, "a dog"), ("k00", "synthetic", 2, "a brown dog"),
                    ("k00", "synthetic", 4, "a dog on grass"), ("k01", "synthetic", 1, "a cat")]
    kept = keep_list(con, 0.0).to_pylist()
    assert [(r["key"], r["caption_index"], r["text"]) for r in kept] == [(k, i, t) for k, _, i, t in view]
    assert [r["text"] for r in keep_list(con, 0.0, "synthetic").to_pylist()] == ["a brown dog", "a dog on grass",
                                                                                 "a cat"]
    assert [r["caption_index"] for r in keep_list(con, None, top_k=2).to_pylist()] == [0, 2, 1]
    counts = summary(con, 0.0)
    assert (counts["web_kept"], counts["synthetic_kept"]) == (1, 3)
    export_dataset(str(repeated), str(tmp_path / "boot"), threshold=0.0, log=lambda line: None)
    exported = {s.key: json.loads(s.members["json"])["capfilt"]["captions"]
                for s in read_shard(str(tmp_path / "boot" / "00000.tar"))}
    assert [c["text"] for c in exported["k00"]] == ["a dog", "a brown dog", "a dog on grass"]
    assert [(c["text"], c["caption_index"]) for c in exported["k01"]] == [("a cat", 1)]
