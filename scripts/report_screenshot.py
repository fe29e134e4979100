"""The README's screenshot of a report: the page as headless Chromium shows it (tests/browser.py's launch).

    .venv/bin/python scripts/report_screenshot.py demo-out/run/report.html docs/report.png [--height 1600]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser import open_browser  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report")
    p.add_argument("png")
    p.add_argument("--height", type=int, default=1600, help="pixels of the page shown, from its top")
    args = p.parse_args()
    with open_browser() as browser:
        page = browser.new_page()
        page.set_viewport_size({"width": 1280, "height": args.height})
        page.goto(Path(args.report).resolve().as_uri())
        page.screenshot(path=args.png)
    print(f"{args.report} -> {args.png}")


if __name__ == "__main__":
    main()
