"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) through pycocoevalcap and its PTB tokenizer."""
from __future__ import annotations

import shutil
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

import pycocoevalcap.spice.spice as _spice_module

from evaluation.metrics.ids import check_ids

# SPICE's jar lists these two CoreNLP jars on its class path; pycocoevalcap downloads them on first use,
# which cannot work offline, so they are looked for instead of fetched.
SPICE_DIR = Path(_spice_module.__file__).resolve().parent
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


# Reported, not verified here (no CoreNLP offline): SPICE 1.0's cache serialiser is known to crash on
# Java 16+ with InaccessibleObjectException; the jar's stack trace goes to stderr.
_SPICE_JAVA_HINT = ("its Java stack trace is on stderr; SPICE 1.0 is known to fail on Java 16+ "
                    "(InaccessibleObjectException), Java 8 or 11 run it")


class MetricUnavailableError(RuntimeError):
    """A metric was explicitly requested but cannot run on this machine."""


def spice_status() -> tuple[bool, str]:
    """(available, reason): whether SPICE can run here without downloading anything."""
    if shutil.which("java") is None:
        return False, "SPICE needs Java on PATH"
    missing = [name for name in ("spice-1.0.jar", *(f"lib/{jar}" for jar in _CORENLP_JARS))
               if not (SPICE_DIR / name).is_file()]
    if missing:
        return False, (f"SPICE needs Stanford CoreNLP 3.6.0, missing from {SPICE_DIR}: {', '.join(missing)} "
                       "(pycocoevalcap would download them from nlp.stanford.edu; copy them there instead)")
    return True, ""


def _validate(predictions: Mapping, references: Mapping) -> None:
    check_ids(predictions, references, "references", "references")
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs:
            raise ValueError(f"id {key!r}: references must be a non-empty list of strings")
        if not all(isinstance(ref, str) for ref in refs):
            raise ValueError(f"id {key!r}: every reference must be a string")
        if not isinstance(predictions[key], str):
            raise ValueError(f"id {key!r}: prediction must be a string, got {type(predictions[key]).__name__}")


def _tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict:
    # The tokenizer writes one caption per line and zips its output lines back onto the ids, so a
    # caption holding "\r" or "\u2028" silently shifts every later caption onto the wrong image.
    # Collapsing all whitespace first is harmless (PTB splits on whitespace anyway) and prevents it.
    request = {key: [{"caption": " ".join(text.split())} for text in texts] for key, texts in captions.items()}
    tokenized = PTBTokenizer().tokenize(request)
    if any(len(tokenized.get(key, ())) != len(texts) for key, texts in captions.items()):
        raise RuntimeError("the PTB tokenizer returned a different number of captions than it was given")
    return tokenized


def _meteor(gts: dict, res: dict) -> float:
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
        return float(score)
    finally:
        # Stop the JVM now rather than whenever the scorer is garbage collected.
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def _spice(gts: dict, res: dict) -> float:
    from pycocoevalcap.spice.spice import Spice

    score, _ = Spice().compute_score(gts, res)
    return float(score)


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    spice: bool | str = "auto",
    meteor: bool = True,
) -> dict:
    """Corpus-level caption metrics of one caption per id against its references.

    Scores are on pycocoevalcap's 0-1 scale (the papers' tables show them x100). Score a whole split in
    one call: CIDEr's document frequencies come from the references given, so per-shard scores averaged
    afterwards are not the split's CIDEr (BLEU is corpus-level too).
    Keys: "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", and "SPICE" when it ran; "unavailable" lists
    the metrics that could not run here and "unavailable_reasons" says why. A metric that did not run
    is absent, never 0.
    spice: True requires SPICE (MetricUnavailableError if it cannot run), False skips it without listing
    it as unavailable, "auto" runs it when its CoreNLP jars are present and lists it as unavailable
    otherwise. Java is required (the PTB tokenizer and METEOR run on it).
    meteor: False skips METEOR (its JVM takes 8-15 s to start) without listing it as unavailable.
    """
    if spice not in (True, False, "auto"):
        raise ValueError(f"spice must be True, False or 'auto', got {spice!r}")
    _validate(predictions, references)
    spice_ok, spice_reason = spice_status() if spice else (False, "")
    if spice is True and not spice_ok:
        raise MetricUnavailableError(spice_reason)
    if shutil.which("java") is None:
        raise MetricUnavailableError("pycocoevalcap's PTB tokenizer needs Java on PATH")

    gts = _tokenize(references)
    res = _tokenize({key: [predictions[key]] for key in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result: dict = {f"BLEU-{n}": float(score) for n, score in enumerate(bleu, start=1)}
    unavailable: dict[str, str] = {}
    if meteor:
        try:
            result["METEOR"] = _meteor(gts, res)
        except (OSError, ValueError) as error:
            # METEOR is a Java subprocess; a missing or crashed JVM surfaces as one of these.
            unavailable["METEOR"] = f"METEOR failed to run: {type(error).__name__}: {error}"
    result["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    result["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if spice_ok:
        try:
            result["SPICE"] = _spice(gts, res)
        except Exception as error:  # the SPICE jar can fail in many ways (memory, LMDB cache, JVM)
            reason = f"SPICE failed to run ({type(error).__name__}: {error}); {_SPICE_JAVA_HINT}"
            if spice is True:
                raise MetricUnavailableError(reason) from error
            unavailable["SPICE"] = reason
    elif spice == "auto":
        unavailable["SPICE"] = spice_reason
    result["unavailable"] = sorted(unavailable)
    result["unavailable_reasons"] = unavailable
    return result
