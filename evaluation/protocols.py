"""Default evaluation protocol of each task type (PROTOCOLS.md), and checking a suite's overrides against it."""
from __future__ import annotations

import copy

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")

DEFAULTS: dict[str, dict] = {
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
TASK_TYPES = tuple(DEFAULTS)
CHOICES = {("vqa", "mode"): ("generate", "rank"), ("vqa", "normalize"): ("official", "always")}
POSITIVE_INTS = {"num_beams", "max_length", "min_length", "k", "batch_size", "itm_batch_size"}


class ProtocolError(ValueError):
    """An override that is unknown or of the wrong kind; `field` names it relative to the protocol."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _check_value(task_type: str, key: str, value, default):
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
    choices = CHOICES.get((task_type, key))
    if choices and value not in choices:
        raise ProtocolError(key, f"should be one of {', '.join(choices)}, got {value!r}")
    if key in POSITIVE_INTS and value < 1:
        raise ProtocolError(key, f"should be at least 1, got {value}")
    return value


def merge_protocol(task_type: str, *overrides: dict) -> dict:
    """The default protocol of `task_type` with each override applied in turn, every key and value checked."""
    protocol = copy.deepcopy(DEFAULTS[task_type])
    for override in overrides:
        for key, value in (override or {}).items():
            if key not in protocol:
                raise ProtocolError(str(key), f"unknown setting for a {task_type} task (known: {', '.join(protocol)})")
            protocol[key] = _check_value(task_type, key, value, DEFAULTS[task_type][key])
    _check_consistent(task_type, protocol)
    return protocol


def _check_consistent(task_type: str, protocol: dict) -> None:
    if "min_length" in protocol and protocol["min_length"] > protocol["max_length"]:
        raise ProtocolError("min_length", f"{protocol['min_length']} is above max_length {protocol['max_length']}")
    if task_type == "caption":
        unknown = [m for m in protocol["metrics"] if m not in CAPTION_METRICS]
        if unknown:
            raise ProtocolError("metrics", f"unknown caption metric(s) {unknown} (known: {', '.join(CAPTION_METRICS)})")
    if task_type == "retrieval" and any(k < 1 for k in protocol["ks"]):
        raise ProtocolError("ks", f"recall cut-offs must be at least 1, got {protocol['ks']}")
    if task_type == "grounding" and not 0 < protocol["iou_threshold"] <= 1:
        raise ProtocolError("iou_threshold", f"should be in (0, 1], got {protocol['iou_threshold']}")
