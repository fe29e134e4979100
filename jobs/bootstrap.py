r"""The bootstrapping loop of BLIP on the shape world, end to end, with a report of the evidence.

    python jobs/bootstrap.py --workdir runs/bootstrap            # the full loop (see training/bootstrap.py)
    python jobs/bootstrap.py --workdir runs/quick --quick        # a reduced loop: small world, tiny models, 1 seed

Builds the world, pre-trains a base model on the noisy web shards, fine-tunes a captioner, a filter and a VQA model
from it on the clean set, runs CapFilt over the web shards and exports the bootstrapped dataset, pre-trains fresh
models on the raw and on the bootstrapped data (one each per seed), evaluates, and writes WORKDIR/REPORT.md and
WORKDIR/report.json. Stages already done in WORKDIR are skipped (re-run to resume).
`--ship` then copies the fine-tuned models into models/checkpoints/ (the zoo's shapes_* names).
Exit codes: 0 done, 2 a usage or data problem (one `error:` line), 130 interrupted (re-run to resume).
`capfilt bootstrap ...` is the same command.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.datasets import DatasetFormatError
from evaluation.suite import SuiteError
from jobs.cli import Parser, UsageError, entry
from models.names import ModelLoadError
from pipelines.sources import LocationError

CHECKPOINTS = Path(__file__).resolve().parents[1] / "models" / "checkpoints"
# The reduced loop checks the machinery, not quality: tiny models trained for seconds score near chance, so its
# filter threshold sits under ITM's prior (1/3 of the pairs it is trained on match) to leave captions to export.
QUICK = dict(world_size="small", seeds=(0,), model_size="tiny", vision_epochs=2, base_epochs=2, pretrain_epochs=2,
             caption_epochs=2, filter_epochs=2, filter_batch_size=16, vqa_epochs=1, nlvr_epochs=1, grounding_epochs=1,
             batch_size=16, eval_limit=20, threshold=0.2)


INTERRUPTED = "interrupted: the stages done are kept; run the same command again to resume"


def parse_args(argv, prog: str = "jobs/bootstrap.py"):
    p = Parser(prog=prog, description=__doc__)
    p.add_argument("--workdir", required=True, help="folder for the world, the models, the runs and the report")
    p.add_argument("--seeds", help="comma-separated pre-training seeds (default 0,1,2)")
    p.add_argument("--world-seed", type=int, default=0, help="the shape world's seed (scenes, captions, noise)")
    p.add_argument("--base-epochs", type=float, help="pre-training of the base model that bootstraps (default 10)")
    p.add_argument("--pretrain-epochs", type=float, help="pre-training of each compared model (default 2)")
    p.add_argument("--compare-from-vision", action=argparse.BooleanOptionalAction, default=None,
                   help="start the compared models from the pre-trained vision encoder too, as BLIP does (default: "
                        "off, a random one: from it retrieval saturated on the test set, RESULTS.md)")
    p.add_argument("--tie-text", action=argparse.BooleanOptionalAction, default=None,
                   help="pre-train with BLIP's encoder-decoder tie, all but self-attention shared (default: on)")
    p.add_argument("--quick", action="store_true", help="a reduced loop in a few minutes (what CI runs)")
    p.add_argument("--ship", action="store_true", help="copy the fine-tuned models to models/checkpoints/")
    return p.parse_args(argv)


def main(argv=None, prog: str = "jobs/bootstrap.py") -> int:
    try:
        args = parse_args(argv, prog)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from training.bootstrap import Loop, LoopSettings

    settings = dict(QUICK) if args.quick else {}
    if args.seeds:
        try:
            settings["seeds"] = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            print(f"error: --seeds takes comma-separated integers, got {args.seeds!r}", file=sys.stderr)
            return 2
    for name in ("base_epochs", "pretrain_epochs", "tie_text", "compare_from_vision"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    loop = Loop(LoopSettings(workdir=args.workdir, world_seed=args.world_seed, **settings))
    try:
        loop.run()
    except (ValueError, DatasetFormatError, ModelLoadError, LocationError, SuiteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.workdir) / "REPORT.md").read_text(encoding="utf-8"))
    if args.ship:
        for path in loop.ship(CHECKPOINTS):
            print(f"shipped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entry(main, interrupted=INTERRUPTED))
