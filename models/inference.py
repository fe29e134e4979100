"""`inference_model(name, image, ...)`: the one-call interface users of the seeds' toolbox know."""
from __future__ import annotations

from functools import lru_cache

from models.answerer import Answerer
from models.base import Role
from models.captioner import Captioner
from models.loading import ModelLoadError, load_checkpoint
from models.matcher import Matcher

ROLES: dict[str, type[Role]] = {"caption": Captioner, "retrieval": Matcher, "vqa": Answerer}


def load_role(name: str, device: str = "auto", precision: str = "auto") -> Role:
    """Load `name` and wrap it in the role its task calls for (Captioner, Matcher or Answerer)."""
    checkpoint = load_checkpoint(name)
    role = ROLES.get(checkpoint.task)
    if role is None:
        raise ModelLoadError(f"{name!r} is a {checkpoint.task} model, which inference_model does not run yet")
    return role(checkpoint, device=device, precision=precision)


@lru_cache(maxsize=4)
def _cached_role(name: str, device: str, precision: str) -> Role:
    return load_role(name, device, precision)


def inference_model(model: str, image, text: str | list[str] | None = None, question: str | None = None,
                    candidates: list[str] | None = None, device: str = "auto", precision: str = "auto") -> dict:
    """Run a zoo model, hub id or local checkpoint on one image (a path, PIL image or array).

    - caption model: {'pred_caption': str} (BLIP's evaluation protocol)
    - vqa model with `question`: {'pred_answer': str}; ranked over `candidates` when given
    - retrieval model with `text` (one or a list): {'itm_score': p(match), 'itc_score': cosine}, lists for a list
    """
    role = _cached_role(model, device, precision)
    pixels = role.prepare([image])
    if isinstance(role, Captioner):
        return {"pred_caption": role.caption(pixels)[0]}
    if isinstance(role, Answerer):
        if not question:
            raise ValueError(f"{model!r} is a VQA model: pass question='...'")
        if candidates:
            return {"pred_answer": role.rank(pixels, [question], candidates)[0]}
        return {"pred_answer": role.answer(pixels, [question])[0]}
    if not text:
        raise ValueError(f"{model!r} is an image-text matching model: pass text='...' (or a list of texts)")
    texts = [text] if isinstance(text, str) else list(text)
    scores = role.score(pixels, [texts])
    itm, itc = scores.itm.tolist(), scores.itc.tolist()
    if isinstance(text, str):
        return {"itm_score": itm[0], "itc_score": itc[0]}
    return {"itm_score": itm, "itc_score": itc}
