"""VQA accuracy as the official VQA evaluator computes it: answer normalisation, then leave-one-annotator-out."""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

from evaluation.metrics.ids import check_ids

# Number words the official evaluator rewrites as digits ("none" counts as zero there).
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Marks that are either deleted or turned into a space (the period has its own rule below).
_MARKS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period survives only when a digit follows it, so "3.5" stays and "yes." loses its period.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (= 32) where re.sub expects `count`, so at most 32 periods go.
_OFFICIAL_PERIOD_COUNT = 32

# Canonical spellings; the official table maps every form with exactly one apostrophe dropped to them
# ("dont" -> "don't", "couldnt've" and "couldn'tve" -> "couldn't've"). The forms starting with a capital
# "I" are left out on purpose: the official keys are capitalised and never match the lowercased text.
_CANONICAL_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
    table = {}
    for canonical in _CANONICAL_CONTRACTIONS:
        for pos, char in enumerate(canonical):
            if char == "'":
                table[canonical[:pos] + canonical[pos + 1:]] = canonical
    # An inverted entry in the official table, kept so scores match it exactly.
    table["somebody'd"] = "somebodyd"
    return table


_CONTRACTIONS = _contraction_table()


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _strip_punctuation(text: str) -> str:
    # Official rule: a mark is deleted when it touches a space or when the text holds a digit,digit
    # group anywhere ("1,000" -> "1000"); otherwise it becomes a space ("red-white" -> "red white").
    # The test is made on the original text for every mark, not on the text being rewritten.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _MARKS:
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def _rewrite_words(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The official answer normalisation: punctuation, lowercase, number words, articles, contractions."""
    return _rewrite_words(_strip_punctuation(_clean(text)))


def question_accuracy(prediction: str, answers: Sequence[str], normalize: str = "official") -> float:
    """Accuracy in [0, 1] of one predicted answer against the annotators' answers.

    With n >= 2 answers: the mean over the n leave-one-out subsets of min(1, matches / 3).
    With one answer (OCR-VQA) leave-one-out would always give 0, so it is an exact match, which is
    what the seeds' VQA metric yields for a single answer.
    normalize: "official" normalises only when the annotators disagree, exactly as the official
    evaluator (and LAVIS's copy of it) does; "always" normalises every answer, as the seeds' toolbox does.
    """
    if normalize not in ("official", "always"):
        raise ValueError(f"normalize must be 'official' or 'always', got {normalize!r}")
    if not answers:
        raise ValueError("a question needs at least one reference answer")
    pred = _clean(prediction)
    refs = [_clean(answer) for answer in answers]
    if normalize == "always" or len(set(refs)) > 1:
        pred = normalize_answer(pred)
        refs = [normalize_answer(ref) for ref in refs]
    # The official comparison is case-insensitive even when nothing was normalised.
    hits = [ref.lower() == pred.lower() for ref in refs]
    if len(hits) == 1:
        return float(hits[0])
    total = sum(hits)
    # Leaving annotator i out removes their own vote from the matches.
    return sum(min(1.0, (total - hit) / 3.0) for hit in hits) / len(hits)


def vqa_accuracy(
    predictions: Mapping[Hashable, str],
    answers: Mapping[Hashable, Sequence[str]],
    answer_types: Mapping[Hashable, str] | None = None,
    normalize: str = "official",
) -> dict:
    """Overall VQA accuracy (percent) over the questions in `answers`, per answer type when given.

    Returns {"accuracy", "num_questions", "per_answer_type" (only with answer_types), "per_question"
    (each in [0, 1])}. Unlike the official printout nothing is rounded, so histories compare exactly.
    """
    check_ids(predictions, answers, "questions", "answers")
    if answer_types is not None:
        untyped = [qid for qid in answers if qid not in answer_types]
        if untyped:
            raise ValueError(f"{len(untyped)} questions have no answer type (e.g. {untyped[:5]})")

    per_question = {}
    by_type: dict[str, list[float]] = defaultdict(list)
    for qid, refs in answers.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"question {qid!r}: answers must be a non-empty list of strings")
        if not isinstance(predictions[qid], str):
            raise ValueError(f"question {qid!r}: prediction must be a string, got {type(predictions[qid]).__name__}")
        acc = question_accuracy(predictions[qid], refs, normalize)
        per_question[qid] = acc
        if answer_types is not None:
            by_type[answer_types[qid]].append(acc)

    result = {
        "accuracy": 100.0 * sum(per_question.values()) / len(per_question),
        "num_questions": len(per_question),
    }
    if answer_types is not None:
        result["per_answer_type"] = {kind: 100.0 * sum(accs) / len(accs) for kind, accs in by_type.items()}
    result["per_question"] = per_question
    return result
