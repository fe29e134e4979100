"""Curator queries over a run with DuckDB: summaries and BLIP's keep-list. Thresholds are bound parameters;
column names, which SQL cannot bind, are checked against the schema before they reach a query.

The view `captions` is the one place that says what a caption of an image is: its web caption (caption_index 0)
and its synthetic ones (caption_index 1..N, in sampling order), each text once (issue 28: a synthetic caption
identical to the web caption, or to an earlier synthetic one, is dropped, the first occurrence kept). `summary`,
`keep_list`, the export and any report over `open_run` read captions through it, so they agree."""
from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from pipelines.writer import RunDir
from schemas.capfilt import COLUMN_NAMES, MARKER_DIR, SHARD_DIR

SOURCES = ("web", "synthetic", "both")
SCORES = ("itm", "itc", "clip")  # what --top-k ranks by: the filter's ITM p(match) or ITC cosine, the scorer's CLIP
KEEP_COLUMNS = ("shard", "key", "url", "source", "caption_index", "text", "itm", "itc", "clip")


def committed_files(run: str) -> list[str]:
    """The Parquet files of the run's committed shards (those with a done-marker), as locations DuckDB, pyarrow and
    pandas open: exactly the run, where a glob over OUT/shards would also take a shard caught between its rename
    and its marker by a crash."""
    return _committed(RunDir(run))


def _committed(out: RunDir) -> list[str]:
    return [out.url_of(path) for path in out.committed_parquet()]


def connect(out: RunDir) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads the run's files: on an object store through the run's own fsspec filesystem
    (registered with DuckDB), so DuckDB uses the credentials and endpoint s3fs uses, and needs no extension
    (httpfs) that it would download."""
    con = duckdb.connect()
    if not out.local:
        con.register_filesystem(out.fs)
    return con


def open_run(run: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views `samples` (every row of every committed shard of the run, its done-marker
    listed) and `captions` (one row per distinct caption of each ok image, see the module docstring)."""
    out = RunDir(run)
    files = _committed(out)
    if not files:
        raise ValueError(f"{run!r} holds no committed shards (no done-markers in {SHARD_DIR}/{MARKER_DIR}/)")
    con = connect(out)
    # read_parquet in a view needs literals; the paths are ours (listed from the run's markers), not user SQL.
    listed = ", ".join(_literal(url) for url in files)
    con.execute(f"CREATE VIEW samples AS SELECT * FROM read_parquet([{listed}])")
    # Runs of schema version 1 (before the CLIP scorer) have no clip scores: they read as nulls.
    scored = "web_clip" in {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    web_clip, clip = ("web_clip", "s.c.clip") if scored else ("CAST(NULL AS FLOAT)", "CAST(NULL AS FLOAT)")
    # caption_index is where a caption came from (0 the web, 1..N the sampling order), not a rank by score; the
    # same text twice for one image is kept once, at its first caption_index (the web caption before any synthetic).
    con.execute(f"""
        CREATE VIEW captions AS
        SELECT shard, key, url, 'web' AS source, 0 AS caption_index, web_caption AS text, web_itm AS itm,
               web_itc AS itc, {web_clip} AS clip
        FROM samples WHERE status = 'ok' AND web_itm IS NOT NULL
        UNION ALL
        SELECT shard, key, url, 'synthetic', s.caption_index, s.c.text, s.c.itm, s.c.itc, {clip}
        FROM (SELECT shard, key, url, web_caption, web_itm, synthetic, unnest(synthetic) AS c,
                     generate_subscripts(synthetic, 1) AS caption_index
              FROM samples WHERE status = 'ok') AS s
        WHERE {first_of_its_text('s.c', 's.caption_index')}
    """)
    return con


def first_of_its_text(caption: str, index: str) -> str:
    """SQL over a `samples` row: true when its synthetic caption `caption` (a struct), number `index` (from 1) in
    `synthetic`, is in the view `captions`: its text is not the web caption's (when that one is in the view) nor an
    earlier synthetic caption's. The one statement of the rule; a row-wise test, so no query groups the run by text."""
    return (f"(web_itm IS NULL OR {caption}.text IS DISTINCT FROM web_caption) AND "
            f"list_position(list_transform(synthetic, lambda x: x.text), {caption}.text) = {index}")


def distinct_synthetic() -> str:
    """SQL over a `samples` row: its synthetic captions that the view `captions` holds, as a list (for aggregates
    over rows that need no unnest)."""
    return f"list_filter(synthetic, lambda c, i: {first_of_its_text('c', 'i')})"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def check_columns(names: Sequence[str]) -> list[str]:
    """Column names given by a user, each one a column of the output schema (schemas/capfilt.py), or ValueError."""
    unknown = [name for name in names if name not in COLUMN_NAMES]
    if unknown:
        raise ValueError(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"the columns are: {', '.join(COLUMN_NAMES)}")
    return list(names)


def keep_list(con: duckdb.DuckDBPyConnection, threshold: float | None = 0.5, source: str = "both",
              columns: Sequence[str] = (), top_k: int | None = None, by: str = "itm") -> pa.Table:
    """The kept captions (rows of the view `captions`: each distinct text of an image once), per image (web first,
    then the synthetic ones by caption_index, their sampling order; with `top_k`, the best first):

    - BLIP's CapFilt (the default): every caption (web and/or synthetic) whose ITM p(match) >= threshold;
    - with `top_k`: the `top_k` best captions of each image by `by` (itm, itc or clip), after the threshold when one
      is given (None: no threshold). BLIP-2's CapFilt is top_k=2, by="clip". Ties go to the web caption, then to
      the earlier synthetic one, so a selection never depends on the order rows are read.

    `columns`: sample columns (schemas/capfilt.py) to carry beside each kept caption, such as width or web_caption.
    A synthetic caption identical to the web caption is not in the view, so `source="synthetic"` never keeps it.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    if top_k is None and threshold is None:
        raise ValueError("give a threshold, a top_k, or both")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be at least 1, got {top_k}")
    if by not in SCORES:
        raise ValueError(f"--by must be one of {', '.join(SCORES)}, got {by!r}")
    if by == "clip" and not con.execute("SELECT 1 FROM captions WHERE clip IS NOT NULL LIMIT 1").fetchall():
        raise ValueError("the run has no CLIP scores: run capfilt with --scorer (e.g. clip-vit-large-patch14_openai) "
                         "to rank by clip")
    extra = [name for name in dict.fromkeys(check_columns(columns)) if name not in KEEP_COLUMNS]
    # Only schema names and SCORES reach this point, and quoted as identifiers; an ok row's (shard, key) is unique.
    select = ", ".join([f"c.{name}" for name in KEEP_COLUMNS] + [f's."{name}"' for name in extra])
    join = "JOIN samples AS s ON s.shard = c.shard AND s.key = c.key AND s.status = 'ok'" if extra else ""
    best = f"{by} DESC NULLS LAST, caption_index"  # ties: the web caption (index 0), then the earlier one
    ranked = f"""SELECT *, row_number() OVER (PARTITION BY shard, key ORDER BY {best}) AS place
                 FROM captions
                 WHERE ($threshold IS NULL OR itm >= $threshold) AND ($source = 'both' OR source = $source)"""
    return con.sql(
        f"""SELECT {select} FROM ({ranked}) AS c {join}
            WHERE $top_k IS NULL OR c.place <= $top_k
            ORDER BY c.shard, c.key, {'c.place' if top_k else 'c.caption_index'}""",
        params={"threshold": threshold, "source": source, "top_k": top_k},
    ).to_arrow_table()


def summary(con: duckdb.DuckDBPyConnection, threshold: float = 0.5) -> dict:
    """Counts a curator looks at first: samples by status and error type, and what the filter keeps."""
    totals = con.execute("""
        SELECT count(*) FILTER (WHERE key IS NOT NULL), count(*) FILTER (WHERE status = 'ok'),
               count(DISTINCT shard), avg(web_itm), avg(list_avg(list_transform(synthetic, lambda s: s.itm)))
        FROM samples""").fetchall()[0]
    errors = dict(con.execute("""SELECT error_type, count(*) FROM samples WHERE status = 'error'
                                  GROUP BY 1 ORDER BY 2 DESC, 1""").fetchall())
    kept = dict(con.execute("""SELECT source, count(*) FROM captions WHERE itm >= ? GROUP BY 1""",
                            [threshold]).fetchall())
    with_web = con.execute("SELECT count(*) FROM captions WHERE source = 'web'").fetchall()[0][0]
    return {"samples": totals[0], "ok": totals[1], "shards": totals[2], "mean_web_itm": totals[3],
            "mean_synthetic_itm": totals[4], "errors": errors, "threshold": threshold,
            "web_captions": with_web, "web_kept": kept.get("web", 0), "synthetic_kept": kept.get("synthetic", 0)}


def print_summary(run: str, threshold: float = 0.5, examples: int = 5) -> None:
    con = open_run(run)
    s = summary(con, threshold)
    print(f"\nDuckDB over {run}: {s['samples']} samples in {s['shards']} shards, {s['ok']} ok")
    print(f"  errors by type: {s['errors'] or 'none'}")
    print(f"  filter at ITM >= {threshold}: web captions kept {s['web_kept']}/{s['web_captions']}, "
          f"synthetic captions kept {s['synthetic_kept']}")
    rows = con.execute("""SELECT key, source, itm, text FROM captions ORDER BY shard, key, caption_index
                          LIMIT ?""", [examples]).fetchall()
    for key, source, itm, text in rows:
        print(f"  {key} {source:9s} itm={itm:.3f}  {text}")
