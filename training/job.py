"""One training job described as data, and the work of one training worker (no Ray here: see ray_train.py).

A `TrainJob` says what to train (pretrain, or fine-tune a captioner, a filter, a VQA, NLVR2 or grounding model), on
which data, from which weights (a fresh seeded model, or the roles a previous job exported), and which roles to
export.
`run_worker` does the work of one worker; `training.ray_train.fit` runs it under Ray Train.

A job and its inputs are checked torch-free (`TrainJob`, `check_inputs`), so `jobs/train.py` answers a typo before
torch or Ray is imported; the functions that train import torch and the model code when they are called.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluation.datasets import DatasetFormatError
from evaluation.datasets.captions import read_coco_karpathy
from evaluation.datasets.nlvr import read_nlvr2
from evaluation.datasets.refcoco import read_refcoco
from evaluation.datasets.vqa import read_vqa
from pipelines.sources import expand_shards

# ITM's false-negative margin (cosine similarity), per task. The shape world's clean set holds 800 images of 288
# contents: a batch of 64 often holds two images of the same content, whose captions ITC ranks just below the true
# pair's. Drawn as negatives, they taught the filter to reject right captions (RESULTS.md). Pre-training keeps 0.
FALSE_NEGATIVE_MARGIN = {"filter": 0.15}
TASK_OBJECTIVES = {  # what each kind of training optimises
    "classify": ("classify",),  # pre-train the vision encoder on labelled images (the ImageNet role)
    "pretrain": ("itc", "itm", "lm"),
    "caption": ("lm",),  # fine-tune a captioner
    "filter": ("itc", "itm"),  # fine-tune a filter
    "vqa": ("vqa",),
    "nlvr": ("nlvr",),  # NLVR2's cross-entropy (models/task_models.py BlipForNlvr)
    "grounding": ("grounding",),  # the toolbox's weighted box-token loss (BlipForGrounding)
}

EXPORTS = {"classify": ("vision",), "pretrain": ("caption", "retrieval"), "caption": ("caption",),
           "filter": ("retrieval",), "vqa": ("vqa",), "nlvr": ("nlvr",), "grounding": ("grounding",)}
FINE_TUNING = ("caption", "filter", "vqa", "nlvr", "grounding")
DATA_FORMATS = {"webdataset": ("shards",), "coco_karpathy": ("annotations", "images"),
                "vqa": ("questions", "annotations", "images"), "nlvr2": ("annotations", "images"),
                "refcoco": ("refs", "instances", "images")}
TASK_FORMATS = {"vqa": "vqa", "nlvr": "nlvr2", "grounding": "refcoco"}  # tasks that train on data of their own


@dataclass
class TrainJob:
    task: str  # classify | pretrain | caption | filter | vqa | nlvr | grounding
    data: dict  # {"format": webdataset, "shards": spec} | {"format": coco_karpathy | vqa | nlvr2 | refcoco, ...}
    output: str
    epochs: float
    init: str | None = None  # a previous job's output folder; None: a fresh model from `seed`. A classify job's
    # output (a vision encoder alone) starts a pre-training: a fresh model from `seed` with that vision encoder
    seed: int = 0
    batch_size: int = 64
    lr: float = 5e-4
    size: str = "small"
    workers: int = 1
    threads: int | None = None
    precision: str = "auto"  # models.device.resolve_precision: bf16 autocast on CUDA and on CPUs with native bf16
    false_negative_margin: float | None = None  # None: FALSE_NEGATIVE_MARGIN for the task
    tie_text: bool = True  # pretrain from scratch: BLIP's encoder-decoder tie (training/model.py)
    recipe_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASK_OBJECTIVES:
            raise ValueError(f"unknown training task {self.task!r}; one of {', '.join(TASK_OBJECTIVES)}")
        form = self.data.get("format")
        if form not in DATA_FORMATS:
            raise ValueError(f"unknown data format {form!r}; one of {', '.join(DATA_FORMATS)}")
        missing = [k for k in DATA_FORMATS[form] if not self.data.get(k)]
        if missing:
            raise ValueError(f"{form} data needs {', '.join(missing)}")
        for task, own in TASK_FORMATS.items():
            if (self.task == task) != (form == own):
                raise ValueError(f"the {task} task trains on {own} data, and only it does")
        if self.task == "classify" and form != "webdataset":
            raise ValueError("the classify task trains on labelled webdataset shards (KEY.json {\"labels\": ...})")
        if self.task == "classify" and self.init is not None:
            raise ValueError("the classify task trains a fresh vision encoder: it takes no init")
        if self.task in FINE_TUNING and self.init is None:
            raise ValueError(f"fine-tuning ({self.task}) starts from a pre-trained model: give init (--init DIR)")

    def absolute(self) -> TrainJob:
        """This job with every local path made absolute: Ray Train runs the worker in a folder of its own, where a
        path relative to the caller's directory would name nothing."""
        def local(path: str) -> str:
            return path if "://" in path else os.path.abspath(path)

        data = {key: local(value) if key in DATA_FORMATS[self.data["format"]] else value
                for key, value in self.data.items()}
        if "shards" in data:  # a space-separated list, as jobs/capfilt.py takes
            data["shards"] = " ".join(local(part) for part in self.data["shards"].split())
        return dataclasses.replace(self, data=data, output=local(self.output),
                                   init=None if self.init is None else local(self.init))

    def recipe(self, device: str = "cpu"):
        import torch

        from models.device import resolve_precision
        from training.loop import Recipe

        bf16 = resolve_precision(self.precision, torch.device(device)) == "bf16"
        margin = self.false_negative_margin
        margin = FALSE_NEGATIVE_MARGIN.get(self.task, 0.0) if margin is None else margin
        return Recipe(TASK_OBJECTIVES[self.task], self.epochs, self.batch_size, self.lr, seed=self.seed, bf16=bf16,
                      false_negative_margin=margin, **self.recipe_overrides)

    def describe(self) -> dict:
        return asdict(self)


def initial_roles(folder) -> dict[str, str]:
    """The exported roles in a job's output folder, in the order that fills a trainee (vqa last: its encoder and
    decoder are the most trained when present), or {"vision": ...} for a classify job's. ValueError when it holds
    none."""
    folder = Path(folder)
    roles = {task: str(folder / task) for task in ("retrieval", "caption", "vqa", "vision")
             if (folder / task / "config.json").is_file()}
    if not roles:
        raise ValueError(f"{str(folder)!r} holds no exported model (caption/, retrieval/, vqa/ or vision/)")
    return roles if list(roles) == ["vision"] else {task: path for task, path in roles.items() if task != "vision"}


def check_init(job: TrainJob, vision_only: bool) -> None:
    """A classify job's output starts a pre-training, and only it: fine-tuning needs a pre-trained text side."""
    if vision_only and job.task != "pretrain":
        raise ValueError(f"{job.init!r} holds a vision encoder alone (a classify job's output): pre-train from it, "
                         f"then fine-tune ({job.task}) from the pre-trained model")


def check_inputs(job: TrainJob, trained_before: dict[str, str] | None = None) -> None:
    """Read the annotation files, list the shards and look for the initial model before any worker starts, so a
    missing or malformed input is one clear error (DatasetFormatError / LocationError / ValueError) in the driver,
    not a worker's traceback. `trained_before`: {output: task} of the jobs that run first (their outputs are not
    there yet)."""
    trained_before = trained_before or {}
    if job.init is not None:
        if job.init in trained_before:
            check_init(job, trained_before[job.init] == "classify")
        else:
            check_init(job, list(initial_roles(job.init)) == ["vision"])
    spec = job.data
    if spec["format"] == "webdataset":
        expand_shards(spec["shards"])
        return
    if not Path(spec["images"]).is_dir():
        raise DatasetFormatError(spec["images"], "the image folder does not exist")
    if spec["format"] == "coco_karpathy":
        read_coco_karpathy(spec["annotations"], spec["images"])
    elif spec["format"] == "nlvr2":
        read_nlvr2(spec["annotations"], spec["images"])
    elif spec["format"] == "refcoco":
        read_refcoco(spec["refs"], spec["instances"], spec.get("split", "train"), spec["images"])
    else:
        read_vqa(spec["questions"], spec["annotations"], image_dir=spec["images"])


def load_data(job: TrainJob, image_size: int):
    from training import data as datasets

    spec = job.data
    if job.task == "classify":
        return datasets.load_labelled(spec["shards"], image_size)
    if spec["format"] == "webdataset":
        return datasets.load_shards(spec["shards"], image_size)
    if spec["format"] == "coco_karpathy":
        return datasets.load_captions(spec["annotations"], spec["images"], image_size)
    if spec["format"] == "nlvr2":
        return datasets.load_nlvr(spec["annotations"], spec["images"], image_size)
    if spec["format"] == "refcoco":
        return datasets.load_boxes(spec["refs"], spec["instances"], spec["images"], image_size,
                                   spec.get("split", "train"))
    return datasets.load_questions(spec["questions"], spec["annotations"], spec["images"], image_size)


def build_model(job: TrainJob, classes: dict[str, int] | None = None):
    from training.model import BlipTrainee, GroundingTrainee, NlvrTrainee, VisionClassifier, world_config, world_tokenizer

    tokenizer = world_tokenizer()
    config = world_config(tokenizer, job.size)
    if job.task == "classify":
        return VisionClassifier.create(config, classes, job.seed), tokenizer
    roles = {} if job.init is None else initial_roles(job.init)
    if job.init is not None:
        check_init(job, list(roles) == ["vision"])
    if job.task in ("nlvr", "grounding"):
        return {"nlvr": NlvrTrainee, "grounding": GroundingTrainee}[job.task].from_base(roles)
    if job.init is None or list(roles) == ["vision"]:
        return BlipTrainee.create(config, job.seed, tie=job.tie_text, vision=roles.get("vision")), tokenizer
    return BlipTrainee.from_checkpoints(roles)


def run_worker(job: TrainJob, export_to, rank: int = 0, world_size: int = 1, log=print, on_epoch=None,
               wrap=None, device: str = "cpu") -> dict:
    """Train as worker `rank` of `world_size`, export the job's roles to `export_to` (every rank: the workers hold
    the same weights, and a later job may start from them on each) and return a record of the run (recipe, data
    counts, loss history, seconds). `wrap` prepares the model for distributed training."""
    import torch

    from models.tiny import SIZES
    from training.loop import train

    if job.threads:
        torch.set_num_threads(job.threads)
    started = time.time()
    if job.task == "classify":  # the classifier's heads have as many outputs as the data has classes
        data = load_data(job, SIZES[job.size]["image_size"])
        model, tokenizer = build_model(job, classes=data.classes())
    else:
        model, tokenizer = build_model(job)
        data = load_data(job, model.config.vision_config.image_size)
    log(f"train {job.task} ({Path(job.output).name}): {len(data)} samples ({_skipped(data)}), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {torch.get_num_threads()} threads, "
        f"worker {rank + 1}/{world_size}")
    model.to(device)
    trained = wrap(model) if wrap else model
    recipe = job.recipe(str(device))
    history = train(trained, tokenizer, data, recipe, log=log, rank=rank, world_size=world_size, on_epoch=on_epoch)
    model.to("cpu")
    record = {"job": job.describe(), "recipe": recipe.describe(), "device": str(device), "samples": len(data),
              "skipped": getattr(data, "skipped", {}), "history": history, "seconds": round(time.time() - started, 1)}
    for task in EXPORTS[job.task]:
        model.export(task, Path(export_to) / task, tokenizer)
    return record


def _skipped(data) -> str:
    skipped = getattr(data, "skipped", {})
    return "none skipped" if not skipped else "skipped " + ", ".join(f"{n} {kind}" for kind, n in skipped.items())
