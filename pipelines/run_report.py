"""The curator's report of a run: one self-contained HTML file (`jobs/curate.py report RUN --to report.html`).

It shows what a threshold does before a curator picks one: score distributions with the threshold drawn, the
captions kept against the threshold, samples around the cut with their thumbnails, the images CapFilt saves (web
caption rejected, a synthetic one kept), errors, and the run's settings.

Everything comes from DuckDB queries over the committed shards (`pipelines.select.open_run`): aggregates over the
whole run, and a bounded sample of rows for the grids, so a report of millions of rows takes seconds and little
memory. Which captions are "kept" is decided by `keep_list` itself, over the sampled images only. Thumbnails are
read from the run's source tars by member name (tar headers are skipped over, not read whole), and only from a tar
that is still what the run read (its done-marker's fingerprint). The page needs no server and no network: images
are embedded, the charts are inline SVG, and the one script is inline.
"""
from __future__ import annotations

import base64
import html
import io
import json
import tarfile
import time
from collections import defaultdict

import duckdb

from models.images import ImageError, decode_image
from pipelines import report_charts as charts
from pipelines import report_queries as q
from pipelines.fingerprint import changed
from pipelines.select import SCORES, SOURCES, open_run
from pipelines.sources import check_location, filesystem
from pipelines.writer import RunDir, write_file
from schemas.capfilt import FINGERPRINT_FIELD, RUN_FILE

GRID_ROWS = 8  # samples per bucket of the grid around the cut
CHANGED_ROWS = 12  # examples of images whose web caption is rejected while a synthetic one is kept
ERROR_EXAMPLES = 3  # per error type
THUMBNAIL = 128  # pixels, the longer side
RESCUE_SAMPLE = 2000  # images looked through for "what changed" under a top-k selection


def write_report(run: str, to: str, threshold: float | None = 0.5, source: str = "both", top_k: int | None = None,
                 by: str = "itm", log=print) -> dict:
    """Write the report of `run` to `to` (a local path or fsspec URL); returns what it counted and how long it took."""
    started = time.time()
    check_location(to)
    page, facts = build_report(run, threshold, source, top_k, by, log=log)
    write_file(to, page.encode("utf-8"))
    facts["seconds"] = round(time.time() - started, 2)
    facts["bytes"] = len(page.encode("utf-8"))
    return facts


def build_report(run: str, threshold: float | None = 0.5, source: str = "both", top_k: int | None = None,
                 by: str = "itm", log=print) -> tuple[str, dict]:
    """The report's HTML and its headline counts."""
    check_selection(threshold, source, top_k, by)
    log = log or (lambda line: None)
    con = open_run(run)
    selection = {"threshold": threshold, "source": source, "top_k": top_k, "by": by}
    totals = q.run_totals(con)
    log(f"report: {totals['samples']} samples in {totals['shards']} shards; score distributions")
    bins = q.caption_bins(con, threshold)
    has_clip = any(sum(bins[s]["clip"]) for s in bins)
    if by == "clip" and not has_clip:
        raise ValueError("the run has no CLIP scores: run capfilt with --scorer to rank by clip")
    steps = q.grid_thresholds(threshold)
    curve = q.kept_curve(con, source, threshold, bins, steps)
    grid = q.around_the_cut(con, selection, GRID_ROWS)
    saved = rescued(con, selection)
    keys = [key for _, picked in grid for key in picked] + saved["keys"]
    log(f"report: {len(set(keys))} sampled images; their captions, what the selection keeps, thumbnails")
    found = q.images(con, keys, selection)
    if top_k is not None and source == "both":  # rescued images are looked for in a sample: see rescued()
        saved["keys"] = [k for k in saved["keys"] if k in found and is_rescued(found[k])][:CHANGED_ROWS]
        saved["caption"] = saved["caption"].format(found=len(saved["keys"]))
    attach_thumbnails(RunDir(run), list({k: found[k] for k in keys if k in found}.values()))
    pick = lambda picked: [found[k] for k in picked if k in found]  # noqa: E731
    sections = [
        header(run, selection, totals, curve, steps),
        distributions(bins, threshold, has_clip, curve, steps),
        grid_section("Around the cut", cut_caption(selection), [(name, pick(p)) for name, p in grid]),
        grid_section("What changed", saved["caption"], [("", pick(saved["keys"][:CHANGED_ROWS]))]),
        errors_section(q.error_examples(con, ERROR_EXAMPLES)),
        run_section(RunDir(run)),
    ]
    page = PAGE.format(title=html.escape(f"capfilt report: {run}"), style=STYLE, body="\n".join(sections),
                       data=json.dumps({"thresholds": steps, "kept": curve, "source": source,
                                        "slider": top_k is None}).replace("<", "\\u003c"),
                       script=SCRIPT)
    facts = {**totals, **selection, "thumbnails": sum(1 for r in found.values() if r.get("thumbnail")),
             "rescued": saved["count"]}
    return page, facts


def check_selection(threshold: float | None, source: str, top_k: int | None, by: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if by not in SCORES:
        raise ValueError(f"--by must be one of {', '.join(SCORES)}, got {by!r}")
    if threshold is None and top_k is None:
        raise ValueError("give a threshold, a top_k, or both")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be at least 1, got {top_k}")


def distributions(bins: dict, threshold: float | None, has_clip: bool, curve: dict, steps: list[float]) -> str:
    figures = []
    itm_edges = [i / q.STEPS for i in range(q.STEPS + 1)]
    for label in ("web", "synthetic"):
        counts = bins[label]["itm"][:-2] + [sum(bins[label]["itm"][-2:])]  # drawn: a score of exactly 1 in the last bar
        figures.append(chart(f"{label} captions: ITM p(match)", charts.histogram_svg(
            {label: (itm_edges, counts)}, 0.0, 1.0, "ITM p(match)", threshold), threshold_line=True))
    for column, name, present in (("itc", "ITC cosine", True), ("clip", "CLIP cosine", has_clip)):
        if present:
            series = {s: cosine_series(bins[s][column]) for s in ("web", "synthetic")}
            used = [i for s in ("web", "synthetic") for i, n in enumerate(bins[s][column]) if n]
            lo, hi = (min(used) - 1, max(used) + 2) if used else (0, q.COSINE_BINS)
            figures.append(chart(f"web and synthetic captions: {name}", charts.histogram_svg(
                series, max(lo, 0) * 2 / q.COSINE_BINS - 1, min(hi, q.COSINE_BINS) * 2 / q.COSINE_BINS - 1, name)))
    figures.append(chart("captions kept against the ITM threshold", charts.kept_curve_svg(
        steps, {s: curve[s] for s in ("web", "synthetic", "both")}, threshold), threshold_line=True))
    return f'<section id="distributions"><h2>Score distributions</h2><div class="charts">{"".join(figures)}</div></section>'


def cosine_series(counts: list[int]) -> tuple[list[float], list[int]]:
    return [i * 2 / q.COSINE_BINS - 1 for i in range(q.COSINE_BINS + 1)], counts


def chart(title: str, svg: str, threshold_line: bool = False) -> str:
    """A chart; over one whose x axis is the ITM threshold the page draws the moved threshold."""
    left, bottom, _, height = charts.AXES
    line = (f'<div class="moved" style="bottom:{100 * bottom:.2f}%;height:{100 * height:.2f}%"></div>'
            if threshold_line else "")
    return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption><div class="plot">{svg}{line}</div></figure>'


def cut_caption(selection: dict) -> str:
    if selection["top_k"] is None:
        return (f"Captions nearest the threshold {selection['threshold']:g} on each side, and the lowest and highest "
                f"ITM of the run: what a change of threshold would move.")
    return (f"Images by the best {selection['by'].upper()} of their captions: the lowest and highest of the run, and "
            f"a sample from the middle; the top {selection['top_k']} by {selection['by']} kept.")


def rescued(con: duckdb.DuckDBPyConnection, selection: dict) -> dict:
    """Images whose web caption is not kept while a synthetic one is: counted over the run for a threshold
    selection (its definition is a comparison), looked for among a sample of images for a top-k one."""
    if selection["source"] != "both":
        return {"count": None, "keys": [], "caption": f"The selection keeps {selection['source']} captions only: no "
                                                      f"image trades its web caption for a synthetic one."}
    if selection["top_k"] is None:
        t = selection["threshold"]
        count, keys = q.rescued(con, t, CHANGED_ROWS)
        return {"count": count, "keys": keys, "caption": (
            f"{count} images have no web caption kept (ITM < {t:g}, or none) and a synthetic caption kept: the rows "
            f"that make CapFilt worth running. A sample of them:")}
    keys = q.hashed_sample(con, RESCUE_SAMPLE)
    return {"count": None, "keys": keys, "caption": (
        f"Among {len(keys)} images sampled from the run, {{found}} (at most {CHANGED_ROWS} shown) have their web "
        f"caption not kept and a synthetic caption kept.")}


def is_rescued(image: dict) -> bool:
    web = [c for c in image["captions"] if c["source"] == "web"]
    return not any(c["kept"] for c in web) and any(c["kept"] for c in image["captions"] if c["source"] != "web")


def attach_thumbnails(run: RunDir, rows: list[dict]) -> None:
    """Each row's `thumbnail` (a data: URL) or `missing` (why not), reading each source tar once."""
    markers = run.markers()
    wanted: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        marker = markers.get(row["shard"], {})
        url = marker.get("url")
        reason = "no source url in the done-marker" if not url else changed(marker.get(FINGERPRINT_FIELD), url)
        if reason:
            row["missing"] = reason
            continue
        wanted[url][f"{row['key']}.{row['image_format']}"] = row
    for url, members in wanted.items():
        try:
            found = read_members(url, set(members))
        except (OSError, tarfile.TarError) as exc:
            found, reason = {}, f"source tar unreadable: {exc}"
        else:
            reason = "not in the source tar"
        for name, row in members.items():
            if name in found:
                row["thumbnail"] = thumbnail(found[name])
                if row["thumbnail"] is None:
                    row["missing"] = "the image no longer decodes"
            else:
                row["missing"] = reason


def read_members(url: str, names: set[str]) -> dict[str, bytes]:
    """The bytes of the named members of a tar; headers are walked with seeks over the data, and the walk stops
    once every name is found. Member names are compared, never used as paths."""
    found = {}
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for member in tar:
            if member.isfile() and member.name in names and member.name not in found:
                found[member.name] = tar.extractfile(member).read()
                if len(found) == len(names):
                    break
    return found


def thumbnail(data: bytes) -> str | None:
    try:
        image = decode_image(data)
    except ImageError:
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def header(run: str, selection: dict, totals: dict, curve: dict, steps: list[float]) -> str:
    if selection["top_k"] is None:
        chosen = f"ITM &ge; {selection['threshold']:g}, {selection['source']} captions"
        i = steps.index(selection["threshold"])
        kept = curve["web" if selection["source"] == "web" else "synthetic" if selection["source"] == "synthetic"
                     else "both"][i]
        control = f"""<div id="control"><label for="threshold">move the ITM threshold</label>
<input type="range" id="threshold" min="0" max="{len(steps) - 1}" step="1" value="{i}">
<output id="threshold-value">{selection['threshold']:g}</output>
<p>At this threshold (<code>curate.py keep {html.escape(run)} --source {selection['source']} --threshold
<span id="threshold-arg">{selection['threshold']:g}</span></code>): <b id="kept-captions">{kept}</b> captions kept
(<span id="kept-web">{curve['web'][i] if selection['source'] != 'synthetic' else 0}</span> web,
<span id="kept-synthetic">{curve['synthetic'][i] if selection['source'] != 'web' else 0}</span> synthetic), on
<b id="kept-images">{curve['images'][i]}</b> images. The grids below show the report's threshold.</p></div>"""
    else:
        chosen = (f"the top {selection['top_k']} captions of each image by {selection['by'].upper()}"
                  + (f" after ITM &ge; {selection['threshold']:g}" if selection["threshold"] is not None else "")
                  + f", {selection['source']} captions")
        control = "<p>The threshold control is off for a top-k selection: what it keeps is not a threshold's.</p>"
    return (f'<header><h1>capfilt report</h1><p class="run">{html.escape(run)}: {totals["samples"]} samples in '
            f'{totals["shards"]} committed shards, {totals["ok"]} ok, {totals["errors"]} errors.</p>'
            f'<p id="selection">Selection shown: {chosen} (the options of <code>curate.py keep</code> and '
            f'<code>export</code>).</p>{control}</header>')


def grid_section(title: str, caption: str, buckets: list[tuple[str, list[dict]]]) -> str:
    parts = [f'<section class="grid-section"><h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>']
    for name, rows in buckets:
        if name:
            parts.append(f"<h3>{html.escape(name)}</h3>")
        if not rows:
            parts.append('<p class="empty">none</p>')
            continue
        parts.append('<div class="grid">' + "".join(card(row) for row in rows) + "</div>")
    return "".join(parts) + "</section>"


def card(row: dict) -> str:
    if row.get("thumbnail"):
        image = f'<img class="thumb" src="{row["thumbnail"]}" alt="{html.escape(row["key"])}">'
    else:
        image = f'<div class="thumb missing">no thumbnail: {html.escape(row.get("missing", "not read"))}</div>'
    lines = []
    for c in row["captions"]:
        scores = " ".join(f"{name}={c[name]:.3f}" for name in ("itm", "itc", "clip") if c[name] is not None)
        label = "web" if c["source"] == "web" else f"syn {c['index']}"
        lines.append(f'<li class="{"kept" if c["kept"] else "dropped"}"><span class="src">{label}</span> '
                     f'{html.escape(c["text"] or "")}<br><span class="scores">{scores}'
                     f'{" &check; kept" if c["kept"] else ""}</span></li>')
    return (f'<div class="card">{image}<div class="meta">{html.escape(row["shard"])}/{html.escape(row["key"])}'
            f'</div><ul>{"".join(lines)}</ul></div>')


def errors_section(rows: list[tuple[str, int, list[dict]]]) -> str:
    if not rows:
        return '<section id="errors"><h2>Errors</h2><p>No errors.</p></section>'
    body = "".join(
        f'<tr><td><code>{html.escape(str(kind))}</code></td><td class="n">{n}</td><td><ul>'
        + "".join(f"<li>{html.escape(str(e['shard']))}/{html.escape(str(e['key']))}: "
                  f"{html.escape(str(e['message']))}</li>" for e in examples) + "</ul></td></tr>"
        for kind, n, examples in rows)
    return (f'<section id="errors"><h2>Errors</h2><table><tr><th>error_type</th><th>count</th><th>examples</th></tr>'
            f"{body}</table></section>")


def run_section(run: RunDir) -> str:
    record = run.read_json(run.path(RUN_FILE)) or {}
    models = record.get("models") or {}
    items = [(f"{role}", f"{m.get('name')} ({m.get('family')}, {m.get('source')}, {m.get('fingerprint')})")
             for role, m in models.items() if m]
    items += [("sampling", json.dumps(record.get("sampling"), sort_keys=True)),
              ("seed", (record.get("sampling") or {}).get("seed")),
              ("precision", record.get("precision")), ("input", record.get("input")),
              ("created at", record.get("created_at")), ("capfilt commit", record.get("capfilt_commit")),
              ("versions", ", ".join(f"{k} {v}" for k, v in sorted((record.get("versions") or {}).items())))]
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f'<section id="run"><h2>The run</h2><table>{rows}</table></section>'


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>{style}</style></head>
<body>
{body}
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body></html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin: 0 0 .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 1em; }
.chart { margin: 0; } .chart figcaption { font-weight: 600; }
.plot { position: relative; } .plot svg { width: 100%; height: auto; display: block; }
.moved { position: absolute; width: 0; border-left: 2px dashed #9467bd; display: none; }
#control { background: #f4f4f8; padding: .6em 1em; border-radius: 6px; }
#threshold { width: 320px; vertical-align: middle; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: .8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5em; }
.thumb { width: 128px; height: 128px; object-fit: contain; background: #eee; display: block; }
.thumb.missing { font-size: 11px; color: #a00; padding: .3em; box-sizing: border-box; }
.meta { font-size: 11px; color: #666; } .card ul { padding-left: 1em; margin: .3em 0; }
.card li { margin-bottom: .3em; } .kept { color: #1a6d1a; } .dropped { color: #777; }
.src { font-size: 11px; background: #eee; padding: 0 .3em; border-radius: 3px; }
.scores { font: 11px monospace; } table { border-collapse: collapse; } td, th { border: 1px solid #ddd;
padding: .2em .5em; text-align: left; vertical-align: top; } .n { text-align: right; }
"""

SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const slider = document.getElementById('threshold');
  if (!data.slider || !slider) return;
  const set = (id, value) => { document.getElementById(id).textContent = value; };
  const left = %LEFT%, width = %WIDTH%;
  function update() {
    const i = Number(slider.value), t = data.thresholds[i];
    const web = data.source === 'synthetic' ? 0 : data.kept.web[i];
    const syn = data.source === 'web' ? 0 : data.kept.synthetic[i];
    set('threshold-value', String(t)); set('threshold-arg', String(t));
    set('kept-web', web); set('kept-synthetic', syn); set('kept-captions', web + syn);
    set('kept-images', data.kept.images[i]);
    document.querySelectorAll('.moved').forEach(function (line) {
      line.style.left = (100 * (left + width * t)) + '%'; line.style.display = 'block';
    });
  }
  slider.addEventListener('input', update);
})();
""".replace("%LEFT%", repr(charts.AXES[0])).replace("%WIDTH%", repr(charts.AXES[2]))
