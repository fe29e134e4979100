"""Changes applied to transformers' BLIP modules at load time: one fix and three savings, all measured.

1. The cross-attention mask (a defect of transformers 5.x): the encoder mask reaches BLIP's cross-attention as
   `attention_mask`, and the self-attention then reads `encoder_attention_mask` (None), so padded question tokens
   were attended to and a VQA answer changed with the other questions in its batch.
2. Shared image keys/values: when several text rows attend to the same image (N sampled captions, or the web and
   synthetic captions the filter scores), the cross-attention key/value projections of the image states are
   computed once per image, not once per row. For BLIP-base that is 16 GFLOP per row saved, most of the cost of
   an extra caption. When each image has the same number of consecutive rows, their queries also attend to the
   image's keys/values as one block, so the keys/values are neither copied per row nor read once per row at every
   decoding step. Callers opt in with `shared_image_rows(index)` and pass one state tensor per image.
3. Vision attention per image: the ViT's attention computed image by image in bf16 on CPUs (transformers'
   eager computation, with each image's scores in cache), elsewhere through torch's scaled_dot_product_attention
   (transformers' BLIP vision attention is eager only).
4. Packed bf16 linear weights on CPUs (`pack_linear_weights`, applied by the roles): each nn.Linear's weight is
   reordered once into oneDNN's blocked layout, which a plain bf16 matmul otherwise does at every call. Outputs are
   bit-identical; BLIP-base CapFilt ran 1.09-1.20x faster on this CPU (BENCHMARKS.md).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import torch
from torch.utils.flop_counter import register_flop_formula
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextLayer

# (row -> image index, rows per image when each image has the same number of consecutive rows, else None) of the
# current forward, when the text rows share image states.
_ROWS: contextvars.ContextVar[tuple[torch.Tensor, int | None] | None] = contextvars.ContextVar(
    "capfilt_shared_image_rows", default=None)


@contextlib.contextmanager
def shared_image_rows(index: torch.Tensor):
    """Within this block, text row r cross-attends to image states index[r] (states passed once per image)."""
    token = _ROWS.set((index, _group_size(index)))
    try:
        yield
    finally:
        _ROWS.reset(token)


def _group_size(index: torch.Tensor) -> int | None:
    """N when index is [0]*N + [1]*N + ... (N captions per image; web + synthetic texts per image), else None."""
    if index.numel() == 0:
        return None
    images = int(index[-1]) + 1
    if index.numel() % images:
        return None
    group = index.numel() // images
    return group if torch.equal(index.cpu(), torch.arange(images).repeat_interleave(group)) else None


def patch_blip_text(model: torch.nn.Module) -> torch.nn.Module:
    """Apply the changes to every attention of `model` (idempotent)."""
    for layer in model.modules():
        if isinstance(layer, BlipAttention) and not getattr(layer, "_capfilt_patched", False):
            layer.forward = _vision_attention(layer)
            layer._capfilt_patched = True
        if isinstance(layer, BlipTextLayer) and hasattr(layer, "crossattention"):
            attention = layer.crossattention.self
            if getattr(attention, "_capfilt_patched", False):
                continue
            attention.forward = _patched_forward(attention)
            attention._capfilt_patched = True
    return model


def pack_linear_weights(model: torch.nn.Module) -> int:
    """Give every bf16 nn.Linear of `model` a oneDNN-packed copy of its weight, used when no gradient is needed
    (an inference-only saving for CPUs; the original weight stays, for checkpoints, ties and training). Returns how
    many layers use it; 0 when this torch has no oneDNN (idempotent)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for layer in model.modules():
        weight = getattr(layer, "weight", None)
        if isinstance(layer, torch.nn.Linear) and weight.dtype == torch.bfloat16 and weight.device.type == "cpu":
            if not getattr(layer, "_capfilt_packed", False):
                layer.forward = _packed_linear(layer)
                layer._capfilt_packed = True
            count += 1
    return count


@register_flop_formula(torch.ops.mkldnn._linear_pointwise)
def _packed_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """For torch's FlopCounterMode (the benchmark's FLOP count): a matmul of x by the (out, in) weight."""
    return 2 * math.prod(x_shape) * w_shape[0]


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's fused CPU attention, which FlopCounterMode counts as 0: the two matmuls q k^T and p v."""
    *batch, length, dim = query_shape
    return 2 * math.prod(batch) * length * key_shape[-2] * (dim + value_shape[-1])


def _packed_linear(layer: torch.nn.Linear):
    plain = layer.forward
    packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach())

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad):
            return plain(x)
        # bf16 input, as autocast (which a direct oneDNN call bypasses) would cast it
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16).reshape(-1, x.shape[-1]), packed, layer.bias,
                                               "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])

    return forward


def _vision_attention(attention: BlipAttention):
    """The ViT's attention without transformers' eager path over the whole batch (whose score tensors, 8 x 12 x 577
    x 577 at BLIP-base, spill every cache). Attention weights are not returned (nothing in capfilt asks for them).

    bf16 inference on a CPU runs transformers' eager computation one image at a time (`_eager_per_image`): the
    same operations in the same dtype, so the same function, with each image's scores in cache. Elsewhere (fp32,
    CUDA, training) torch's fused scaled_dot_product_attention, which never materialises the scores."""

    def forward(hidden_states: torch.Tensor, **kwargs):
        batch, length, dim = hidden_states.shape
        qkv = attention.qkv(hidden_states).reshape(batch, length, 3, attention.num_heads, attention.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        if (CPU_BF16_PER_IMAGE and query.device.type == "cpu" and query.dtype == torch.bfloat16
                and not torch.is_grad_enabled()):
            context = _eager_per_image(query, key, value, attention.scale)
        else:
            context = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, dropout_p=attention.dropout.p if attention.training else 0.0,
                scale=attention.scale)
        return attention.projection(context.transpose(1, 2).reshape(batch, length, dim)), None

    return forward


# On the 2-core Zen 5 CPU of BENCHMARKS.md, one ViT attention call of BLIP-base at batch 8 (12 heads, 577 tokens,
# bf16) took 53 ms in torch's fused CPU kernel, 70 ms eager over the whole batch, and 35 ms eager image by image.
# The benchmark switches it off to compare (benchmarks/capfilt_bench.py).
CPU_BF16_PER_IMAGE = True


def _eager_per_image(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for (batch, heads, length, dim) tensors as transformers' eager BLIP attention
    computes it (bf16 scores scaled after the matmul, softmax along the keys), one batch element at a time.

    A power-of-two scale (1/8 for BLIP's 64-dim heads) is applied to q instead of to the 577 x 577 scores: scaling by
    2^n is exact and commutes with the matmul's rounding, so the bits are the same, one pass over the scores fewer."""
    exact = math.frexp(scale)[0] == 0.5
    if exact:
        query = query * scale
    context = query.new_empty((*query.shape[:-1], value.shape[-1]))
    for i in range(query.shape[0]):
        scores = torch.matmul(query[i], key[i].transpose(-1, -2))
        if not exact:
            scores.mul_(scale)
        torch.matmul(torch.softmax(scores, dim=-1), value[i], out=context[i])
    return context


def _patched_forward(attention):
    """The cross-attention forward, with the mask routed and, for shared image rows, the image keys/values
    projected once per image. When every image has the same number of consecutive rows, the rows' queries attend
    to their image's keys/values as one block per image (`_grouped_attention`); otherwise the keys/values are
    copied per row and handed to transformers' own code through its cross-attention cache (the path it takes from
    the second decoding step on). The instance's forward is replaced, so parameter names and checkpoints stay
    those of transformers."""
    forward = attention.forward

    @functools.wraps(forward)
    def wrapper(hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_values=None, **kwargs):
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = attention_mask  # the fix: a no-op once transformers passes the mask itself
        shared = _ROWS.get()
        if shared is None or encoder_hidden_states is None or encoder_hidden_states.shape[0] == shared[0].shape[0]:
            return forward(hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                           encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, **kwargs)
        rows, group = shared
        if encoder_attention_mask is not None or (group or 0) * encoder_hidden_states.shape[0] != rows.shape[0]:
            group = None  # a mask (no caller passes one with shared states), or images without rows: per-row path
        cache = past_key_values
        if not isinstance(cache, EncoderDecoderCache):
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        layer = attention.layer_idx
        if not cache.is_updated.get(layer):
            shape = (*encoder_hidden_states.shape[:-1], -1, attention.attention_head_size)
            key = attention.key(encoder_hidden_states).view(shape).transpose(1, 2)
            value = attention.value(encoder_hidden_states).view(shape).transpose(1, 2)
            if group is None:
                index = rows.to(encoder_hidden_states.device)
                key, value = key.index_select(0, index), value.index_select(0, index)
            cache.cross_attention_cache.update(key, value, layer)
            cache.is_updated[layer] = True
        if group is None:
            return forward(hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                           encoder_attention_mask=encoder_attention_mask, past_key_values=cache, **kwargs)
        cached = cache.cross_attention_cache.layers[layer]
        return _grouped_attention(attention, hidden_states, cached.keys, cached.values, group), None

    return wrapper


def _grouped_attention(attention, hidden_states, key, value, group: int) -> torch.Tensor:
    """transformers' BLIP cross-attention without a mask (scores, softmax, dropout, weighted values) for `group`
    consecutive rows per image: the rows' queries are stacked per image, so each image's keys/values are read once
    per step, not once per row."""
    rows, length, _ = hidden_states.shape
    images, heads, size = rows // group, attention.num_attention_heads, attention.attention_head_size
    query = attention.query(hidden_states).view(images, group * length, heads, size).transpose(1, 2)
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(size)
    probs = attention.dropout(torch.softmax(scores, dim=-1))
    context = torch.matmul(probs, value)  # (images, heads, group * length, size)
    return context.transpose(1, 2).reshape(rows, length, heads * size)
