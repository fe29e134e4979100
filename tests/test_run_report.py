"""The curator's report (pipelines/run_report.py, `curate.py report`) on runs written without models: its counts
are keep's, its grid marks what keep keeps, thumbnails come from the source tars that are unchanged, the page is
self-contained; and, in headless Chromium, it loads without errors or requests and its threshold control gives
keep's counts."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from jobs.curate import main as curate
from pipelines.assemble import shard_stats, shard_table
from pipelines.decode import error_row, new_row
from pipelines.report_queries import caption_bins, grid_thresholds, kept_curve
from pipelines.run_report import build_report, read_members, write_report
from pipelines.select import keep_list, open_run
from pipelines.tars import sample_members, write_tar
from pipelines.writer import RunDir
from schemas.capfilt import RUN_FILE
from tests.browser import BrowserUnavailable, open_browser
from tests.hostile import image_bytes

PER_SHARD = 30


def scores(i: int) -> tuple[float, list[float]]:
    """Web ITM and two synthetic ITMs spread over [0, 1], some exactly on the 0.01 grid (0.5 among them)."""
    web = (i * 37 % 101) / 100
    return web, [(i * 53 % 97) / 96, round((i % 11) / 10, 2)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Two committed shards of 30 PNG samples (one error row and one without a web caption each), scores spread
    over [0, 1], a run.json."""
    root = tmp_path_factory.mktemp("report")
    out = RunDir(str(root / "run"))
    for s, shard_id in enumerate(("00000", "00001")):
        members, rows = {}, []
        for i in range(PER_SHARD):
            key = f"k{i:02d}"
            members.update(sample_members(key, image_bytes("PNG", seed=s * 100 + i), f"web {s} {i}",
                                          f"https://x/{s}/{i}", extension="png"))
            if i == 7:
                rows.append(error_row(shard_id, key, "decode_error", f"cannot identify image {key}"))
                continue
            web, synthetic = scores(s * PER_SHARD + i)
            row = new_row(shard_id, key)
            texts = [f"synthetic {s} {i}", f"web {s} {i}" if i % 5 == 0 else f"other {s} {i}"]  # dupes of web
            row.update(url=f"https://x/{s}/{i}", web_caption=f"web {s} {i}", web_itm=web, web_itc=web / 2,
                       synthetic=[{"text": t, "itm": v, "itc": v / 3, "clip": None} for t, v in zip(texts, synthetic)],
                       image_embedding=[1.0, 0.0], width=40, height=30, image_format="png")
            if i == 11:  # no web caption: no web row in the view, and no score that could count in a bin
                row.update(web_caption=None, web_itm=None, web_itc=None)
            rows.append(row)
        tar = write_tar(root / f"{shard_id}.tar", members)
        out.commit_shard(shard_id, shard_table(rows, 2), shard_stats(shard_id, str(tar), rows, time.time()))
    out.write_json(out.path(RUN_FILE), {"input": str(root / "*.tar"), "shards": 2, "captioner": "tiny",
                                        "sampling": {"seed": 7, "num_captions": 2},
                                        "versions": {"duckdb": "x"}, "models": {}})
    return root / "run"


def keep_counts(run: Path, threshold: float, source: str = "both") -> tuple[int, int, int, int]:
    """(captions, web, synthetic, images) that keep_list keeps."""
    rows = keep_list(open_run(str(run)), threshold, source).to_pylist()
    return (len(rows), sum(r["source"] == "web" for r in rows), sum(r["source"] == "synthetic" for r in rows),
            len({(r["shard"], r["key"]) for r in rows}))


def test_the_counts_at_every_threshold_are_keeps(run):
    """The curve and the in-page control's counts equal keep's at each threshold, exactly on the grid too."""
    steps = grid_thresholds(0.437)
    assert 0.437 in steps and 0.5 in steps and len(steps) == 102
    con = open_run(str(run))
    for source in ("both", "web", "synthetic"):
        curve = kept_curve(con, source, 0.437, caption_bins(con, 0.437), steps)
        for t in (0.0, 0.01, 0.3, 0.437, 0.5, 0.99, 1.0):
            i = steps.index(t)
            captions, web, synthetic, images = keep_counts(run, t, source)
            shown = {"both": curve["both"], "web": curve["web"], "synthetic": curve["synthetic"]}[source][i]
            assert (shown, curve["images"][i]) == (captions, images), (source, t)
            if source == "both":
                assert (curve["web"][i], curve["synthetic"][i]) == (web, synthetic)


def test_the_grid_marks_what_keep_keeps(run):
    page, facts = build_report(str(run), 0.5, log=None)
    kept = {(r["shard"], r["key"], r["text"]) for r in keep_list(open_run(str(run)), 0.5).to_pylist()}
    cards = re.findall(r'<div class="meta">(\d+)/(k\d+)</div><ul>(.*?)</ul>', page)
    assert len(cards) >= 20
    for shard, key, items in cards:
        for cls, text in re.findall(r'<li class="(kept|dropped)"><span class="src">[^<]*</span> ([^<]*)<br>', items):
            assert (cls == "kept") == ((shard, key, text) in kept), (shard, key, text)
    assert facts["thumbnails"] >= 20 and facts["errors"] == 2
    assert "decode_error" in page and "cannot identify image k07" in page  # the errors section, with an example


def test_rescued_images_are_counted_over_the_run(run):
    """'What changed' counts the images whose web caption is rejected while a synthetic one is kept."""
    rows = keep_list(open_run(str(run)), 0.5).to_pylist()
    kept_web = {(r["shard"], r["key"]) for r in rows if r["source"] == "web"}
    rescued = {(r["shard"], r["key"]) for r in rows if r["source"] == "synthetic"} - kept_web
    _, facts = build_report(str(run), 0.5, log=None)
    assert facts["rescued"] == len(rescued) > 0


def test_top_k_selection_is_stated_and_has_no_control(run):
    page, _ = build_report(str(run), None, top_k=1, by="itc", log=None)
    assert "top 1 captions of each image by ITC" in page
    assert 'id="threshold"' not in page
    kept = keep_list(open_run(str(run)), None, top_k=1, by="itc").to_pylist()
    assert page.count("&check; kept") <= len(kept)


def test_a_changed_source_tar_gives_no_thumbnails(run, tmp_path):
    """A tar that is no longer what the run read is not read: its cards say why."""
    copy = tmp_path / "run"
    import shutil
    shutil.copytree(run, copy)
    marker = copy / "shards" / "_done" / "00001.json"
    record = json.loads(marker.read_text())
    record["fingerprint"]["size"] += 1
    marker.write_text(json.dumps(record))
    page, facts = build_report(str(copy), 0.5, log=None)
    assert "no thumbnail:" in page and facts["thumbnails"] > 0


def test_read_members_stops_at_the_names(tmp_path):
    tar = write_tar(tmp_path / "a.tar", {"a.png": b"1", "b.png": b"2", "c.txt": b"3"})
    assert read_members(str(tar), {"b.png", "c.txt"}) == {"b.png": b"2", "c.txt": b"3"}
    assert read_members(str(tar), {"zz.png"}) == {}


def test_the_page_is_self_contained(run, tmp_path):
    facts = write_report(str(run), str(tmp_path / "r.html"), log=None)
    page = (tmp_path / "r.html").read_text()
    assert facts["bytes"] == len(page.encode())
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched: images are data: URLs
    assert page.count("<svg") == 4  # web ITM, synthetic ITM, ITC, kept curve (no CLIP scores in this run)


def test_curate_report_command(run, tmp_path, capsys):
    to = tmp_path / "out.html"
    assert curate(["report", str(run), "--to", str(to), "--threshold", "0.3"]) == 0
    assert "ITM &ge; 0.3" in to.read_text()
    assert str(to) in capsys.readouterr().out
    assert curate(["report", str(run), "--to", str(to), "--threshold", "1.5"]) == 2
    assert curate(["report", str(run), "--to", str(to), "--top-k", "1", "--by", "clip"]) == 2  # no clip scores
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err


@pytest.fixture(scope="module")
def browser():
    try:
        with open_browser() as context:
            yield context
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))


def test_in_chromium_it_loads_offline_and_its_control_gives_keeps_counts(run, tmp_path, browser):
    to = tmp_path / "report.html"
    write_report(str(run), str(to), threshold=0.5, log=None)
    page = browser.new_page()
    problems, requests = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(to.as_uri())
    page.wait_for_load_state("load")
    assert problems == [] and requests == [to.as_uri()]
    assert page.locator("#distributions svg").count() == 4
    loaded = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded >= 20
    steps = grid_thresholds(0.5)
    for t in (0.25, 0.5, 0.83):
        page.locator("#threshold").fill(str(steps.index(t)))  # a range input: fill sets it and fires input
        shown = [int(page.locator(f"#{name}").inner_text())
                 for name in ("kept-captions", "kept-web", "kept-synthetic", "kept-images")]
        assert tuple(shown) == keep_counts(run, t), t
        assert page.locator("#threshold-value").inner_text() == str(t)
    assert page.locator(".moved").first.is_visible()
    page.close()
