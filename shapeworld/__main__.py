"""python -m shapeworld DIR [--seed S] [--size small|default]: build the world under DIR."""
from __future__ import annotations

import argparse
import time

from shapeworld.build import SIZES, build_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shapeworld", description=__doc__)
    parser.add_argument("directory", help="folder to write (replaced when it exists)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=list(SIZES), default="default")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = build_world(args.directory, seed=args.seed, size=args.size)
    print(f"{root} ({args.size}, seed {args.seed}) built in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
