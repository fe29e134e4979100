"""BLIP roles (captioner, filter, VQA answerer), the model zoo and `inference_model`.

The names below are imported on first use, so that `models.images` (all a decode worker needs) does not load torch
and transformers into every process that decodes images.
"""
from importlib import import_module

_HOMES = {
    "Answerer": "models.answerer", "Captioner": "models.captioner", "ImageError": "models.images",
    "Matcher": "models.matcher", "MatchScores": "models.matcher", "ModelLoadError": "models.loading",
    "inference_model": "models.inference", "list_models": "models.loading", "load_checkpoint": "models.loading",
    "load_role": "models.inference", "resolve": "models.loading",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
