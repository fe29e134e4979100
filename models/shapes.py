"""Model configs read off a converted checkpoint's weights: a `.pth` holds the weights but no config, so widths,
depths and vocabularies come from the tensors' shapes, and what shapes cannot tell (eps, heads, token ids) from the
original code's constants. Used by models/convert.py; every function takes the renamed state dict.
"""
from __future__ import annotations

import re

import torch

from models import layouts
from models.names import ModelLoadError
from models.task_models import GROUNDING_BINS

# BLIP's ViT is timm's, whose LayerNorm eps is 1e-6; transformers' BlipVisionConfig defaults to 1e-5. BLIP-2's EVA
# ViT-g uses 1e-6 too, but LAVIS's and the toolbox's ln_vision after it is torch's default LayerNorm, 1e-5.
BLIP_VISION_EPS = 1e-6
BLIP2_LN_VISION_EPS = 1e-5
BERT_EPS = 1e-12
# The width of one attention head in every released BLIP and BLIP-2 (ViT-B/L, BERT-base, OPT): a checkpoint holds
# the weights but not the number of heads, which is the width divided by this (but for widths in
# layouts.KNOWN_HEADS). $CAPFILT_HEAD_DIM sets another for a model trained with other heads (the tests' tiny
# upstream models have 8-wide heads).
HEAD_DIM = 64
# OPT's heads are not 64 wide in every size (2.7b: 2560 in 32 heads of 80): its published configs, by width.
OPT_HEADS = {768: 12, 1024: 16, 2048: 32, 2560: 32, 4096: 32, 5120: 40, 7168: 56, 9216: 72, 12288: 96}


class Shapes:
    """Questions about the shapes of a renamed state dict."""

    def __init__(self, mapped: dict[str, torch.Tensor], head_dim: int):
        self.mapped, self.head_dim = mapped, head_dim

    def has(self, key: str) -> bool:
        return key in self.mapped

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self.mapped:
            raise ModelLoadError(f"the checkpoint has no {key} (after renaming), which every such model has")
        return tuple(self.mapped[key].shape)

    def indices(self, pattern: str) -> list[int]:
        """The sorted layer numbers `(\\d+)` in `pattern` takes over the keys."""
        return sorted({int(m.group(1)) for k in self.mapped if (m := re.match(pattern, k))})

    def count(self, pattern: str) -> int:
        return len(self.indices(pattern))

    def heads(self, width: int, what: str) -> int:
        if width in layouts.KNOWN_HEADS:
            return layouts.KNOWN_HEADS[width]
        if width % self.head_dim:
            raise ModelLoadError(f"the {what} width {width} is not a multiple of the head width {self.head_dim} "
                                 "(--head-dim, $CAPFILT_HEAD_DIM)")
        return width // self.head_dim

    def vision(self, eps: float) -> dict:
        """A ViT's config (BlipVisionConfig's or Blip2VisionConfig's keywords)."""
        width = self.shape("vision_model.embeddings.class_embedding")[-1]
        patch = self.shape("vision_model.embeddings.patch_embedding.weight")[-1]
        grid = round((self.shape("vision_model.embeddings.position_embedding")[1] - 1) ** 0.5)
        return dict(hidden_size=width, num_hidden_layers=self.count(r"vision_model\.encoder\.layers\.(\d+)\."),
                    num_attention_heads=self.heads(width, "vision"),
                    intermediate_size=self.shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
                    image_size=grid * patch, patch_size=patch, layer_norm_eps=eps)


def blip_config(mapped: dict[str, torch.Tensor], tokenizer, head_dim: int):
    """A BlipConfig read off the weights' shapes; BLIP's own eps and token ids."""
    from transformers import BlipConfig

    s = Shapes(mapped, head_dim)
    vision = s.vision(BLIP_VISION_EPS)
    text_prefix = next(p for p in ("text_decoder.bert.", "text_encoder.") if s.has(f"{p}embeddings.word_embeddings.weight"))
    nlvr = s.has(f"{text_prefix}encoder.layer.0.crossattention.self0.key.weight")  # NLVR2's twin cross-attention
    vocab, text_width = s.shape(f"{text_prefix}embeddings.word_embeddings.weight")
    sep = tokenizer.convert_tokens_to_ids("[SEP]")
    text = dict(vocab_size=vocab, hidden_size=text_width, num_attention_heads=s.heads(text_width, "text"),
                num_hidden_layers=s.count(re.escape(text_prefix) + r"encoder\.layer\.(\d+)\."),
                intermediate_size=s.shape(f"{text_prefix}encoder.layer.0.intermediate.dense.weight")[0],
                max_position_embeddings=s.shape(f"{text_prefix}embeddings.position_embeddings.weight")[0],
                encoder_hidden_size=s.shape(f"{text_prefix}encoder.layer.0.crossattention."
                                            f"{'self0' if nlvr else 'self'}.key.weight")[1],
                layer_norm_eps=BERT_EPS, bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
                pad_token_id=tokenizer.pad_token_id, sep_token_id=sep, eos_token_id=sep)
    projection = s.shape("vision_proj.weight")[0] if s.has("vision_proj.weight") else 256
    extra = {}
    if nlvr:  # the layers that merge the two images' outputs rather than average them
        merging = s.indices(re.escape(text_prefix) + r"encoder\.layer\.(\d+)\.crossattention\.output\.merge_layer\.")
        extra["nlvr_merge_layer"] = merging[0] if merging else text["num_hidden_layers"]
        if merging and merging != list(range(merging[0], text["num_hidden_layers"])):
            raise ModelLoadError(f"the NLVR2 model's merging layers {merging} are not the last ones, as BLIP's are")
    if s.has("multimodal_encoder.embeddings.word_embeddings.weight"):
        extra["grounding_bins"] = GROUNDING_BINS
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=projection,
                      image_text_hidden_size=projection, **extra)


def qformer_config(s: Shapes, task: str) -> dict:
    """BLIP-2's Q-Former: a BERT whose layers cross-attend to the image every `cross_attention_frequency` layers."""
    width = s.shape("qformer.layernorm.weight")[0]
    layers = s.count(r"qformer\.encoder\.layer\.(\d+)\.")
    cross = s.indices(r"qformer\.encoder\.layer\.(\d+)\.crossattention\.")
    frequency = cross[1] - cross[0] if len(cross) > 1 else layers
    if not cross or cross != list(range(0, layers, frequency)):
        raise ModelLoadError(f"the Q-Former's cross-attention layers {cross} of {layers} are not every n-th from the "
                             "first, as BLIP-2's are")
    config = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=s.heads(width, "Q-Former"),
                  intermediate_size=s.shape("qformer.encoder.layer.0.intermediate_query.dense.weight")[0],
                  cross_attention_frequency=frequency, layer_norm_eps=BERT_EPS, pad_token_id=0,
                  encoder_hidden_size=s.shape("qformer.encoder.layer.0.crossattention.attention.key.weight")[1],
                  use_qformer_text_input=task == "retrieval")
    if task == "retrieval":
        config["vocab_size"] = s.shape("embeddings.word_embeddings.weight")[0]
        config["max_position_embeddings"] = s.shape("embeddings.position_embeddings.weight")[0]
    return config


def opt_config(s: Shapes, tokenizer):
    """An OPTConfig read off `language_model.*` (OPT's code: relu, learned positions offset by 2, pre-LayerNorm
    where the decoder ends in a LayerNorm, as every OPT but 350m)."""
    from transformers import OPTConfig

    prefix = "language_model.model.decoder."
    vocab, embed = s.shape(prefix + "embed_tokens.weight")
    width = s.shape(prefix + "layers.0.self_attn.q_proj.weight")[0]
    return OPTConfig(vocab_size=vocab, hidden_size=width, word_embed_proj_dim=embed,
                     num_hidden_layers=s.count(re.escape(prefix) + r"layers\.(\d+)\."),
                     num_attention_heads=OPT_HEADS.get(width) or s.heads(width, "OPT"), ffn_dim=s.shape(prefix + "layers.0.fc1.weight")[0],
                     max_position_embeddings=s.shape(prefix + "embed_positions.weight")[0] - 2,
                     do_layer_norm_before=s.has(prefix + "final_layer_norm.weight"),
                     enable_bias=s.has(prefix + "layers.0.self_attn.q_proj.bias"),
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, activation_function="relu")


def blip2_config(mapped: dict[str, torch.Tensor], task: str, head_dim: int, text_config=None,
                 image_token_index: int | None = None):
    """A Blip2Config read off the weights' shapes; `text_config` is the language model's (caption, vqa)."""
    from transformers import Blip2Config

    s = Shapes(mapped, head_dim)
    vision = dict(s.vision(BLIP_VISION_EPS), qkv_bias=True)
    config = dict(vision_config=vision, qformer_config=qformer_config(s, task),
                  num_query_tokens=s.shape("query_tokens")[1])
    if task == "retrieval":
        return Blip2Config(**config, image_text_hidden_size=s.shape("vision_projection.weight")[0])
    return Blip2Config(**config, text_config=text_config.to_dict(), image_token_index=image_token_index,
                       use_decoder_only_language_model=not text_config.is_encoder_decoder)
