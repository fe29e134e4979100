"""`inference_model(name, image, ...)`: the one-call interface users of the seeds' toolbox know, and `ROLES`, the one
role table: (family, task) -> the class that runs it."""
from __future__ import annotations

from functools import lru_cache

from models.answerer import Answerer
from models.base import Role
from models.blip2_captioner import Blip2Answerer, Blip2Captioner
from models.captioner import Captioner
from models.clip_scorer import ClipScorer
from models.grounder import Grounder
from models.images import load_image
from models.loading import ModelLoadError, load_checkpoint
from models.matcher import Matcher
from models.patches import Kernels
from models.qformer_matcher import QFormerMatcher
from models.reasoner import NlvrReasoner

ROLES: dict[tuple[str, str], type[Role]] = {
    ("blip", "caption"): Captioner, ("blip", "retrieval"): Matcher, ("blip", "vqa"): Answerer,
    ("blip2", "caption"): Blip2Captioner, ("blip2", "retrieval"): QFormerMatcher, ("blip2", "vqa"): Blip2Answerer,
    ("clip", "similarity"): ClipScorer,
    ("blip", "nlvr"): NlvrReasoner, ("blip", "grounding"): Grounder,
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
    - NLVR2 model, `image` a pair [left, right], with `text`: {'pred_label': True if the sentence is true, 'score'}
    - grounding model with `text` (a referring expression): {'pred_bboxes': [[x0, y0, x1, y1]]} in the image's
      pixels
    """
    role = _cached_role(model, device, precision)
    if isinstance(role, NlvrReasoner):
        if not isinstance(image, (list, tuple)) or len(image) != 2 or not isinstance(text, str) or not text:
            raise ValueError(f"{model!r} is an NLVR2 model: pass a pair of images [left, right] and text='...'")
        left, right = role.prepare([image[0]]), role.prepare([image[1]])
        return role.predict(left, right, [text])[0]
    if isinstance(role, Grounder):
        if not isinstance(text, str) or not text or isinstance(image, (list, tuple)):
            raise ValueError(f"{model!r} is a grounding model: pass one image and its referring expression as "
                             "text='...'")
        picture = load_image(image)
        box = role.ground(role.prepare([picture]), [text])[0] * ([picture.width, picture.height] * 2)
        return {"pred_bboxes": [box.tolist()]}
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
