"""What a user names before anything loads: model names (zoo name, local directory, hub repo id), devices and
precisions. Torch-free, so that a command line checks its names in well under a second, before torch, transformers
or Ray are imported; `models.loading` and `models.device` load what these names point to.

Resolution happens in one place (`resolve`): a zoo name from zoo.json, an existing local directory in Hugging Face
layout, or a Hugging Face repo id (`org/name`, optionally `@revision`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ZOO_FILE = Path(__file__).with_name("zoo.json")
PRECISIONS = ("auto", "bf16", "fp32")
# The transformers classes capfilt wraps, by the architecture name a checkpoint's config.json declares: the family
# and the tasks the class serves (the first one unless the zoo or the caller names another).
ARCHITECTURES = {
    "BlipForConditionalGeneration": ("blip", ("caption",)),
    "BlipForImageTextRetrieval": ("blip", ("retrieval",)),
    "BlipForQuestionAnswering": ("blip", ("vqa",)),
    "BlipForNlvr": ("blip", ("nlvr",)),  # capfilt's own classes (models/task_models.py)
    "BlipForGrounding": ("blip", ("grounding",)),
    "Blip2ForConditionalGeneration": ("blip2", ("caption", "vqa")),  # one checkpoint captions and answers
    "Blip2ForImageTextRetrieval": ("blip2", ("retrieval",)),
    "CLIPModel": ("clip", ("similarity",)),
}
# Device spellings torch accepts that capfilt runs on; torch itself decides later whether the host has them.
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class ModelLoadError(ValueError):
    """A model that cannot be had or must not be loaded; the message is one sentence for the user."""


class DeviceError(ValueError):
    """A device or precision the user asked for cannot be used on this host."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model name points, before anything is loaded."""

    name: str
    family: str | None  # blip | blip2 | clip; None until a config is read
    task: str | None  # caption | retrieval | vqa | similarity | nlvr | grounding; None until a config is read
    kind: str  # tiny | random | hub | dir | pth | unavailable
    location: str  # tiny seed, repo id[@revision], directory, .pth file, or the reason it is unavailable


@lru_cache(maxsize=1)
def _zoo() -> dict:
    table = json.loads(ZOO_FILE.read_text(encoding="utf-8"))
    return {name: entry for name, entry in table.items() if not name.startswith("_")}


def zoo_entry(name: str) -> dict:
    """The zoo.json entry of a zoo name (family, task, source, note)."""
    return dict(_zoo()[name])


def list_models(task: str | None = None) -> list[str]:
    """Names in the zoo, optionally only those of one task."""
    return sorted(name for name, entry in _zoo().items() if task is None or entry["task"] == task)


def resolve(name: str) -> ModelSpec:
    """Map a zoo name, local directory, `.pth` file (the seeds' checkpoints, converted at load) or hub repo id to a
    ModelSpec (no network, no weights read)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError("a model name must be a non-empty string: a zoo name, a hub repo id or a directory")
    entry = _zoo().get(name)
    if entry is not None:
        source = entry["source"]
        if source is None:
            return ModelSpec(name, entry["family"], entry["task"], "unavailable", entry["note"])
        kind, _, location = source.partition(":")
        if kind == "path":  # a checkpoint shipped in the repository, relative to models/
            location = str((ZOO_FILE.parent / location).resolve())
        kinds = {"hf": "hub", "tiny": "tiny", "base-random": "random", "path": "dir"}
        return ModelSpec(name, entry["family"], entry["task"], kinds[kind], location)
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSpec(name, None, None, "dir", str(path.resolve()))
    if path.suffix == ".pth":
        if not path.is_file():
            raise ModelLoadError(f"{name!r} does not exist")
        return ModelSpec(name, None, None, "pth", str(path.resolve()))
    repo = name.removeprefix("hf:")
    if repo.count("/") == 1 and not repo.startswith(("/", ".", "~")) and not path.exists():
        return ModelSpec(name, None, None, "hub", repo)
    raise ModelLoadError(
        f"unknown model {name!r}: not a zoo name (see `python -m models list`), an existing directory, a .pth file or "
        "a hub repo id"
    )


def check_model(name: str, task: str | None = None) -> ModelSpec:
    """`resolve(name)`, refusing a zoo name without a checkpoint and, when `task` is given, a model known to be of
    another task (a directory's or hub repo's task is known only once its config is read, at load)."""
    spec = resolve(name)
    if spec.kind == "unavailable":
        raise ModelLoadError(f"{name!r} has no checkpoint in Hugging Face layout: {spec.location}{pth_route(name)}")
    if task is not None and spec.task is not None and spec.task != task:
        raise ModelLoadError(f"{name!r} is a {spec.task} model, but a {task} model is needed here")
    return spec


def pth_route(name: str) -> str:
    """For a zoo name with a toolbox download: the way to run it from that `.pth` (for an error message)."""
    url = _zoo().get(name, {}).get("pth")
    if not url:
        return ""
    entry = _zoo()[name]
    file = url.rsplit("/", 1)[-1]
    if entry["family"] == "blip2" and entry["task"] != "retrieval":  # the toolbox saves no language model
        task = " --task vqa" if entry["task"] == "vqa" else ""
        return (f"; or download {file} ({url}) and facebook/opt-2.7b, then name the file itself with "
                f"CAPFILT_LANGUAGE_MODEL=OPT_DIR set, or convert it once with `python -m models convert {file} "
                f"--to DIR --language-model OPT_DIR{task}` and name DIR")
    return (f"; or download {file} ({url}) and name the file itself, or convert it once with "
            f"`python -m models convert {file} --to DIR --tokenizer TOKENIZER_DIR` and name DIR")


def check_device(device: str, precision: str = "auto") -> None:
    """Refuse a misspelt device or precision (whether the host has the device is for models.device to say)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def family_of(name: str) -> str:
    """The model family ("blip", "blip2" or "clip") a model name points to, without loading anything or touching
    the network (an evaluation suite picks its protocols by it):

    - a zoo name: its zoo.json `family`;
    - an existing local directory: the family of its config.json's first architecture in ARCHITECTURES; a
      directory without a readable config or a known architecture counts as "blip", and loading it says why it
      cannot run;
    - anything else, a hub repo id (`org/name[@revision]`) above all: "blip2" when "blip2" is in the lower-cased
      repo name (the part after the organisation, e.g. Salesforce/blip2-opt-2.7b), else "blip". A hub repo's
      config is read only when it loads, so a BLIP-2 repo whose name lacks "blip2" is to be named by a zoo name or
      a downloaded directory.
    """
    entry = _zoo().get(name)
    if entry is not None:
        return entry["family"]
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "blip"
        architectures = config.get("architectures") if isinstance(config, dict) else None
        for architecture in architectures if isinstance(architectures, list) else []:
            if isinstance(architecture, str) and architecture in ARCHITECTURES:
                return ARCHITECTURES[architecture][0]
        return "blip"
    repo = name.removeprefix("hf:").partition("@")[0]
    return "blip2" if "blip2" in repo.rsplit("/", 1)[-1].lower() else "blip"
