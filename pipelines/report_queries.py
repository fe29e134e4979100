"""The report's DuckDB queries over a run (`pipelines.select.open_run`): each a single scan, each bounded in memory
whatever the run's size (aggregates into fixed bins, top-n aggregates, a few sampled images), so a report of
millions of rows takes seconds.

ITM bins are the in-page threshold's steps: bin i holds the scores with t_i <= itm < t_(i+1), t_i = i / 100,
compared as keep_list compares (a float score against a double), so the captions kept at t_i are exactly the count
of bins i and above.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa

from pipelines.select import distinct_synthetic, keep_list

STEPS = 100  # the ITM grid: t_i = i / STEPS
COSINE_BINS = 200  # ITC and CLIP cosines: 0.01 bins over [-1, 1]


def itm_bin(column: str) -> str:
    """SQL: the grid bin of an ITM score, by the comparisons themselves (floor() alone may round across a step)."""
    k = f"CAST(floor({column} * {STEPS}) AS INTEGER)"
    fixed = (f"{k} - CAST({column} < CAST({k} AS DOUBLE) / {STEPS} AS INTEGER)"
             f" + CAST({column} >= CAST({k} + 1 AS DOUBLE) / {STEPS} AS INTEGER)")
    return f"CASE WHEN {column} IS NOT NULL THEN least(greatest({fixed}, 0), {STEPS}) END"  # least() skips NULLs


def grid_thresholds(threshold: float | None) -> list[float]:
    """t_0 ... t_100, and the report's own threshold when it is not one of them."""
    steps = {i / STEPS for i in range(STEPS + 1)}
    if threshold is not None:
        steps.add(threshold)
    return sorted(steps)


def run_totals(con: duckdb.DuckDBPyConnection) -> dict:
    samples, ok, shards = con.execute("""SELECT count(*) FILTER (WHERE key IS NOT NULL),
                                                count(*) FILTER (WHERE status = 'ok'), count(DISTINCT shard)
                                         FROM samples""").fetchone()
    return {"samples": samples, "ok": ok, "errors": samples - ok, "shards": shards}


def caption_bins(con: duckdb.DuckDBPyConnection, threshold: float | None) -> dict:
    """One scan of the captions: per source, ITM counts by grid bin, ITC and CLIP counts by 0.01 bin (index 0 is
    -1.0), and the exact count at `threshold`."""
    cosine = (f"CASE WHEN {{0}} IS NOT NULL THEN least(greatest(CAST(floor(({{0}} + 1) * {COSINE_BINS // 2}) "
              f"AS INTEGER), 0), {COSINE_BINS - 1}) END")
    rows = con.execute(f"""
        SELECT grouping(ib, cb, lb) AS g, source, ib, cb, lb, count(*), count(*) FILTER (WHERE itm >= $t)
        FROM (SELECT source, itm, {itm_bin('itm')} AS ib, {cosine.format('itc')} AS cb,
                     {cosine.format('clip')} AS lb FROM captions)
        GROUP BY GROUPING SETS ((source, ib), (source, cb), (source, lb))""", {"t": threshold}).fetchall()
    out = {s: {"itm": [0] * (STEPS + 1), "itc": [0] * COSINE_BINS, "clip": [0] * COSINE_BINS, "at_threshold": 0}
           for s in ("web", "synthetic")}
    for g, source, ib, cb, lb, n, at in rows:
        counts = out[source]
        if g == 0b011 and ib is not None:  # grouped by ib (cb and lb rolled up)
            counts["itm"][ib] += n
            counts["at_threshold"] += at
        elif g == 0b101 and cb is not None:
            counts["itc"][cb] += n
        elif g == 0b110 and lb is not None:
            counts["clip"][lb] += n
    return out


def image_bins(con: duckdb.DuckDBPyConnection, source: str, threshold: float | None) -> tuple[list[int], int]:
    """Images by the grid bin of their best ITM among the captions `source` allows (one scan of the rows, no
    unnest), and the exact count at `threshold`."""
    best = best_itm(source)
    rows = con.execute(f"""SELECT {itm_bin('best')}, count(*), count(*) FILTER (WHERE best >= $t)
                           FROM (SELECT {best} AS best FROM samples WHERE status = 'ok') WHERE best IS NOT NULL
                           GROUP BY 1""", {"t": threshold}).fetchall()
    counts = [0] * (STEPS + 1)
    for b, n, _ in rows:
        counts[b] += n
    return counts, sum(at for _, _, at in rows)


def best_itm(source: str) -> str:
    """SQL over a samples row: the best ITM of its captions in the view `captions` that `source` allows."""
    web = "CASE WHEN web_itm IS NOT NULL THEN web_itm END"
    synthetic = f"list_max(list_transform({distinct_synthetic()}, lambda c: c.itm))"
    return {"web": web, "synthetic": synthetic, "both": f"greatest({web}, {synthetic})"}[source]


def kept_curve(con: duckdb.DuckDBPyConnection, source: str, threshold: float | None, bins: dict,
               thresholds: list[float]) -> dict[str, list[int]]:
    """At each threshold, what `keep --threshold t --source S` keeps: captions by source, and images."""
    images, images_at = image_bins(con, source, threshold)

    def at_steps(counts: list[int], at: int) -> list[int]:
        above = [sum(counts[i:]) for i in range(STEPS + 1)]  # kept at t_i: bins i and above
        return [above[round(t * STEPS)] if t in GRID else at for t in thresholds]

    web = at_steps(bins["web"]["itm"], bins["web"]["at_threshold"])
    synthetic = at_steps(bins["synthetic"]["itm"], bins["synthetic"]["at_threshold"])
    return {"web": web, "synthetic": synthetic, "both": [a + b for a, b in zip(web, synthetic)],
            "images": at_steps(images, images_at)}


GRID = frozenset(i / STEPS for i in range(STEPS + 1))


def around_the_cut(con: duckdb.DuckDBPyConnection, selection: dict, n: int) -> list[tuple[str, list[tuple]]]:
    """(bucket name, [(shard, key), ...]) of distinct images, at most `n` each, from one scan with top-n
    aggregates: for a threshold, the captions nearest it on each side and the lowest and highest ITM; for a top-k
    selection, the lowest and highest of its score and a hash-ordered sample. Ties go by a hash of the key, so the
    same run gives the same report."""
    by = selection["by"] if selection["top_k"] else "itm"
    allowed = "TRUE" if selection["source"] == "both" else "source = $source"
    item, tie = "struct_pack(shard := shard, key := key)", "hash(shard || '/' || key)"
    order = f"struct_pack(v := {by}, h := {tie})"
    parts = [("lowest", f"arg_min({item}, {order}, {4 * n})")]
    if selection["top_k"] is None:
        parts += [("just below the threshold", f"arg_max({item}, {order}, {4 * n}) FILTER (WHERE itm < $t)"),
                  ("just above the threshold", f"arg_min({item}, {order}, {4 * n}) FILTER (WHERE itm >= $t)")]
    else:
        parts += [("a sample", f"arg_min({item}, {tie}, {4 * n})")]
    parts += [("highest", f"arg_max({item}, {order}, {4 * n})")]
    params = {"t": selection["threshold"]} if selection["top_k"] is None else {}
    if selection["source"] != "both":
        params["source"] = selection["source"]
    found = con.execute(f"SELECT {', '.join(sql for _, sql in parts)} FROM captions "
                        f"WHERE {by} IS NOT NULL AND {allowed}", params).fetchone()
    buckets, seen = [], set()
    for (name, _), items in zip(parts, found):
        picked = []
        for entry in items or []:
            key = (entry["shard"], entry["key"])
            if key not in seen and len(picked) < n:
                seen.add(key)
                picked.append(key)
        buckets.append((name, picked))
    return buckets


def rescued(con: duckdb.DuckDBPyConnection, threshold: float, n: int) -> tuple[int, list[tuple]]:
    """Images with no web caption kept at `threshold` (below it, or none) and a synthetic one kept: their count over
    the run and `n` of them, from one scan of the rows."""
    synthetic = best_itm("synthetic")
    count, items = con.execute(f"""
        SELECT count(*), arg_min(struct_pack(shard := shard, key := key), hash(shard || '/' || key), {n})
        FROM samples WHERE status = 'ok' AND coalesce(web_itm < $t, TRUE) AND {synthetic} >= $t""",
                               {"t": threshold}).fetchone()
    return count, [(e["shard"], e["key"]) for e in items or []]


def hashed_sample(con: duckdb.DuckDBPyConnection, n: int) -> list[tuple]:
    """`n` ok images in the order of a hash of their key: a sample of the run, the same every time."""
    items, = con.execute(f"""SELECT arg_min(struct_pack(shard := shard, key := key), hash(shard || '/' || key), {n})
                             FROM samples WHERE status = 'ok'""").fetchone()
    return [(e["shard"], e["key"]) for e in items or []]


def images(con: duckdb.DuckDBPyConnection, keys: list[tuple], selection: dict) -> dict[tuple, dict]:
    """The images named, each with its captions from the view `captions` (in caption_index order) and whether the
    selection keeps each: keep_list itself decides, run over these images' captions only (a selection is per image,
    so narrowing it changes nothing of what it keeps). Two scans, whatever the number of keys."""
    if not keys:
        return {}
    con.execute("CREATE OR REPLACE TEMP TABLE picked (shard VARCHAR, key VARCHAR)")
    con.executemany("INSERT INTO picked VALUES (?, ?)", sorted(set(keys)))
    out = {}
    for shard, key, url, fmt, width, height in con.execute(
            """SELECT s.shard, s.key, s.url, s.image_format, s.width, s.height
               FROM samples AS s SEMI JOIN picked AS p ON s.shard = p.shard AND s.key = p.key
               WHERE s.status = 'ok'""").fetchall():
        out[(shard, key)] = {"shard": shard, "key": key, "url": url, "image_format": fmt, "size": (width, height),
                             "captions": []}
    captions = con.sql("""SELECT c.* FROM captions AS c SEMI JOIN picked AS p ON c.shard = p.shard AND c.key = p.key
                          ORDER BY c.shard, c.key, c.caption_index""").to_arrow_table()
    kept = {(r["shard"], r["key"], r["caption_index"]) for r in narrowed_keep(captions, selection)}
    for c in captions.to_pylist():
        out[(c["shard"], c["key"])]["captions"].append(
            {"source": c["source"], "index": c["caption_index"], "text": c["text"], "itm": c["itm"], "itc": c["itc"],
             "clip": c["clip"], "kept": (c["shard"], c["key"], c["caption_index"]) in kept})
    return out


def narrowed_keep(captions: pa.Table, selection: dict) -> list[dict]:
    narrow = duckdb.connect()
    narrow.register("narrowed", captions)
    narrow.execute("CREATE VIEW captions AS SELECT * FROM narrowed")
    return keep_list(narrow, selection["threshold"], selection["source"], top_k=selection["top_k"],
                     by=selection["by"]).to_pylist()


def error_examples(con: duckdb.DuckDBPyConnection, n: int) -> list[tuple[str, int, list[dict]]]:
    """(error_type, count, the first `n` by shard and key) for each error type, most frequent first."""
    return con.execute(f"""
        SELECT error_type, count(*),
               arg_min(struct_pack(shard := shard, key := key, message := error_message),
                       struct_pack(s := shard, k := key), {n})
        FROM samples WHERE status = 'error' GROUP BY 1 ORDER BY 2 DESC, 1""").fetchall()
