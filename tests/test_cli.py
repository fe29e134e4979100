"""`python -m models`: JSON on success; exit 2 with one `error:` line and no traceback on user errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from models.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "Salesforce/blip-itm-base-coco"


@pytest.fixture(scope="module")
def image_path(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("cli") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.fixture(scope="module")
def runs(image_path, tmp_path_factory):
    """The CLI run as real subprocesses, all started at once (each pays the torch import), keyed by case."""
    missing = tmp_path_factory.mktemp("cli-missing") / "missing.png"
    cases = {
        "caption": (["run", "tiny-random_caption", str(image_path)], {}),
        "bad-image": (["run", "tiny-random_caption", str(missing)], {}),
        "hub-offline": (["run", HUB_ID, str(image_path)], {"HF_HUB_OFFLINE": "1"}),
    }
    processes = {}
    for name, (args, env) in cases.items():
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "models", *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[name] = (process.returncode, stdout, stderr)
    return results


def test_run_tiny_caption_prints_json(runs):
    """`run tiny-random_caption IMAGE` exits 0 and prints {'pred_caption': str} as JSON."""
    code, stdout, stderr = runs["caption"]
    assert code == 0, stderr
    result = json.loads(stdout)
    assert list(result) == ["pred_caption"] and isinstance(result["pred_caption"], str)


@pytest.mark.parametrize("case,expected", [("bad-image", "missing.png"), ("hub-offline", "--local-dir")])
def test_user_errors_exit_2_with_one_error_line(runs, case, expected):
    """A bad image path or an unreachable hub model exits 2 with a single `error:` line, no traceback."""
    code, stdout, stderr = runs[case]
    assert code == 2
    assert stdout == ""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_in_process_run_for_vqa_and_retrieval(image_path, capsys):
    """main() prints a JSON answer for a VQA model and JSON score lists for several texts."""
    assert main(["run", "tiny-random_vqa", str(image_path), "--question", "what is it?",
                 "--candidates", "yes", "no"]) == 0
    assert json.loads(capsys.readouterr().out)["pred_answer"] in ("yes", "no")
    assert main(["run", "tiny-random_retrieval", str(image_path), "--text", "a man", "a cat"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert len(scores["itm_score"]) == len(scores["itc_score"]) == 2
    assert main(["run", "tiny-random_retrieval", str(image_path), "--text", "a man"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["itm_score"], float)


def test_in_process_user_errors_return_2(image_path, capsys):
    """A VQA model without --question and an unavailable model return 2 with an `error:` line."""
    assert main(["run", "tiny-random_vqa", str(image_path)]) == 2
    assert main(["run", "blip-base_3rdparty_nlvr", str(image_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_list_prints_the_zoo(capsys):
    """`list` prints every zoo name once; `list --task vqa` only VQA models."""
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-random_caption" in out and "blip-base_3rdparty_nlvr" in out and "(unavailable)" in out
    assert main(["list", "--task", "vqa"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "tiny-random_vqa" in names and "tiny-random_caption" not in names
