"""Integration: a real img2dataset download from a local HTTP server, then capfilt on the shards it wrote."""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.corpus import jpeg_bytes, photo

# ---------------------------------------------------------------------------------------------------- helpers
REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "capfilt.py"
IMAGE_SIZE = 64

# file name -> (photograph, format, caption the url list gives it)
SERVED = {
    "astronaut.jpg": ("astronaut", "JPEG", "an astronaut in a white suit in front of a flag"),
    "coffee.png": ("coffee", "PNG", "un café ☕ on a saucer"),
    "chelsea.jpg": ("chelsea", "JPEG", "a tabby cat looking to the side"),
    "camera.png": ("camera", "PNG", "a man with a camera on a tripod"),  # grayscale
    "rocket.jpg": ("rocket", "JPEG", "click here"),
}
FAILING = {
    "missing.jpg": "a picture that is not on the server",  # 404
    "notes.jpg": "a text file with an image name",  # served, but not an image
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def encode(name: str, fmt: str) -> bytes:
    if fmt == "JPEG":
        return jpeg_bytes(photo(name))
    buffer = io.BytesIO()
    Image.fromarray(photo(name)).save(buffer, format=fmt)
    return buffer.getvalue()


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} of a webdataset tar."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, _, extension = member.name.partition(".")
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


@pytest.fixture
def http_server(tmp_path, request):
    """A `python -m http.server` on 127.0.0.1 serving real photographs and one non-image; yields (dir, base url)."""
    www = tmp_path / "www"
    www.mkdir()
    for filename, (name, fmt, _) in SERVED.items():
        (www / filename).write_bytes(encode(name, fmt))
    (www / "notes.jpg").write_bytes(b"these are notes, not pixels\n" * 20)
    for _ in range(5):  # another process may take the port between free_port() and bind
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(www),
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop(proc=proc):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        request.addfinalizer(stop)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return www, f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)
    pytest.fail("could not start the local HTTP server")


# ------------------------------------------------------------------------------------------------------ tests
def test_capfilt_reads_a_real_img2dataset_download(http_server, tmp_path):
    """Every image img2dataset downloaded gets exactly one ok row carrying its url, sha256 and caption."""
    www, base = http_server
    captions = {f"{base}/{f}": caption for f, (_, _, caption) in SERVED.items()}
    captions.update({f"{base}/{f}": caption for f, caption in FAILING.items()})
    url_list = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": list(captions), "caption": list(captions.values())}), url_list)

    shards = tmp_path / "i2d"
    options = dict(url_list=str(url_list), input_format="parquet", url_col="url", caption_col="caption",
                   output_format="webdataset", output_folder=str(shards), image_size=IMAGE_SIZE, processes_count=1,
                   thread_count=2, timeout=10, retries=0)
    script = "import json, sys\nfrom img2dataset import download\ndownload(**json.loads(sys.argv[1]))\n"
    download = subprocess.run([sys.executable, "-c", script, json.dumps(options)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=180,
                              env=clean_env(NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled"))
    assert download.returncode == 0, download.stderr[-3000:]

    # What img2dataset says it did: all urls in its parquet, the served photographs as successes.
    tars = sorted(shards.glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar"]
    assert (shards / "00000_stats.json").exists()
    listing = pq.read_table(shards / "00000.parquet").to_pylist()
    assert sorted(r["url"] for r in listing) == sorted(captions)
    status = {r["url"]: r["status"] for r in listing}
    assert {u for u, s in status.items() if s == "success"} == {f"{base}/{f}" for f in SERVED}
    assert "404" in next(r["error_message"] for r in listing if r["url"].endswith("/missing.jpg"))
    samples = tar_samples(tars[0])
    successes = {r["key"]: r for r in listing if r["status"] == "success"}
    assert set(samples) == set(successes)  # failed downloads have no tar members
    for key, members in samples.items():
        assert {"jpg", "txt", "json"} <= set(members), key

    out = tmp_path / "capfilt"
    job = subprocess.run([sys.executable, str(JOB), "--input", str(shards), "--output", str(out)], cwd=REPO,
                         env=clean_env(), capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert (out / "run.json").exists() and (out / "shards" / "_done" / "00000.json").exists()

    con = duckdb.connect()
    result = con.execute("SELECT * FROM read_parquet(?)", [str(out / "shards" / "*.parquet")])
    columns = [d[0] for d in result.description]
    rows = [dict(zip(columns, values)) for values in result.fetchall()]
    con.close()
    assert sorted(r["key"] for r in rows) == sorted(samples)  # one row per sample, none lost or duplicated
    for row in rows:
        meta = json.loads(samples[row["key"]]["json"])
        filename = meta["url"].rsplit("/", 1)[1]
        name = SERVED[filename][0]
        assert row["shard"] == "00000"
        assert row["status"] == "ok" and row["error_type"] is None, row["error_message"]
        assert row["url"] == meta["url"] == successes[row["key"]]["url"]
        assert row["sha256"] == meta["sha256"] == hashlib.sha256((www / filename).read_bytes()).hexdigest()
        assert row["web_caption"] == SERVED[filename][2] == captions[row["url"]]
        assert row["web_caption_invalid_utf8"] is False
        assert 0.0 <= row["web_itm"] <= 1.0 and -1.0 <= row["web_itc"] <= 1.0
        assert (row["width"], row["height"]) == (IMAGE_SIZE, IMAGE_SIZE) and row["image_format"] == "jpg"
        original = photo(name).shape
        assert (row["original_height"], row["original_width"]) == original[:2]
        assert json.loads(row["metadata"]) == meta
        assert len(row["synthetic"]) == 1
        synthetic = row["synthetic"][0]
        assert isinstance(synthetic["text"], str) and synthetic["text"].strip()
        assert 0.0 <= synthetic["itm"] <= 1.0 and -1.0 <= synthetic["itc"] <= 1.0
        assert row["image_embedding"] is not None
