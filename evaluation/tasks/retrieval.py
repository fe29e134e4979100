"""Image-text retrieval (COCO, Flickr30k): ITC embeddings, top-k shortlist, ITM rerank on the matcher actors.

Every image's vision states stay on the actor that embedded it (images are split over actors by index), and each
ITM pair goes to that actor. The pairs are found by a first, recording pass of `rerank_scores` over the ITC matrix,
scored in large batches, then looked up by the real pass, so the shortlist logic is the metric module's own.

BLIP embeds an image as one vector; BLIP-2 as its 32 query embeddings, ITC being the largest similarity over them
(`itc_scores`, a block of images at a time). The rerank is the same for both: the ITM "match" logit plus ITC over
the top k (BLIP-2's ITM logit is averaged over the queries by its role).
"""
from __future__ import annotations

import numpy as np

from evaluation.calls import Method
from evaluation.datasets import retrieval_ground_truth
from evaluation.metrics import itc_scores, rerank_scores, reranked_recalls
from evaluation.tasks.common import Outcome, chunks, image_batches


def run_retrieval(task, data, pool) -> Outcome:
    protocol = task.protocol
    records = data.records
    texts, txt2img, _ = retrieval_ground_truth(records)
    if not texts:
        raise ValueError(f"task {task.name}: the images have no captions to retrieve")
    pool.broadcast(Method.CLEAR_IMAGES)
    try:
        image_embeddings = _image_embeddings([r.image for r in records], pool, protocol["batch_size"])
        text_calls = ((None, (chunk,)) for chunk in chunks(texts, protocol["batch_size"]))
        text_embeddings = np.concatenate(list(pool.map(Method.TEXT_EMBEDDINGS, text_calls)))
        itc = itc_scores(image_embeddings, text_embeddings)
        itm_fn = _itm_lookup(itc, texts, pool, protocol)
        result = reranked_recalls(itc, itm_fn, txt2img, protocol["k"], ks=protocol["ks"])
    finally:
        pool.broadcast(Method.CLEAR_IMAGES)
    metrics = dict(result["reranked"])
    metrics.update({f"itc:{name}": value for name, value in result["itc"].items()})
    note = f"{len(records)} images, {len(texts)} texts; ITM rerank of the ITC top {protocol['k']}"
    return Outcome(metrics, len(records), note=note)


def _interleave(per_actor: list[list]) -> list[tuple[int, object]]:
    """(actor, work) in turns, so every actor has work queued from the start."""
    longest = max((len(work) for work in per_actor), default=0)
    return [(actor, work[i]) for i in range(longest) for actor, work in enumerate(per_actor) if i < len(work)]


def _image_embeddings(paths: list[str], pool, batch_size: int) -> np.ndarray:
    """(images, D), or (images, queries, D) for BLIP-2, in image order."""
    plan = _interleave([chunks(list(range(actor, len(paths), pool.size)), batch_size) for actor in range(pool.size)])
    batches = image_batches([[paths[i] for i in chunk] for _, chunk in plan], pool.image_size)
    calls = ((actor, (chunk, images)) for (actor, chunk), images in zip(plan, batches))
    out = None
    for (_, chunk), embeddings in zip(plan, pool.map(Method.INDEX_IMAGES, calls)):
        if out is None:
            out = np.empty((len(paths), *embeddings.shape[1:]), dtype=np.float32)
        out[chunk] = embeddings
    return out


def _itm_lookup(itc: np.ndarray, texts: list[str], pool, protocol: dict):
    """Score every (image, text) pair the rerank will ask for; return an itm_fn that looks them up."""
    n_texts = itc.shape[1]
    asked: list[np.ndarray] = []

    def record(images, text_ids):
        asked.append(np.asarray(images, dtype=np.int64) * n_texts + np.asarray(text_ids, dtype=np.int64))
        return np.zeros(len(images))

    rerank_scores(itc, record, protocol["k"])
    codes = np.unique(np.concatenate(asked))  # sorted: pairs of one image are contiguous
    images, text_ids = codes // n_texts, codes % n_texts
    plan = _interleave([chunks(np.flatnonzero(images % pool.size == actor), protocol["itm_batch_size"])
                        for actor in range(pool.size)])
    calls = ((actor, (images[chunk].tolist(), [texts[t] for t in text_ids[chunk]])) for actor, chunk in plan)
    logits = np.empty(len(codes), dtype=np.float64)
    for (_, chunk), scores in zip(plan, pool.map(Method.ITM_LOGITS, calls)):
        logits[chunk] = scores

    def itm_fn(image_ids, text_indices):
        wanted = np.asarray(image_ids, dtype=np.int64) * n_texts + np.asarray(text_indices, dtype=np.int64)
        return logits[np.searchsorted(codes, wanted)]

    return itm_fn
