"""Command line: `python -m models list`, `python -m models run NAME IMAGE [--question Q | --text T ...]` and
`python -m models convert SRC.pth --to DIR [--task TASK] [--tokenizer DIR] [--language-model DIR]`."""
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
    run.add_argument("image", nargs="+", help="path to an image file (two for an NLVR2 model: left and right)")
    run.add_argument("--question", help="question for a VQA model")
    run.add_argument("--candidates", nargs="+", help="rank these answers (VQA) instead of generating")
    run.add_argument("--text", nargs="+", help="text(s) to score with a retrieval model; an NLVR2 sentence; a "
                                               "grounding model's referring expression")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    run.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="number format")
    conv = sub.add_parser("convert", help="convert a seed's .pth (toolbox, LAVIS, original BLIP) into Hugging Face layout",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    conv.add_argument("source", help="the .pth file")
    conv.add_argument("--to", required=True, help="the directory to write (replaced whole if it exists)")
    conv.add_argument("--task", choices=["caption", "retrieval", "vqa"],
                      help="the model to take out of a checkpoint that holds several (a pre-trained BLIP: caption "
                           "or retrieval; a BLIP-2 captioner: caption or vqa; default: the one the file holds)")
    conv.add_argument("--tokenizer", help="a directory with BERT's vocab.txt or a BLIP model's tokenizer; for a BLIP-2 "
                                          "captioner, its language model's (default: $CAPFILT_TOKENIZER, else "
                                          "--language-model, else the .pth's folder)")
    conv.add_argument("--language-model", help="a BLIP-2 captioner's language model in Hugging Face layout (e.g. "
                                               "facebook/opt-2.7b), for a .pth that does not hold it: the toolbox's "
                                               "never do")
    conv.add_argument("--head-dim", type=int,
                      help="width of one attention head (default $CAPFILT_HEAD_DIM, else 64 as in every released "
                           "BLIP; weights do not record it)")
    args = parser.parse_args(argv)
    if args.command == "convert":
        from models.convert import convert

        try:
            print(convert(args.source, args.to, task=args.task, tokenizer=args.tokenizer,
                          head_dim=args.head_dim, language_model=args.language_model).summary())
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.to}: load it like any local model (e.g. `python -m models run {args.to} IMAGE ...`)")
        return 0
    if args.command == "list":
        for name in list_models(args.task):
            entry = zoo_entry(name)
            print(f"{name:45s} {entry['task']:10s} {entry['source'] or '(unavailable)'}")
        return 0
    from models.inference import inference_model

    text = args.text[0] if args.text and len(args.text) == 1 else args.text
    image = args.image[0] if len(args.image) == 1 else args.image
    try:
        result = inference_model(args.model, image, text=text, question=args.question,
                                 candidates=args.candidates, device=args.device, precision=args.precision)
    except (ModelLoadError, ImageError, DeviceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
