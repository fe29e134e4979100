"""BLIP roles (captioner, filter, VQA answerer), the model zoo and `inference_model`."""
from models.answerer import Answerer
from models.captioner import Captioner
from models.images import ImageError
from models.inference import inference_model, load_role
from models.loading import ModelLoadError, list_models, load_checkpoint, resolve
from models.matcher import Matcher, MatchScores

__all__ = [
    "Answerer", "Captioner", "ImageError", "Matcher", "MatchScores", "ModelLoadError",
    "inference_model", "list_models", "load_checkpoint", "load_role", "resolve",
]
