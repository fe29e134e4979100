"""Readers for the benchmark annotation files in their official formats, returning small records."""
from .captions import (CaptionRecord, read_coco_captions, read_coco_karpathy, read_karpathy_dataset, read_nocaps,
                       retrieval_ground_truth)
from .fields import DatasetFormatError
from .nlvr import NLVRRecord, read_nlvr2
from .plain_pickle import load_plain_pickle
from .refcoco import RefRecord, read_refcoco
from .vqa import VQARecord, read_answer_list, read_ocrvqa, read_vqa

__all__ = [
    "DatasetFormatError", "load_plain_pickle",
    "CaptionRecord", "read_coco_captions", "read_coco_karpathy", "read_karpathy_dataset", "read_nocaps",
    "retrieval_ground_truth",
    "NLVRRecord", "read_nlvr2",
    "RefRecord", "read_refcoco",
    "VQARecord", "read_answer_list", "read_ocrvqa", "read_vqa",
]
