"""BLIP's bootstrapping loop, end to end on the shape world, with the evidence that it works.

1. pre-train on the noisy web shards: one long run (the base that bootstraps);
2. fine-tune a captioner (LM), a filter (ITC + ITM) and a VQA model on the clean set, and an NLVR2 model and a
   grounding model on the world's NLVR2 and RefCOCO training splits, from the base; in the same Ray Train run,
   pre-train one shorter model per seed on the web shards (the raw baselines of the comparison);
3. CapFilt the web shards with them (the job of jobs/capfilt.py), export the bootstrapped dataset (BLIP's choice:
   every caption, web or synthetic, with p(match) >= 0.5); CapFilt the held-out shards too, to measure the filter
   and the captioner against the world's ground truth;
4. pre-train a fresh model per seed on the bootstrapped dataset;
5. evaluate every pre-trained model (caption CIDEr, retrieval R@1) and the fine-tuned models (the whole suite).

Every stage writes into WORKDIR and is skipped when its output is already there, so an interrupted loop resumes
(a training job is skipped on its own: a Ray Train run trains only the jobs of its group not done yet).
The report (REPORT.md, report.json) is written at the end.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.runner import Options, run_suite
from evaluation.suite import SUITE_DIR, load_suite
from pipelines.config import CapFiltConfig
from pipelines.export import export_dataset
from pipelines.ray_runner import run_capfilt
from models.sampling_config import Sampling
from shapeworld import baselines, evidence
from shapeworld.build import ensure_world
from training.job import TrainJob
from training.ray_train import RECORD_FILE, fit_all
from training.report import render

SUITE = SUITE_DIR / "shapeworld.yaml"
SECONDS_FILE = "seconds.json"  # each stage's seconds when it last ran, kept across invocations for the report
COMPARED = {"shapes_caption": ["CIDEr", "BLEU-4"], "shapes_retrieval": ["i2t_r1", "t2i_r1"]}


@dataclass
class LoopSettings:
    workdir: str
    world_seed: int = 0
    world_size: str = "default"
    seeds: tuple[int, ...] = (0, 1, 2)
    model_size: str = "small"  # models/tiny.py SIZES
    # Why each default is what it is: RESULTS.md, by section (figures drift; the sections carry them, with dates).
    vision_epochs: float = 12  # the vision encoder's pre-training on the labelled set (the ImageNet role), which every
    # pre-training starts from ("The vision encoder pre-trained on labelled images: the ImageNet role")
    vision_lr: float = 2e-3
    compare_from_vision: bool = False  # whether the compared raw and bootstrapped models start from that vision
    # encoder too (BLIP's way) or from a random one: from it, retrieval saturates on the test images and no longer
    # tells the datasets apart (same section)
    base_epochs: float = 10  # the model the captioner, filter and VQA model are fine-tuned from (same section)
    pretrain_epochs: float = 2  # each raw and bootstrapped model of the comparison, the same steps for both ("The
    # loop in one piece on a 2-core AMD EPYC (AVX512-BF16), 2026-11-23: compared models at 2 epochs")
    # Fine-tuning runs over the clean set (1,600 images) in as many steps as found over 400 images, the filter's ITM
    # hard negatives drawn from batches of 128 ("A clean set of 1,600 images and the filter's negatives drawn from
    # batches of 128"; the sweep: "The filter's operating point: a sweep on a validation world").
    caption_epochs: float = 2.5  # longer over-fitted the 400 images
    filter_epochs: float = 7.5
    filter_batch_size: int = 128
    vqa_epochs: float = 5  # yes/no questions stay near chance for many epochs of 400 images
    nlvr_epochs: float = 5  # over the world's 4,000 training pairs ("NLVR2 and grounding" in RESULTS.md)
    nlvr_lr: float = 5e-4
    grounding_epochs: float = 8  # over its 4,000 training refs
    grounding_lr: float = 5e-4
    tie_text: bool = TrainJob.tie_text  # BLIP's encoder-decoder tie in every pre-training (training/model.py)
    batch_size: int = 64
    pretrain_lr: float = 1e-3
    caption_lr: float = 2e-4
    filter_lr: float = 5e-4
    vqa_lr: float = 5e-4
    num_captions: int = 2
    capfilt_batch: int = 64  # images per model call: faster than the job's CPU default of 8 (chosen for BLIP-base)
    # for the small models, with the same outputs ("An earlier run (`runs/group`): the loop in 37 minutes")
    threshold: float = 0.5
    eval_limit: int | None = None


class Loop:
    def __init__(self, settings: LoopSettings, log=print):
        self.s, self.log = settings, log
        self.work = Path(settings.workdir).resolve()
        self.world = self.work / "world"
        self.jobs: list[str] = []  # the training jobs' names (their WORKDIR folders), in the loop's order

    def path(self, *parts) -> Path:
        return self.work.joinpath(*parts)

    def _stage(self, name: str, done: bool, action) -> None:
        if done:
            self.log(f"bootstrap: {name}: already done")
            return
        started = time.time()
        self.log(f"bootstrap: {name} ...")
        action()
        seconds = round(time.time() - started, 1)
        self.log(f"bootstrap: {name}: {seconds}s")
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / SECONDS_FILE).write_text(json.dumps({**self.recorded_seconds(), name: seconds}, indent=1) + "\n",
                                              encoding="utf-8")

    def recorded_seconds(self) -> dict[str, float]:
        """Each stage's seconds when it last ran, in any invocation on this workdir."""
        path = self.work / SECONDS_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def _train(self, jobs: dict[str, dict]) -> None:
        """Train the named jobs not done yet in one Ray Train run (its start-up is paid once), each into
        WORKDIR/NAME."""
        pending = {}
        self.jobs += jobs
        for name, job in jobs.items():
            if (self.path(name) / RECORD_FILE).is_file():
                self.log(f"bootstrap: train {name}: already done")
            else:
                pending[name] = TrainJob(output=str(self.path(name)), **{"batch_size": self.s.batch_size, **job})
        if pending:
            self._stage("train " + ", ".join(pending), False, lambda: fit_all(list(pending.values()), log=self.log))

    def _capfilt(self, name: str, shards: str) -> Path:
        out = self.path(name)
        config = CapFiltConfig(input=shards, output=str(out), captioner=str(self.path("captioner", "caption")),
                               filter=str(self.path("filter", "retrieval")), batch_size=self.s.capfilt_batch,
                               sampling=Sampling(num_captions=self.s.num_captions, seed=self.s.world_seed))
        self._stage(f"capfilt {name}", (out / "summary.json").is_file(), lambda: self._run_capfilt(config, out))
        return out

    def _run_capfilt(self, config: CapFiltConfig, out: Path) -> None:
        summary = run_capfilt(config, log=self.log)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")

    def _evaluate(self, name: str, models: dict[str, str], tasks: list[str] | None) -> dict:
        return self._evaluate_many({name: models}, tasks, f"evaluate {name}")[name]

    def _evaluate_many(self, models: dict[str, dict[str, str]], tasks: list[str] | None, stage: str) -> dict:
        """Score several sets of models ({name: {role: model}}) on the suite's `tasks` in one suite run: one
        model actor holds every model (starting an actor costs more than these small models' tasks). Each set's
        task names and roles are prefixed with its name. Returns {name: {task: {metric: value}}}."""
        outs = {name: self.path("eval", f"{name}.json") for name in models}

        def run():
            suite = load_suite(SUITE, variables={"WORLD": str(self.world)}, tasks=tasks)
            named = [dataclasses.replace(task, name=f"{name}.{task.name}", role=f"{name}.{task.role}",
                                         model=roles.get(task.role, task.model))
                     for name, roles in models.items() for task in suite.tasks]
            suite = dataclasses.replace(suite, tasks=named, models={task.role: task.model for task in named})
            result = run_suite(suite, Options(self.path("eval"), limit=self.s.eval_limit), self.log)
            for name, out in outs.items():
                scores = {}
                for row in result.rows:
                    prefix, _, task = row["task"].partition(".")
                    if prefix != name:
                        continue
                    if row["status"] == "ok":
                        scores.setdefault(task, {})[row["metric"]] = row["value"]
                    elif row["status"] == "skipped":
                        scores.setdefault(task, {})["skipped"] = row["note"]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(scores, indent=1) + "\n", encoding="utf-8")

        self._stage(stage, all(out.is_file() for out in outs.values()), run)
        return {name: json.loads(out.read_text(encoding="utf-8")) for name, out in outs.items()}

    def run(self) -> dict:
        s, started = self.s, time.time()
        self._stage("world", (self.world / "WORLD.json").is_file(),
                    lambda: ensure_world(self.world, s.world_seed, s.world_size))
        web = str(self.world / "web" / "*.tar")
        heldout = str(self.world / "heldout" / "*.tar")
        clean = {"format": "coco_karpathy", "annotations": str(self.world / "clean/annotations/train.json"),
                 "images": str(self.world / "clean/images")}
        vqa = {"format": "vqa", "questions": str(self.world / "clean/vqa/questions.json"),
               "annotations": str(self.world / "clean/vqa/annotations.json"), "images": str(self.world / "clean/images")}
        labelled = {"format": "webdataset", "shards": str(self.world / "labelled" / "*.tar")}
        nlvr = {"format": "nlvr2", "annotations": str(self.world / "train/nlvr2/train.json"),
                "images": str(self.world / "train/nlvr2/images")}
        grounding = {"format": "refcoco", "refs": str(self.world / "train/refcoco/refs(unc).json"),
                     "instances": str(self.world / "train/refcoco/instances.json"),
                     "images": str(self.world / "train/refcoco/images"), "split": "train"}
        vision = str(self.path("vision"))
        compared = vision if s.compare_from_vision else None  # the raw and bootstrapped models' start
        pretrain = dict(task="pretrain", epochs=s.pretrain_epochs, lr=s.pretrain_lr, size=s.model_size,
                        tie_text=s.tie_text, init=compared)
        finetune = dict(init=str(self.path("base")), seed=s.seeds[0])
        # The vision encoder, the base, the fine-tuning runs from it and the raw models of the comparison need only
        # the world: one Ray Train run (later jobs start from the earlier ones as this run trained them). The base
        # starts from the vision encoder, as BLIP's pre-training from a ViT pre-trained on ImageNet.
        raw = {f"raw-seed{seed}": dict(data={"format": "webdataset", "shards": web}, seed=seed, **pretrain)
               for seed in s.seeds}
        self._train({"vision": dict(task="classify", data=labelled, epochs=s.vision_epochs, lr=s.vision_lr,
                                    size=s.model_size, seed=s.seeds[0]),
                     "base": dict(data={"format": "webdataset", "shards": web}, seed=s.seeds[0],
                                  **{**pretrain, "epochs": s.base_epochs, "init": vision}),
                     "captioner": dict(task="caption", data=clean, epochs=s.caption_epochs, lr=s.caption_lr,
                                       **finetune),
                     "filter": dict(task="filter", data=clean, epochs=s.filter_epochs, lr=s.filter_lr,
                                    batch_size=s.filter_batch_size, **finetune),
                     "vqa": dict(task="vqa", data=vqa, epochs=s.vqa_epochs, lr=s.vqa_lr, **finetune),
                     "nlvr": dict(task="nlvr", data=nlvr, epochs=s.nlvr_epochs, lr=s.nlvr_lr, **finetune),
                     "grounding": dict(task="grounding", data=grounding, epochs=s.grounding_epochs,
                                       lr=s.grounding_lr, **finetune), **raw})

        web_run = self._capfilt("capfilt-web", web)
        heldout_run = self._capfilt("capfilt-heldout", heldout)
        boot = self.path("bootstrapped")
        self._stage("export bootstrapped dataset", (boot / "export.json").is_file(),
                    lambda: export_dataset(str(web_run), str(boot), s.threshold, "both", log=lambda line: None))
        exported = json.loads((boot / "export.json").read_text(encoding="utf-8"))
        if not exported["samples"]:
            raise ValueError(f"the filter kept no caption at threshold {s.threshold} ({web_run}): there is nothing to "
                             "pre-train on; train the filter longer or lower the threshold")
        # The same number of steps as the raw models: the bootstrapped set holds fewer images when the filter drops
        # every caption of some, and fewer steps would be a handicap unrelated to the data's quality.
        raw_images = json.loads((self.path(f"raw-seed{s.seeds[0]}") / RECORD_FILE).read_text(encoding="utf-8"))["samples"]
        boot_pretrain = {**pretrain, "epochs": s.pretrain_epochs * raw_images / exported["samples"]}
        boot_data = {"format": "webdataset", "shards": str(boot / "*.tar")}
        self._train({f"boot-seed{seed}": dict(data=boot_data, seed=seed, **boot_pretrain) for seed in s.seeds})

        compared = self._evaluate_many(
            {name: {"captioner": str(self.path(name, "caption")), "filter": str(self.path(name, "retrieval"))}
             for name in (f"{kind}-seed{seed}" for kind in ("raw", "boot") for seed in s.seeds)},
            list(COMPARED), "evaluate the compared models")
        finetuned = self._evaluate("finetuned", self.finetuned_models(), None)
        report = {
            "settings": asdict(s),
            "world": json.loads((self.world / "WORLD.json").read_text(encoding="utf-8")).get("counts"),
            "filter": evidence.filter_quality(heldout_run, self.world / "heldout" / "truth.parquet", s.threshold),
            "captions": evidence.caption_quality(heldout_run, self.world / "heldout" / "truth.parquet", s.threshold),
            "bootstrapped": exported,
            "pretrained": compared,
            "comparison": compare(compared, s.seeds),
            "finetuned": finetuned,
            "baselines": {"nlvr2": baselines.nlvr_baselines(self.world),
                          "refcoco": baselines.grounding_baselines(self.world)},
            "seconds": {**self.recorded_seconds(), "total this invocation": round(time.time() - started, 1)},
            "job_seconds": {name: json.loads((self.path(name) / RECORD_FILE).read_text(encoding="utf-8"))["seconds"]
                            for name in self.jobs},
        }
        (self.work / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (self.work / "REPORT.md").write_text(render(report), encoding="utf-8")
        return report

    def finetuned_models(self) -> dict[str, str]:
        return {"captioner": str(self.path("captioner", "caption")), "filter": str(self.path("filter", "retrieval")),
                "answerer": str(self.path("vqa", "vqa")), "nlvr": str(self.path("nlvr", "nlvr")),
                "grounding": str(self.path("grounding", "grounding"))}

    def ship(self, destination: Path) -> list[Path]:
        """Copy the fine-tuned models to `destination` (models/checkpoints) under their zoo folder names."""
        shipped = []
        for folder, source in (("shapes_caption", self.path("captioner", "caption")),
                               ("shapes_retrieval", self.path("filter", "retrieval")),
                               ("shapes_vqa", self.path("vqa", "vqa")),
                               ("shapes_nlvr", self.path("nlvr", "nlvr")),
                               ("shapes_grounding", self.path("grounding", "grounding"))):
            target = destination / folder
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target)
            shipped.append(target)
        return shipped


def compare(scores: dict, seeds) -> dict:
    """Per metric: raw and bootstrapped values per seed, their means, and whether bootstrapped won on every seed."""
    out = {}
    for task, metrics in COMPARED.items():
        for metric in metrics:
            raw = [scores[f"raw-seed{s}"].get(task, {}).get(metric) for s in seeds]
            boot = [scores[f"boot-seed{s}"].get(task, {}).get(metric) for s in seeds]
            if None in raw or None in boot:
                continue
            out[f"{task}:{metric}"] = {
                "raw": raw, "boot": boot, "raw_mean": statistics.fmean(raw), "boot_mean": statistics.fmean(boot),
                "boot_wins": sum(b > r for r, b in zip(raw, boot)), "seeds": len(seeds)}
    return out
