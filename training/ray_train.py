"""Training on Ray Train: the same worker function (training.job.run_worker) on one CPU worker by default, or on
many CPU / GPU workers of a cluster with DDP. The only training module that imports ray.

Rank 0 exports the trained roles into a folder it reports as a Ray Train checkpoint; Ray persists it to the run's
storage, and the driver copies it to the job's output folder with the run record (train.json), so a cluster's
workers need no shared filesystem with the driver beyond Ray's storage path.
"""
from __future__ import annotations

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
from training.job import TrainJob, check_data, run_worker

RECORD_FILE = "train.json"


def _log(line: str) -> None:
    """A worker's progress line, once: Ray Train patches print() in its workers to go both to the worker's stdout
    and to its logger, which the driver shows too."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _worker(config: dict) -> None:
    job = TrainJob(**config["job"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()

    def wrap(model):
        return prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) if world_size > 1 else model

    def on_epoch(metrics):
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    with tempfile.TemporaryDirectory() as folder:
        record = run_worker(job, folder, rank, world_size, log=_log, on_epoch=on_epoch, wrap=wrap,
                            device=str(get_device()))
        if rank == 0:
            (Path(folder) / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        ray.train.report({"done": 1}, checkpoint=Checkpoint.from_directory(folder) if rank == 0 else None)


def fit(job: TrainJob, log=print, use_gpu: bool | None = None) -> dict:
    """Run `job` on Ray Train and put its exported roles and train.json into job.output; returns the record."""
    job = job.absolute()
    check_data(job)
    connect()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = bool(gpus) if use_gpu is None else use_gpu
    per_worker = {"CPU": 1} if use_gpu else {"CPU": max(1, cpus // job.workers)}
    output = Path(job.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": asdict(job)},
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=f"{job.task}-seed{job.seed}", storage_path=str(output / ".ray_train")),
    )
    log(f"train {job.task}: Ray Train, {job.workers} worker(s) x {per_worker}{' + 1 GPU' if use_gpu else ''}")
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {job.task} ended without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        for item in Path(folder).iterdir():
            target = output / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            shutil.copytree(item, target) if item.is_dir() else shutil.copy2(item, target)
    shutil.rmtree(output / ".ray_train", ignore_errors=True)
    return json.loads((output / RECORD_FILE).read_text(encoding="utf-8"))
