"""VQA (VQAv2, OK-VQA, OCR-VQA): generated or ranked answers on the answerer actors, the official VQA accuracy.

Generation gets the protocol's generation settings, its family's keywords (BLIP-2: the prompt with the question in
it, max_new_tokens, length_penalty); ranking is BLIP's only (a BLIP-2 suite refuses mode 'rank' when it loads).
"""
from __future__ import annotations

from evaluation.calls import Method
from evaluation.datasets import DatasetFormatError
from evaluation.metrics import vqa_accuracy
from evaluation.protocols import generation_settings
from evaluation.tasks.common import Outcome, chunks, image_batches


def run_vqa(task, data, pool) -> Outcome:
    protocol = task.protocol
    records = data.records
    unlabelled = [r.question_id for r in records if not r.answers]
    if unlabelled:
        main = task.dataset.files["annotations"]
        raise DatasetFormatError(main, f"{len(unlabelled)} questions have no answers (e.g. {unlabelled[:3]}): "
                                       "accuracy needs the annotations of a labelled split")
    batch = protocol["batch_size"]
    images = image_batches(chunks([r.image for r in records], batch), pool.image_size)
    questions = chunks([r.question for r in records], batch)
    if protocol["mode"] == "rank":
        pool.broadcast(Method.SET_CANDIDATES, data.candidates)
        calls = ((None, (imgs, qs, protocol["k"])) for imgs, qs in zip(images, questions))
        method = Method.RANK
    else:
        settings = generation_settings(protocol)
        calls = ((None, (imgs, qs, settings)) for imgs, qs in zip(images, questions))
        method = Method.ANSWER
    answers = [a for out in pool.map(method, calls) for a in out]
    types = {i: r.answer_type for i, r in enumerate(records)} if all(r.answer_type for r in records) else None
    result = vqa_accuracy(dict(enumerate(answers)), {i: r.answers for i, r in enumerate(records)}, types,
                          normalize=protocol["normalize"])
    metrics = {"accuracy": result["accuracy"]}
    metrics.update({f"accuracy:{kind}": value for kind, value in sorted(result.get("per_answer_type", {}).items())})
    note = f"ranked over {len(data.candidates)} candidate answers" if data.candidates else ""
    return Outcome(metrics, len(records), predictions=[{"question_id": r.question_id, "answer": a}
                                                       for r, a in zip(records, answers)], note=note)
