"""What Ray Train costs one CPU worker: the same pre-training job in this process (training.job.run_worker) and
through training.ray_train.fit, one after the other.

    .venv/bin/python -m shapeworld worlds/w0
    .venv/bin/python benchmarks/train_overhead.py worlds/w0 [EPOCHS]

Prints wall seconds of each (fit includes starting the local Ray instance and Ray Train's actors), their ratio, and
the training loop's own samples per second in each.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

from training.job import TrainJob, run_worker
from training.ray_train import fit


def main(world: str, epochs: float = 2.0) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        def job(name: str) -> TrainJob:
            return TrainJob(task="pretrain", data={"format": "webdataset", "shards": f"{world}/web/*.tar"},
                            output=f"{folder}/{name}", epochs=epochs, batch_size=32, size="small", seed=0)

        started = time.time()
        alone = run_worker(job("in-process"), f"{folder}/in-process", log=lambda line: None)
        in_process = time.time() - started
        started = time.time()
        ray = fit(job("ray-train"), log=lambda line: None)
        ray_train = time.time() - started
    figures = {"epochs": epochs, "samples": alone["samples"], "in_process_s": round(in_process, 1),
               "ray_train_s": round(ray_train, 1), "ratio": round(ray_train / in_process, 3),
               "in_process_samples_per_s": alone["history"][-1]["samples_per_second"],
               "ray_train_samples_per_s": ray["history"][-1]["samples_per_second"]}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)
