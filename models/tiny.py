"""Tiny BLIP models with deterministic random weights and a small WordPiece tokenizer, built offline.

They are the real transformers BLIP classes with small configs (hidden 32, 2 layers, 32 px images), so every
code path that runs a released checkpoint runs them too, in milliseconds, with no download.
"""
from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
)

# BERT's special tokens first (pad must be id 0 as in bert-base-uncased), then BLIP's two extra ones.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
WORDS = """
a an the of in on at to with and or is are it this that there here picture photo image of
one two three four five six seven eight nine ten no yes left right top bottom middle center above below
next beside near behind front over under small large big tiny little
red green blue yellow orange purple pink white black gray grey brown
circle circles square squares triangle triangles star stars shape shapes dot dots ring rings
background cat dog man woman person people car tree house sky water street table room
what where how many color colour which shown sitting standing
""".split()
WORD_PIECES = [f"##{c}" for c in string.ascii_lowercase + string.digits]
CHARACTERS = list(string.ascii_lowercase + string.digits + string.punctuation)

from models.task_models import GROUNDING_BINS, BlipForGrounding, BlipForNlvr, box_tokens

TASK_CLASSES = {
    "caption": BlipForConditionalGeneration,
    "retrieval": BlipForImageTextRetrieval,
    "vqa": BlipForQuestionAnswering,
    "nlvr": BlipForNlvr,
    "grounding": BlipForGrounding,
}


def tiny_vocabulary() -> list[str]:
    seen, vocab = set(), []
    for token in SPECIAL_TOKENS + CHARACTERS + WORD_PIECES + WORDS:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    return vocab


def build_tokenizer(vocab: list[str] | None = None) -> BertTokenizer:
    """A lower-casing WordPiece tokenizer over `vocab`; unknown words fall back to single characters."""
    vocab = vocab or tiny_vocabulary()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        # vocab=, not vocab_file=: transformers 5 silently builds a 5-token vocabulary from vocab_file=.
        tokenizer = BertTokenizer(vocab=str(path), do_lower_case=True, bos_token="[DEC]",
                                  additional_special_tokens=["[ENC]"])
    assert tokenizer.convert_tokens_to_ids("[ENC]") == SPECIAL_TOKENS.index("[ENC]"), "tiny vocabulary is broken"
    return tokenizer


# Shapes: "tiny" for tests; "base" is BLIP-base (ViT-B/16 at 384 px, BERT-base text, 30524 tokens, ITM/ITC
# projection 256) with random weights: it costs what a released base checkpoint costs, for benchmarks.
SIZES = {
    "tiny": dict(hidden=32, layers=2, heads=4, ffn=64, image_size=32, patch=8, vocab=None, proj=16, positions=64),
    # "small": the shape world's trained models (training/): a few MB of weights, trained on a CPU in minutes.
    "small": dict(hidden=128, layers=3, heads=4, ffn=512, image_size=96, patch=16, vocab=None, proj=64, positions=64),
    "base": dict(hidden=768, layers=12, heads=12, ffn=3072, image_size=384, patch=16, vocab=30524, proj=256,
                 positions=512),
}


def task_tokenizer(task: str) -> BertTokenizer:
    """The tiny tokenizer; a grounding model's with BERT's box tokens after it ([unused339] ... [unused980], which
    bert-base-uncased has among its unused ones)."""
    extra = box_tokens() if task == "grounding" else []
    return build_tokenizer(tiny_vocabulary() + extra)


def tiny_config(vocab_size: int, image_size: int | None = None, size: str = "tiny", task: str = "") -> BlipConfig:
    shape = SIZES[size]
    text = dict(
        vocab_size=shape["vocab"] or vocab_size,
        hidden_size=shape["hidden"],
        encoder_hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        max_position_embeddings=shape["positions"],
        bos_token_id=SPECIAL_TOKENS.index("[DEC]"),
        pad_token_id=0,
        sep_token_id=SPECIAL_TOKENS.index("[SEP]"),
        eos_token_id=SPECIAL_TOKENS.index("[SEP]"),
    )
    vision = dict(
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        image_size=image_size or shape["image_size"],
        patch_size=shape["patch"],
    )
    extra = {"nlvr": dict(nlvr_merge_layer=shape["layers"] // 2),  # both kinds of layer, as BLIP's 6 of 12
             "grounding": dict(grounding_bins=GROUNDING_BINS)}.get(task, {})
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=shape["proj"],
                      image_text_hidden_size=shape["proj"], **extra)


def build_tiny(task: str, seed: int = 0, image_size: int | None = None, size: str = "tiny"):
    """(model, tokenizer) for `task` in TASK_CLASSES; the same seed gives the same weights."""
    tokenizer = task_tokenizer(task)
    config = tiny_config(len(tokenizer), image_size, size, task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TASK_CLASSES[task](config)
        # BLIP's vision init is near zero (initializer_range 1e-10); widen it so images differ in the output.
        std = 0.2 if size == "tiny" else 0.02
        for name, param in model.named_parameters():
            if "vision_model" in name and param.dim() > 1:
                torch.nn.init.normal_(param, std=std)
    return model.eval(), tokenizer


def byte_level_tokenizer(special_tokens: list[str], template: str, vocab_size: int = 400, lowercase: bool = False,
                         **names: str):
    """A byte-level BPE tokenizer trained on the tiny vocabulary's words (deterministic: the same tokens every
    time), the kind OPT and CLIP use. `template` places the special tokens around a text (tokenizers'
    TemplateProcessing, e.g. "</s> $A"); `names` are the roles of the special tokens (bos_token=..., pad_token=...)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 3 + WORDS + ["\n"], trainer)
    used = [t for t in special_tokens if t in template]
    tok.post_processor = processors.TemplateProcessing(single=template,
                                                       special_tokens=[(t, tok.token_to_id(t)) for t in used])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **names)
