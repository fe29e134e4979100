"""The CapFilt job with BLIP-2: every mix of families, one vision pass when the vision weights are shared, the CLIP
scorer, selection by rank (BLIP-2's CapFilt), export, resume and the re-run check."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.capfilt import main as capfilt_main
from jobs.curate import main as curate
from models.sampling_config import Sampling
from pipelines.config import CapFiltConfig, RunConflict
from pipelines.decode import decode_samples
from pipelines.local_runner import run_local
from pipelines.reader import read_shard
from pipelines.select import keep_list, open_run
from pipelines.stage import CapFiltStage
from tests.corpus import build_demo_shards

BLIP = {"captioner": "tiny-random_caption", "filter": "tiny-random_retrieval"}
BLIP2 = {"captioner": "tiny-random-blip2_caption", "filter": "tiny-random-blip2_retrieval"}
MIXES = {
    "blip2+blip2": BLIP2,
    "blip2-t5+blip2": {"captioner": "tiny-random-blip2-t5_caption", "filter": "tiny-random-blip2_retrieval"},
    "blip2+blip": {"captioner": BLIP2["captioner"], "filter": BLIP["filter"]},
    "blip+blip2": {"captioner": BLIP["captioner"], "filter": BLIP2["filter"]},
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_demo_shards(tmp_path_factory.mktemp("in"), shards=2, per_shard=5)


def config(shards, out, **settings) -> CapFiltConfig:
    settings.setdefault("sampling", Sampling(num_captions=3, seed=1))
    return CapFiltConfig(input=" ".join(map(str, shards)), output=str(out), batch_size=3, precision="fp32",
                         device="cpu", **settings)


def rows(out: Path) -> list[dict]:
    return open_run(str(out)).sql("SELECT * FROM samples ORDER BY shard, key").to_arrow_table().to_pylist()


@pytest.mark.parametrize("mix", list(MIXES))
def test_every_mix_of_families_runs(shards, tmp_path, mix):
    models = MIXES[mix]
    summary = run_local(config(shards, tmp_path / "run", **models), log=None)
    assert summary["samples"] == 10 and summary["ok"] == 8
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    families = {role: record["models"][role]["family"] for role in ("captioner", "filter")}
    assert families == {role: "blip2" if "blip2" in models[role] else "blip" for role in families}
    assert record["shared_vision"] == (mix == "blip2+blip2" or mix == "blip2-t5+blip2")
    expected_prompt = "a picture of " if models["captioner"] == BLIP["captioner"] else "a photo of"
    assert record["sampling"]["prompt"] == expected_prompt
    table = pq.read_table(next((tmp_path / "run" / "shards").glob("*.parquet")))
    width = 16  # both tiny filters embed into 16 floats; the schema takes the filter's width
    assert table.schema.field("image_embedding").type.list_size == width
    ok = [r for r in rows(tmp_path / "run") if r["status"] == "ok"]
    assert all(len(r["synthetic"]) == 3 and r["web_clip"] is None for r in ok)
    assert all(0.0 <= c["itm"] <= 1.0 and c["clip"] is None for r in ok for c in r["synthetic"])


def count_vision_passes(stage: CapFiltStage) -> list[int]:
    calls = []
    encoders = {id(role.model.vision_model): role.model.vision_model for role in (stage.captioner, stage.filter)}
    for encoder in encoders.values():  # one module when shared
        encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_shared_vision_runs_once_per_image_and_changes_nothing(shards):
    samples = [s for s in read_shard(str(shards[0])) if hasattr(s, "key")]
    batch = decode_samples("00000", samples, [32])
    shared = CapFiltStage(**BLIP2, sampling=Sampling(num_captions=2), device="cpu", precision="fp32")
    assert shared.shared_vision and shared.filter.model.vision_model is shared.captioner.model.vision_model
    calls = count_vision_passes(shared)
    with_sharing = shared(batch)
    assert len(calls) == 1  # one vision pass for the captioner and the filter together
    apart = CapFiltStage(**BLIP2, sampling=Sampling(num_captions=2), device="cpu", precision="fp32")
    apart.shared_vision = False  # the same weights, each role encoding on its own
    calls = count_vision_passes(apart)
    assert_same_rows(apart(batch), with_sharing)
    assert len(calls) == 2  # one pass each
    blip = CapFiltStage(**BLIP, device="cpu", precision="fp32")
    assert not blip.shared_vision  # BLIP's captioner and filter are fine-tuned apart: their weights differ


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and sum(x["status"] == "ok" for x in a) == 4
    for x, y in zip(a, b):
        assert x["status"] == y["status"]
        if x["status"] == "ok":
            assert x["synthetic"] == y["synthetic"] and (x.get("web_itm"), x.get("web_itc")) == (y.get("web_itm"),
                                                                                                 y.get("web_itc"))
            assert (x["image_embedding"] == y["image_embedding"]).all()


def test_scorer_rank_selection_and_export(shards, tmp_path):
    out = tmp_path / "run"
    run_local(config(shards, out, **BLIP2, scorer="tiny-random_clip"), log=None)
    record = json.loads((out / "run.json").read_text())
    assert record["scorer"] == "tiny-random_clip" and record["models"]["scorer"]["family"] == "clip"
    ok = [r for r in rows(out) if r["status"] == "ok"]
    assert all(c["clip"] is not None and -1 <= c["clip"] <= 1 for r in ok for c in r["synthetic"])
    assert all((r["web_clip"] is None) == (r["web_caption"] is None) for r in ok)
    kept = keep_list(open_run(str(out)), None, top_k=2, by="clip").to_pylist()
    per_sample: dict = {}
    for row in kept:
        per_sample.setdefault((row["shard"], row["key"]), []).append(row)
    assert len(per_sample) == len(ok) and all(len(v) == 2 for v in per_sample.values())
    for r in ok:  # the two kept are the two best by CLIP among the web caption and the synthetic ones
        scores = sorted([c["clip"] for c in r["synthetic"]] + ([r["web_clip"]] if r["web_clip"] is not None else []),
                        reverse=True)
        assert [k["clip"] for k in per_sample[(r["shard"], r["key"])]] == pytest.approx(scores[:2])
    assert keep_list(open_run(str(out)), None, top_k=2, by="clip").equals(
        keep_list(open_run(str(out)), None, top_k=2, by="clip"))  # deterministic
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    query = readme[readme.index("-- BLIP-2's policy"):]
    query = query[:query.index("```")].replace("out/blip2", str(out))
    import duckdb

    assert [(r[0], r[1], r[4]) for r in duckdb.sql(query).fetchall()] == [(k["shard"], k["key"], k["text"])
                                                                         for k in kept]  # the README's query
    assert curate(["export", str(out), "--top-k", "1", "--by", "clip", "--to", str(tmp_path / "export")]) == 0
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    assert (manifest["top_k"], manifest["by"], manifest["threshold"]) == (1, "clip", None)
    best = {(r["shard"], r["key"]): max([c for c in r["synthetic"]] + ([{"text": r["web_caption"],
                                                                          "clip": r["web_clip"]}]
                                                                        if r["web_clip"] is not None else []),
                                         key=lambda c: c["clip"])["text"] for r in ok}
    exported = {}
    for tar in (tmp_path / "export").glob("*.tar"):
        with tarfile.open(tar) as handle:
            for member in handle.getmembers():
                if member.name.endswith(".txt"):
                    exported[(tar.stem, member.name[:-4])] = handle.extractfile(member).read().decode()
    assert exported == best


def test_curate_rank_options(shards, tmp_path, capsys):
    out = tmp_path / "run"
    run_local(config(shards, out, **BLIP), log=None)
    assert curate(["keep", str(out), "--top-k", "2", "--by", "clip"]) == 2
    assert "no CLIP scores" in capsys.readouterr().err and "--scorer" in capsys.readouterr().err + "--scorer"
    assert curate(["keep", str(out), "--by", "itc"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert curate(["keep", str(out), "--top-k", "0"]) == 2
    assert curate(["keep", str(out), "--top-k", "1", "--by", "itm", "--to", str(tmp_path / "k.parquet")]) == 0
    table = pq.read_table(tmp_path / "k.parquet").to_pylist()
    assert len(table) == 8 and len({(r["shard"], r["key"]) for r in table}) == 8


def test_resume_and_the_rerun_check_cover_the_new_settings(shards, tmp_path):
    out = tmp_path / "run"
    first = config(shards, out, **BLIP2, scorer="tiny-random_clip")
    run_local(first, log=None)
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}
    events = []
    run_local(first, log=None, on_event=events.append)  # the same run: everything already committed
    assert events[0]["already"] == 2 and {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")} == before
    with pytest.raises(RunConflict, match="scorer"):
        run_local(config(shards, out, **BLIP2), log=None)
    with pytest.raises(RunConflict, match="filter"):
        run_local(config(shards, out, captioner=BLIP2["captioner"], filter=BLIP["filter"], scorer="tiny-random_clip"),
                  log=None)


def test_the_job_on_ray_with_blip2_and_a_scorer(shards, tmp_path, capsys):
    out = tmp_path / "run"
    code = capfilt_main(["--input", " ".join(map(str, shards)), "--output", str(out), "--captioner",
                         BLIP2["captioner"], "--filter", BLIP2["filter"], "--scorer", "tiny-random_clip",
                         "--num-captions", "2", "--batch-size", "4"])
    assert code == 0
    assert len([r for r in rows(out) if r["status"] == "ok" and r["synthetic"][0]["clip"] is not None]) == 8
    start = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("capfilt: "))
    assert "scorer tiny-random_clip (one vision pass for both)" in start, start


@pytest.mark.parametrize("argv,message", [
    (["--scorer", "tiny-random-blip2_retrieval"], "similarity model"),
    (["--scorer", "nope"], "unknown model"),
    (["--filter", "tiny-random-blip2_caption"], "retrieval model"),
])
def test_wrong_roles_are_one_error_line(shards, tmp_path, capsys, argv, message):
    code = capfilt_main(["--input", str(shards[0]), "--output", str(tmp_path / "o")] + argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
