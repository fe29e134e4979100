"""Image-text retrieval recalls (R@1/5/10 both ways), ITC similarities (BLIP's one vector per image, BLIP-2's 32
query embeddings) and BLIP's ITC top-k -> ITM rerank protocol, which BLIP-2 shares."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ITC_BLOCK_BYTES = 1 << 28  # 256 MiB: the largest images x queries x texts block itc_scores computes at once

# itm_fn(image_indices, text_indices) -> one score per (image, text) pair, both arrays of equal length.
# BLIP uses the ITM head's "match" logit here (not the probability), added to the ITC similarity.
ItmFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_scores(scores: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.shape != shape:
        raise ValueError(f"{name} has shape {scores.shape}, expected {shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{name} contains NaN")
    return scores


def _ground_truth(txt2img: Sequence[int], n_images: int, img2txt=None) -> list[list[int]]:
    """Texts of each image, checked against `txt2img` (every text belongs to exactly one image)."""
    derived: list[list[int]] = [[] for _ in range(n_images)]
    for text, image in enumerate(txt2img):
        if not 0 <= int(image) < n_images:
            raise ValueError(f"text {text} points to image {image}, outside 0..{n_images - 1}")
        derived[int(image)].append(text)
    if img2txt is not None:
        if len(img2txt) != n_images or any(sorted(a) != b for a, b in zip(img2txt, derived)):
            raise ValueError("img2txt disagrees with txt2img")
    empty = [image for image, texts in enumerate(derived) if not texts]
    if empty:
        raise ValueError(f"{len(empty)} images have no text, so their recall is undefined (e.g. {empty[:5]})")
    return derived


def _best_ranks(scores: np.ndarray, positives: Sequence[Sequence[int]]) -> np.ndarray:
    """0-based rank of each row's best positive. Ties with a negative count against the query, so a
    positive left at -inf by the rerank never counts as found, and the result never depends on sort order."""
    ranks = np.empty(len(positives), dtype=np.int64)
    for row, pos in enumerate(positives):
        values = scores[row]
        best = values[pos].max()
        tied_negatives = np.count_nonzero(values == best) - np.count_nonzero(values[pos] == best)
        ranks[row] = np.count_nonzero(values > best) + tied_negatives
    return ranks


def retrieval_recalls(
    scores_i2t: np.ndarray,
    txt2img: Sequence[int],
    scores_t2i: np.ndarray | None = None,
    img2txt: Sequence[Sequence[int]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k in percent, as BLIP reports it.

    scores_i2t: images x texts similarities; scores_t2i: texts x images (defaults to scores_i2t.T; it
    differs after reranking). txt2img[j] is the image of text j; img2txt, when given, is checked against it.
    i2t: an image is a hit when any of its texts is in its top k; t2i: a text when its image is.
    Keys: i2t_r{k}, i2t_r_mean, t2i_r{k}, t2i_r_mean, r_mean (means over the ks).
    """
    scores_i2t = np.asarray(scores_i2t)
    if scores_i2t.ndim != 2:
        raise ValueError(f"scores_i2t must be images x texts, got shape {scores_i2t.shape}")
    n_images, n_texts = scores_i2t.shape
    if len(txt2img) != n_texts:
        raise ValueError(f"txt2img has {len(txt2img)} entries for {n_texts} texts")
    scores_i2t = _check_scores(scores_i2t, (n_images, n_texts), "scores_i2t")
    scores_t2i = scores_i2t.T if scores_t2i is None else _check_scores(scores_t2i, (n_texts, n_images), "scores_t2i")
    texts_of = _ground_truth(txt2img, n_images, img2txt)

    i2t_ranks = _best_ranks(scores_i2t, texts_of)
    t2i_ranks = _best_ranks(scores_t2i, [[int(image)] for image in txt2img])
    result = {}
    for name, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        recalls = [100.0 * float(np.mean(ranks < k)) for k in ks]
        result.update({f"{name}_r{k}": r for k, r in zip(ks, recalls)})
        result[f"{name}_r_mean"] = sum(recalls) / len(recalls)
    result["r_mean"] = (result["i2t_r_mean"] + result["t2i_r_mean"]) / 2
    return result


def itc_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
               block_bytes: int = ITC_BLOCK_BYTES) -> np.ndarray:
    """The images x texts ITC matrix (float32) from normalised embeddings.

    image_embeddings (images, D): one vector per image (BLIP), ITC = the dot product. (images, queries, D): the
    query embeddings of BLIP-2's Q-Former, ITC = the largest dot product over an image's queries, as LAVIS computes
    it; a block of images at a time, so that at most `block_bytes` of the images x queries x texts products exist
    at once (COCO's 5,000 images x 32 queries x 25,000 texts would be 16 GB in float32).
    text_embeddings: (texts, D).
    """
    images = np.asarray(image_embeddings, dtype=np.float32)
    texts = np.asarray(text_embeddings, dtype=np.float32)
    if texts.ndim != 2 or images.ndim not in (2, 3) or images.shape[-1] != texts.shape[1]:
        raise ValueError(f"image embeddings {images.shape} and text embeddings {texts.shape}: expected (images, D) "
                         "or (images, queries, D) against (texts, D)")
    if images.ndim == 2:
        return images @ texts.T
    n_images, n_queries, dim = images.shape
    n_texts = texts.shape[0]
    out = np.empty((n_images, n_texts), dtype=np.float32)
    step = max(1, int(block_bytes) // max(1, n_queries * n_texts * 4))
    for start in range(0, n_images, step):
        block = images[start:start + step]
        products = block.reshape(-1, dim) @ texts.T  # (block images x queries, texts)
        out[start:start + len(block)] = products.reshape(len(block), n_queries, n_texts).max(axis=1)
    return out


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    # Stable sort: among equal ITC scores the lower index wins, so candidates are reproducible.
    return np.argsort(-values, kind="stable")[:k]


def _pair_scores(itm_fn: ItmFn, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    scores = np.asarray(itm_fn(images, texts), dtype=np.float64).reshape(-1)
    if scores.shape != (len(images),):
        raise ValueError(f"itm_fn returned {scores.size} scores for {len(images)} pairs")
    if not np.isfinite(scores).all():
        raise ValueError("itm_fn returned a non-finite score")
    return scores


def rerank_scores(itc: np.ndarray, itm_fn: ItmFn, k: int) -> tuple[np.ndarray, np.ndarray]:
    """BLIP's rerank: for each query, its top-k candidates by ITC get ITM + ITC, every other one -inf.

    Returns (scores_i2t: images x texts, scores_t2i: texts x images). itm_fn is called once per query
    with that query's k pairs (k = 256 for COCO, 128 for Flickr30k in BLIP).
    """
    itc = _check_scores(itc, np.shape(itc), "itc")
    if itc.ndim != 2:
        raise ValueError(f"itc must be images x texts, got shape {itc.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_images, n_texts = itc.shape
    dtype = np.result_type(itc.dtype, np.float32)  # float32 keeps COCO's 5k x 25k matrices at 0.5 GB each
    i2t = np.full((n_images, n_texts), -np.inf, dtype=dtype)
    for image in range(n_images):
        texts = _top_k(itc[image], k)
        itm = _pair_scores(itm_fn, np.full(len(texts), image), texts)
        i2t[image, texts] = itm + itc[image, texts]
    t2i = np.full((n_texts, n_images), -np.inf, dtype=dtype)
    for text in range(n_texts):
        images = _top_k(itc[:, text], k)
        itm = _pair_scores(itm_fn, images, np.full(len(images), text))
        t2i[text, images] = itm + itc[images, text]
    return i2t, t2i


def reranked_recalls(
    itc: np.ndarray,
    itm_fn: ItmFn,
    txt2img: Sequence[int],
    k: int,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Recalls from ITC alone and after the ITM rerank: {"itc": {...}, "reranked": {...}}."""
    itc_only = retrieval_recalls(itc, txt2img, ks=ks)
    i2t, t2i = rerank_scores(itc, itm_fn, k)
    return {"itc": itc_only, "reranked": retrieval_recalls(i2t, txt2img, scores_t2i=t2i, ks=ks)}
