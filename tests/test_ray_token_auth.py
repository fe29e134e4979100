"""Ray 2.60's token auth as users meet it (README, "On a cluster").

One `ray start --head` for the module, started as the README has it: `ray get-auth-token --generate`, then
`ray start --head` with RAY_AUTH_MODE unset, which turns token auth on because it finds the token (Ray's default).
Clients run in fresh environments, as a user's other terminal would: only PATH and HOME, nothing of the head's.
The embedded local Ray (no RAY_ADDRESS) keeps token auth on without the warning Ray prints when the mode is unset.
Every HOME is private, so the token files (~/.ray/auth_token) are the tests' own.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.corpus import build_demo_shards
from tests.test_integration_ray_job import (BIN, PER_SHARD, RAY, REPO, SHARDS, capfilt_submit, check_output, ray_env,
                                            running_head)

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# The README's lines for a shell that submits (the venv's bin is on PATH here, as after `source .venv/bin/activate`).
README_TOKEN_LINES = "export RAY_AUTH_MODE=token\nexport RAY_AUTH_TOKEN=$(ray get-auth-token)\n"


def fresh_env(home, **extra) -> dict:
    """A new terminal's environment: the venv first on PATH, a HOME, and nothing else of this process or the head."""
    return {"PATH": os.pathsep.join([str(BIN), "/usr/bin", "/bin"]), "HOME": str(home), **extra}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    inputs = tmp_path_factory.mktemp("shards")
    build_demo_shards(inputs, shards=SHARDS, per_shard=PER_SHARD)
    return inputs


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The head as the README starts it, RAY_AUTH_MODE unset; yields url, gcs port, its user's HOME and token."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in ray_env().items() if k not in AUTH_VARS}
    env["HOME"] = str(home)
    generate = subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                              timeout=60)
    assert generate.returncode == 0, generate.stderr[-2000:]
    token = generate.stdout.strip()
    assert (home / ".ray" / "auth_token").read_text().strip() == token
    with running_head(env) as (url, gcs, log):
        assert "Token authentication is enabled for this Ray cluster" in log.read_text()  # Ray's default with a token
        wait_for_the_job_api(url, fresh_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        yield SimpleNamespace(url=url, gcs=gcs, home=home, token=token)


def wait_for_the_job_api(url: str, env: dict, seconds: float = 120) -> None:
    """The dashboard answers /api/version before its job module is up; on a loaded machine a first `ray job submit`
    could have its connection reset. Wait until an authorised `ray job list` answers."""
    deadline = time.monotonic() + seconds
    while True:
        listing = subprocess.run([str(RAY), "job", "list", "--address", url], env=env, capture_output=True, text=True,
                                 timeout=60)
        if listing.returncode == 0:
            return
        assert time.monotonic() < deadline, "the head's job API did not come up:\n" + listing.stderr[-2000:]
        time.sleep(1)


@pytest.mark.parametrize("client, refusal", [
    ("same user, no RAY_AUTH_MODE", "no authentication token was found"),  # the server's 401
    ("another machine, RAY_AUTH_MODE only", "couldn't find an authentication token"),  # the CLI's own check
])
def test_submit_without_the_token_is_refused(head, shards, tmp_path, client, refusal):
    """Without RAY_AUTH_MODE=token the CLI sends no token, even with ~/.ray/auth_token at hand; with the mode but no
    token anywhere it has none to send. Either way the job is refused before anything runs."""
    if client.startswith("same user"):
        env = fresh_env(head.home)
    else:
        env = fresh_env(tmp_path / "home", RAY_AUTH_MODE="token")
    out = tmp_path / "out"
    submit = subprocess.run(capfilt_submit(head.url, shards, out), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    output = submit.stdout + submit.stderr
    assert submit.returncode != 0, output[-3000:]
    assert "AuthenticationError" in output and refusal in output, output[-3000:]
    assert not out.exists()


def test_readme_way_submits_capfilt(head, shards, tmp_path):
    """The README's lines in a second shell of the head's user: the token from `ray get-auth-token`; the job joins
    the head's cluster and writes every sample."""
    readme = (REPO / "README.md").read_text()
    assert README_TOKEN_LINES in readme  # the test runs what the README says
    out = tmp_path / "out"
    script = README_TOKEN_LINES + shlex.join(capfilt_submit(head.url, shards, out)) + "\n"
    submit = subprocess.run(["bash", "-c", script], cwd=REPO, env=fresh_env(head.home), capture_output=True,
                            text=True, timeout=150)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout
    assert f"127.0.0.1:{head.gcs}" in submit.stdout  # the driver joined this cluster, not an embedded instance
    assert f"capfilt done: {SHARDS}/{SHARDS} shards, {SHARDS * PER_SHARD} samples" in submit.stdout
    check_output(out)


def test_another_machine_with_the_heads_token(head, tmp_path):
    """Another machine (no token file) gets in with RAY_AUTH_MODE=token and the head's token in RAY_AUTH_TOKEN."""
    env = fresh_env(tmp_path / "home", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.token)
    listing = subprocess.run([str(RAY), "job", "list", "--address", head.url], env=env, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stdout[-3000:] + listing.stderr[-3000:]


def test_embedded_ray_keeps_token_auth_without_a_warning(shards, tmp_path):
    """jobs/capfilt.py without RAY_ADDRESS starts its private Ray with token auth on (Ray made the token, in the
    private HOME) and prints nothing about token authentication."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "RAY_ADDRESS"}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "jobs/capfilt.py", "--input", str(shards), "--output", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert f"capfilt done: {SHARDS}/{SHARDS} shards, {SHARDS * PER_SHARD} samples" in output
    assert "token auth" not in output.lower() and "RAY_AUTH_MODE" not in output, output[-3000:]
    assert "Warning" not in output, output[-3000:]  # no Python warning either (FutureWarning, DeprecationWarning)
    assert (home / ".ray" / "auth_token").exists()  # token auth stayed on: Ray made the instance's token
    check_output(out)
