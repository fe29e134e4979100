"""`inference_model(name, image, ...)`: the one-call interface users of the seeds' toolbox know, and `ROLES`, the one
role table: (family, task) -> the class that runs it."""
from __future__ import annotations

from functools import lru_cache

from models.answerer import Answerer
from models.base import Role
from models.blip2_captioner import Blip2Answerer, Blip2Captioner
from models.captioner import Captioner
from models.clip_scorer import ClipScorer
from models.loading import ModelLoadError, load_checkpoint
from models.matcher import Matcher
from models.patches import Kernels
from models.qformer_matcher import QFormerMatcher

ROLES: dict[tuple[str, str], type[Role]] = {
    ("blip", "caption"): Captioner, ("blip", "retrieval"): Matcher, ("blip", "vqa"): Answerer,
    ("blip2", "caption"): Blip2Captioner, ("blip2", "retrieval"): QFormerMatcher, ("blip2", "vqa"): Blip2Answerer,
    ("clip", "similarity"): ClipScorer,
}
CAPTIONERS = tuple(c for (_, task), c in ROLES.items() if task == "caption")
ANSWERERS = tuple(c for (_, task), c in ROLES.items() if task == "vqa")


def load_role(name: str, task: str | None = None, device: str = "auto", precision: str = "auto",
              kernels: Kernels = Kernels(), image_size: int | None = None) -> Role:
    """Load `name` and wrap it in the class its family and task call for (`task`, when given, must be one the
    checkpoint serves: a BLIP-2 OPT checkpoint is a captioner and an answerer)."""
    checkpoint = load_checkpoint(name, task)
    role = ROLES.get((checkpoint.family, checkpoint.task))
    if role is None:
        raise ModelLoadError(f"{name!r} is a {checkpoint.family} {checkpoint.task} model, which capfilt does not run yet")
    return role(checkpoint, device=device, precision=precision, kernels=kernels, image_size=image_size)


@lru_cache(maxsize=4)
def _cached_role(name: str, device: str, precision: str) -> Role:
    return load_role(name, device=device, precision=precision)


def inference_model(model: str, image, text: str | list[str] | None = None, question: str | None = None,
                    candidates: list[str] | None = None, device: str = "auto", precision: str = "auto") -> dict:
    """Run a zoo model, hub id or local checkpoint on one image (a path, PIL image or array).

    - caption model: {'pred_caption': str} (its family's evaluation protocol)
    - vqa model with `question`: {'pred_answer': str}; ranked over `candidates` when given (BLIP)
    - retrieval model with `text` (one or a list): {'itm_score': p(match), 'itc_score': cosine}, lists for a list
    - CLIP model with `text`: {'clip_score': cosine}, a list for a list
    """
    role = _cached_role(model, device, precision)
    pixels = role.prepare([image])
    if isinstance(role, CAPTIONERS):
        return {"pred_caption": role.caption(pixels)[0]}
    if isinstance(role, ANSWERERS):
        if not question:
            raise ValueError(f"{model!r} is a VQA model: pass question='...'")
        if candidates:
            return {"pred_answer": role.rank(pixels, [question], candidates)[0]}
        return {"pred_answer": role.answer(pixels, [question])[0]}
    if not text:
        raise ValueError(f"{model!r} scores image-text pairs: pass text='...' (or a list of texts)")
    texts = [text] if isinstance(text, str) else list(text)
    if isinstance(role, ClipScorer):
        clip = role.similarity(pixels, [texts]).tolist()
        return {"clip_score": clip[0] if isinstance(text, str) else clip}
    scores = role.score(pixels, [texts])
    itm, itc = scores.itm.tolist(), scores.itc.tolist()
    if isinstance(text, str):
        return {"itm_score": itm[0], "itc_score": itc[0]}
    return {"itm_score": itm, "itc_score": itc}
