"""CapFilt job: caption every image of webdataset shards, score web and synthetic captions, write Parquet.

    python jobs/capfilt.py --input 'shards/{00000..00099}.tar' --output out/run1 \\
        --captioner blip-base_3rdparty_caption --filter blip-base_3rdparty_retrieval --num-captions 5
    python jobs/capfilt.py ... --captioner blip2-opt2.7b_3rdparty-zeroshot_caption --filter blip2_3rdparty_retrieval \
        --scorer clip-vit-large-patch14_openai --num-captions 10     # BLIP-2's CapFilt, then `curate keep --top-k 2 --by clip`
    capfilt run ...   (the same job, as a console script)

Runs on an embedded local Ray, or on the cluster named by RAY_ADDRESS (`ray job submit --working-dir . -- python
jobs/capfilt.py ...`). Re-running the same command resumes; so does it after Ctrl-C (exit 130). `--demo` writes
shape-world web shards whose noisy captions are known, runs CapFilt on them with the shipped shape-world models
(shapes_caption, shapes_retrieval) and prints what the filter removed, per kind of noise, against the truth.
Exit codes: 0 done, 2 a usage, input or model problem (one `error:` line), 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jobs.cli import Parser, UsageError, entry
from models.names import DeviceError, ModelLoadError
from models.sampling_config import Sampling
from pipelines.config import CapFiltConfig, RunConflict
from pipelines.sources import LocationError

USER_ERRORS = (ModelLoadError, DeviceError, LocationError, RunConflict, ValueError)
DEFAULT_MODELS = {"captioner": "tiny-random_caption", "filter": "tiny-random_retrieval"}
DEMO_MODELS = {"captioner": "shapes_caption", "filter": "shapes_retrieval"}  # trained on the shape world, shipped
# The demo's second run: BLIP-2's CapFilt (CLIP-ranked) on the same shards, with the tiny BLIP-2 and CLIP stand-ins.
DEMO_BLIP2 = {"captioner": "tiny-random-blip2_caption", "filter": "tiny-random-blip2_retrieval",
              "scorer": "tiny-random_clip"}
INTERRUPTED = "interrupted: the shards committed so far are kept; run the same command again to resume"


def build_parser(prog: str = "jobs/capfilt.py") -> Parser:
    defaults = Sampling()
    p = Parser(prog=prog, description=__doc__)
    io = p.add_argument_group("input and output")
    io.add_argument("--input", help="shards: path, directory, glob, brace range or fsspec URL (space-separated list "
                                    "ok); required unless --demo")
    io.add_argument("--output", help="run directory (local path or fsspec URL); required unless --demo (default "
                                     "there: demo-out)")
    io.add_argument("--overwrite", action="store_true", help="replace a run made with other settings")
    io.add_argument("--demo", action="store_true", help="write shape-world demo shards and run on them (see above)")
    models = p.add_argument_group("models")
    models.add_argument("--captioner", help="zoo name, hub repo id or local directory (default tiny-random_caption; "
                                            "with --demo, shapes_caption)")
    models.add_argument("--filter", help="zoo name, hub repo id or local directory (default tiny-random_retrieval; "
                                         "with --demo, shapes_retrieval); BLIP or BLIP-2, in any mix with the "
                                         "captioner")
    models.add_argument("--scorer", help="a CLIP model (e.g. clip-vit-large-patch14_openai): adds its similarity to "
                                         "every caption, as BLIP-2's CapFilt ranks them (default: none)")
    sampling = p.add_argument_group("sampling (BLIP's CapFilt defaults)")
    sampling.add_argument("--num-captions", type=int, default=defaults.num_captions, help="synthetic captions per image")
    sampling.add_argument("--seed", type=int, default=defaults.seed, help="captions depend on (seed, shard, key) only")
    sampling.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus: the smallest set of tokens "
                                                                               "whose probability reaches this")
    sampling.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty,
                          help="divides the logits of tokens already generated")
    sampling.add_argument("--max-length", type=int, default=defaults.max_length,
                          help="caption tokens, counting the start token ([DEC] in BLIP) and the prompt")
    sampling.add_argument("--min-length", type=int, default=defaults.min_length,
                          help="caption tokens before the end may come, counting the start token and the prompt")
    resources = p.add_argument_group("resources (of these, only --precision changes the output rows)")
    resources.add_argument("--batch-size", type=int, help="images per model call (default 64 on GPUs, 8 on CPUs)")
    resources.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    resources.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                           help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    resources.add_argument("--actors", type=int, help="model actors (default: one per GPU, else one)")
    resources.add_argument("--decode-workers", type=int, help="shards decoded at once (default: the CPUs left)")
    resources.add_argument("--model-threads", type=int, help="torch threads per CPU model actor (default: all cores "
                                                             "of its node)")
    resources.add_argument("--max-pixels", type=int, help="refuse images above this many pixels (default Pillow's "
                                                          "limit)")
    return p


def parse_args(argv: list[str] | None, prog: str = "jobs/capfilt.py") -> argparse.Namespace:
    args = build_parser(prog).parse_args(argv)
    if not args.demo and not (args.input and args.output):
        raise UsageError("--input and --output are required (or --demo)")
    defaults = DEMO_MODELS if args.demo else DEFAULT_MODELS
    args.captioner = args.captioner or defaults["captioner"]
    args.filter = args.filter or defaults["filter"]
    return args


def config_from(args: argparse.Namespace) -> CapFiltConfig:
    sampling = Sampling(num_captions=args.num_captions, seed=args.seed, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty, max_length=args.max_length,
                        min_length=args.min_length)
    return CapFiltConfig(input=args.input, output=args.output, captioner=args.captioner, filter=args.filter,
                         scorer=args.scorer, sampling=sampling, batch_size=args.batch_size, device=args.device,
                         precision=args.precision,
                         actors=args.actors, model_threads=args.model_threads, decode_workers=args.decode_workers,
                         max_pixels=args.max_pixels, overwrite=args.overwrite)


def main(argv: list[str] | None = None, prog: str = "jobs/capfilt.py") -> int:
    try:
        args = parse_args(argv, prog)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    submitted = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))  # set by `ray job submit` for the entrypoint
    if submitted and args.output and "://" not in args.output and not os.path.isabs(args.output):
        print("error: under `ray job submit` the working directory is a temporary copy that Ray deletes; "
              "give --output as an absolute path or a URL", file=sys.stderr)
        return 2
    try:
        if args.demo:
            config_from(args).check(locations=False)  # settings and model names, before the shards are written
            from shapeworld.demo import build_demo_shards

            workdir = Path(args.output or "demo-out")
            shards = build_demo_shards(workdir / "shards", seed=args.seed)
            args.input = " ".join(str(p) for p in shards)
            args.output = str(workdir / "run")
            args.overwrite = True
            print(f"demo: {len(shards)} shards of shape-world scenes with web-like captions in {workdir / 'shards'}")
        config = config_from(args)
        shards = config.check()  # settings, model names, locations: a typo answers before torch or Ray is imported
        from pipelines.progress import Console
        from pipelines.ray_runner import run_capfilt  # ray and torch are imported only when a job really runs

        console = Console()  # on a terminal, one line updated in place; elsewhere plain lines
        try:
            run_capfilt(config, shards=shards, log=None, on_event=console)
        finally:
            console.close()  # an error or Ctrl-C is then written on a line of its own
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.demo:
        from pipelines.select import print_summary
        from shapeworld.demo import report

        print_summary(args.output, examples=0)
        report(args.output, Path(args.output).parent / "shards")
        if "tiny-random" in args.captioner + args.filter:
            print("(the tiny models have random weights: their captions and scores are noise)")
        demo_blip2(config, shards)
        demo_report(args.output)
    return 0


def demo_report(run: str) -> None:
    """The demo's last step: the curator's report of its BLIP run, as `curate.py report` writes it."""
    from pipelines.run_report import write_report

    to = f"{run.rstrip('/')}/report.html"
    print(f"\ndemo, the curator's report: python jobs/curate.py report {run} --to {to}")
    facts = write_report(run, to, log=None)
    print(f"  {facts['samples']} samples, {facts['thumbnails']} thumbnails, {facts['seconds']} s -> {to} "
          f"(open it in a browser: it needs no server and no network)")


def demo_blip2(config: CapFiltConfig, shards: list) -> None:
    """The same shards through BLIP-2's CapFilt: 3 synthetic captions per image and the web caption, ranked by CLIP,
    the best 2 kept. The tiny stand-ins have random weights: this shows the path and the output, not quality."""
    from dataclasses import replace

    from pipelines.ray_runner import run_capfilt
    from pipelines.select import keep_list, open_run

    output = str(Path(config.output).parent / "run-blip2")
    print(f"\ndemo, BLIP-2's CapFilt ranked by CLIP, with {', '.join(DEMO_BLIP2.values())} -> {output}")
    run_capfilt(replace(config, output=output, sampling=replace(config.sampling, num_captions=3), **DEMO_BLIP2),
                shards=shards)
    kept = keep_list(open_run(output), None, top_k=2, by="clip")
    print(f"  `curate.py keep {output} --top-k 2 --by clip`: {kept.num_rows} captions kept, 2 per image")
    print("  (tiny random models: the captions are noise; with real weights: --captioner "
          "blip2-opt2.7b_3rdparty-zeroshot_caption --filter blip2_3rdparty_retrieval --scorer "
          "clip-vit-large-patch14_openai)")


if __name__ == "__main__":
    sys.exit(entry(main, interrupted=INTERRUPTED))
