"""Safe checkpoint loading: a name, hub id or directory in, a ready torch model out.

What a name points to is decided in one place, torch-free: `models.names.resolve` (re-exported here). Weights load
from safetensors only and no code from a checkpoint is ever executed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from models import task_models, tiny, tiny_blip2, tiny_clip
from models.names import (ARCHITECTURES, ZOO_FILE, ModelLoadError, ModelSpec, check_model, list_models, pth_route,
                          resolve, zoo_entry)
from models.convert import CONVERSION_RECORD
from models.patches import patch_blip

__all__ = ["ARCHITECTURES", "ZOO_FILE", "Checkpoint", "ModelLoadError", "ModelSpec", "list_models", "load_checkpoint",
           "resolve", "zoo_entry"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")
# BLIP's transform: CLIP's normalisation statistics (used when a checkpoint has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
logger = logging.getLogger("capfilt.models")


@dataclass
class Checkpoint:
    """A loaded model with what its roles need to run it."""

    spec: ModelSpec
    family: str
    task: str
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    fingerprint: str  # hub commit, content hash of local weights, or the tiny seed

    def describe(self) -> dict:
        return {"name": self.spec.name, "task": self.task, "family": self.family, "source": self.spec.kind,
                "location": self.spec.location, "fingerprint": self.fingerprint}


def load_checkpoint(name: str, task: str | None = None) -> Checkpoint:
    """Load `name` (zoo name, directory or hub id); `task`, when given, must match what the checkpoint is."""
    spec = check_model(name, task)
    if spec.kind in ("tiny", "random"):
        return _build_random(spec)
    if spec.kind == "pth":
        from models.convert import converted

        return _load_directory(spec, converted(spec.location, task), task, None)
    directory, fingerprint = _fetch(spec) if spec.kind == "hub" else (Path(spec.location), None)
    if not directory.is_dir():
        raise ModelLoadError(f"{name!r}: its directory {str(directory)!r} does not exist")
    return _load_directory(spec, directory, task, fingerprint)


def _build_random(spec: ModelSpec) -> Checkpoint:
    """A zoo model built offline with deterministic random weights; location "SEED" or "SEED:VARIANT" (the
    language model of a BLIP-2 captioner: opt or t5)."""
    seed, _, variant = spec.location.partition(":")
    shape = "tiny" if spec.kind == "tiny" else {"blip": "base", "blip2": "vitg"}[spec.family]
    if spec.family == "blip":
        model, tokenizer = tiny.build_tiny(spec.task, seed=int(seed), size=shape)
        patch_blip(model)
    elif spec.family == "blip2":
        model, tokenizer = tiny_blip2.build_tiny_blip2(spec.task, seed=int(seed), lm=variant or "opt", size=shape)
    else:
        model, tokenizer = tiny_clip.build_tiny_clip(seed=int(seed))
    size = model.config.vision_config.image_size
    return Checkpoint(spec, spec.family, spec.task, model, tokenizer, size, CLIP_MEAN, CLIP_STD,
                      f"{shape}-random-seed{spec.location}")


def _fetch(spec: ModelSpec) -> tuple[Path, str]:
    """Download (or find in the local cache) the safetensors snapshot of a hub repo."""
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.location.partition("@")
    # huggingface_hub's own 10 s metadata timeout bounds the wait when the hub is unreachable.
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        path = Path(snapshot_download(repo, revision=revision or None, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - every way of not getting the files means the same to the user
        raise ModelLoadError(
            f"cannot get the weights of {spec.name!r}: the Hugging Face hub is unreachable from here and there is "
            f"no local copy of {repo} ({type(exc).__name__}); download it where the hub is reachable "
            f"(`hf download {repo} --local-dir DIR`) and pass DIR instead{pth_route(spec.name)}"
        ) from None
    return path, f"{repo}@{path.name}"


def _load_directory(spec: ModelSpec, directory: Path, task: str | None, fingerprint: str | None) -> Checkpoint:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{str(directory)!r} has no config.json: it is not a model in Hugging Face layout")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{str(config_file)!r} is not valid JSON: {exc}") from None
    if "auto_map" in config or "auto_map" in _read_json(directory / "tokenizer_config.json"):
        raise ModelLoadError(f"{str(directory)!r} asks for remote code (auto_map); capfilt never runs checkpoint code")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
        raise ModelLoadError(f"{str(directory)!r} has {what}; capfilt loads safetensors only (a seed's .pth: "
                             "`python -m models convert FILE.pth --to DIR`, or name the .pth itself)")
    architectures = config.get("architectures") or []
    known = [a for a in architectures if a in ARCHITECTURES]
    if not known:
        raise ModelLoadError(
            f"{str(directory)!r} is a {architectures or config.get('model_type')} model; capfilt runs {', '.join(ARCHITECTURES)}"
        )
    family, tasks = ARCHITECTURES[known[0]]
    wanted = task or spec.task or tasks[0]
    if wanted not in tasks:
        raise ModelLoadError(f"{spec.name!r} is a {' / '.join(tasks)} model ({known[0]}), but a {wanted} model is "
                             "needed here")
    found_task = wanted
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{str(directory)!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}) beside its weights")
    model_class = task_models.model_class(known[0])
    try:
        transformers.utils.logging.disable_progress_bar()  # capfilt reports its own progress; no bar per actor
        record = _read_json(directory / CONVERSION_RECORD)  # a converted .pth's; {} for any other directory
        model = model_class.from_pretrained(directory, use_safetensors=True, **converted_config(directory, record)).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many types; the user needs one sentence
        raise ModelLoadError(f"cannot load {str(directory)!r}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if family == "blip" and (spec.kind == "hub" or str(config.get("transformers_version", "")).startswith("4.")):
        original_vision_eps(model)
    converted_norms(model, directory, record)
    patch_blip(model)
    if family == "blip2" and found_task != "retrieval" and getattr(model.config, "image_token_index", None) is None:
        raise ModelLoadError(f"{str(directory)!r}: its config has no image_token_index (a BLIP-2 checkpoint saved "
                             "before transformers placed the 32 query embeddings at <image> tokens); take the hub's "
                             "current revision of it")
    text_vocab = getattr(getattr(model.config, "text_config", None), "vocab_size", None)
    if family == "blip" and text_vocab and len(tokenizer) > text_vocab:
        raise ModelLoadError(f"{str(directory)!r}: the tokenizer has {len(tokenizer)} tokens but the model only {text_vocab}")
    if family == "blip" and tokenizer.convert_tokens_to_ids("[SEP]") in (None, tokenizer.unk_token_id):
        raise ModelLoadError(f"{str(directory)!r}: the tokenizer is not a BERT WordPiece tokenizer with [SEP] and [CLS]")
    processor = _read_json(directory / "preprocessor_config.json")
    size = model.config.vision_config.image_size
    mean = tuple(processor.get("image_mean", CLIP_MEAN))
    std = tuple(processor.get("image_std", CLIP_STD))
    return Checkpoint(spec, family, found_task, model, tokenizer, size, mean, std, fingerprint or _content_hash(weights))


_EPS_SAID = []


def original_vision_eps(model) -> None:
    """Salesforce's BLIP checkpoints on the hub (converted from the original with transformers 4, as their configs
    record) keep transformers' default ViT LayerNorm eps, 1e-5; the original ViT, which trained them, uses 1e-6, and
    ITM, ITC and captions move with it (issue 26). Follow the original, and say so once per process."""
    from models.shapes import BLIP_VISION_EPS

    vision = model.config.vision_config
    if vision.layer_norm_eps == BLIP_VISION_EPS:
        return
    if not _EPS_SAID:
        _EPS_SAID.append(True)
        logger.warning("BLIP checkpoint from the hub: its vision LayerNorm eps %g becomes the original ViT's %g",
                       vision.layer_norm_eps, BLIP_VISION_EPS)
    vision.layer_norm_eps = BLIP_VISION_EPS
    for module in model.vision_model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = BLIP_VISION_EPS


def converted_config(directory: Path, record: dict) -> dict:
    """{"config": ...} with the values a conversion `record` keeps apart from config.json (LAVIS's Flan-T5
    activation, which T5Config rebuilds from its feed_forward_proj), or {} when it keeps none."""
    overrides = record.get("config_overrides") or {}
    if not overrides:
        return {}
    config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    for path, value in overrides.items():
        *parents, name = path.split(".")
        target = config
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return {"config": config}


def converted_norms(model, directory: Path, record: dict) -> None:
    """The LayerNorm eps a converted checkpoint records apart from its config (transformers' BLIP-2 has one eps for
    the whole ViT, its upstreams another for ln_vision after it): set on the modules."""
    for path, eps in record.get("layer_norm_eps", {}).items():
        module = model.get_submodule(path)
        if not isinstance(module, torch.nn.LayerNorm):
            raise ModelLoadError(f"{str(directory)!r}: {path} in {CONVERSION_RECORD} is not a LayerNorm")
        module.eps = float(eps)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{str(path)!r} is not valid JSON: {exc}") from None


def _content_hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
