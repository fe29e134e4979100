"""CapFilt throughput benchmark: the job's full path against a naive per-image baseline and the machine's roofline.

    .venv/bin/python benchmarks/capfilt_bench.py --size base            # BLIP-base, random weights (minutes)
    .venv/bin/python benchmarks/capfilt_bench.py --size tiny --quick    # smoke run (seconds; a test runs it)
    .venv/bin/python benchmarks/capfilt_bench.py --overhead --per-shard 1000 --shard-counts 1   # Ray's overhead only

Every figure is measured in this run, on this machine; generation is forced to 20 new tokens per caption so a run
costs what a real caption costs. The roofline is the FLOPs per image (torch's FlopCounterMode on the real code path)
at the machine's bf16 matmul peak, the faster of torch.mm and a packed oneDNN matmul (`matmul_peak`). Prints a
Markdown table (and writes it with --markdown FILE).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.device import cpu_bf16_kernels
from models.images import decode_image, resize
from models.sampling_config import Sampling
from pipelines.batches import shard_batches
from pipelines.config import CapFiltConfig
from pipelines.decode import DecodedBatch
from evaluation.fixtures import PHOTOS, photo
from pipelines.tars import jpeg_bytes, sample_members, write_tar
from pipelines.local_runner import run_local
from pipelines.stage import CapFiltStage, Kernels

NEW_TOKENS = 20


def matmul_kernels(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Ways to compute a @ b: torch.mm, and for bf16 on a CPU whose oneDNN has bf16 kernels a matmul against b
    packed once, as the models' bf16 linear layers run (models/patches.py; torch.mm reorders its operand at every
    call). AVX2-only CPUs have no such kernels (oneDNN raises), and the models do not pack there either."""
    kernels = {"torch.mm": lambda: torch.mm(a, b)}
    if a.dtype == torch.bfloat16 and a.device.type == "cpu" and cpu_bf16_kernels():
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous())  # (out, in), as nn.Linear holds it
        kernels["packed"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    return kernels


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """GFLOP/s of an n x n x n matmul on all threads, per kernel of `matmul_kernels`. The roofline takes the
    fastest: on the Zen 5 of BENCHMARKS.md the packed matmul measured about 1.1x torch.mm, and the models' own
    linear layers ran faster than torch.mm's figure."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    peaks = {}
    for name, run in matmul_kernels(a, b).items():
        run()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run()
            count += 1
        peaks[name] = 2 * n**3 * count / (time.perf_counter() - start) / 1e9
    return peaks


def make_shards(directory: Path, shards: int, per_shard: int) -> list[Path]:
    images = [jpeg_bytes(photo(name)) for name, _, _ in PHOTOS]
    paths = []
    for s in range(shards):
        members = {}
        for i in range(per_shard):
            name, caption, _ = PHOTOS[(s * per_shard + i) % len(PHOTOS)]
            members.update(sample_members(f"{s:05d}{i:05d}", images[(s * per_shard + i) % len(images)], caption,
                                          f"https://example.com/{name}.jpg"))
        paths.append(write_tar(directory / f"{s:05d}.tar", members))
    return paths


def prompt_length(stage: CapFiltStage) -> int:
    return stage.captioner.prompt_ids(stage.prompt, 1).shape[1]


def sampling(prompt_len: int, num_captions: int) -> Sampling:
    length = prompt_len + NEW_TOKENS  # min = max: every caption costs exactly NEW_TOKENS tokens
    return Sampling(num_captions=num_captions, max_length=length, min_length=length)


class PeakMemory:
    """Peak summed RSS of this process and all its descendants (Ray workers included), sampled every 0.2 s; and the
    CPU seconds each of them used (`cpu_split`, grouped by what each process was last seen doing) in a window: the
    whole block, or from `count_cpu_from_now` to `stop_counting_cpu`, each of which samples at once. A process that
    ends, or starts, between two samples loses at most 0.2 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._lock, self._counting, self._window = threading.Lock(), True, 0  # _window: restarts and stops so far
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (group, CPU seconds at the start, last seen)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.2)

    def _sample(self, change: str | None = None) -> None:
        """One reading of every process; `change` "restart" or "stop" moves the counting window's edge to it."""
        window, me, total, seen = self._window, psutil.Process(), 0, {}
        for proc in [me] + me.children(recursive=True):
            try:
                total += proc.memory_info().rss
                times = proc.cpu_times()
                group = _group(proc, me)  # as last seen: a Ray worker becomes the model actor after it starts
            except psutil.Error:
                continue
            seen[proc.pid] = (group, times.user + times.system)
        self.peak = max(self.peak, total)
        with self._lock:
            if change is None and window != self._window:
                return  # the sampler's reading, begun before an edge the caller just set: too early to count
            if change == "restart":
                self._cpu = {}
            if self._counting or change == "restart":
                for pid, (group, used) in seen.items():
                    self._cpu[pid] = (group, self._cpu.get(pid, (group, used, used))[1], used)
            if change is not None:
                self._counting, self._window = change == "restart", self._window + 1

    def count_cpu_from_now(self) -> None:
        """Forget the CPU seconds counted so far: count from this moment (a clock's start)."""
        self._sample("restart")

    def stop_counting_cpu(self) -> None:
        """Take the last count now and keep it (a clock's end); peak memory goes on being sampled."""
        self._sample("stop")

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds per group of processes (driver, model actor, other Ray processes) in the counting window."""
        split: dict[str, float] = {}
        with self._lock:
            for group, start, last in self._cpu.values():
                split[group] = split.get(group, 0.0) + last - start
        return split

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _group(proc: psutil.Process, me: psutil.Process) -> str:
    if proc.pid == me.pid:
        return "driver"
    try:
        return "model actor" if " ".join(proc.cmdline()).startswith("ray::ModelActor") else "other Ray processes"
    except psutil.Error:
        return "other Ray processes"


def flops_per_image(stage: CapFiltStage, batch: DecodedBatch) -> float:
    with FlopCounterMode(display=False) as counter:
        stage(batch)
    return counter.get_total_flops() / len(batch.ok)


def stage_seconds(stage: CapFiltStage, batch: DecodedBatch, repeats: int = 3, warm: bool = True) -> float:
    """Median seconds per image of the stage over one batch (after one warm-up call when `warm`)."""
    if warm:
        stage(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        stage(batch)
        times.append((time.perf_counter() - start) / len(batch.ok))
    return statistics.median(times)


def naive_seconds_per_image(captioner: str, filter_name: str, images: list[np.ndarray], captions: list[str],
                            prompt_len: int) -> float:
    """The peers' way: fp32, batch 1, transformers' generate, then one full ITM forward per caption."""
    from models import Captioner, Matcher

    cap = Captioner.load(captioner, precision="fp32")
    itm = Matcher.load(filter_name, precision="fp32")
    prompt = cap.tokenizer(cap.default_prompt, return_tensors="pt")["input_ids"]
    start = time.perf_counter()
    with torch.inference_mode():
        for array, web in zip(images, captions):
            pixels = cap.pixel_values(array[None])
            out = cap.model.generate(pixel_values=pixels, input_ids=prompt.clone(), do_sample=True, top_p=Sampling().top_p,
                                     repetition_penalty=Sampling().repetition_penalty, max_length=prompt_len + NEW_TOKENS,
                                     min_length=prompt_len + NEW_TOKENS)
            synthetic = cap.tokenizer.decode(out[0], skip_special_tokens=True)
            for text in (web, synthetic):
                ids = itm.tokenizer(text, return_tensors="pt")
                itm.model(pixel_values=itm.pixel_values(array[None]), input_ids=ids["input_ids"],
                          attention_mask=ids["attention_mask"], use_itm_head=True)
    return (time.perf_counter() - start) / len(images)


def inprocess_seconds(stage: CapFiltStage, shards: list[Path], out: str, batch_size: int) -> float:
    """The job's work (read, decode, caption, filter, commit) in one process, no Ray (`run_local`, the same reader,
    stage, ledger and writer): the overhead reference."""
    config = CapFiltConfig(input=" ".join(map(str, shards)), output=out, captioner=stage.captioner.checkpoint.spec.name,
                           filter=stage.filter.checkpoint.spec.name, sampling=stage.sampling, batch_size=batch_size,
                           overwrite=True)
    clock = {}
    run_local(config, log=None, stage=stage, on_event=lambda e: clock.setdefault(e["event"], time.perf_counter()))
    return clock["summary"] - clock["start"]


def job_run(shards: list[Path], out: str, captioner: str, filter_name: str, sample: Sampling, batch_size: int,
            threads: int | None) -> dict:
    from pipelines.ray_runner import run_capfilt

    config = CapFiltConfig(input=" ".join(map(str, shards)), output=out, captioner=captioner, filter=filter_name,
                           sampling=sample, batch_size=batch_size, model_threads=threads, overwrite=True)
    with PeakMemory() as memory:
        # the CPU seconds over the job's own clock: from its start event (the models loaded, the clock starts) to
        # its summary event (the clock stops)
        def clock(event: dict) -> None:
            if event["event"] == "start":
                memory.count_cpu_from_now()
            elif event["event"] == "summary":
                memory.stop_counting_cpu()

        summary = run_capfilt(config, log=None, on_event=clock)
    return {"seconds": summary["seconds"], "samples": summary["samples"], "peak_gb": memory.peak / 2**30,
            "cpu": memory.cpu_split()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["base", "tiny"], default="base")
    p.add_argument("--per-shard", type=int, default=8, help="samples per shard")
    p.add_argument("--shard-counts", default="1,4,16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="torch threads of the model actor (default: the job's default)")
    p.add_argument("--naive-images", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one shard count")
    p.add_argument("--overhead", action="store_true",
                   help="measure only the job on Ray against the same work in one process, over the largest shard "
                        "count (Ray is warmed on a separate small shard)")
    p.add_argument("--pairs", type=int, default=1,
                   help="--overhead: this many jobs, each between two in-process runs (pairs + 1 of them)")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be at least 1")
    if args.quick:
        args.shard_counts, args.per_shard, args.naive_images = "1,2", 4, 2
    captioner, filter_name = f"{args.size}-random_caption", f"{args.size}-random_retrieval"
    counts = [int(c) for c in args.shard_counts.split(",")]
    rows = overhead_rows(args, captioner, filter_name, counts[-1]) if args.overhead else \
        full_rows(args, captioner, filter_name, counts)
    print_table("capfilt_bench.py", argv, rows, args.markdown, f", size {args.size}")
    return 0


def print_table(script: str, argv, rows: list[tuple[str, str]], markdown: str | None, machine_note: str = "") -> None:
    """The benchmark's table, headed by the machine and the command; also written to `markdown` when given."""
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}{machine_note}",
             f"command: python benchmarks/{script} {' '.join(argv if argv is not None else sys.argv[1:])}"]
    table = "\n".join(lines + ["", "| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    print(table)
    if markdown:
        Path(markdown).write_text(table + "\n")


def overhead_rows(args, captioner: str, filter_name: str, count: int) -> list[tuple[str, str]]:
    """Ray's overhead alone: the same shards through one process and through the job, in turn, `args.pairs` jobs
    each between two in-process runs (one process, job, one process, job, ..., one process), so each job is held
    against the mean of the runs just before and just after it: the machine's speed drifts over minutes, and a
    drift that is steady over the three runs cancels. Also where the cores went over each job's clock, and the job's
    share of the bf16 roofline over these shards (at 1,000 samples a shard, the steady state a real run sees). Both
    clocks start with the models loaded: the in-process stage is built and warmed before its clock starts, and the
    job's clock (its summary's seconds) once its model actor has loaded them, so only the job's first batch is cold."""
    peak16 = max(matmul_peak(torch.bfloat16).values())
    rows, inprocs, jobs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = make_shards(tmp / "shards", count, args.per_shard)
        warm = make_shards(tmp / "warm", 1, min(args.per_shard, args.batch_size))
        samples = count * args.per_shard
        for run in range(args.pairs + 1):
            stage = CapFiltStage(captioner, filter_name, precision="auto")
            sample = sampling(prompt_length(stage), 1)
            stage.sampling = sample
            first = next(shard_batches("w", str(warm[0]), stage.image_sizes, args.batch_size))
            stage(first)  # warm
            flops = flops_per_image(stage, first)
            inprocs.append(inprocess_seconds(stage, shards, str(tmp / f"inproc{run}"), args.batch_size))
            del stage  # its memory, before the job's actor loads its own models
            rows.append((f"run {2 * run + 1}: same work in one process, {count} shard(s) x {args.per_shard}",
                         f"{samples / inprocs[-1]:.3f} images/s, {inprocs[-1]:.3f} s"))
            if run == args.pairs:
                break
            if run == 0:  # Ray's start, apart from the measured jobs
                job_run(warm, str(tmp / "warm-job"), captioner, filter_name, sample, args.batch_size, args.threads)
            job = job_run(shards, str(tmp / f"job{run}"), captioner, filter_name, sample, args.batch_size,
                          args.threads)
            job_ips, roofline_ips = job["samples"] / job["seconds"], peak16 * 1e9 / flops
            cpu, cores = job["cpu"], (os.cpu_count() or 1) * job["seconds"]  # the cores' seconds during the job
            others = sum(seconds for group, seconds in cpu.items() if group != "model actor")
            used = ", ".join(f"{group} {seconds:.1f}" for group, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]))
            rows += [(f"run {2 * run + 2}: job on Ray, N=1, {count} shard(s) x {args.per_shard}",
                      f"{job_ips:.3f} images/s, {job['seconds']:.3f} s, peak RSS {job['peak_gb']:.2f} GiB, "
                      f"{job_ips / roofline_ips:.0%} of the roofline"),
                     (f"run {2 * run + 2}: CPU seconds during the job",
                      f"{used} (all but the model actor: {others / cores:.1%} of the cores' time)")]
            jobs.append(job["seconds"])
    overheads = [seconds / ((inprocs[i] + inprocs[i + 1]) / 2) - 1 for i, seconds in enumerate(jobs)]
    for i in range(len(jobs)):
        rows.append((f"Ray overhead of job {i + 1} (run {2 * i + 2} against the mean of runs {2 * i + 1} and "
                     f"{2 * i + 3})", f"{overheads[i]:+.1%}"))
    if len(overheads) > 1:
        rows.append(("Ray overhead, median over the jobs", f"{statistics.median(overheads):+.1%}"))
    rows.append(("bf16 roofline at the measured peak, N=1",
                 f"{roofline_ips:.3f} images/s at {peak16:.0f} GFLOP/s and {flops / 1e9:.1f} GFLOP per image"))
    return rows


def full_rows(args, captioner: str, filter_name: str, counts: list[int]) -> list[tuple[str, str]]:
    peaks32, peaks16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    peak16 = max(peaks16.values())
    stage = CapFiltStage(captioner, filter_name, precision="auto")
    prompt_len = prompt_length(stage)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = make_shards(tmp / "shards", max(counts), args.per_shard)
        first = next(shard_batches("f", str(shards[0]), stage.image_sizes, args.batch_size))
        results = {}
        for n in (1, 5):
            stage.sampling = sampling(prompt_len, n)
            results[n] = {"flops": flops_per_image(stage, first)}  # also the warm-up call
        times = {1: [], 5: []}
        for _ in range(3):  # N=1 and N=5 in turn, so the cost of the extra captions sees one machine
            for n in (1, 5):
                stage.sampling = sampling(prompt_len, n)
                times[n].append(stage_seconds(stage, first, 1, warm=False))
        for n in (1, 5):
            results[n]["stage_s"] = statistics.median(times[n])
        plain_s = fused_s = None
        if stage.captioner.precision == "bf16" and stage.captioner.device.type == "cpu":
            plain = CapFiltStage(captioner, filter_name, precision="auto", kernels=Kernels(packed_weights=False))
            plain.sampling = stage.sampling = sampling(prompt_len, 1)
            # alternated with the packed stage, so both see the same machine
            plain(first)  # warm
            pairs = [(stage_seconds(plain, first, 1, warm=False), stage_seconds(stage, first, 1, warm=False))
                     for _ in range(3)]
            plain_s = statistics.median(a for a, _ in pairs)
            del plain
            # the ViT's attention through torch's fused kernel instead of image by image, alternated the same way
            fused_pairs = []
            fused_stage = CapFiltStage(captioner, filter_name, precision="auto",
                                       kernels=Kernels(vision_per_image=False))
            fused_stage.sampling = stage.sampling
            fused_stage(first)  # warm
            for _ in range(3):
                fused = stage_seconds(fused_stage, first, 1, warm=False)
                fused_pairs.append((fused, stage_seconds(stage, first, 1, warm=False)))
            del fused_stage
            fused_s = statistics.median(a for a, _ in fused_pairs)
            results[1]["stage_s"] = statistics.median([results[1]["stage_s"]] + [b for _, b in pairs + fused_pairs])
        images = [resize(decode_image(jpeg_bytes(photo(name))), stage.captioner.image_size)
                  for name, _, _ in PHOTOS][: args.naive_images]
        naive = naive_seconds_per_image(captioner, filter_name, images, [c for _, c, _ in PHOTOS], prompt_len)
        stage.sampling = sampling(prompt_len, 1)
        inproc = inprocess_seconds(stage, shards[: counts[-1]], str(tmp / "inproc"), args.batch_size)
        del stage
        job_run(shards[:1], str(tmp / "warm"), captioner, filter_name, sampling(prompt_len, 1), args.batch_size,
                args.threads)  # starts Ray and its worker processes once, outside every measured run
        jobs = {c: job_run(shards[:c], str(tmp / f"job{c}"), captioner, filter_name, sampling(prompt_len, 1),
                           args.batch_size, args.threads) for c in counts}
        job5 = job_run(shards[:1], str(tmp / "job5"), captioner, filter_name, sampling(prompt_len, 5),
                       args.batch_size, args.threads)
    biggest = jobs[counts[-1]]
    job_ips = biggest["samples"] / biggest["seconds"]
    roofline_ips = peak16 * 1e9 / results[1]["flops"]
    rows = [
        ("matmul peak fp32 / bf16", f"{peaks32['torch.mm']:.0f} / {peak16:.0f} GFLOP/s (bf16: "
                                    + ", ".join(f"{k} {v:.0f}" for k, v in peaks16.items()) + ")"),
        ("FLOPs per image, N=1 / N=5", f"{results[1]['flops'] / 1e9:.1f} / {results[5]['flops'] / 1e9:.1f} GFLOP"),
        ("stage only (one process), N=1", f"{1 / results[1]['stage_s']:.3f} images/s "
                                          f"({1 / results[1]['stage_s'] / roofline_ips:.0%} of the roofline)"),
        *([("stage only, N=1, bf16 weights not packed", f"{1 / plain_s:.3f} images/s (packed weights "
                                                         f"{plain_s / results[1]['stage_s']:.2f}x faster)")]
          if plain_s else []),
        *([("stage only, N=1, ViT attention in torch's fused kernel",
            f"{1 / fused_s:.3f} images/s (image by image {fused_s / results[1]['stage_s']:.2f}x faster)")]
          if fused_s else []),
        ("stage only, N=5 (cost vs N=1, alternated)", f"{1 / results[5]['stage_s']:.3f} images/s "
                                          f"({results[5]['stage_s'] / results[1]['stage_s']:.2f}x)"),
        ("naive baseline (fp32, batch 1, generate + ITM per caption)", f"{1 / naive:.3f} images/s"),
        (f"job on Ray, N=1, {counts[-1]} shards", f"{job_ips:.3f} images/s "
                                                  f"({job_ips * naive:.1f}x naive)"),
        ("bf16 roofline at the measured peak, N=1", f"{roofline_ips:.3f} images/s "
                                                     f"(job reaches {job_ips / roofline_ips:.0%})"),
        (f"same work in one process, {counts[-1]} shards", f"{biggest['samples'] / inproc:.3f} images/s "
                                                           f"(Ray overhead {biggest['seconds'] / inproc - 1:+.1%})"),
        ("job, N=5, 1 shard", f"{job5['samples'] / job5['seconds']:.3f} images/s"),
    ]
    rows += [(f"job, {c} shard(s) x {args.per_shard}", f"{j['samples'] / j['seconds']:.3f} images/s, "
                                                       f"{j['seconds']:.1f} s, peak RSS {j['peak_gb']:.2f} GiB")
             for c, j in jobs.items()]
    return rows


if __name__ == "__main__":
    sys.exit(main())
