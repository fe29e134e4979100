"""Input expansion and location checks: every spelling of a shard list resolves the same; unsafe URLs are refused."""
from __future__ import annotations

import os

import pytest

from pipelines.sources import LocationError, check_location, expand_shards


@pytest.fixture
def shard_dir(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    return tmp_path


def test_spellings_resolve_to_the_same_shards(shard_dir):
    """Directory, glob, brace range, file:// URL and an explicit list name the same shards."""
    spellings = [str(shard_dir), f"{shard_dir}/*.tar", f"{shard_dir}/{{00000..00002}}.tar",
                 f"file://{shard_dir}/{{00000..00002}}.tar", " ".join(str(shard_dir / f"{i:05d}.tar") for i in range(3))]
    results = [[(s.id, s.url) for s in expand_shards(spec)] for spec in spellings]
    assert all(r == results[0] for r in results)
    assert [sid for sid, _ in results[0]] == ["00000", "00001", "00002"]


def test_colliding_stems_get_distinct_ids(tmp_path):
    """Two shards with the same file name in different folders keep distinct ids."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "00000.tar").write_bytes(b"")
    ids = [s.id for s in expand_shards(f"{tmp_path}/a/00000.tar {tmp_path}/b/00000.tar")]
    assert len(set(ids)) == 2 and all(i.startswith("00000-") for i in ids)


@pytest.mark.parametrize("location", ["pipe:cat /etc/passwd", "simplecache::s3://b/x.tar", "ssh://host/x.tar",
                                      "ftp://host/x.tar"])
def test_unsafe_locations_are_refused(location):
    """Protocol chaining, pipe: and protocols outside the allow-list are refused before any I/O."""
    with pytest.raises(LocationError):
        check_location(location)


def test_missing_local_input_is_a_clear_error(tmp_path):
    """A local shard or glob that matches nothing names what is missing."""
    with pytest.raises(LocationError, match="no such shard"):
        expand_shards(str(tmp_path / "missing.tar"))
    with pytest.raises(LocationError, match="no files match"):
        expand_shards(f"{tmp_path}/*.tar")


def test_remote_urls_pass_through():
    """An object-store URL is kept as given (its listing happens only for globs)."""
    (shard,) = expand_shards("s3://bucket/laion/00042.tar")
    assert shard.id == "00042" and shard.url == "s3://bucket/laion/00042.tar"


def test_locations_outside_the_allowed_roots_are_refused(tmp_path, monkeypatch):
    """With CAPFILT_ALLOWED_ROOTS set, inputs and outputs must lie inside a root: `..`, absolute paths elsewhere,
    symbolic links leading out and other buckets are refused before anything is read."""
    inside, outside = tmp_path / "data", tmp_path / "secret"
    inside.mkdir()
    outside.mkdir()
    (inside / "00000.tar").write_bytes(b"")
    (outside / "00001.tar").write_bytes(b"")
    (inside / "link.tar").symlink_to(outside / "00001.tar")
    monkeypatch.setenv("CAPFILT_ALLOWED_ROOTS", f"{inside}{os.pathsep}s3://corpus/laion/")

    assert [s.id for s in expand_shards(str(inside / "00000.tar"))] == ["00000"]
    check_location(str(inside / "run" / "out"))  # an output that does not exist yet
    check_location("s3://corpus/laion/00042.tar")
    for location in [str(outside / "00001.tar"), f"{inside}/../secret/00001.tar", str(inside / "link.tar"),
                     "s3://corpus/laion/../private/0.tar", "s3://corpus/laion-copy/0.tar", "gs://corpus/laion/0.tar"]:
        with pytest.raises(LocationError, match="outside the allowed roots"):
            check_location(location)
    with pytest.raises(LocationError, match="outside the allowed roots"):
        expand_shards(f"{inside}/*.tar")  # the listing holds the link: found, then refused before it is read
    monkeypatch.delenv("CAPFILT_ALLOWED_ROOTS")
    check_location(str(outside / "00001.tar"))  # unset: anywhere the protocol allows
