"""Curator commands on a run written without models: user column names are checked against the schema before any
SQL, and export streams each tar to its destination with memory bounded by one sample."""
from __future__ import annotations

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
from pipelines.select import keep_list, open_run
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
    assert table.column_names == ["shard", "key", "url", "source", "rank", "text", "itm", "itc", "clip", "width",
                                  "web_caption"]
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
