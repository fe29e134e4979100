"""The command line as a user meets it: a typo answers with one `error:` line and exit 2 before torch,
transformers or Ray are imported; `--help` is grouped, shows every default and loads none of them either; the
`capfilt` console script dispatches to the same mains; evaluation calls its roles by `Method`, checked on the driver."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "ray")
# Runs a job's main in a fresh interpreter, then says which heavy libraries that loaded.
PROBE = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
try:
    code = module.main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules))
sys.exit(code)
""".format(heavy=HEAVY)


def probe(module: str, *argv: str, cwd: Path = REPO) -> tuple[int, str, str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", PROBE, module, *argv], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    lines = result.stdout.splitlines()
    heavy = lines[-1].removeprefix("HEAVY:").split(",") if lines and lines[-1].startswith("HEAVY:") else ["?"]
    return result.returncode, "\n".join(lines[:-1]), result.stderr, [m for m in heavy if m]


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    from tests.corpus import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("shards"), shards=1, per_shard=2)[0]


def _typos(shard: Path, tmp: Path) -> list[tuple[str, list[str], str]]:
    io = ["--input", str(shard), "--output", str(tmp / "out")]
    ann = ["--annotations", str(tmp / "none.json"), "--images", str(tmp), "--output", str(tmp / "t")]
    return [
        ("jobs.capfilt", ["--input", str(tmp / "nope" / "x.tar"), "--output", str(tmp / "out")], "no such shard"),
        ("jobs.capfilt", [*io, "--captioner", "blip-bsae_caption"], "unknown model 'blip-bsae_caption'"),
        ("jobs.capfilt", [*io, "--filter", "tiny-random_caption"], "a caption model, but a retrieval model"),
        ("jobs.capfilt", [*io, "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        ("jobs.capfilt", [*io, "--device", "cdua"], "unknown device 'cdua'"),
        ("jobs.capfilt", [*io, "--num-captoins", "3"], "unrecognized arguments: --num-captoins"),
        ("jobs.capfilt", ["--input", str(shard), "--output", "pipe://x"], "not accepted"),
        ("jobs.evaluate", ["--suite", "fixturse", "--output", str(tmp / "e")], "fixturse: suite file not found"),
        ("jobs.evaluate", ["--suite", "fixtures", "--output", str(tmp / "e"), "--model", "captioner=no-such",
                           "--tasks", "coco_caption"], "unknown model 'no-such'"),
        ("jobs.evaluate", ["--suite", "fixtures", "--output", str(tmp / "e"), "--device", "gpu"], "unknown device"),
        ("jobs.train", ["pretrain", "--shards", str(tmp / "nope.tar"), "--output", str(tmp / "t")], "no such shard"),
        ("jobs.train", ["caption", *ann, "--init", str(tmp)], "holds no exported model"),
        ("jobs.train", ["pretran", "--output", str(tmp / "t")], "invalid choice: 'pretran'"),
        ("jobs.curate", ["summary", str(tmp / "no-run")], "error"),
        ("jobs.curate", ["sumary", str(tmp)], "invalid choice: 'sumary'"),
    ]


def test_a_typo_answers_with_one_line_and_exit_2_before_torch_or_ray(shard, tmp_path):
    for module, argv, expected in _typos(shard, tmp_path):
        code, _, err, heavy = probe(module, *argv)
        assert code == 2, (module, argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, (module, argv, err)
        assert heavy == [], (module, argv, heavy)


@pytest.mark.parametrize("module", ["jobs.capfilt", "jobs.curate", "jobs.evaluate", "jobs.train", "jobs.bootstrap"])
def test_help_loads_no_heavy_library(module):
    code, out, _, heavy = probe(module, "--help")
    assert code == 0 and out.startswith("usage:") and heavy == []


def test_capfilt_help_groups_its_options_and_shows_every_default():
    from jobs.capfilt import build_parser
    from models.sampling_config import Sampling

    text = build_parser().format_help().split("\noptions:", 1)[1]
    for group in ("input and output:", "models:", "sampling (BLIP's CapFilt defaults):", "resources"):
        assert f"\n{group}" in text, group
    defaults = Sampling()
    for option, value in (("--num-captions", defaults.num_captions), ("--seed", defaults.seed),
                          ("--top-p", defaults.top_p), ("--repetition-penalty", defaults.repetition_penalty),
                          ("--max-length", defaults.max_length), ("--min-length", defaults.min_length)):
        block = text.split(f"  {option} ", 1)[1].split("\n  --", 1)[0]
        assert f"(default: {value})" in " ".join(block.split()), option
    for option in ("--captioner", "--filter", "--batch-size", "--actors", "--decode-workers", "--model-threads"):
        block = " ".join(text.split(f"  {option} ", 1)[1].split("\n  --", 1)[0].split())
        assert "default" in block and "None" not in block, option


def test_curate_help_shows_no_developer_comment():
    code, out, _, _ = probe("jobs.curate", "--help")
    assert code == 0 and "select.py" not in out and "sys.path" not in out
    code, out, _, _ = probe("jobs.curate", "keep", "--help")
    assert code == 0 and "(default: 0.5)" in out and "(default: both)" in out


def test_sampling_defaults_have_one_home():
    """The job's options, the config, the captioner's keyword defaults and the nucleus all read models.sampling_config."""
    import inspect

    from models.captioner import PROMPT, Captioner
    from models.sampling import SeededNucleus
    from models.sampling_config import Sampling
    from pipelines.config import CapFiltConfig

    defaults = Sampling()
    sample = inspect.signature(Captioner.sample).parameters
    for name in ("seed", "num_captions", "prompt", "top_p", "top_k", "repetition_penalty", "max_length", "min_length"):
        assert sample[name].default == getattr(defaults, name), name
    nucleus = inspect.signature(SeededNucleus).parameters
    assert (nucleus["top_p"].default, nucleus["top_k"].default) == (defaults.top_p, defaults.top_k)
    assert CapFiltConfig("i", "o").sampling == defaults
    # The prompt defaults to the captioner's own, written once per family beside its role.
    assert defaults.prompt is None and Captioner.default_prompt == PROMPT


def test_the_console_script_dispatches_to_the_jobs(tmp_path):
    from jobs import cli

    assert cli.main(["run", "--input", str(tmp_path / "x.tar"), "--output", str(tmp_path / "o")]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["--help"]) == 0
    code, out, _, heavy = probe("jobs.cli", "run", "--help")
    assert code == 0 and out.startswith("usage: capfilt run") and heavy == []
    code, out, _, _ = probe("jobs.cli", "models", "list")
    assert code == 0 and "tiny-random_caption" in out


def test_job_scripts_run_as_files_from_the_repository_root(tmp_path):
    """`python jobs/X.py` (what `ray job submit --working-dir . -- python jobs/capfilt.py` runs) needs no sys.path
    edit in the script: the package is installed, or Ray puts the working directory on PYTHONPATH."""
    for script in ("capfilt", "curate", "evaluate", "train", "bootstrap"):
        result = subprocess.run([sys.executable, f"jobs/{script}.py", "--help"], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.startswith("usage:"), (script, result.stderr)
    # a Ray job's driver: the package not installed, the working directory (a copy of the repository) on PYTHONPATH
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run([sys.executable, "-S", "jobs/capfilt.py", "--input", str(tmp_path / "x.tar"),
                             "--output", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode in (1, 2), result.stderr  # -S: no site-packages; the job's own modules still import
    assert "No module named 'jobs'" not in result.stderr and "No module named 'models'" not in result.stderr


def test_every_method_is_a_role_server_method_and_a_typo_fails_on_the_driver():
    import ray  # noqa: F401 - the pool module imports it; no Ray is started

    from evaluation.actors import RolePool
    from evaluation.calls import Method
    from evaluation.serving import ModelHost, RoleServer

    for method in Method:
        assert callable(getattr(RoleServer, method.value)), method

    class NoActor:
        def __getattr__(self, name):
            raise AssertionError("a call reached an actor")

    pool = RolePool("filter", [NoActor()], {})
    with pytest.raises(ValueError, match="itm_logit"):
        list(pool.map("itm_logit", [(None, ([0], ["a text"]))]))
    with pytest.raises(ValueError, match="clear_image"):
        pool.broadcast("clear_image")
    host = ModelHost.__new__(ModelHost)
    host.servers = {"filter": object()}
    with pytest.raises(ValueError):
        host.call("filter", "itm_logit", [0], ["a text"])
