"""A tiny CLIP (transformers' `CLIPModel`, small config, deterministic random weights) with a byte-level BPE
tokenizer in CLIP's layout, built offline: what BLIP-2's CapFilt ranks captions with, at test size."""
from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel

from models.tiny import byte_level_tokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_tokenizer():
    """CLIP's layout: lower-cased, every text between <|startoftext|> and <|endoftext|>, which also pads."""
    return byte_level_tokenizer([BOS, EOS], f"{BOS} $A {EOS}", lowercase=True, bos_token=BOS, eos_token=EOS,
                                pad_token=EOS, unk_token=EOS)


def build_tiny_clip(seed: int = 0):
    tokenizer = clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
        for param in model.parameters():
            if param.dim() > 1:
                torch.nn.init.normal_(param, std=0.2)
    return model.eval(), tokenizer
