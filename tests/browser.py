"""Headless Chromium for the tests that look at a page as a person would: Debian's chromium (/usr/bin/chromium,
installed by .ci/run; README, "Tests") driven by Playwright's Python client, with no browser download.

`open_browser()` is a context manager yielding a Playwright browser, or raises `BrowserUnavailable` saying why.
The flags keep Chromium off the network it would otherwise call at start (this machine's is closed)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

CHROMIUM = os.environ.get("CAPFILT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class BrowserUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def open_browser():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        raise BrowserUnavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BrowserUnavailable(f"playwright is not installed ({exc}); make setup installs it") from None
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=FLAGS, viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()
