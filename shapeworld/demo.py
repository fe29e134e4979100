"""The README demo's data and its read-out: shape-world web shards whose noise is known, and what CapFilt did.

`jobs/capfilt.py --demo` writes the shards here, runs CapFilt with the shipped shape-world models
(models/checkpoints/shapes_*) and prints `report`: examples of web captions kept and removed, synthetic captions,
and, per noise kind, the share of web captions the filter removed, from DuckDB over the run joined with the truth.
"""
from __future__ import annotations

from pathlib import Path

from shapeworld import evidence
from shapeworld.captions import parse
from shapeworld.web import TRUTH_FILE, write_web

STREAM = 9  # a draw of its own: none of the world's parts (shapeworld/build.py STREAMS) sees these scenes


def build_demo_shards(folder: Path, seed: int = 0, shards: int = 2, per_shard: int = 40) -> list[Path]:
    """`shards` img2dataset-style tars of shape scenes with web-like captions (about 40% noisy), and truth.parquet."""
    write_web(Path(folder), seed, STREAM, shards, per_shard)
    return sorted(Path(folder).glob("*.tar"))


def report(run: str, folder: Path, threshold: float = 0.5, examples: int = 6, out=print) -> dict:
    """Print what the filter and the captioner did on the demo shards, judged against the truth; return the figures."""
    truth = Path(folder) / TRUTH_FILE
    rows = evidence.connect(run, truth).execute("""
        SELECT t.key, t.noise, s.web_caption, s.web_itm, s.synthetic[1].text, s.synthetic[1].itm,
               t.count, t.color, t.shape, t.position
        FROM truth t JOIN samples s USING (shard, key) WHERE s.status = 'ok'
        ORDER BY t.key LIMIT ?""", [examples]).fetchall()
    out(f"\nExamples: [true noise kind] web caption, the filter's p(match) (kept at >= {threshold}), and the first "
        "synthetic caption")
    for key, noise, web, web_itm, synthetic, synthetic_itm, *truth_values in rows:
        verdict = "kept" if web_itm is not None and web_itm >= threshold else "removed"
        right = parse(synthetic) == dict(zip(("count", "color", "shape", "position"), truth_values))
        out(f"  {key} [{noise}] {web!r}: {_score(web_itm)} {verdict}")
        out(f"  {' ' * len(key)} synthetic {synthetic!r}: {_score(synthetic_itm)} ({'right' if right else 'wrong'})")
    quality = evidence.filter_quality(run, truth, threshold)
    captions = evidence.caption_quality(run, truth, threshold)
    out(f"\nThe filter against the truth ({quality['samples']} web captions, ROC AUC {quality['auc']:.3f}):")
    for kind, entry in quality["kinds"].items():
        share, verb = (entry["kept"], "kept") if kind == "clean" else (entry["removed"], "removed")
        out(f"  {kind:15s} {entry['samples']:4d} captions, {share:6.1%} {verb}")
    kept = f", {captions['kept_correct']:.1%} of the {captions['kept']} kept" if captions["kept"] else ""
    out(f"Synthetic captions fully correct: {captions['correct']:.1%} of {captions['captions']}{kept}")
    return {"filter": quality, "captions": captions}


def _score(itm: float | None) -> str:
    return "no caption" if itm is None else f"{itm:.2f}"
