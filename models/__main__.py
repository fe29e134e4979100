"""Command line: `python -m models list` and `python -m models run NAME IMAGE [--question Q | --text T ...]`."""
from __future__ import annotations

import argparse
import json
import sys

from models.images import ImageError
from models.names import DeviceError, ModelLoadError, list_models, zoo_entry


def main(argv: list[str] | None = None, prog: str = "python -m models") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list the zoo's model names",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    listing.add_argument("--task", help="only models of this task (caption, retrieval, vqa, ...)")
    run = sub.add_parser("run", help="run one model on one image and print the result as JSON",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("model", help="zoo name, hub repo id or local directory")
    run.add_argument("image", help="path to an image file")
    run.add_argument("--question", help="question for a VQA model")
    run.add_argument("--candidates", nargs="+", help="rank these answers (VQA) instead of generating")
    run.add_argument("--text", nargs="+", help="text(s) to score with a retrieval model")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    run.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="number format")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in list_models(args.task):
            entry = zoo_entry(name)
            print(f"{name:45s} {entry['task']:10s} {entry['source'] or '(unavailable)'}")
        return 0
    from models.inference import inference_model

    text = args.text[0] if args.text and len(args.text) == 1 else args.text
    try:
        result = inference_model(args.model, args.image, text=text, question=args.question,
                                 candidates=args.candidates, device=args.device, precision=args.precision)
    except (ModelLoadError, ImageError, DeviceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
