"""Questions about scenes: VQA questions with ten annotator answers, NLVR2 statements, referring expressions."""
from __future__ import annotations

import numpy as np

from shapeworld import templates as tpl
from shapeworld.captions import noun
from shapeworld.scenes import COLORS, COUNTS, IMAGE_SIZE, POSITIONS, SHAPES, Scene

ANSWER_TYPES = {"color": "other", "shape": "other", "count": "number", "position": "other"}
VARIANT_COUNTS = (0, 0, 1, 1, 2, 3)  # how many of the ten answers are variants, drawn uniformly
RELATION_MARGIN = 8  # pixels at IMAGE_SIZE: how much further left (right, ...) a thing must be to be "on the left"


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _words(shape: str, color: str, count: int, position: str) -> dict[str, str]:
    return {"shape": shape, "shapes": tpl.PLURALS[shape], "noun": noun(shape, count), "color": color,
            "be": "is" if count == 1 else "are", "one": COUNTS[count], "p0": tpl.POSITION_PHRASES[position][0]}


def answer_variants(kind: str, answer: str) -> list[str]:
    """What annotators answer besides the canonical `answer` to a question of `kind` (color, shape, ...)."""
    if kind not in tpl.ANSWER_VARIANTS:
        return []
    digit = {word: str(n) for n, word in COUNTS.items()}.get(answer, "")
    fill = {"x": answer, "digit": digit, "shapes": tpl.PLURALS.get(answer, ""),
            "p0": tpl.POSITION_PHRASES.get(answer, ("",))[0]}
    return [v.format(**fill) for v in tpl.ANSWER_VARIANTS[kind]] + list(tpl.EXTRA_SHAPE_VARIANTS.get(answer, ()))


def answer_list() -> list[str]:
    """Every canonical answer and variant, sorted: the candidates of VQA rank mode."""
    answers = {"yes", "no"}
    for kind, values in (("color", COLORS), ("shape", SHAPES), ("count", COUNTS.values()), ("position", POSITIONS)):
        for value in values:
            answers.update([value, *answer_variants(kind, value)])
    return sorted(answers)


def _ten_answers(kind: str, answer: str, rng: np.random.Generator) -> list[str]:
    variants = answer_variants(kind, answer)
    n = int(_pick(rng, VARIANT_COUNTS)) if variants else 0
    answers = [answer] * (10 - n) + [_pick(rng, variants) for _ in range(n)]
    return [answers[i] for i in rng.permutation(10)]


def _yes_no(scene: Scene, truth: bool, rng: np.random.Generator) -> str:
    kind = _pick(rng, list(tpl.YES_NO_TEMPLATES))
    asked = {"shape": scene.shape, "color": scene.color, "count": scene.count, "position": scene.position}
    if not truth:
        attribute = {"exists": _pick(rng, ["shape", "color"]), "position": "position", "count": "count",
                     "color": "color"}[kind]
        values = {"shape": SHAPES, "color": list(COLORS), "count": list(COUNTS), "position": POSITIONS}[attribute]
        asked[attribute] = _pick(rng, [v for v in values if v != asked[attribute]])
    return tpl.YES_NO_TEMPLATES[kind].format(**_words(**asked))


def vqa_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, list[str]]]:
    """(question, answer type, ten answers) about a group scene: color, shape, count, position, then one yes and one
    no question. Questions have no final "?"; the canonical answer is always the majority."""
    words = _words(scene.shape, scene.color, scene.count, scene.position)
    truth = {"color": scene.color, "shape": scene.shape, "count": COUNTS[scene.count], "position": scene.position}
    out = []
    for kind, answer in truth.items():
        question = _pick(rng, tpl.VQA_TEMPLATES[kind]).format(**words)
        out.append((question, ANSWER_TYPES[kind], _ten_answers(kind, answer, rng)))
    for label in ("yes", "no"):
        out.append((_yes_no(scene, label == "yes", rng), "yes/no", [label] * 10))
    return out


def _nlvr_candidates(left: Scene, right: Scene) -> list[tuple[str, str, bool]]:
    """(template key, statement, truth) of every statement the templates make about the pair."""
    t, scenes = tpl.NLVR_TEMPLATES, {"left": left, "right": right}
    out = [("more_left", t["more_left"], left.count > right.count),
           ("more_right", t["more_right"], right.count > left.count),
           ("same_count", t["same_count"], left.count == right.count),
           ("same_shape", t["same_shape"], left.shape == right.shape),
           ("same_color", t["same_color"], left.color == right.color)]
    for n in range(2, 7):
        out.append(("total", t["total"].format(total=tpl.NUMBER_WORDS[n]), left.count + right.count == n))
    for shape in SHAPES:
        has = [left.shape == shape, right.shape == shape]
        for key, truth in (("both_shape", all(has)), ("one_shape", sum(has) == 1), ("neither_shape", not any(has))):
            out.append((key, t[key].format(shapes=tpl.PLURALS[shape]), truth))
    for color in COLORS:
        out.append(("both_color", t["both_color"].format(color=color), left.color == color == right.color))
        for side, scene in scenes.items():
            out.append(("side_color", t["side_color"].format(side=side, color=color), scene.color == color))
    for position in POSITIONS:
        p0 = tpl.POSITION_PHRASES[position][0]
        out.append(("both_position", t["both_position"].format(p0=p0), left.position == position == right.position))
        for side, scene in scenes.items():
            out.append(("side_position", t["side_position"].format(side=side, p0=p0), scene.position == position))
    return out


def nlvr_statement(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    """A statement about a pair of group scenes and whether it is true; true and false equally likely."""
    label = bool(rng.random() < 0.5)
    candidates = _nlvr_candidates(left, right)
    if not any(truth == label for _, _, truth in candidates):
        label = not label
    pool = [c for c in candidates if c[2] == label]
    family = _pick(rng, sorted({key for key, _, _ in pool}))
    _, text, truth = _pick(rng, [c for c in pool if c[0] == family])
    return text, truth


def _centre(box, axis: int) -> float:
    return (box[axis] + box[axis + 2]) / 2


def referents(scene: Scene, color: str | None, shape: str | None, relation: str | None) -> list[int]:
    """Indices of the things "the [color] [shape|shape] [relation]" picks out: those matching color and shape, or
    with a relation the one further left (right, up, down) than every other match by a margin, when 2+ match."""
    matches = [i for i, t in enumerate(scene.things)
               if (color is None or t.color == color) and (shape is None or t.shape == shape)]
    if relation is None or len(matches) < 2:
        return matches if relation is None else []
    axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[relation]
    keyed = sorted(matches, key=lambda i: sign * _centre(scene.things[i].box, axis))
    first, second = (sign * _centre(scene.things[i].box, axis) for i in keyed[:2])
    return [keyed[0]] if second - first >= RELATION_MARGIN * scene.size / IMAGE_SIZE else []


def referring_expressions(scene: Scene, index: int) -> list[str]:
    """1-3 expressions (fewer when none fits) that pick out scene.things[index] and no other thing."""
    thing = scene.things[index]
    forms = [(thing.color, thing.shape, None), (None, thing.shape, None), (thing.color, None, None)]
    forms += [(None, thing.shape, r) for r in POSITIONS] + [(None, None, r) for r in POSITIONS]
    forms += [(thing.color, thing.shape, r) for r in POSITIONS]
    out = []
    for color, shape, relation in forms:
        if referents(scene, color, shape, relation) == [index]:
            words = ["the", color, shape or "shape", tpl.RELATIONS[relation] if relation else None]
            out.append(" ".join(w for w in words if w))
    return out[:3]
