"""Task runners: a task's records and a model pool in, metrics (percent points) and predictions out."""
from evaluation.tasks.caption import run_caption
from evaluation.tasks.common import Outcome
from evaluation.tasks.grounding import run_grounding
from evaluation.tasks.nlvr import run_nlvr
from evaluation.tasks.retrieval import run_retrieval
from evaluation.tasks.vqa import run_vqa

RUNNERS = {"caption": run_caption, "vqa": run_vqa, "retrieval": run_retrieval, "nlvr": run_nlvr,
           "grounding": run_grounding}

__all__ = ["RUNNERS", "Outcome", "run_caption", "run_grounding", "run_nlvr", "run_retrieval", "run_vqa"]
