"""A real S3 endpoint on 127.0.0.1 for the object-storage tests: moto's server mode (`python -m moto.server`, what
s3fs's own tests run) as a process of its own, so s3fs, botocore and DuckDB talk HTTP to it as to AWS and nothing in
them is patched.

`s3_environment(endpoint)` is what a test process needs to use it: dummy credentials, a region, the endpoint in
AWS_ENDPOINT_URL (botocore reads it, so every s3fs instance and boto3 client goes there), and no AWS configuration
file of the machine's (so no real credentials or profile are ever picked up).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

START_TIMEOUT = 30.0  # seconds for moto to answer (about 1 s on an idle machine)


class S3ServerUnavailable(RuntimeError):
    """moto's server could not be started here; the message says why (the tests skip with it)."""


def s3_environment(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto-based clients at `endpoint` with dummy credentials."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "capfilt-test", "AWS_SECRET_ACCESS_KEY": "capfilt-test",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


# Unset while the server is in use: each would override the dummy credentials or the endpoint above.
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1 while the block runs; yields its endpoint URL, then stops it by
    its pid. S3ServerUnavailable when moto is missing or does not answer."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # Its log (a line per request) goes to a file: a pipe nobody reads would fill and stall the server.
    with tempfile.TemporaryFile(prefix="capfilt-moto-") as log:
        try:
            process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise S3ServerUnavailable(f"cannot start moto's server: {exc}") from None
        try:
            wait_until_up(process, endpoint, log)
            yield endpoint
        finally:
            stop(process)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(process: subprocess.Popen, endpoint: str, log) -> None:
    """Return once the server answers an S3 request (ListBuckets, any HTTP status); raise when it exits first or
    stays silent for START_TIMEOUT."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 directly, whatever *_proxy says
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            error = log.read().decode(errors="replace").strip().splitlines()
            raise S3ServerUnavailable(f"moto's server exited ({process.returncode}): "
                                      f"{error[-1] if error else 'no output'}")
        try:
            opener.open(endpoint + "/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # an S3 error answer: the server is up
        except OSError:
            time.sleep(0.05)
    raise S3ServerUnavailable(f"moto's server did not answer on {endpoint} within {START_TIMEOUT:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server by its pid, SIGKILL if it lingers."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
