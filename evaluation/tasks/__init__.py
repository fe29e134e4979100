"""Task runners: a task's records and a model pool in, metrics (percent points) and predictions out."""
from evaluation.tasks.caption import run_caption
from evaluation.tasks.common import Outcome
from evaluation.tasks.retrieval import run_retrieval
from evaluation.tasks.vqa import run_vqa

# Task types with a runner; NLVR2 and grounding have readers and metrics, and get runners with their models.
RUNNERS = {"caption": run_caption, "vqa": run_vqa, "retrieval": run_retrieval}

__all__ = ["RUNNERS", "Outcome", "run_caption", "run_retrieval", "run_vqa"]
