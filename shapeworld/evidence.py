"""What a CapFilt run over shape-world shards did, measured against the world's ground truth (truth.parquet).

- The filter: per noise kind, the fraction of web captions it removes (ITM p(match) below the threshold, or no
  caption at all) and, for clean captions, the fraction it keeps, each with its 95% Wilson interval (a noise kind
  is about 7% of the held-out samples: at 1,000 samples, 67 captions, whose rate is known to about +-7 points); the
  ROC AUC of p(match) for clean vs noisy.
- The captioner: the fraction of synthetic captions that name the right count, colour, shape and position, before
  and after the filter.
Read with DuckDB straight from the run's Parquet, as a curator would.
"""
from __future__ import annotations

import duckdb
import numpy as np

from pipelines.select import committed_files
from shapeworld.captions import parse


def connect(run, truth) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.read_parquet(committed_files(str(run))).create_view("samples")  # the committed shards, as the markers say
    con.read_parquet(str(truth)).create_view("truth")
    return con


def filter_quality(run, truth, threshold: float = 0.5) -> dict:
    """{'kinds': {kind: {'samples', 'removed' or 'kept', 'interval'}}, 'auc', 'samples'} for the web captions."""
    con = connect(run, truth)
    rows = con.execute("""
        SELECT t.noise, s.web_itm, s.status
        FROM truth t LEFT JOIN samples s ON s.shard = t.shard AND s.key = t.key""").fetchall()
    unmatched = sum(1 for _, _, status in rows if status is None)
    if unmatched:
        raise ValueError(f"{unmatched} truth rows have no row in the run {run}: not the run of these shards")
    kinds: dict[str, dict] = {}
    for noise, itm, _ in rows:
        entry = kinds.setdefault(noise, {"samples": 0, "passed": 0})
        entry["samples"] += 1
        entry["passed"] += int(itm is not None and itm >= threshold)
    table = {}
    for noise, entry in sorted(kinds.items()):
        n, passed = entry["samples"], entry["passed"]
        table[noise] = ({"samples": n, "kept": passed / n, "interval": wilson(passed, n)} if noise == "clean"
                        else {"samples": n, "removed": 1.0 - passed / n, "interval": wilson(n - passed, n)})
    scores = np.array([itm if itm is not None else -1.0 for _, itm, _ in rows])  # no caption: ranked lowest
    labels = np.array([noise == "clean" for noise, _, _ in rows])
    return {"threshold": threshold, "samples": len(rows), "kinds": table, "auc": roc_auc(scores, labels)}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate of `successes` in `n` trials (sound near 0 and 1, unlike +-2 sd)."""
    if n == 0:
        return (0.0, 1.0)
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half)."""
    positives, negatives = scores[labels], scores[~labels]
    if not len(positives) or not len(negatives):
        return None
    order = np.argsort(np.concatenate([positives, negatives]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([positives, negatives])[order]
    position = 0
    while position < len(values):  # average ranks over ties
        end = position
        while end + 1 < len(values) and values[end + 1] == values[position]:
            end += 1
        ranks[order[position:end + 1]] = (position + end) / 2 + 1
        position = end + 1
    positive_ranks = ranks[:len(positives)].sum()
    return float((positive_ranks - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def caption_quality(run, truth, threshold: float = 0.5) -> dict:
    """Synthetic captions that are fully correct (count, colour, shape and position), all and kept by the filter."""
    con = connect(run, truth)
    rows = con.execute("""
        SELECT t.shape, t.color, t.count, t.position, c.text, c.itm
        FROM truth t JOIN (SELECT shard, key, unnest(synthetic, recursive := true) FROM samples) c
          ON c.shard = t.shard AND c.key = t.key""").fetchall()
    total = correct = kept = kept_correct = 0
    examples = []
    for shape, color, count, position, text, itm in rows:
        right = parse(text) == {"count": count, "color": color, "shape": shape, "position": position}
        total += 1
        correct += right
        if itm is not None and itm >= threshold:
            kept += 1
            kept_correct += right
        if len(examples) < 8:
            examples.append({"caption": text, "truth": f"{count} {color} {shape} {position}", "correct": right})
    return {"captions": total, "correct": correct / total if total else None,
            "kept": kept, "kept_correct": kept_correct / kept if kept else None, "examples": examples}
