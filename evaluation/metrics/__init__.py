"""Evaluation metrics: captioning (pycocoevalcap), VQA accuracy, retrieval recalls, NLVR2, grounding."""
from .captioning import MetricUnavailableError, caption_scores, spice_status
from .grounding import box_iou, grounding_accuracy
from .nlvr import nlvr_accuracy
from .retrieval import itc_scores, rerank_scores, reranked_recalls, retrieval_recalls
from .vqa import normalize_answer, question_accuracy, vqa_accuracy

__all__ = [
    "MetricUnavailableError", "caption_scores", "spice_status",
    "box_iou", "grounding_accuracy",
    "nlvr_accuracy",
    "itc_scores", "rerank_scores", "reranked_recalls", "retrieval_recalls",
    "normalize_answer", "question_accuracy", "vqa_accuracy",
]
