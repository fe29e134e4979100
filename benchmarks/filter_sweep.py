"""The filter's operating point: fine-tune filters from a loop's base model with other epochs, false-negative margins
and seeds, and judge each at BLIP's threshold (p(match) >= 0.5) on the held-out web shards of a validation world,
drawn with another seed than the loop's, so the choice is not made on the data the report judges.

    .venv/bin/python benchmarks/filter_sweep.py runs/bootstrap '{"epochs": 15, "margin": 0.15}' '{"epochs": 10}' ...

Each variant is a JSON object with any of epochs, margin, lr, batch_size and seed (default: the loop's, seed 0), and
clean_images: fine-tune on a clean set of that many images drawn as the run's world draws its own (same seed and
stream, so a larger set holds the smaller one), built under WORKDIR/filter-sweep/. The filters and their CapFilt runs
go under WORKDIR/filter-sweep/ (a variant already there is judged again, not retrained); the validation world (seed
1, 8 x 500 held-out samples, as many as the loop's own) under worlds/val1 (`--validation DIR --validation-shards N
--validation-per-shard M` for another). Prints one line per variant: clean captions kept, each noise kind removed,
the worst kind (rates of both with their 95% intervals), ROC AUC.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.sampling_config import Sampling
from pipelines.config import CapFiltConfig
from pipelines.ray_runner import run_capfilt
from shapeworld import annotated, evidence
from shapeworld.build import MARKER, ensure_world, stream
from training.bootstrap import LoopSettings
from training.job import FALSE_NEGATIVE_MARGIN, TrainJob, run_worker

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {"epochs": LoopSettings.filter_epochs, "margin": FALSE_NEGATIVE_MARGIN["filter"],
            "lr": LoopSettings.filter_lr, "batch_size": LoopSettings.filter_batch_size, "seed": 0}  # the loop's filter


def judge(run: Path, variant: dict, world: Path, samples: int) -> dict:
    settings = {**DEFAULTS, **variant}
    name = "-".join(f"{key}{settings[key]}" for key in sorted(settings))
    out = run / "filter-sweep" / name
    if not (out / "retrieval" / "config.json").is_file():
        folder = run / "world" / "clean"
        if "clean_images" in settings:
            folder = run / "filter-sweep" / f"clean{settings['clean_images']}"
            if not (folder / "annotations" / "train.json").is_file():
                seed = json.loads((run / "world" / MARKER).read_text(encoding="utf-8"))["seed"]
                annotated.write_clean(folder, stream(seed, "clean"), int(settings["clean_images"]))
        clean = {"format": "coco_karpathy", "annotations": str(folder / "annotations/train.json"),
                 "images": str(folder / "images")}
        job = TrainJob(task="filter", data=clean, init=str(run / "base"), output=str(out), epochs=settings["epochs"],
                       lr=settings["lr"], false_negative_margin=settings["margin"], seed=settings["seed"],
                       batch_size=settings["batch_size"])
        run_worker(job, out, log=lambda line: None)
    capfilt = out / f"capfilt-val{samples}"  # one per size of the validation world
    if not (capfilt / "summary.json").is_file():
        summary = run_capfilt(CapFiltConfig(input=str(world / "heldout" / "*.tar"), output=str(capfilt),
                                            captioner=str(run / "captioner" / "caption"),
                                            filter=str(out / "retrieval"), batch_size=64,
                                            sampling=Sampling(num_captions=1, seed=0)), log=lambda line: None)
        (capfilt / "summary.json").write_text(json.dumps(summary) + "\n", encoding="utf-8")
    quality = evidence.filter_quality(capfilt, world / "heldout" / "truth.parquet", 0.5)
    removed = {kind: entry["removed"] for kind, entry in quality["kinds"].items() if kind != "clean"}
    worst = min(removed, key=removed.get)
    clean = quality["kinds"]["clean"]

    def interval(entry: dict) -> str:
        return "[{:.3f}, {:.3f}]".format(*entry["interval"])

    line = (f"{name}: clean kept {clean['kept']:.3f} {interval(clean)}, worst removed {removed[worst]:.3f} "
            f"{interval(quality['kinds'][worst])} ({worst}), AUC {quality['auc']:.3f}; "
            + ", ".join(f"{k} {v:.3f}" for k, v in removed.items()))
    print(line, flush=True)
    return quality


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", help="a finished loop's workdir (jobs/bootstrap.py --workdir)")
    p.add_argument("variants", nargs="+", help="JSON objects, e.g. '{\"epochs\": 10}'")
    p.add_argument("--validation", default=str(ROOT / "worlds" / "val1"), help="the validation world's folder")
    p.add_argument("--validation-shards", type=int, default=8)
    p.add_argument("--validation-per-shard", type=int, default=500)
    args = p.parse_args(argv)
    run = Path(args.workdir).resolve()
    if not (run / "base" / "train.json").is_file() or not (run / "captioner" / "caption").is_dir():
        raise SystemExit(f"{run} holds no finished loop's base model and captioner (jobs/bootstrap.py --workdir)")
    variants = []
    for text in args.variants:
        try:
            variant = json.loads(text)
        except ValueError as exc:
            raise SystemExit(f"variant {text!r} is not JSON: {exc}") from None
        if not isinstance(variant, dict) or set(variant) - {*DEFAULTS, "clean_images"}:
            raise SystemExit(f"variant {text!r}: a JSON object with any of {', '.join([*DEFAULTS, 'clean_images'])}")
        variants.append(variant)
    sizes = {"heldout_shards": args.validation_shards, "heldout_per_shard": args.validation_per_shard}
    world = ensure_world(args.validation, 1, "small", sizes)
    for variant in variants:
        judge(run, variant, world, args.validation_shards * args.validation_per_shard)


if __name__ == "__main__":
    main(sys.argv[1:])
