r"""Training job: pre-train a small BLIP on webdataset shards, or fine-tune a captioner, a filter or a VQA model.

    python jobs/train.py classify --shards 'world/labelled/*.tar' --output runs/vit --epochs 12
    python jobs/train.py pretrain --shards 'world/web/{00000..00007}.tar' --init runs/vit --output runs/pre --epochs 4
    python jobs/train.py caption --annotations world/clean/annotations/train.json --images world/clean/images \
        --init runs/pre --output runs/captioner
    python jobs/train.py filter  --annotations ... --images ... --init runs/pre --output runs/filter
    python jobs/train.py vqa --questions world/clean/vqa/questions.json --annotations world/clean/vqa/annotations.json \
        --images world/clean/images --init runs/pre --output runs/vqa
    python jobs/train.py nlvr --annotations world/train/nlvr2/train.json --images world/train/nlvr2/images \
        --init runs/pre --output runs/nlvr
    python jobs/train.py grounding --refs 'world/train/refcoco/refs(unc).json' \
        --instances world/train/refcoco/instances.json --images world/train/refcoco/images --init runs/pre \
        --output runs/grounding

Objectives (BLIP's): pretrain = ITC + ITM with hard negatives + LM; caption = LM; filter = ITC + ITM; vqa = the
answer decoder's LM; nlvr = NLVR2's cross-entropy (BLIP's BLIP_NLVR: both images' cross-attention started from
the ITM encoder's); grounding = the toolbox's BlipGrounding loss (the box's 4 bin tokens, their cross-entropy
weighted by L1 x 4 and 1 - GIoU x 2; the decoder started from the captioner's, the vocabulary grown by the box
tokens). classify pre-trains the vision encoder alone on labelled shards (KEY.jpg + KEY.json
{"labels": {name: class index}}): a cross-entropy per label on its [CLS] state, as BLIP starts from a ViT pre-trained
on ImageNet; a pretrain with `--init` on its output starts from that encoder. Runs on Ray Train (one CPU worker by
default; `--workers N` on a cluster, GPUs used when the cluster has them). OUTPUT receives the exported roles in
Hugging Face layout (caption/, retrieval/, vqa/, nlvr/ or grounding/: give them to jobs/capfilt.py or jobs/evaluate.py as model names;
vision/ for classify) and train.json (recipe, data counts, loss history).
Exit codes: 0 done, 2 a usage, data or model problem (one `error:` line), 130 interrupted (nothing exported).
`capfilt train ...` is the same command.
"""
from __future__ import annotations

import argparse
import sys

from evaluation.datasets import DatasetFormatError
from jobs.cli import Parser, UsageError, entry
from models.names import ModelLoadError
from pipelines.sources import LocationError
from training.job import TASK_OBJECTIVES, TrainJob, check_inputs

DEFAULT_EPOCHS = {"classify": 12, "pretrain": 4, "caption": 8, "filter": 8, "vqa": 8, "nlvr": 5, "grounding": 8}
DEFAULT_LR = {"classify": 2e-3, "pretrain": 5e-4, "caption": 2e-4, "filter": 2e-4, "vqa": 2e-4, "nlvr": 5e-4,
              "grounding": 5e-4}
INTERRUPTED = "interrupted: nothing was exported; run the same command again to train from the start"


def _per_task(table: dict) -> str:
    return ", ".join(f"{task} {value:g}" for task, value in table.items())


def parse_args(argv, prog: str = "jobs/train.py"):
    p = Parser(prog=prog, description=__doc__)
    p.add_argument("task", choices=sorted(TASK_OBJECTIVES), help="what to train")
    data = p.add_argument_group("data and output")
    data.add_argument("--output", required=True, help="folder for the exported model(s) and train.json")
    data.add_argument("--shards", help="pretrain, classify: webdataset shards (path, glob, brace range or URL)")
    data.add_argument("--annotations", help="caption / filter: COCO-Karpathy JSON; vqa: the annotations JSON; nlvr: "
                                            "NLVR2 JSON lines")
    data.add_argument("--questions", help="vqa: the questions JSON (VQAv2 format)")
    data.add_argument("--refs", help="grounding: RefCOCO refs (refs(unc).p or its JSON)")
    data.add_argument("--instances", help="grounding: RefCOCO instances.json")
    data.add_argument("--split", default="train", help="grounding: the refs' split to train on")
    data.add_argument("--images", help="the folder the annotation files' image paths are relative to")
    model = p.add_argument_group("model")
    model.add_argument("--init", help="a previous training job's output folder (required to fine-tune; pretrain: a "
                                      "classify job's, for its vision encoder; default: a fresh model from --seed)")
    model.add_argument("--size", default="small", help="model shape for pretrain (models/tiny.py SIZES)")
    model.add_argument("--tie-text", action=argparse.BooleanOptionalAction, default=TrainJob.tie_text,
                       help="pretrain: share the text encoder's layers but self-attention with the decoder, as BLIP "
                            "does")
    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=float, help=f"default per task: {_per_task(DEFAULT_EPOCHS)}")
    recipe.add_argument("--batch-size", type=int, default=64, help="samples per step")
    recipe.add_argument("--lr", type=float, help=f"peak learning rate; default per task: {_per_task(DEFAULT_LR)}")
    recipe.add_argument("--seed", type=int, default=0, help="initial weights (pretrain) and data order")
    recipe.add_argument("--false-negative-margin", type=float,
                        help="ITM hard negatives: skip candidates whose ITC cosine similarity comes within this of "
                             "the true pair's (default 0.15 for filter, 0 otherwise)")
    resources = p.add_argument_group("resources")
    resources.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    resources.add_argument("--threads", type=int, help="torch threads per worker (default: the worker's CPUs)")
    return p.parse_args(argv)


def job_from_args(args) -> TrainJob:
    if args.task in ("pretrain", "classify"):
        data = {"format": "webdataset", "shards": args.shards}
    elif args.task == "vqa":
        data = {"format": "vqa", "questions": args.questions, "annotations": args.annotations, "images": args.images}
    elif args.task == "nlvr":
        data = {"format": "nlvr2", "annotations": args.annotations, "images": args.images}
    elif args.task == "grounding":
        data = {"format": "refcoco", "refs": args.refs, "instances": args.instances, "images": args.images,
                "split": args.split}
    else:
        data = {"format": "coco_karpathy", "annotations": args.annotations, "images": args.images}
    return TrainJob(task=args.task, data=data, output=args.output, epochs=args.epochs or DEFAULT_EPOCHS[args.task],
                    init=args.init, seed=args.seed, batch_size=args.batch_size, lr=args.lr or DEFAULT_LR[args.task],
                    size=args.size, workers=args.workers, threads=args.threads,
                    false_negative_margin=args.false_negative_margin, tie_text=args.tie_text)


def main(argv=None, prog: str = "jobs/train.py") -> int:
    try:
        job = job_from_args(parse_args(argv, prog))
        check_inputs(job)  # files, shards and --init, before torch or Ray is imported
        from training.ray_train import fit  # ray is imported only once the arguments are known to be right

        record = fit(job)
    except (UsageError, ValueError, DatasetFormatError, ModelLoadError, LocationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = record["history"][-1] if record["history"] else {}
    print(f"trained {job.task} in {record['seconds']}s on {record['samples']} samples: "
          + ", ".join(f"{k} {last[k]}" for k in ("itc", "itm", "lm", "vqa", "classify", "nlvr", "grounding")
                 if k in last)
          + f" -> {job.output}")
    return 0


if __name__ == "__main__":
    sys.exit(entry(main, interrupted=INTERRUPTED))
