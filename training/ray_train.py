"""Training on Ray Train: the same worker function (training.job.run_worker) on one CPU worker by default, or on
many CPU / GPU workers of a cluster with DDP. The only training module that imports ray.

Rank 0 exports the trained roles into a folder it reports as a Ray Train checkpoint; Ray persists it to the run's
storage, and the driver copies it to the job's output folder with the run record (train.json), so a cluster's
workers need no shared filesystem with the driver beyond Ray's storage path.

`fit_all` runs several jobs one after the other on one worker group: Ray Train's start-up (about 30 s on a 2-core
machine, RESULTS.md) is paid once. A job may start from the output of a job before it in the same run: each worker
keeps what it exported for the run's length. Each job reports its own checkpoint when it ends, so when a later job
fails, the jobs before it still get their output.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device, prepare_model

from pipelines.ray_runner import connect
from training.job import TrainJob, check_inputs, run_worker

RECORD_FILE = "train.json"


def _log(line: str) -> None:
    """A worker's progress line, once: Ray Train patches print() in its workers to go both to the worker's stdout
    and to its logger, which the driver shows too."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _worker(config: dict) -> None:
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()

    def wrap(model):
        return prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) if world_size > 1 else model

    def on_epoch(metrics):
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    exported: dict[str, str] = {}  # a job's output -> where this worker exported its roles in this run
    with tempfile.TemporaryDirectory() as run_folder:
        for index, settings in enumerate(config["jobs"]):
            job = TrainJob(**settings)
            if job.init in exported:  # trained earlier in this run: its output is copied out only at the end
                job = dataclasses.replace(job, init=exported[job.init])
            folder = Path(run_folder) / str(index)
            record = run_worker(job, folder, rank, world_size, log=_log, on_epoch=on_epoch, wrap=wrap,
                                device=str(get_device()))
            exported[settings["output"]] = str(folder)
            record["job"] = settings  # as the caller gave it
            if rank == 0:
                (folder / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            ray.train.report({"job": index}, checkpoint=Checkpoint.from_directory(folder) if rank == 0 else None)


def fit(job: TrainJob, log=print, use_gpu: bool | None = None) -> dict:
    """Run `job` on Ray Train and put its exported roles and train.json into job.output; returns the record."""
    return fit_all([job], log, use_gpu)[0]


def fit_all(jobs: list[TrainJob], log=print, use_gpu: bool | None = None) -> list[dict]:
    """Run `jobs` in order on one Ray Train worker group (they share its number of workers); each job's roles and
    train.json go into its output folder. Returns the records. A job may start from an output made before the
    call or from the output of a job before it in `jobs` (init = that job's output)."""
    jobs = [job.absolute() for job in jobs]
    if not jobs or len({job.workers for job in jobs}) != 1:
        raise ValueError("fit_all needs at least one job, and every job with the same number of workers")
    trained_before: dict[str, str] = {}
    for job in jobs:
        check_inputs(job, trained_before)
        trained_before[job.output] = job.task
    connect()
    workers = jobs[0].workers
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = bool(gpus) if use_gpu is None else use_gpu
    per_worker = {"CPU": 1} if use_gpu else {"CPU": max(1, cpus // workers)}
    storage = Path(jobs[0].output).resolve() / ".ray_train"
    shutil.rmtree(storage, ignore_errors=True)  # a killed run's leftovers: Ray Train would restore its checkpoints
    name = "+".join(f"{job.task}-seed{job.seed}" for job in jobs)[:100]
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"jobs": [asdict(job) for job in jobs]},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    )
    log(f"train {', '.join(job.task for job in jobs)}: Ray Train, {workers} worker(s) x {per_worker}"
        f"{' + 1 GPU' if use_gpu else ''}")
    try:
        result = trainer.fit()
    except Exception:
        try:  # keep what the jobs before the failure reported
            _copy_out(jobs, ray.train.Result.from_path(storage / name))
        except Exception:  # nothing was reported: the training error is the one to show
            pass
        shutil.rmtree(storage, ignore_errors=True)
        raise
    copied = _copy_out(jobs, result)
    missing = [job.output for index, job in enumerate(jobs) if index not in copied]
    if missing:
        raise RuntimeError(f"training ended without a checkpoint for {', '.join(missing)}: {result.error}")
    shutil.rmtree(storage, ignore_errors=True)
    return [json.loads((Path(job.output) / RECORD_FILE).read_text(encoding="utf-8")) for job in jobs]


def _copy_out(jobs: list[TrainJob], result) -> set[int]:
    """Each reported checkpoint into the output folder of the job that reported it; returns those jobs' indices."""
    copied = set()
    for checkpoint, metrics in result.best_checkpoints or []:
        copied.add(metrics["job"])
        output = Path(jobs[metrics["job"]].output)
        output.mkdir(parents=True, exist_ok=True)
        with checkpoint.as_directory() as folder:
            for item in Path(folder).iterdir():
                target = output / item.name
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                shutil.copytree(item, target) if item.is_dir() else shutil.copy2(item, target)
    return copied
