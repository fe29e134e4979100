"""Object storage end to end (issue 29), against a real S3 endpoint on 127.0.0.1 (moto's server, tests/s3server.py):
the job in one process (`run_local`, no Ray) reads its shards from s3:// and writes its run there; a re-run changes
nothing, an interrupted run resumes without duplicates; the curator's summary, keep, export and report work on the
run in the bucket; the done-marker is the commit there too; CAPFILT_ALLOWED_ROOTS takes bucket prefixes.

The bucket is versioned, so "changes nothing" is exact: any write, even of the same bytes, is a new version."""
from __future__ import annotations

import io
import json
import re
import tarfile
from contextlib import ExitStack
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.curate import main as curate
from models.sampling_config import Sampling
from pipelines.config import CapFiltConfig
from pipelines.local_runner import run_local
from pipelines.reader import read_shard
from pipelines.select import committed_files, keep_list, open_run, summary
from pipelines.sources import LocationError, check_location, expand_shards
from pipelines.writer import RunDir
from schemas.capfilt import EXPORT_MANIFEST
from tests.corpus import build_demo_shards
from tests.s3server import UNSET, S3ServerUnavailable, moto_server, s3_environment

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")

BUCKET = "bucket"
SHARDS, PER_SHARD = 3, 4
INPUT = f"s3://{BUCKET}/in/*.tar"
RUN = f"s3://{BUCKET}/out/run1"


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server for this session, with the environment pointing s3fs and botocore at it (dummy credentials,
    no AWS configuration file of the machine's); s3fs's instance cache emptied before and after, so no instance
    made for another endpoint is reused, nor one of these kept."""
    with ExitStack() as stack:
        try:
            endpoint = stack.enter_context(moto_server())
        except S3ServerUnavailable as exc:
            pytest.skip(f"no S3 server for the object-storage tests: {exc}")
        environment = stack.enter_context(pytest.MonkeyPatch.context())
        for name in UNSET:
            environment.delenv(name, raising=False)
        for name, value in s3_environment(endpoint).items():
            environment.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        stack.callback(s3fs.S3FileSystem.clear_instance_cache)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield endpoint


@pytest.fixture(scope="module")
def local_inputs(tmp_path_factory) -> Path:
    """The demo corpus (real photographs, a truncated JPEG and a sample without an image) on local disk."""
    directory = tmp_path_factory.mktemp("shards")
    build_demo_shards(directory, shards=SHARDS, per_shard=PER_SHARD)
    return directory


@pytest.fixture(scope="module")
def inputs(s3_endpoint, local_inputs) -> list[str]:
    """The same shards uploaded to s3://bucket/in/; their URLs."""
    fs = s3fs.S3FileSystem()
    for path in sorted(local_inputs.glob("*.tar")):
        fs.put_file(str(path), f"{BUCKET}/in/{path.name}")
    return [f"s3://{BUCKET}/in/{path.name}" for path in sorted(local_inputs.glob("*.tar"))]


@pytest.fixture(scope="module")
def run1(inputs) -> dict:
    """The job run once over s3://bucket/in/*.tar into s3://bucket/out/run1; its summary."""
    return run_local(config(RUN), log=None)


def config(output: str, input: str = INPUT) -> CapFiltConfig:
    return CapFiltConfig(input=input, output=output, batch_size=3, model_threads=1, sampling=Sampling(num_captions=2))


def versions(prefix: str) -> list[tuple[str, str]]:
    """(key, version id) of every version and delete marker under `prefix`: any write or delete adds one."""
    pages = boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted((v["Key"], v["VersionId"]) for page in pages
                  for v in page.get("Versions", []) + page.get("DeleteMarkers", []))


def names(found: list[tuple[str, str]], prefix: str) -> list[str]:
    """The distinct object names under `prefix` of a `versions` listing."""
    return sorted({key[len(prefix):] for key, _ in found})


def rows(run: str) -> list[tuple]:
    """(shard, key, status, error_type, web_itm, synthetic texts) of every row of the run, in (shard, key) order."""
    return open_run(run).execute("""SELECT shard, key, status, error_type, web_itm,
                                           list_transform(synthetic, lambda s: s.text)
                                    FROM samples ORDER BY shard, key""").fetchall()


# ------------------------------------------------------------------------------------------------------- tests
def test_a_run_reads_its_shards_from_s3_and_commits_every_sample_once_there(run1, inputs, local_inputs, tmp_path):
    """Every sample of the input tars in the bucket is one row, once; the Parquet is byte for byte what the same
    run over the same tars on local disk writes; each marker records its s3:// input and that input's fingerprint."""
    assert (run1["shards"], run1["committed"], run1["samples"]) == (SHARDS, SHARDS, SHARDS * PER_SHARD)
    got = rows(RUN)
    assert len(got) == len({(shard, key) for shard, key, *_ in got}) == SHARDS * PER_SHARD
    in_tars = sorted((url.rsplit("/", 1)[1][:-len(".tar")], s.key) for url in inputs for s in read_shard(url))
    assert [(shard, key) for shard, key, *_ in got] == in_tars
    assert {(status, error) for _, _, status, error, *_ in got} == {("ok", None), ("error", "truncated_image"),
                                                                    ("error", "missing_image")}

    run_local(config(str(tmp_path / "local"), input=str(local_inputs)), log=None)
    on_s3, on_disk = RunDir(RUN), RunDir(str(tmp_path / "local"))
    for shard_id in sorted(on_disk.done_shards()):
        assert on_s3.fs.cat_file(on_s3.parquet_path(shard_id)) == Path(on_disk.parquet_path(shard_id)).read_bytes()
    markers = on_s3.markers()
    assert [m["url"] for m in markers.values()] == inputs
    assert all(m["fingerprint"]["size"] > 0 and m["fingerprint"]["sha256_ends"] for m in markers.values())


def test_a_folder_of_shards_on_s3_is_listed_like_a_local_one(inputs):
    """s3://bucket/in/ (with or without its slash), its glob and its brace range name the same shards, as a local
    folder does: a folder is never taken for one shard."""
    spellings = [f"s3://{BUCKET}/in/", f"s3://{BUCKET}/in", INPUT, f"s3://{BUCKET}/in/{{00000..00002}}.tar"]
    results = [[(s.id, s.url) for s in expand_shards(spec)] for spec in spellings]
    assert all(r == results[0] for r in results)
    assert results[0] == [(f"{i:05d}", url) for i, url in enumerate(inputs)]
    s3fs.S3FileSystem().pipe_file(f"{BUCKET}/notes/readme.txt", b"no shards here")
    with pytest.raises(LocationError, match="holds no .tar shards"):
        expand_shards(f"s3://{BUCKET}/notes/")
    with pytest.raises(LocationError, match="no such folder"):
        expand_shards(f"s3://{BUCKET}/nowhere/")


def test_a_second_identical_run_does_nothing_and_changes_nothing(run1):
    """Every shard is already done: no shard is read again, and no object of the run is written or deleted."""
    before = versions("out/run1/")
    events = []
    again = run_local(config(RUN), log=None, on_event=events.append)
    assert events[0]["already"] == SHARDS and again["samples"] == 0
    assert versions("out/run1/") == before


class Interrupted(Exception):
    """Raised from the progress callback: the run stops where a crash after a commit would stop it."""


def stop_after_first_commit(event: dict) -> None:
    if event["event"] == "shard":
        raise Interrupted(event["shard"])


def test_a_run_interrupted_after_one_commit_completes_without_duplicates(run1):
    """The first shard is committed, then the run stops; the same run again does the other shards only, leaves the
    committed one's objects as they were (one version each), and ends with the rows of the uninterrupted run."""
    out = f"s3://{BUCKET}/out/interrupted"
    with pytest.raises(Interrupted) as stopped:
        run_local(config(out), log=None, on_event=stop_after_first_commit)
    first = str(stopped.value)
    assert RunDir(out).done_shards() == {first}
    committed = versions("out/interrupted/shards/")
    events = []
    run_local(config(out), log=None, on_event=events.append)
    assert events[0]["already"] == 1 and [e["shard"] for e in events if e["event"] == "shard"] == ["00001", "00002"]
    after = versions("out/interrupted/shards/")
    assert set(committed) <= set(after)
    assert names(after, "out/interrupted/shards/") == names(versions("out/run1/shards/"), "out/run1/shards/")
    assert len(after) == len(names(after, "out/interrupted/shards/")), "an object of the run was written twice"
    assert rows(out) == rows(RUN)


def test_curate_summary_and_keep_on_s3(run1, tmp_path, capsys):
    """summary reads the run in the bucket; keep writes the same table to a local file and to an s3:// file."""
    assert curate(["summary", RUN]) == 0
    assert f"DuckDB over {RUN}: {SHARDS * PER_SHARD} samples in {SHARDS} shards" in capsys.readouterr().out
    local, remote = tmp_path / "keep.parquet", f"s3://{BUCKET}/keep/keep.parquet"
    assert curate(["keep", RUN, "--threshold", "0", "--to", str(local)]) == 0
    assert curate(["keep", RUN, "--threshold", "0", "--to", remote]) == 0
    table = pq.read_table(local)
    fs = s3fs.S3FileSystem()
    assert pq.read_table(io.BytesIO(fs.cat_file(remote))).equals(table)
    assert table.equals(keep_list(open_run(RUN), 0.0))
    assert table.num_rows > 0


def exported(prefix: str) -> tuple[dict, dict[str, bytes]]:
    """The export's manifest and every file under `prefix` (relative name -> bytes)."""
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    root = f"{BUCKET}/{prefix}"
    found = {path[len(root):]: fs.cat_file(path) for path in fs.find(root)}
    return json.loads(found[EXPORT_MANIFEST]), found


def test_export_to_s3_writes_the_files_its_manifest_lists_and_replaces_them_whole(run1, capsys):
    """export --to s3://bucket/export/: the tars read back with tarfile, each sample its image, KEY.txt and KEY.json;
    export.json lists exactly the files there. A second export into the same prefix leaves only its own files."""
    assert curate(["export", RUN, "--to", f"s3://{BUCKET}/export/", "--threshold", "0"]) == 0
    manifest, found = exported("export/")
    assert manifest["state"] == "complete" and sorted(manifest["files"]) == sorted(set(found) - {EXPORT_MANIFEST})
    kept = {(r["shard"], r["key"]) for r in keep_list(open_run(RUN), 0.0).to_pylist()}
    samples = set()
    for name in (n for n in found if n.endswith(".tar")):
        with tarfile.open(fileobj=io.BytesIO(found[name])) as tar:
            members = tar.getnames()
        keys = {m.split(".", 1)[0] for m in members}
        assert len(members) == 3 * len(keys)
        samples |= {(name[:-len(".tar")], key) for key in keys}
    assert samples == kept and manifest["samples"] == len(kept)

    assert curate(["export", RUN, "--to", f"s3://{BUCKET}/export/", "--threshold", "0",
                   "--samples-per-shard", "100"]) == 0
    manifest, found = exported("export/")
    assert sorted(found) == ["00000.parquet", "00000.tar", "00000_stats.json", EXPORT_MANIFEST]
    assert manifest["state"] == "complete" and manifest["files"] == ["00000.parquet", "00000.tar", "00000_stats.json"]

    assert curate(["export", RUN, "--to", f"s3://{BUCKET}/in/"]) == 2
    assert "an input shard of the run" in capsys.readouterr().err


def test_report_to_s3_has_thumbnails_read_from_the_tars_in_the_bucket(run1, capsys):
    to = f"s3://{BUCKET}/report.html"
    assert curate(["report", RUN, "--to", to]) == 0
    said = capsys.readouterr().out
    sampled, thumbnails = (int(re.search(pattern, said)[1]) for pattern in (r"(\d+) sampled images",
                                                                            r"\((\d+) thumbnails\)"))
    assert thumbnails == sampled > 0  # every ok image the page shows, its thumbnail from its tar in the bucket
    page = s3fs.S3FileSystem().cat_file(to).decode()
    assert page.count('<img class="thumb" src="data:image/jpeg;base64,') >= thumbnails
    assert "no thumbnail" not in page


def test_a_parquet_without_its_marker_on_s3_is_outside_the_run_and_redone(run1):
    """The crash window between a shard's upload and its marker's: open_run, summary and committed_files leave the
    shard out; the same run again redoes that shard, and only it."""
    out, prefix = f"s3://{BUCKET}/out/crashed", "out/crashed/"
    fs = s3fs.S3FileSystem()
    fs.copy(f"{BUCKET}/out/run1", f"{BUCKET}/out/crashed", recursive=True)
    fs.rm(f"{BUCKET}/out/crashed/shards/_done/00001.json")
    assert fs.exists(f"{BUCKET}/out/crashed/shards/00001.parquet")
    assert [f.rsplit("/", 1)[1] for f in committed_files(out)] == ["00000.parquet", "00002.parquet"]
    counts = summary(open_run(out))
    assert (counts["shards"], counts["samples"]) == (SHARDS - 1, (SHARDS - 1) * PER_SHARD)
    assert "00001" not in {r["shard"] for r in keep_list(open_run(out), 0.0).to_pylist()}

    before = versions(prefix)
    run_local(config(out), log=None)
    added = sorted(key for key, _ in set(versions(prefix)) - set(before))
    assert added == ["out/crashed/shards/00001.parquet", "out/crashed/shards/_done/00001.json"]
    assert rows(out) == rows(RUN)


def test_a_commit_by_another_process_is_seen_at_once(run1):
    """The run's state is listed afresh each time: a marker another process wrote (another s3fs instance here)
    since this process last looked is counted, not hidden by a cached listing."""
    out = f"s3://{BUCKET}/out/elsewhere"
    other = s3fs.S3FileSystem(skip_instance_cache=True)
    other.copy(f"{BUCKET}/out/run1", f"{BUCKET}/out/elsewhere", recursive=True)
    other.rm(f"{BUCKET}/out/elsewhere/shards/_done/00002.json")
    assert RunDir(out).done_shards() == {"00000", "00001"}
    other.copy(f"{BUCKET}/out/run1/shards/_done/00002.json", f"{BUCKET}/out/elsewhere/shards/_done/00002.json")
    assert RunDir(out).done_shards() == {"00000", "00001", "00002"}
    assert summary(open_run(out))["shards"] == SHARDS


def test_allowed_roots_take_bucket_prefixes(inputs, monkeypatch, capsys):
    """CAPFILT_ALLOWED_ROOTS=s3://bucket/allowed/: a location under the prefix is admitted; another prefix of the
    bucket, a `..` out of it, and a run or --to outside it are refused with one line."""
    monkeypatch.setenv("CAPFILT_ALLOWED_ROOTS", f"s3://{BUCKET}/allowed/")
    fs = s3fs.S3FileSystem()
    fs.copy(inputs[0].removeprefix("s3://"), f"{BUCKET}/allowed/x.tar")
    assert check_location(f"s3://{BUCKET}/allowed/x.tar") == "s3"
    assert [s.url for s in expand_shards(f"s3://{BUCKET}/allowed/*.tar")] == [f"s3://{BUCKET}/allowed/x.tar"]
    for location in (f"s3://{BUCKET}/other/x.tar", f"s3://{BUCKET}/allowed/../other/x.tar",
                     f"s3://{BUCKET}/allowed-copy/x.tar", f"s3://{BUCKET}-2/allowed/x.tar"):
        with pytest.raises(LocationError, match="outside the allowed roots") as refused:
            check_location(location)
        assert "\n" not in str(refused.value)
    with pytest.raises(LocationError, match="outside the allowed roots"):
        config(f"s3://{BUCKET}/out/x", input=f"s3://{BUCKET}/allowed/x.tar").check()
    capsys.readouterr()
    for argv in (["summary", RUN], ["keep", f"s3://{BUCKET}/allowed/run", "--to", f"s3://{BUCKET}/other/k.parquet"],
                 ["report", f"s3://{BUCKET}/allowed/run", "--to", f"s3://{BUCKET}/other/r.html"]):
        assert curate(argv) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ") and "outside the allowed roots" in errors[0]
