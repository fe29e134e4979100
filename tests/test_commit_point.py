"""The done-marker is the only commit point (issue 24, defect 3 and the marker naming): a Parquet file renamed in
whose marker was never written (a crash between the two) is outside the run for every reader, and the runner's
resume redoes it; the usual Parquet readers (pandas, pyarrow.dataset, DuckDB's glob) read OUT/shards whole, since
markers and temporary names are hidden from them; runs with markers at the old names still read and export."""
from __future__ import annotations

import duckdb
import pandas
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.assemble import shard_table
from pipelines.export import export_dataset
from pipelines.select import committed_files, keep_list, open_run, summary
from pipelines.writer import RunDir, RunDirError
from schemas.capfilt import SHARD_DIR
from tests.runs import commit, files, make_run, marker, rows_for, to_legacy_layout, write_source

# "_odd" starts with a character pyarrow.dataset skips: its Parquet gets a name that does not.
SHARDS = {"00000": (3, 0.9), "00001": (4, 0.8), "_odd": (2, 0.7)}
TOTAL = sum(n for n, _ in SHARDS.values())


def crash_between_rename_and_marker(run, inputs, shard_id: str = "00002", samples: int = 5) -> None:
    """What a crash leaves between a shard's rename and its marker: the whole Parquet file, no marker."""
    out = RunDir(str(run))
    source = write_source(inputs / f"{shard_id}.tar", samples, seed=9)
    buffer = pa.BufferOutputStream()
    pq.write_table(shard_table(rows_for(shard_id, source, 0.95), 2), buffer, compression="zstd")
    out.write_bytes(out.parquet_path(shard_id), buffer.getvalue().to_pybytes())


def test_a_parquet_file_without_its_marker_is_outside_the_run(tmp_path):
    """summary, keep, export and committed_files see the committed shards only; the runner's resume (done_shards)
    counts the crashed shard as not done, so a re-run redoes it (and its commit then makes it visible)."""
    inputs, run = make_run(tmp_path, SHARDS)
    crash_between_rename_and_marker(run, inputs)
    assert (run / SHARD_DIR / "00002.parquet").is_file() and not marker(run, "00002").exists()

    out = RunDir(str(run))
    assert out.done_shards() == set(SHARDS)
    assert len(committed_files(str(run))) == len(SHARDS)
    counts = summary(open_run(str(run)), 0.5)
    assert (counts["samples"], counts["shards"]) == (TOTAL, len(SHARDS))
    assert "00002" not in set(keep_list(open_run(str(run)), 0.0).column("shard").to_pylist())
    totals = export_dataset(str(run), str(tmp_path / "boot"), threshold=0.0, log=lambda line: None)
    assert totals["shards"] == len(SHARDS) and totals["samples"] == TOTAL
    assert not (tmp_path / "boot" / "00002.tar").exists()

    # The re-run: the shard is to do, its commit overwrites the orphan Parquet and writes the marker.
    commit(out, "00002", inputs / "00002.tar", 0.95)
    assert out.done_shards() == {*SHARDS, "00002"}
    assert summary(open_run(str(run)), 0.5)["samples"] == TOTAL + 5


def test_usual_readers_read_a_finished_run_whole(tmp_path):
    """pandas.read_parquet(OUT/shards), pyarrow.dataset(OUT/shards) and DuckDB's *.parquet glob read exactly one
    row per input sample: markers and temporary files are hidden from them, mid-write too."""
    _, run = make_run(tmp_path, SHARDS)
    shards = run / SHARD_DIR
    keys = sorted((s, f"k{i:02d}") for s, (n, _) in SHARDS.items() for i in range(n))

    def readers() -> dict[str, list]:
        frame = pandas.read_parquet(shards)
        table = ds.dataset(shards, format="parquet").to_table()
        glob = duckdb.sql(f"SELECT shard, key FROM read_parquet('{shards}/*.parquet')").fetchall()
        return {"pandas": sorted(zip(frame["shard"], frame["key"])),
                "pyarrow": sorted(zip(table.column("shard").to_pylist(), table.column("key").to_pylist())),
                "duckdb": sorted(glob)}

    assert readers() == {"pandas": keys, "pyarrow": keys, "duckdb": keys}
    out = RunDir(str(run))
    with out.open_atomic(out.parquet_path("00009")) as handle, out.open_atomic(out.marker_path("00009")) as m:
        handle.write(b"PAR1 half a file")
        m.write(b'{"half": ')
        assert len(list(shards.rglob(".*tmp-*"))) == 2  # both temporary files exist, hidden
        assert readers() == {"pandas": keys, "pyarrow": keys, "duckdb": keys}
        assert out.done_shards() == set(SHARDS)


def test_old_layout_run_reads_and_exports(tmp_path):
    """A run written before issue 24 (markers at shards/{shard}.done.json, Parquet at {shard}.parquet) still counts
    every shard as committed, reads and exports the same; its resume adds markers at the new place beside them."""
    inputs, run = make_run(tmp_path, SHARDS)
    new = export_dataset(str(run), str(tmp_path / "new"), threshold=0.0, log=lambda line: None)
    before = summary(open_run(str(run)), 0.5)
    to_legacy_layout(run)
    assert sorted(p.name for p in (run / SHARD_DIR).iterdir()) == [
        "00000.done.json", "00000.parquet", "00001.done.json", "00001.parquet", "_odd.done.json", "_odd.parquet"]

    out = RunDir(str(run))
    assert out.done_shards() == set(SHARDS) and out.read_marker("_odd")["samples"] == 2
    assert summary(open_run(str(run)), 0.5) == before
    assert export_dataset(str(run), str(tmp_path / "old"), threshold=0.0, log=lambda line: None) == new
    assert {k: v for k, v in files(tmp_path / "old").items() if k.endswith(".tar")} == \
        {k: v for k, v in files(tmp_path / "new").items() if k.endswith(".tar")}

    # A resumed old run commits its next shard in the new layout, beside the old markers.
    commit(out, "00003", write_source(inputs / "00003.tar", 2, seed=5), 0.9)
    assert marker(run, "00003").is_file() and out.done_shards() == {*SHARDS, "00003"}
    assert summary(open_run(str(run)), 0.5)["samples"] == TOTAL + 2


def test_a_marker_without_its_parquet_is_an_error(tmp_path):
    """A committed shard whose Parquet is gone (deleted by hand) is an error naming it, not a silent hole."""
    _, run = make_run(tmp_path, SHARDS)
    (run / SHARD_DIR / "00001.parquet").unlink()
    with pytest.raises(RunDirError, match="00001 has a done-marker but no Parquet"):
        open_run(str(run))
