"""Fixes applied to transformers' BLIP modules at load time, each for a measured defect in the pinned release."""
from __future__ import annotations

import functools

import torch
from transformers.models.blip.modeling_blip_text import BlipTextLayer


def fix_cross_attention_mask(model: torch.nn.Module) -> torch.nn.Module:
    """transformers 5.x passes the encoder mask to BLIP's cross-attention as `attention_mask`, and the
    self-attention then reads `encoder_attention_mask` (None): padded question tokens get attended to, so a VQA
    answer changes with the other questions in its batch. Route the mask where it is read. A no-op once fixed
    upstream (the wrapper only fills a missing encoder mask)."""
    for layer in model.modules():
        if isinstance(layer, BlipTextLayer) and hasattr(layer, "crossattention"):
            attention = layer.crossattention.self
            if not getattr(attention, "_capfilt_mask_fix", False):
                attention.forward = _with_encoder_mask(attention.forward)
                attention._capfilt_mask_fix = True
    return model


def _with_encoder_mask(forward):
    @functools.wraps(forward)
    def wrapper(hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs):
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = attention_mask
        return forward(hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                       encoder_attention_mask=encoder_attention_mask, **kwargs)

    return wrapper
