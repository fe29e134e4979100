"""caption_scores against pycocoevalcap's own scorers, SPICE/METEOR reporting, and input validation."""
import subprocess

import pytest

import pycocoevalcap.spice.get_stanford_models as stanford_models
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from evaluation.metrics import captioning
from evaluation.metrics.captioning import MetricUnavailableError, caption_scores

REFERENCES = {
    1: ["A dog runs on the grass.", "a brown dog running across a lawn", "The dog is playing outside."],
    2: ["Two cats sleeping on a couch.", "two cats lie on a sofa"],
    3: ["A man riding a horse on the beach.", "a person on a horse near the sea"],
    4: ["A plate of food with broccoli.", "some broccoli and rice on a plate"],
}
PREDICTIONS = {
    1: "a dog running on the grass",
    2: "two cats sleeping on a couch",
    3: "a man rides a horse on a beach",
    4: "a plate with rice and broccoli",
}


def _no_download(*args, **kwargs):
    raise AssertionError("pycocoevalcap tried to download the SPICE models")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(caption_scores result, the same metrics from pycocoevalcap's scorers called directly).

    METEOR's JVM takes several seconds to start, so both sides share one METEOR process (the direct
    call goes first; caption_scores stops the process when done). SPICE's jars are pointed at an empty
    folder so the result does not depend on what this machine has installed.
    """
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": PREDICTIONS[k]}] for k in REFERENCES})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"BLEU-{n}": b for n, b in enumerate(bleu, start=1)}
    meteor = Meteor()
    expected["METEOR"] = meteor.compute_score(gts, res)[0]
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(captioning, "Meteor", lambda: meteor)
        patch.setattr(captioning, "SPICE_DIR", tmp_path_factory.mktemp("no_spice"))
        patch.setattr(stanford_models, "urlretrieve", _no_download)
        ours = caption_scores(PREDICTIONS, REFERENCES, spice="auto")
    assert meteor.meteor_p.poll() is not None, "caption_scores left the METEOR JVM running"
    return ours, expected


@pytest.fixture(scope="module")
def scores(runs):
    return runs[0]


def test_scores_equal_pycocoevalcap_called_directly(runs):
    scores, expected = runs
    assert set(expected) < set(scores)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    # Sanity: close paraphrases score well but not perfectly.
    assert 0.5 < scores["BLEU-1"] < 1.0 and scores["CIDEr"] > 0.5 and 0 < scores["METEOR"] < 1


def test_spice_unavailable_is_reported_not_zero(scores):
    assert "SPICE" not in scores
    assert scores["unavailable"] == ["SPICE"]
    assert "stanford-corenlp-3.6.0" in scores["unavailable_reasons"]["SPICE"]


def test_spice_required_but_missing_raises_before_running_java(tmp_path, monkeypatch):
    monkeypatch.setattr(captioning, "SPICE_DIR", tmp_path)
    monkeypatch.setattr(captioning, "_tokenize", _no_download)
    with pytest.raises(MetricUnavailableError, match="SPICE"):
        caption_scores(PREDICTIONS, REFERENCES, spice=True)


def test_spice_status_sees_the_jars(tmp_path, monkeypatch):
    monkeypatch.setattr(captioning, "SPICE_DIR", tmp_path)
    assert captioning.spice_status()[0] is False
    (tmp_path / "lib").mkdir()
    for name in ("spice-1.0.jar", "lib/stanford-corenlp-3.6.0.jar", "lib/stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / name).write_bytes(b"")
    assert captioning.spice_status() == (True, "")


def test_java_failures_are_reported_and_line_breaks_do_not_shift_captions(monkeypatch):
    def broken_meteor():
        raise OSError("no JVM")

    def broken_spice(gts, res):
        raise subprocess.CalledProcessError(1, ["java", "-jar", "spice-1.0.jar"])

    monkeypatch.setattr(captioning, "Meteor", broken_meteor)
    monkeypatch.setattr(captioning, "spice_status", lambda: (True, ""))
    monkeypatch.setattr(captioning, "_spice", broken_spice)
    # pycocoevalcap's tokenizer writes one caption per line: an "\r" or "\u2028" inside a caption
    # would shift every later caption onto the wrong image unless whitespace is collapsed first.
    refs = {"a": ["a dog\rruns on grass"], "b": ["two cats on a\u2028red sofa"], "c": ["a man on a horse"]}
    preds = {"a": "a dog runs on grass", "b": "two cats on a red sofa", "c": "a man on a horse"}
    result = caption_scores(preds, refs, spice="auto")
    assert "METEOR" not in result and "SPICE" not in result
    assert result["unavailable"] == ["METEOR", "SPICE"]
    assert "no JVM" in result["unavailable_reasons"]["METEOR"]
    assert "CalledProcessError" in result["unavailable_reasons"]["SPICE"]
    assert result["BLEU-1"] == pytest.approx(1.0) and result["ROUGE-L"] == pytest.approx(1.0)
    with pytest.raises(MetricUnavailableError, match="SPICE failed to run"):
        caption_scores(preds, refs, spice=True)


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ({1: "a dog"}, {1: ["a dog"], 2: ["a cat"]}, "do not match"),
        ({1: "a dog", 3: "x"}, {1: ["a dog"]}, "do not match"),
        ({1: "a dog"}, {1: []}, "non-empty"),
        ({1: "a dog"}, {1: "a dog"}, "non-empty list"),
        ({}, {}, "empty"),
        ({1: None}, {1: ["a dog"]}, "prediction must be a string"),
        ({1: "a dog"}, {1: ["a dog", 3]}, "every reference"),
    ],
)
def test_invalid_inputs_raise_value_error(predictions, references, message, monkeypatch):
    monkeypatch.setattr(captioning, "_tokenize", _no_download)
    with pytest.raises(ValueError, match=message):
        caption_scores(predictions, references)
