"""Default evaluation protocol of each task type, per model family (PROTOCOLS.md), and checking a suite's overrides
against it.

BLIP and BLIP-2 evaluate with different settings, and name some of them differently: BLIP's lengths count the
decoder's start token and the prompt (`max_length`, `min_length`), BLIP-2's count new tokens only (`max_new_tokens`,
`min_new_tokens`), as the roles' own keyword arguments do. An override is checked against the family of the task's
model, so a BLIP setting on a BLIP-2 model is an error naming the field, never a setting silently ignored.
"""
from __future__ import annotations

import copy

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")

BLIP: dict[str, dict] = {
    "caption": {
        "prompt": "a picture of ",  # BLIP's captioning prompt; stripped from every caption
        "num_beams": 3,
        "max_length": 20,  # tokens, counting [DEC] and the prompt, as BLIP counts them
        "min_length": 5,
        "repetition_penalty": 1.0,
        # METEOR starts a JVM (8-15 s here); SPICE runs only where its CoreNLP jars are, else it is "unavailable".
        "metrics": list(CAPTION_METRICS),
        "batch_size": 32,  # images per model call; does not change the captions
    },
    "vqa": {
        "mode": "generate",  # OK-VQA / OCR-VQA generate; VQAv2 ranks over the answer list ("rank")
        "num_beams": 3,
        "max_length": 10,
        "min_length": 1,
        "k": 128,  # rank: candidates shortlisted by first-token probability, then rescored in full
        "normalize": "official",  # the official evaluator normalises only when annotators disagree
        "batch_size": 32,  # questions per model call
    },
    "retrieval": {
        "k": 256,  # ITC shortlist per query before the ITM rerank: 256 for COCO, 128 for Flickr30k in BLIP
        "ks": [1, 5, 10],
        "batch_size": 32,  # images or texts per embedding call
        "itm_batch_size": 256,  # image-text pairs per ITM call
    },
    "nlvr": {"batch_size": 32},
    "grounding": {"iou_threshold": 0.5, "batch_size": 32},
}

# BLIP-2 (the toolbox's protocol, models/blip2_captioner.py): lengths in new tokens; `image_size` 0 runs the
# checkpoint's own size, another value interpolates the ViT's position embeddings (LAVIS and the toolbox evaluate
# COCO captioning and retrieval at 364 px with the 224 px pre-trained weights).
BLIP2: dict[str, dict] = {
    "caption": {
        "prompt": "a photo of",
        "num_beams": 5,
        "max_new_tokens": 30,
        "min_new_tokens": 1,  # LAVIS's COCO evaluation: 8, at 364 px
        "length_penalty": 1.0,
        "repetition_penalty": 1.0,
        "image_size": 0,
        "metrics": list(CAPTION_METRICS),
        "batch_size": 32,
    },
    "vqa": {
        "mode": "generate",  # the only one: BLIP-2 generates its answers (no answer list)
        "prompt": "Question: {} Answer:",  # the toolbox's; LAVIS's is "Question: {} Short answer:"
        "num_beams": 5,
        "max_new_tokens": 10,
        "min_new_tokens": 1,
        "length_penalty": -1.0,  # short answers
        "image_size": 0,
        "normalize": "official",
        "batch_size": 32,
    },
    "retrieval": {
        "k": 128,  # ITC shortlist per query before the ITM rerank (LAVIS and the toolbox: 128 for COCO)
        "ks": [1, 5, 10],
        "image_size": 0,
        "batch_size": 32,
        "itm_batch_size": 256,
    },
}

FAMILY_DEFAULTS: dict[str, dict[str, dict]] = {"blip": BLIP, "blip2": BLIP2}
FAMILY_NAMES = {"blip": "BLIP", "blip2": "BLIP-2", "clip": "CLIP"}
DEFAULTS = BLIP  # BLIP's protocols: the tables every task type has
TASK_TYPES = tuple(BLIP)
# Settings that say how a task is run and scored, not how the model generates: everything else in a caption or
# VQA protocol is passed to the role's caption() / answer() as a keyword argument.
NOT_GENERATION = frozenset({"metrics", "batch_size", "mode", "normalize", "k", "ks", "itm_batch_size", "image_size",
                            "iou_threshold"})
CHOICES = {
    ("blip", "vqa", "mode"): ("generate", "rank"),
    ("blip2", "vqa", "mode"): ("generate",),
    ("blip", "vqa", "normalize"): ("official", "always"),
    ("blip2", "vqa", "normalize"): ("official", "always"),
}
REFUSED = {  # a value another family accepts, and why this one does not
    ("blip2", "vqa", "mode", "rank"): "BLIP-2 answers by generation (mode: generate); ranking the answer list is "
                                      "BLIP's VQAv2 protocol",
}
RENAMED = {("blip2", "max_length"): "max_new_tokens", ("blip2", "min_length"): "min_new_tokens"}
POSITIVE_INTS = {"num_beams", "max_length", "min_length", "max_new_tokens", "k", "batch_size", "itm_batch_size"}
NON_NEGATIVE_INTS = {"min_new_tokens", "image_size"}


class ProtocolError(ValueError):
    """An override that is unknown or of the wrong kind; `field` names it relative to the protocol."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def has_protocol(family: str, task_type: str) -> bool:
    """Whether capfilt evaluates `task_type` tasks on models of `family`."""
    return task_type in FAMILY_DEFAULTS.get(family, {})


def families_of(task_type: str) -> tuple[str, ...]:
    return tuple(family for family, tables in FAMILY_DEFAULTS.items() if task_type in tables)


def generation_settings(protocol: dict) -> dict:
    """The keyword arguments of the role's caption() / answer() call: the protocol less what runs and scores it."""
    return {key: value for key, value in protocol.items() if key not in NOT_GENERATION}


def _check_value(family: str, task_type: str, key: str, value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        raise ProtocolError(key, f"should be {type(default).__name__}, got {value!r}")
    if isinstance(default, float) and isinstance(value, int):
        value = float(value)
    if isinstance(default, list):
        if not isinstance(value, list) or not value:
            raise ProtocolError(key, f"should be a non-empty list, got {value!r}")
        kind = type(default[0])
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, kind):
                raise ProtocolError(f"{key}[{i}]", f"should be {kind.__name__}, got {item!r}")
        return list(value)
    if not isinstance(value, type(default)):
        raise ProtocolError(key, f"should be {type(default).__name__}, got {type(value).__name__} {value!r}")
    refused = REFUSED.get((family, task_type, key, value))
    if refused:
        raise ProtocolError(key, f"{value!r} is refused for a {FAMILY_NAMES[family]} model: {refused}")
    choices = CHOICES.get((family, task_type, key))
    if choices and value not in choices:
        raise ProtocolError(key, f"should be one of {', '.join(choices)}, got {value!r}")
    if key in POSITIVE_INTS and value < 1:
        raise ProtocolError(key, f"should be at least 1, got {value}")
    if key in NON_NEGATIVE_INTS and value < 0:
        raise ProtocolError(key, f"should be at least 0, got {value}")
    return value


def _unknown(family: str, task_type: str, key: str, known: dict) -> ProtocolError:
    listed = ", ".join(known)
    others = [f for f, tables in FAMILY_DEFAULTS.items() if f != family and key in tables.get(task_type, {})]
    if not others:
        return ProtocolError(key, f"unknown setting for a {task_type} task (known: {listed})")
    renamed = RENAMED.get((family, key))
    hint = f"; {FAMILY_NAMES[family]} counts new tokens: use {renamed}" if renamed else ""
    return ProtocolError(key, f"a setting of {FAMILY_NAMES[others[0]]}'s {task_type} protocol, not of "
                              f"{FAMILY_NAMES[family]}'s, whose model this task runs{hint} (known: {listed})")


def merge_protocol(task_type: str, *overrides: dict, family: str = "blip") -> dict:
    """The default protocol of `task_type` for models of `family` with each override applied in turn, every key
    and value checked against that family's protocol."""
    if not has_protocol(family, task_type):
        raise ValueError(f"no {task_type} protocol for {family} models (families with one: "
                         f"{', '.join(families_of(task_type)) or 'none'})")
    defaults = FAMILY_DEFAULTS[family][task_type]
    protocol = copy.deepcopy(defaults)
    for override in overrides:
        # `mode` first: a BLIP VQAv2 override {mode: rank, k: 128} on BLIP-2 is refused for its mode, not its k
        for key, value in sorted((override or {}).items(), key=lambda item: item[0] != "mode"):
            if key not in protocol:
                raise _unknown(family, task_type, str(key), protocol)
            protocol[key] = _check_value(family, task_type, key, value, defaults[key])
    _check_consistent(task_type, protocol)
    return protocol


def _check_consistent(task_type: str, protocol: dict) -> None:
    for low, high in (("min_length", "max_length"), ("min_new_tokens", "max_new_tokens")):
        if low in protocol and protocol[low] > protocol[high]:
            raise ProtocolError(low, f"{protocol[low]} is above {high} {protocol[high]}")
    if task_type == "caption":
        unknown = [m for m in protocol["metrics"] if m not in CAPTION_METRICS]
        if unknown:
            raise ProtocolError("metrics", f"unknown caption metric(s) {unknown} (known: {', '.join(CAPTION_METRICS)})")
    if task_type == "vqa" and "prompt" in protocol and protocol["prompt"].count("{}") != 1:
        raise ProtocolError("prompt", f"should hold one '{{}}', where the question goes, got {protocol['prompt']!r}")
    if task_type == "retrieval" and any(k < 1 for k in protocol["ks"]):
        raise ProtocolError("ks", f"recall cut-offs must be at least 1, got {protocol['ks']}")
    if task_type == "grounding" and not 0 < protocol["iou_threshold"] <= 1:
        raise ProtocolError("iou_threshold", f"should be in (0, 1], got {protocol['iou_threshold']}")
