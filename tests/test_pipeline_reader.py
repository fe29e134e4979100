"""The shard reader and CPU decode: every sample becomes exactly one row, hostile members never crash or unpickle."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.decode import decode_samples
from tests.corpus import jpeg_bytes, sample_members, write_tar
from pipelines.reader import RawSample, ShardProblem, read_shard
from tests.hostile import image_bytes, pickle_payload

RNG = np.random.default_rng(0)


def test_samples_grouped_by_key_in_order(tmp_path):
    """Members group into samples by key, in tar order, with image, caption and metadata bytes."""
    members = {}
    for i in range(3):
        members.update(sample_members(f"k{i}", jpeg_bytes(np.zeros((8, 8, 3), np.uint8)), f"caption {i}", f"u{i}"))
    items = list(read_shard(str(write_tar(tmp_path / "a.tar", members))))
    assert [s.key for s in items] == ["k0", "k1", "k2"]
    assert set(items[0].members) == {"jpg", "txt", "json"} and items[1].members["txt"] == b"caption 1"


def test_pickle_members_are_never_read(tmp_path):
    """.pyd / .pth members are skipped unread, so a hostile pickle cannot run."""
    victim = tmp_path / "pwned"
    payload = pickle_payload(victim)
    shard = write_tar(tmp_path / "p.tar", [("k.jpg", image_bytes()), ("k.pyd", payload), ("k.pth", payload)])
    (sample,) = list(read_shard(str(shard)))
    assert set(sample.members) == {"jpg"} and not victim.exists()
    rows = decode_samples("p", [sample], [32]).rows
    assert rows[0]["status"] == "ok" and not victim.exists()


def test_duplicate_and_unsafe_keys_are_error_samples(tmp_path):
    """A key seen again later and a member path escaping the shard are flagged, not dropped."""
    shard = write_tar(tmp_path / "d.tar", [("a.jpg", image_bytes()), ("b.jpg", image_bytes()),
                                          ("a.jpg", image_bytes()), ("../evil.jpg", image_bytes())])
    items = list(read_shard(str(shard)))
    assert [(s.key, s.problem and s.problem[0]) for s in items] == [
        ("a", None), ("b", None), ("a", "duplicate_key"), ("../evil", "unsafe_member_name")]


@pytest.mark.parametrize("content, kind", [
    (b"", "unreadable_shard"),
    (b"this is not a tar archive at all" * 40, "unreadable_shard"),
])
def test_unreadable_shards(tmp_path, content, kind):
    """A zero-byte file or a non-tar is one shard problem, never an exception."""
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    items = list(read_shard(str(path)))
    assert len(items) == 1 and isinstance(items[0], ShardProblem) and items[0].error_type == kind


def test_empty_tar_has_no_samples(tmp_path):
    """An empty (but valid) tar yields nothing."""
    assert list(read_shard(str(write_tar(tmp_path / "e.tar", [])))) == []


def test_missing_shard_is_a_problem(tmp_path):
    """A shard that does not exist is reported as unreadable."""
    (item,) = list(read_shard(str(tmp_path / "nope.tar")))
    assert isinstance(item, ShardProblem) and item.error_type == "unreadable_shard"


def test_truncated_shard_keeps_samples_before_the_cut(tmp_path):
    """A shard cut mid-member keeps the complete samples, flags the cut one, then reports the truncation."""
    members = [(f"k{i}.jpg", image_bytes(size=(64, 64))) for i in range(4)]
    full = write_tar(tmp_path / "t.tar", members).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full[: int(len(full) * 0.7)])
    items = list(read_shard(str(cut)))
    samples = [i for i in items if isinstance(i, RawSample)]
    assert isinstance(items[-1], ShardProblem) and items[-1].error_type == "truncated_shard"
    assert [s.key for s in samples][:2] == ["k0", "k1"] and all(s.problem is None for s in samples[:2])
    assert samples[-1].problem is None or samples[-1].problem[0] == "truncated_shard"


def test_decode_rows_and_error_types():
    """Each sample is one row: ok with sizes and metadata, or error with a specific error_type."""
    good = jpeg_bytes(RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    samples = [
        RawSample("ok", {"jpg": good, "txt": "a caption".encode(), "json": b'{"url": "http://x/1", "sha256": "abc",'
                                                                           b' "original_width": 400}'}),
        RawSample("nocap", {"png": image_bytes("PNG")}),
        RawSample("noimage", {"txt": b"caption only"}),
        RawSample("zero", {"jpg": b""}),
        RawSample("junk", {"jpg": b"not an image"}),
        RawSample("cut", {"jpg": good[: len(good) // 2]}),
        RawSample("latin1", {"jpg": good, "txt": "caf\xe9".encode("latin-1")}),
        RawSample("dup", {"jpg": good}, problem=("duplicate_key", "again")),
    ]
    batch = decode_samples("s", samples, [16, 24])
    rows = {r["key"]: r for r in batch.rows}
    assert len(batch.rows) == len(samples)
    assert rows["ok"]["status"] == "ok" and (rows["ok"]["width"], rows["ok"]["height"]) == (40, 30)
    assert rows["ok"]["url"] == "http://x/1" and rows["ok"]["sha256"] == "abc" and rows["ok"]["original_width"] == 400
    assert rows["nocap"]["status"] == "ok" and rows["nocap"]["web_caption"] is None
    assert {k: rows[k]["error_type"] for k in ("noimage", "zero", "junk", "cut", "dup")} == {
        "noimage": "missing_image", "zero": "empty_image", "junk": "not_an_image", "cut": "truncated_image",
        "dup": "duplicate_key"}
    assert rows["latin1"]["web_caption"] == "caf\ufffd" and rows["latin1"]["web_caption_invalid_utf8"] is True
    assert batch.ok == [0, 1, 6] and batch.captions == ["a caption", None, "caf\ufffd"]
    assert batch.images[16].shape == (3, 16, 16, 3) and batch.images[24].dtype == np.uint8


def test_decompression_bomb_is_refused_before_decoding():
    """An image whose header declares more pixels than the limit is an error row, not a memory spike."""
    batch = decode_samples("s", [RawSample("bomb", {"png": image_bytes("PNG", size=(100, 100))})], [8],
                           max_pixels=100 * 99)
    assert batch.rows[0]["error_type"] == "decompression_bomb" and batch.ok == []


def test_shard_cut_between_members_is_detected(tmp_path):
    """A shard cut exactly at a member boundary (no end-of-archive block) is still reported as truncated."""
    members = [(f"k{i}.jpg", b"x" * 512) for i in range(4)]  # 512-byte data: every member ends on a block
    full = write_tar(tmp_path / "t.tar", members).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full[: 2 * 1024])  # header + data of k0 and k1, nothing after
    items = list(read_shard(str(cut)))
    assert isinstance(items[-1], ShardProblem) and items[-1].error_type == "truncated_shard"
    assert [i.key for i in items[:-1]] == ["k0", "k1"]
