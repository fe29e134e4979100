"""Tiny BLIP-2 models with deterministic random weights, built offline: the real transformers classes
(`Blip2ForConditionalGeneration` on OPT or Flan-T5, `Blip2ForImageTextRetrieval`) with small configs.

As BLIP-2's ViT-g is frozen and shared by every released BLIP-2 model, the vision weights here depend on the seed
only, not on the task: a tiny captioner and a tiny filter of one seed hold the same vision encoder, as the real
ones do (the CapFilt stage then runs it once per image for both). The "vitg" shape is the real ViT-g and Q-Former
with a small OPT (OPT-125m's shape) for benchmarks.
"""
from __future__ import annotations

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    OPTConfig,
    T5Config,
)

from models.tiny import build_tokenizer, byte_level_tokenizer

IMAGE_TOKEN = "<image>"
SIZES = {
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8),
                 qformer=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=64),
                 lm=dict(hidden=32, layers=2, heads=4, ffn=64, vocab=None), queries=32, proj=16),
    # BLIP-2's EVA ViT-g/14 at 224 px (39 layers, as BLIP-2 uses it: the last one removed) and its BERT-base
    # Q-Former; the language model is OPT-125m's shape with OPT's vocabulary size, not OPT-2.7b.
    "vitg": dict(vision=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                             image_size=224, patch_size=14),
                 qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              max_position_embeddings=512),
                 lm=dict(hidden=768, layers=12, heads=12, ffn=3072, vocab=50272), queries=32, proj=256),
}
LANGUAGE_MODELS = ("opt", "t5")


def opt_tokenizer():
    """OPT's layout: <s>=0, <pad>=1, </s>=2 (bos and eos), <unk>=3, every text starting with </s>; then <image>."""
    tokenizer = byte_level_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], "</s> $A", bos_token="</s>",
                                     eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer


def t5_tokenizer():
    """T5's layout: <pad>=0 (also the decoder's start), </s>=1 appended to every text, <unk>=2; then <image>."""
    tokenizer = byte_level_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>")
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer


def _language_config(lm: str, tokenizer, shape: dict):
    vocab = shape["vocab"] or len(tokenizer)
    if lm == "opt":
        return OPTConfig(vocab_size=vocab, hidden_size=shape["hidden"], word_embed_proj_dim=shape["hidden"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], ffn_dim=shape["ffn"],
                         max_position_embeddings=256, bos_token_id=2, eos_token_id=2, pad_token_id=1)
    return T5Config(vocab_size=vocab, d_model=shape["hidden"], d_kv=shape["hidden"] // shape["heads"],
                    d_ff=shape["ffn"], num_layers=shape["layers"], num_heads=shape["heads"],
                    feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                    tie_word_embeddings=False)


def tiny_blip2_config(task: str, lm: str = "opt", size: str = "tiny", tokenizer=None) -> Blip2Config:
    shape = SIZES[size]
    qformer_tokenizer = build_tokenizer()
    qformer = dict(shape["qformer"], vocab_size=len(qformer_tokenizer), pad_token_id=0,
                   encoder_hidden_size=shape["vision"]["hidden_size"], use_qformer_text_input=task == "retrieval")
    if task == "retrieval":  # the Q-Former model: no language model (transformers still wants a text config)
        return Blip2Config(vision_config=shape["vision"], qformer_config=qformer, num_query_tokens=shape["queries"],
                           image_text_hidden_size=shape["proj"])
    text = _language_config(lm, tokenizer, shape["lm"])
    return Blip2Config(vision_config=shape["vision"], qformer_config=qformer, text_config=text.to_dict(),
                       num_query_tokens=shape["queries"], image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                       use_decoder_only_language_model=lm == "opt")


def build_tiny_blip2(task: str, seed: int = 0, lm: str = "opt", size: str = "tiny"):
    """(model, tokenizer) for `task` in caption / vqa (Blip2ForConditionalGeneration on `lm`, opt or t5) or
    retrieval (Blip2ForImageTextRetrieval, with the Q-Former's BERT tokenizer); deterministic in `seed`."""
    if lm not in LANGUAGE_MODELS:
        raise ValueError(f"lm must be one of {LANGUAGE_MODELS}, got {lm!r}")
    if task == "retrieval":
        tokenizer = build_tokenizer()
        model_class = Blip2ForImageTextRetrieval
    else:
        tokenizer = opt_tokenizer() if lm == "opt" else t5_tokenizer()
        model_class = Blip2ForConditionalGeneration
    config = tiny_blip2_config(task, lm, size, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + (1000 if task == "retrieval" else 0) + 7 * LANGUAGE_MODELS.index(lm))  # vqa = caption
        model = model_class(config)
        torch.manual_seed(seed)  # the vision encoder: the seed's alone, shared across tasks as BLIP-2's ViT-g is
        std = 0.2 if size == "tiny" else 0.02
        for param in model.vision_model.parameters():
            if param.dim() > 1:
                torch.nn.init.normal_(param, std=std)
        if size == "tiny":  # widen the rest too, so that tiny outputs differ from image to image
            for name, param in model.named_parameters():
                if not name.startswith("vision_model") and param.dim() > 1:
                    torch.nn.init.normal_(param, std=0.2)
    return model.eval(), tokenizer
