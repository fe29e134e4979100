"""The process decoding a shard dies mid-shard (os._exit inside the image decoder, as a native crash or an OOM kill
would): once, or on every attempt at one poison image. The job finishes and every sample of the shard is one row,
retried or reported, never silently dropped and never retried forever."""
from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipelines.batches import sample_error_row, shard_batches
from pipelines.config import CapFiltConfig
from tests.corpus import jpeg_bytes, sample_members, write_tar

ray = pytest.importorskip("ray")

REPO = str(Path(__file__).resolve().parents[1])
POISON = b"kill the decoder"  # image bytes that make the patched decoder exit its process, on every attempt
ONCE = b"kill the decoder once"  # image bytes that make it exit the first time only ($CAPFILT_TEST_MARKER remembers)


def crash_decoding() -> None:
    """Ray's worker_process_setup_hook for these tests: decode_image exits its process on the images above."""
    from pipelines import decode, ray_tasks

    ray_tasks.quiet_worker_logs()
    original = decode.decode_image

    def decode_image(data, *args, **kwargs):
        if data == POISON:
            with open(os.environ["CAPFILT_TEST_CRASHES"], "a") as handle:
                handle.write("died\n")
            os._exit(1)
        if data == ONCE:
            marker = Path(os.environ["CAPFILT_TEST_MARKER"])
            if not marker.exists():
                marker.write_text("died")
                os._exit(1)
            data = jpeg_bytes(np.zeros((24, 24, 3), np.uint8))
        return original(data, *args, **kwargs)

    decode.decode_image = decode_image


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """Ray started as connect() does, with the fault installed in every worker; (the marker of the decoder that
    died once, a file with one line per crash on the poison image)."""
    root = tmp_path_factory.mktemp("faults")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
           "CAPFILT_TEST_MARKER": str(root / "died"), "CAPFILT_TEST_CRASHES": str(root / "crashes")}
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": env, "worker_process_setup_hook": f"{__name__}.crash_decoding"})
    yield root / "died", root / "crashes"
    ray.shutdown()


def shard(path: Path, keys: list[str], images: dict[str, bytes]) -> Path:
    members = {}
    for i, key in enumerate(keys):
        image = images.get(key) or jpeg_bytes(np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8))
        members.update(sample_members(key, image, f"caption {key}", f"u/{key}"))
    return write_tar(path, members)


def rows_of(out: Path) -> list[tuple]:
    return duckdb.execute("SELECT shard, key, status, error_type FROM read_parquet(?) ORDER BY shard, key",
                          [str(out / "shards" / "*.parquet")]).fetchall()


def run(paths, out, logs: list[str]) -> dict:
    from pipelines.ray_runner import run_capfilt

    config = CapFiltConfig(input=" ".join(map(str, paths)), output=str(out), batch_size=4, model_threads=1,
                           precision="fp32")
    return run_capfilt(config, log=logs.append)


def test_resumed_decoding_skips_then_isolates(tmp_path):
    """What a resumed decode task yields (no Ray): after `skip` samples, `single` batches of one, then full batches;
    the row of a sample by its number keeps its metadata, and a number past the end is a shard-level row."""
    keys = [f"k{i:02d}" for i in range(10)]
    path = str(shard(tmp_path / "s.tar", keys, {}))
    batches = [[row["key"] for row in batch.rows] for batch in shard_batches("s", path, [8], 4, skip=3, single=2)]
    assert batches == [["k03"], ["k04"], ["k05", "k06", "k07", "k08"], ["k09"]]
    row = sample_error_row("s", path, 5, "worker_crashed", "it died")
    assert (row["key"], row["url"], row["status"], row["error_type"]) == ("k05", "u/k05", "error", "worker_crashed")
    assert sample_error_row("s", path, 10, "worker_crashed", "it died")["key"] is None


def test_decoder_dying_once_loses_nothing(files, tmp_path):
    """The decode process dies once in the middle of a shard (after delivering a batch): Ray runs the task again,
    every sample is one ok row, none twice."""
    marker, _ = files
    keys = [f"k{i:02d}" for i in range(10)]
    logs: list[str] = []
    run([shard(tmp_path / "00000.tar", keys, {"k06": ONCE})], tmp_path / "out", logs)
    assert marker.exists()
    assert rows_of(tmp_path / "out") == [("00000", k, "ok", None) for k in keys]
    assert not any("decode process died" in line for line in logs)  # Ray's own retry was enough
    assert json.loads((tmp_path / "out/shards/_done/00000.json").read_text())["retries"]["decode_restarts"] == 0


def test_poison_image_that_kills_every_decoder(files, tmp_path):
    """An image that kills the decode process on every attempt: the job ends; every sample of its shard is one row,
    the poison image a `worker_crashed` row (with its metadata), all the others ok, those after it included; the
    other shard is untouched. The poison is tried 6 times: Ray's 4 attempts of the shard's task, then twice in a
    task that decodes it alone."""
    _, crashes = files
    keys = [f"k{i:02d}" for i in range(10)]
    paths = [shard(tmp_path / "00000.tar", keys, {"k05": POISON}), shard(tmp_path / "00001.tar", ["g", "h"], {})]
    logs: list[str] = []
    result = run(paths, tmp_path / "out", logs)
    rows = rows_of(tmp_path / "out")
    assert [(s, k) for s, k, _, _ in rows] == [("00000", k) for k in keys] + [("00001", "g"), ("00001", "h")], logs
    statuses = {k: (status, error) for _, k, status, error in rows}
    assert statuses.pop("k05") == ("error", "worker_crashed"), logs
    assert set(statuses.values()) == {("ok", None)}, logs
    assert result["samples"] == 12 and result["errors"] == 1
    [(url, message)] = duckdb.execute("SELECT url, error_message FROM read_parquet(?) WHERE key = 'k05'",
                                      [str(tmp_path / "out" / "shards" / "00000.parquet")]).fetchall()
    assert url == "u/k05" and "died on every attempt" in message
    assert len(crashes.read_text().split()) == 6, logs
    # Where decoding resumed: at the first sample the shard's task delivered none of (4, or fewer when the process
    # died before its last batch reached the driver), one by one; then after the poison.
    resumed = [int(line.rsplit(" ", 1)[-1]) for line in logs if "decoding resumes at sample" in line]
    assert len(resumed) == 2 and resumed[0] in (0, 4) and resumed[1] == 6, logs
    # Each of those restarts is counted: in the shard's done-marker, the summary and the summary line.
    markers = {s: json.loads((tmp_path / "out/shards/_done" / f"{s}.json").read_text()) for s in ("00000", "00001")}
    assert markers["00000"]["retries"]["decode_restarts"] == 2 and markers["00001"]["retries"]["decode_restarts"] == 0
    assert result["retries"]["decode_restarts"] == 2 and ", 2 decode restarts" in logs[-1], logs
