"""The adversarial corpus: one real job over shards mixing good samples with every kind of bad or awkward one we
know of, plus broken shards. Each sample is one row with the expected outcome; nothing crashes, nothing is lost,
no pickle runs. A reader polling the output glob during a job only ever sees complete files."""
from __future__ import annotations

import json
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from models.images import DEFAULT_MAX_PIXELS
from tests.corpus import build_demo_shards, sample_members, write_tar
from tests.hostile import encode, image_bytes, pickle_payload, png_header_only

ray = pytest.importorskip("ray")

OK, ERROR = "ok", "error"
NUM_CAPTIONS = 2
MB = 1_000_000


@pytest.fixture(scope="module")
def cluster():
    from pipelines.ray_runner import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def run_job(inputs, out: Path, *extra: str) -> int:
    """jobs/capfilt.py's entry point, in this process (its embedded Ray is the module's)."""
    from jobs.capfilt import main

    return main(["--input", str(inputs), "--output", str(out), "--batch-size", "4", "--model-threads", "1",
                 "--precision", "fp32", "--num-captions", str(NUM_CAPTIONS), *extra])


def cut(data: bytes, at: float = 0.5) -> bytes:
    return data[: int(len(data) * at)]


def overwrite(data: bytes, at: int, junk: bytes) -> bytes:
    return data[:at] + junk + data[at + len(junk):]


def bomb_png(width: int, height: int) -> bytes:
    """A real, decodable 1-bit PNG of width x height pixels: a few kB on disk, width * height bytes decoded."""
    return encode(Image.new("1", (width, height)), "PNG")


def images() -> dict[str, bytes]:
    """One image per kind, by sample key; the expected outcome of each is in EXPECTED."""
    jpeg, png, webp = (image_bytes(fmt, (64, 48), seed=3) for fmt in ("JPEG", "PNG", "WEBP"))
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    return {
        "good-jpeg": image_bytes("JPEG", seed=1), "good-png": image_bytes("PNG", seed=2),
        "truncated-jpeg": cut(jpeg), "truncated-png": cut(png), "truncated-webp": cut(webp),
        "corrupt-jpeg": overwrite(jpeg, len(jpeg) // 2, b"\xff" * 16),  # junk inside the entropy-coded data
        "corrupt-png": overwrite(png, len(png) // 2, b"\xff" * 16),  # junk inside the zlib stream
        "corrupt-webp": overwrite(webp, 20, bytes(20)),  # VP8 frame header zeroed
        "corrupt-png-header": overwrite(png, 29, bytes(4)),  # IHDR's CRC zeroed: Pillow cannot identify the file
        "zero-byte": b"",
        "not-an-image": np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        # Pillow's MAX_IMAGE_PIXELS only warns between 1x and 2x its value; capfilt refuses both, from the header.
        "bomb-1_1x": bomb_png(10_000, 10_000),
        "bomb-4_5x": png_header_only(20_000, 20_000),
        "cmyk": encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        "palette-transparent": encode(palette, "PNG", transparency=0),
        "gray-16bit": encode(Image.fromarray(np.array([[0, 256], [32768, 65535]], dtype=np.uint16)), "PNG"),
        "animated-gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "one-pixel": encode(Image.new("L", (1, 1), 7), "PNG"),
        "tall-1x2000": encode(Image.new("RGB", (1, 2000), (0, 128, 255)), "PNG"),
        "png-named-jpg": image_bytes("PNG", seed=4),
    }


# (shard, key) -> (status, error_type), one entry per row the job must write; key None is a shard-level row.
# Keys appearing twice in a shard are listed twice.
EXPECTED: list[tuple[str, str | None, str, str | None]] = [
    # images: undecodable ones are errors of a specific type
    ("images", "good-jpeg", OK, None),
    ("images", "good-png", OK, None),
    ("images", "truncated-jpeg", ERROR, "truncated_image"),
    ("images", "truncated-png", ERROR, "truncated_image"),
    ("images", "truncated-webp", ERROR, "truncated_image"),  # shorter than its RIFF header says
    ("images", "corrupt-jpeg", ERROR, "corrupt_image"),
    ("images", "corrupt-png", ERROR, "corrupt_image"),
    ("images", "corrupt-webp", ERROR, "corrupt_image"),
    ("images", "corrupt-png-header", ERROR, "corrupt_image"),  # the PNG signature is there: not `not_an_image`
    ("images", "zero-byte", ERROR, "empty_image"),
    ("images", "not-an-image", ERROR, "not_an_image"),
    ("images", "bomb-1_1x", ERROR, "decompression_bomb"),
    ("images", "bomb-4_5x", ERROR, "decompression_bomb"),
    # unusual but valid images are ok rows
    ("unusual", "cmyk", OK, None),
    ("unusual", "palette-transparent", OK, None),
    ("unusual", "gray-16bit", OK, None),
    ("unusual", "animated-gif", OK, None),
    ("unusual", "one-pixel", OK, None),
    ("unusual", "tall-1x2000", OK, None),
    ("unusual", "png-named-jpg", OK, None),
    ("unusual", "upper-case-ext", OK, None),
    # captions and tar structure
    ("structure", "caption-latin1", OK, None),
    ("structure", "caption-1mb", OK, None),  # 1 MB: under the 1 MiB text limit, scored (tokens truncated)
    ("structure", "caption-2mb", ERROR, "oversized_text"),  # above it: never read
    ("structure", "no-caption", OK, None),
    ("structure", "json-caption-only", OK, None),
    ("structure", "no-image", ERROR, "missing_image"),
    ("structure", "dup", OK, None),
    ("structure", "between", OK, None),
    ("structure", "dup", ERROR, "duplicate_key"),
    ("structure", "../escape", ERROR, "unsafe_member_name"),
    ("structure", "a/../../up", ERROR, "unsafe_member_name"),
    ("structure", "/abs/path", ERROR, "unsafe_member_name"),
    ("structure", "pickled", OK, None),  # its .pyd / .pth members are never read
    ("structure", "pickle-only", ERROR, "missing_image"),
    ("structure", "symlink", ERROR, "missing_image"),  # a link member is not a file: skipped, as webdataset does
    # a shard cut inside the last sample's image: the samples before the cut are kept
    ("cut", "k0", OK, None),
    ("cut", "k1", OK, None),
    ("cut", "k2", OK, None),
    ("cut", "k3", ERROR, "truncated_shard"),
    ("cut", None, ERROR, "truncated_shard"),
    # broken shards: one shard-level row each; an empty tar has no sample, so no row
    ("zero-byte", None, ERROR, "unreadable_shard"),
    ("not-a-tar", None, ERROR, "unreadable_shard"),
]
SAMPLE_ROWS = sum(key is not None for _, key, _, _ in EXPECTED)  # the samples written into the corpus
SHARD_ROWS = sum(key is None for _, key, _, _ in EXPECTED)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A directory of the corpus's shards, and the sentinel file a loaded pickle would create."""
    root = tmp_path_factory.mktemp("corpus")
    shards, sentinel = root / "shards", root / "pickle-ran"
    image = images()
    for name, kinds in [("images", [("good-jpeg", "jpg"), ("good-png", "png"), ("truncated-jpeg", "jpg"),
                                    ("truncated-png", "png"), ("truncated-webp", "webp"), ("corrupt-jpeg", "jpg"),
                                    ("corrupt-png", "png"), ("corrupt-webp", "webp"), ("corrupt-png-header", "png"),
                                    ("zero-byte", "jpg"), ("not-an-image", "jpg"), ("bomb-1_1x", "png"),
                                    ("bomb-4_5x", "png")]),
                        ("unusual", [("cmyk", "jpg"), ("palette-transparent", "png"), ("gray-16bit", "png"),
                                     ("animated-gif", "gif"), ("one-pixel", "png"), ("tall-1x2000", "png"),
                                     ("png-named-jpg", "jpg")])]:
        members = []
        for key, extension in kinds:
            members += sample_members(key, image[key], f"caption of {key}", f"https://x/{key}", extension).items()
        if name == "unusual":
            members += [("upper-case-ext.JPG", image["good-jpeg"]), ("upper-case-ext.TXT", b"upper case")]
        write_tar(shards / f"{name}.tar", members)

    good, payload = image["good-jpeg"], pickle_payload(sentinel)
    members = [
        *sample_members("caption-latin1", good, "caf\xe9 cr\xe8me".encode("latin-1"), "https://x/1").items(),
        ("caption-1mb.jpg", good), ("caption-1mb.txt", b"a cat " * (MB // 6)),
        ("caption-2mb.jpg", good), ("caption-2mb.txt", b"a cat " * (2 * MB // 6)),
        *sample_members("no-caption", good, None, "https://x/2").items(),
        ("json-caption-only.jpg", good), ("json-caption-only.json", json.dumps({"caption": "from json"}).encode()),
        *sample_members("no-image", None, "a caption without its image", "https://x/3").items(),
        ("dup.jpg", good), ("dup.txt", b"first"), ("between.jpg", good), ("dup.jpg", good), ("dup.txt", b"second"),
        ("../escape.jpg", good), ("a/../../up.jpg", good), ("/abs/path.jpg", good),
        ("pickled.jpg", good), ("pickled.pyd", payload), ("pickled.pth", payload),
        ("pickle-only.pyd", payload), ("pickle-only.pth", payload),
        ("symlink.txt", b"the image is a link"),
    ]
    path = write_tar(shards / "structure.tar", members)
    with tarfile.open(path, "a") as tar:
        link = tarfile.TarInfo("symlink.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    members = []
    for i in range(4):
        members += sample_members(f"k{i}", image_bytes("JPEG", (64, 64), seed=10 + i), f"caption {i}", f"u/{i}").items()
    full = write_tar(root / "full.tar", members)
    with tarfile.open(full) as tar:
        last = tar.getmember("k3.jpg")
    (shards / "cut.tar").write_bytes(full.read_bytes()[: last.offset_data + last.size // 2])

    (shards / "zero-byte.tar").write_bytes(b"")
    write_tar(shards / "empty.tar", [])
    (shards / "not-a-tar.tar").write_bytes(b"this is not a tar archive, only text. " * 100)
    return shards, sentinel


def rows_of(out: Path) -> list[dict]:
    glob = str(out / "shards" / "*.parquet")
    return duckdb.sql("SELECT * FROM read_parquet($glob)", params={"glob": glob}).to_arrow_table().to_pylist()


def test_adversarial_corpus(cluster, corpus, tmp_path):
    """One job over the whole corpus exits 0; each sample is one row with its expected status and error type;
    the cut shard keeps what precedes the cut and is marked partial; no pickle ran."""
    shards, sentinel = corpus
    out = tmp_path / "out"
    assert run_job(shards, out) == 0

    rows = rows_of(out)
    got = Counter((r["shard"], r["key"], r["status"], r["error_type"]) for r in rows)
    assert got == Counter(EXPECTED)
    assert (SAMPLE_ROWS, SHARD_ROWS) == (40, 3) and len(rows) == SAMPLE_ROWS + SHARD_ROWS
    assert not sentinel.exists(), "a pickle member was loaded"

    by_key = {(r["shard"], r["key"]): r for r in rows if r["error_type"] != "duplicate_key"}
    for row in rows:
        if row["status"] == OK:
            assert len(row["synthetic"]) == NUM_CAPTIONS, row["key"]
            assert abs(np.linalg.norm(row["image_embedding"]) - 1.0) < 1e-4, row["key"]
        else:
            assert row["error_message"] and row["synthetic"] is None and row["image_embedding"] is None, row["key"]
    sizes = {key: (by_key[("unusual", key)]["width"], by_key[("unusual", key)]["height"])
             for key in ("gray-16bit", "one-pixel", "tall-1x2000")}
    assert sizes == {"gray-16bit": (2, 2), "one-pixel": (1, 1), "tall-1x2000": (1, 2000)}
    latin1 = by_key[("structure", "caption-latin1")]
    assert latin1["web_caption_invalid_utf8"] is True and latin1["web_itm"] is not None
    assert len(by_key[("structure", "caption-1mb")]["web_caption"]) >= 0.99 * MB
    assert by_key[("structure", "no-caption")]["web_itm"] is None
    assert by_key[("structure", "json-caption-only")]["web_caption"] == "from json"
    assert by_key[("structure", "no-image")]["url"] == "https://x/3"  # metadata kept on error rows
    assert str(DEFAULT_MAX_PIXELS) in by_key[("images", "bomb-1_1x")]["error_message"]

    markers = {p.stem: json.loads(p.read_text()) for p in (out / "shards" / "_done").glob("*.json")}
    assert set(markers) == {"images", "unusual", "structure", "cut", "zero-byte", "empty", "not-a-tar"}
    assert {name for name, m in markers.items() if m["partial"]} == {"cut", "zero-byte", "not-a-tar"}
    assert markers["cut"]["samples"] == 4 and markers["cut"]["ok"] == 3
    assert markers["empty"]["samples"] == 0 and sum(m["samples"] for m in markers.values()) == SAMPLE_ROWS


def test_polling_reader_never_sees_a_partial_file(cluster, tmp_path):
    """While a job commits shards, a thread queries `OUT/**/*.parquet` with DuckDB over and over: no query fails,
    every file it sees holds its whole shard, counts only grow, and the last count is every input sample."""
    shards, per_shard = 8, 6
    inputs = tmp_path / "shards"
    build_demo_shards(inputs, shards=shards, per_shard=per_shard)
    out = tmp_path / "out"
    glob = str(out / "**" / "*.parquet")
    seen: list[int] = []
    problems: list[str] = []
    done = threading.Event()

    def poll():
        con = duckdb.connect()
        while not done.is_set():
            if not list(out.glob("shards/*.parquet")):  # before the first commit the glob matches nothing
                time.sleep(0.01)
                continue
            try:
                files = con.execute("SELECT filename, count(*) FROM read_parquet(?, filename = true) GROUP BY 1",
                                    [glob]).fetchall()
            except duckdb.Error as exc:
                problems.append(f"query failed: {exc}")
            else:
                problems.extend(f"{name} holds {n} rows" for name, n in files if n != per_shard)
                seen.append(sum(n for _, n in files))
            time.sleep(0.02)
        con.close()

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        assert run_job(inputs, out) == 0
    finally:
        done.set()
        poller.join()
    final = duckdb.execute("SELECT count(*) FROM read_parquet(?)", [glob]).fetchall()[0][0]
    assert problems == []
    assert final == shards * per_shard
    assert seen == sorted(seen) and len(set(seen)) >= 3, f"the poller did not watch the job commit: {set(seen)}"
