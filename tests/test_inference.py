"""inference_model: the one-call interface, for each tiny task and each kind of image input."""
from __future__ import annotations

import pytest
from PIL import Image

from models.answerer import Answerer
from models.captioner import Captioner
from models.images import ImageError
from models.inference import inference_model, load_role
from models.loading import ModelLoadError
from models.matcher import Matcher

CANDIDATES = ["yes", "no", "two", "a man"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


def test_caption_model_returns_pred_caption(image_path):
    """A caption model returns {'pred_caption': non-empty str}."""
    result = inference_model("tiny-random_caption", str(image_path))
    assert list(result) == ["pred_caption"]
    assert isinstance(result["pred_caption"], str) and result["pred_caption"]


def test_caption_is_the_same_for_path_pil_and_array(image_path, astronaut):
    """The same photograph as a path, a PIL image and an array gets the same caption."""
    captions = {inference_model("tiny-random_caption", image)["pred_caption"]
                for image in (str(image_path), image_path, Image.fromarray(astronaut), astronaut)}
    assert len(captions) == 1


def test_caption_equals_the_captioner_beam_protocol(astronaut):
    """inference_model's caption is Captioner.caption with BLIP's defaults at the same precision."""
    role = load_role("tiny-random_caption", device="cpu", precision="fp32")
    expected = role.caption(role.prepare([astronaut]))[0]
    assert inference_model("tiny-random_caption", astronaut, device="cpu", precision="fp32")["pred_caption"] == expected


def test_vqa_model_returns_pred_answer(image_path):
    """A VQA model with a question returns {'pred_answer': str}."""
    result = inference_model("tiny-random_vqa", image_path, question="what is the man wearing?")
    assert list(result) == ["pred_answer"] and isinstance(result["pred_answer"], str) and result["pred_answer"]


def test_vqa_with_candidates_answers_one_of_them(image_path):
    """With candidates, the answer is one of the candidates."""
    result = inference_model("tiny-random_vqa", image_path, question="what is it?", candidates=CANDIDATES)
    assert result["pred_answer"] in CANDIDATES


def test_retrieval_model_scores_one_text_as_floats(image_path):
    """A retrieval model with one text returns float itm (a probability) and itc (a cosine)."""
    result = inference_model("tiny-random_retrieval", image_path, text="a man in a space suit")
    assert set(result) == {"itm_score", "itc_score"}
    assert isinstance(result["itm_score"], float) and isinstance(result["itc_score"], float)
    assert 0.0 <= result["itm_score"] <= 1.0 and -1.0 <= result["itc_score"] <= 1.0


def test_retrieval_model_scores_a_list_as_lists(image_path):
    """A list of texts gives lists of scores, in order, matching the single-text calls."""
    texts = ["a man in a space suit", "a cup of coffee"]
    result = inference_model("tiny-random_retrieval", image_path, text=texts, precision="fp32")
    assert len(result["itm_score"]) == len(result["itc_score"]) == 2
    for i, text in enumerate(texts):
        single = inference_model("tiny-random_retrieval", image_path, text=text, precision="fp32")
        assert result["itm_score"][i] == pytest.approx(single["itm_score"], abs=1e-6)
        assert result["itc_score"][i] == pytest.approx(single["itc_score"], abs=1e-6)


@pytest.mark.parametrize("model,kwargs,match", [
    ("tiny-random_vqa", {}, "question"),
    ("tiny-random_vqa", {"question": ""}, "question"),
    ("tiny-random_retrieval", {}, "text"),
    ("tiny-random_retrieval", {"text": []}, "text"),
])
def test_missing_question_or_text_is_a_value_error(astronaut, model, kwargs, match):
    """A VQA model without a question, or a retrieval model without text, is a ValueError saying what to pass."""
    with pytest.raises(ValueError, match=match):
        inference_model(model, astronaut, **kwargs)


def test_bad_image_and_unavailable_model_raise(tmp_path, astronaut):
    """A missing image file is an ImageError; a model without a checkpoint is a ModelLoadError."""
    with pytest.raises(ImageError):
        inference_model("tiny-random_caption", tmp_path / "missing.png")
    with pytest.raises(ModelLoadError):
        inference_model("blip-base_8xb16_refcoco", astronaut)


@pytest.mark.parametrize("name,role", [("tiny-random_caption", Captioner), ("tiny-random_retrieval", Matcher),
                                       ("tiny-random_vqa", Answerer)])
def test_load_role_picks_the_role_of_the_task(name, role):
    """load_role wraps each task's checkpoint in its role."""
    assert type(load_role(name, device="cpu")) is role
