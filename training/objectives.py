"""BLIP's three pre-training objectives on a `BlipTrainee`: ITC, ITM with hard negatives, and language modelling.

As in BLIP (without its momentum encoder): ITC contrasts [CLS] text features with the image's [CLS] feature under
a learned temperature; ITM classifies [ENC] + text cross-attending to the image, for each positive pair plus one
negative text per image and one negative image per text drawn from the ITC similarities (hard negatives); LM is
the image-grounded decoder's next-token loss with label smoothing 0.1 on "[DEC] a picture of <caption> [SEP]",
the prompt tokens masked out. Texts that are equal count as positives of each other in ITC and are never drawn
as ITM negatives (in a web corpus different images often carry the same caption). Nor is a candidate ITC ranks
above the true pair, or within `margin` (cosine) of it: most such are the same content in other words.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.captioner import PROMPT

LM_LABEL_SMOOTHING = 0.1  # BLIP's decoder loss
TEXT_MAX_LENGTH = 35  # BLIP's text length for ITC / ITM (and for captions here)
OBJECTIVES = ("itc", "itm", "lm")
QUESTION_MAX_LENGTH = 35  # as models.answerer encodes questions


@dataclass
class TextBatch:
    cls_ids: torch.Tensor  # [CLS] + text: ITC's unimodal encoder
    enc_ids: torch.Tensor  # [ENC] + text: ITM's image-grounded encoder
    mask: torch.Tensor
    dec_ids: torch.Tensor  # [DEC] + prompt + text + [SEP]
    dec_mask: torch.Tensor
    labels: torch.Tensor  # dec_ids with pad and prompt at -100
    same: torch.Tensor  # (B, B) bool: texts i and j are equal


def to_device(batch, device):
    """A TextBatch or QuestionBatch with every tensor on `device`."""
    return type(batch)(**{k: v.to(device, non_blocking=True) for k, v in vars(batch).items()})


def tokenize(tokenizer, texts: list[str], prompt: str = PROMPT) -> TextBatch:
    enc_id = tokenizer.convert_tokens_to_ids("[ENC]")
    dec_id = tokenizer.convert_tokens_to_ids("[DEC]")
    plain = tokenizer(texts, padding="longest", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt")
    enc_ids = plain.input_ids.clone()
    enc_ids[:, 0] = enc_id
    decoded = tokenizer([prompt + t for t in texts], padding="longest", truncation=True,
                        max_length=TEXT_MAX_LENGTH + 8, return_tensors="pt")
    dec_ids = decoded.input_ids.clone()
    dec_ids[:, 0] = dec_id
    labels = dec_ids.masked_fill(decoded.attention_mask == 0, -100)
    prompt_length = len(tokenizer(prompt).input_ids) - 1  # [DEC] + prompt words, without [SEP]
    labels[:, :prompt_length] = -100
    keys = [" ".join(t.lower().split()) for t in texts]
    same = torch.tensor([[a == b for b in keys] for a in keys])
    return TextBatch(plain.input_ids, enc_ids, plain.attention_mask, dec_ids, decoded.attention_mask, labels, same)


def losses(model, pixel_values: torch.Tensor, text: TextBatch | QuestionBatch, objectives=OBJECTIVES,
           generator: torch.Generator | None = None, margin: float = 0.0) -> dict[str, torch.Tensor]:
    """The named objectives' losses for one batch of (image, text) pairs, or of (image, question, answer).
    `margin` (cosine similarity): ITM never draws as a hard negative a candidate whose ITC similarity comes within
    `margin` of the true pair's, as it is likely a false negative (see _draw)."""
    image_states = model.vision_model(pixel_values=pixel_values)[0]
    if isinstance(text, QuestionBatch):
        return {"vqa": vqa_loss(model, image_states, text)}
    out: dict[str, torch.Tensor] = {}
    sim_i2t = None
    if "itc" in objectives or "itm" in objectives:
        sim_i2t = _itc_similarity(model, image_states, text)
        if "itc" in objectives:
            targets = text.same.float() / text.same.float().sum(1, keepdim=True)
            out["itc"] = (torch.sum(-F.log_softmax(sim_i2t, 1) * targets, 1).mean()
                          + torch.sum(-F.log_softmax(sim_i2t.t(), 1) * targets, 1).mean()) / 2
    if "itm" in objectives:
        out["itm"] = _itm_loss(model, image_states, text, sim_i2t.detach(), generator, margin / model.temp.item())
    if "lm" in objectives:
        logits = model.text_decoder(input_ids=text.dec_ids, attention_mask=text.dec_mask,
                                    encoder_hidden_states=image_states, return_dict=True).logits
        out["lm"] = _lm_loss(logits, text.labels)
    return out


def _itc_similarity(model, image_states: torch.Tensor, text: TextBatch) -> torch.Tensor:
    with torch.no_grad():
        model.temp.clamp_(0.001, 0.5)
    image_feat = F.normalize(model.vision_proj(image_states[:, 0]), dim=-1)
    text_states = model.text_encoder(input_ids=text.cls_ids, attention_mask=text.mask, return_dict=True)
    text_feat = F.normalize(model.text_proj(text_states.last_hidden_state[:, 0]), dim=-1)
    return image_feat @ text_feat.t() / model.temp


def _itm_loss(model, image_states, text: TextBatch, sim_i2t, generator, margin: float) -> torch.Tensor:
    size = image_states.shape[0]
    negative_text = _draw(sim_i2t, text.same, generator, margin)  # per image, a text that is not its own
    negative_image = _draw(sim_i2t.t(), text.same, generator, margin)  # per text, an image that is not its own
    ids = torch.cat([text.enc_ids, text.enc_ids, text.enc_ids[negative_text]])
    mask = torch.cat([text.mask, text.mask, text.mask[negative_text]])
    images = torch.cat([image_states, image_states[negative_image], image_states])
    states = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=images,
                                encoder_attention_mask=torch.ones(images.shape[:-1], dtype=torch.long, device=images.device),
                                return_dict=True).last_hidden_state
    logits = model.itm_head(states[:, 0])
    labels = torch.cat([torch.ones(size, dtype=torch.long), torch.zeros(2 * size, dtype=torch.long)]).to(logits.device)
    return F.cross_entropy(logits, labels)


def _draw(similarity: torch.Tensor, same: torch.Tensor, generator, margin: float = 0.0) -> torch.Tensor:
    """Per row, a column drawn with probability softmax(similarity), never one whose text equals the row's nor one
    that scores higher than the row's own pair less `margin` (same units as `similarity`), unless nothing else is
    left."""
    similarity = similarity.float()
    weights = (torch.softmax(similarity, dim=1) + 1e-5).cpu()
    same = same.cpu()
    # Candidates ITC ranks (nearly) as close as the true pair are most likely false negatives (another image with
    # the same content, or the same caption in other words): drawing them would teach ITM that a match is not one.
    closer = (similarity >= similarity.diagonal().unsqueeze(1) - margin).cpu()
    drawn = weights.masked_fill(same | closer, 0.0)
    empty = drawn.sum(1) == 0
    drawn[empty] = weights[empty].masked_fill(same[empty], 0.0)  # only closer ones left: take one of them
    alike = drawn.sum(1) == 0  # every text of the batch equals this one: any other column will do
    if alike.any():
        drawn[alike] = 1.0
        if drawn.shape[1] > 1:
            drawn[alike, torch.nonzero(alike).squeeze(1)] = 0.0
    return torch.multinomial(drawn, 1, generator=generator).squeeze(1).to(similarity.device)



@dataclass
class QuestionBatch:
    question_ids: torch.Tensor  # [ENC] + question
    question_mask: torch.Tensor
    answer_ids: torch.Tensor  # [DEC] + answer + [SEP]
    answer_mask: torch.Tensor
    labels: torch.Tensor


def tokenize_questions(tokenizer, questions: list[str], answers: list[str]) -> QuestionBatch:
    question = tokenizer(questions, padding="longest", truncation=True, max_length=QUESTION_MAX_LENGTH,
                         return_tensors="pt")
    question_ids = question.input_ids.clone()
    question_ids[:, 0] = tokenizer.convert_tokens_to_ids("[ENC]")
    answer = tokenizer(answers, padding="longest", truncation=True, max_length=QUESTION_MAX_LENGTH, return_tensors="pt")
    answer_ids = answer.input_ids.clone()
    answer_ids[:, 0] = tokenizer.convert_tokens_to_ids("[DEC]")
    labels = answer_ids.masked_fill(answer.attention_mask == 0, -100)
    return QuestionBatch(question_ids, question.attention_mask, answer_ids, answer.attention_mask, labels)


def vqa_loss(model, image_states: torch.Tensor, batch: QuestionBatch) -> torch.Tensor:
    """BLIP's VQA objective: [ENC] + question cross-attends to the image; the decoder generates the answer from
    the question states ("[DEC] answer [SEP]", label smoothing 0.1), as models.answerer runs it."""
    states = model.text_encoder(input_ids=batch.question_ids, attention_mask=batch.question_mask,
                                encoder_hidden_states=image_states,
                                encoder_attention_mask=torch.ones(image_states.shape[:-1], dtype=torch.long,
                                                                   device=image_states.device),
                                return_dict=True).last_hidden_state
    logits = model.text_decoder(input_ids=batch.answer_ids, attention_mask=batch.answer_mask,
                                encoder_hidden_states=states, encoder_attention_mask=batch.question_mask,
                                return_dict=True).logits
    return _lm_loss(logits, batch.labels)


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, label_smoothing=LM_LABEL_SMOOTHING)


# ------------------------------------------------------------------------------ NLVR2 and grounding (fine-tuning)
@dataclass
class SentenceBatch:
    """NLVR2: [CLS] + sentence (the toolbox's BlipNLVR keeps [CLS] first) and the labels."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor


@dataclass
class BoxBatch:
    """Grounding: [CLS] + cleaned expression, and the target box as unit xyxy."""

    ids: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor


def tokenize_sentences(tokenizer, sentences: list[str], labels) -> SentenceBatch:
    from models.reasoner import TEXT_MAX_LENGTH as NLVR_MAX_LENGTH

    text = tokenizer(sentences, padding="longest", truncation=True, max_length=NLVR_MAX_LENGTH, return_tensors="pt")
    return SentenceBatch(text.input_ids, text.attention_mask, torch.as_tensor(labels, dtype=torch.long))


def tokenize_expressions(tokenizer, expressions: list[str], boxes) -> BoxBatch:
    from models.grounder import TEXT_MAX_LENGTH as GROUNDING_MAX_LENGTH, clean_expression

    text = tokenizer([clean_expression(e) for e in expressions], padding="longest", truncation=True,
                     max_length=GROUNDING_MAX_LENGTH, return_tensors="pt")
    return BoxBatch(text.input_ids, text.attention_mask, torch.as_tensor(boxes, dtype=torch.float32))


def nlvr_loss(model, pixel_values: torch.Tensor, batch: SentenceBatch) -> torch.Tensor:
    """Cross-entropy of the NLVR2 head; `pixel_values` (B, 2, 3, S, S)."""
    logits = model(input_ids=batch.ids, attention_mask=batch.mask, pixel_values=pixel_values)
    return F.cross_entropy(logits.float(), batch.labels)


def aligned_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of aligned xyxy boxes (the diagonal of the toolbox's generalized_box_iou matrix)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter = ((torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)).prod(-1)
    union = area_a + area_b - inter
    hull = ((torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)).prod(-1)
    return inter / union - (hull - union) / hull


def grounding_loss(model, pixel_values: torch.Tensor, batch: BoxBatch, box_tokens) -> torch.Tensor:
    """The toolbox's GroundingHead.loss: the decoder reads the prefix and the 4 target bins (cx, cy, w, h); each
    bin's cross-entropy (logits masked to the bins) is weighted by the L1 error of the argmax box's coordinate
    (clamped to 5, times 4) times its 1 - GIoU (times 2), without gradient, as the batch's mean of that product
    (see below), and averaged. `box_tokens`: (prefix id, first bin id, bins)."""
    from models.grounder import cxcywh_to_xyxy, xyxy_to_cxcywh

    prefix, first, bins = box_tokens
    target = xyxy_to_cxcywh(batch.boxes)
    ids = torch.cat([torch.full_like(batch.ids[:, :1], prefix), (target * bins).long() + first], dim=1)
    logits = model(input_ids=batch.ids, attention_mask=batch.mask, box_ids=ids, bin_range=(first, first + bins),
                   pixel_values=pixel_values)[:, :-1].float()
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    with torch.no_grad():
        predicted = (logits.argmax(-1) - first).float() / bins
        weight_l1 = F.l1_loss(predicted, target, reduction="none").clamp(0, 5) * 4.0
        weight_giou = (1 - aligned_giou(cxcywh_to_xyxy(predicted), cxcywh_to_xyxy(target))) * 2.0
    # As the toolbox computes it, broadcasting included: its token losses viewed (B, 1, 4) times the (B, 4) L1
    # weights are (B, B, 4), and times its (B, 1) GIoU weights still (B, B, 4), so each sample's loss is weighted by
    # the batch's mean over samples j of L1_j (per coordinate) x GIoU_j, not by its own. The seed was trained so.
    return (per_token.view(-1, 1, 4) * weight_l1 * weight_giou.unsqueeze(1)).mean()
