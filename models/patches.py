"""Changes to transformers' BLIP modules, swapped in by class at load time and each checked before it is used.

Each change is a subclass of a transformers module with the same parameter names (checkpoints and state dicts are
those of transformers), swapped in by `patch_blip`. Before a change is applied for the first time in a process, a
one-layer equivalence check against transformers' own path decides whether it holds on the installed version; when
it does not, the module keeps transformers' plain path and one warning names the change and the version.

- `mask`: the cross-attention mask (a defect of transformers 5.x). The encoder mask reaches BLIP's cross-attention
  as `attention_mask`, and the attention then reads `encoder_attention_mask` (None), so padded question tokens were
  attended to and a VQA answer changed with the other questions in its batch.
- `shared`: image keys/values shared across text rows. When several rows attend to one image (N sampled captions,
  the web and synthetic captions the filter scores), the image's cross-attention keys/values are projected once per
  image and kept for the whole block (every decoding step), not once per row. When each image has the same number
  of consecutive rows, their queries attend to the image as one block. Callers use `shared_image_rows`.
- `vision`: the ViT's attention without transformers' eager path over the whole batch: image by image in bf16 on
  CPUs with native bf16, torch's fused scaled_dot_product_attention elsewhere.
- `packed`: bf16 nn.Linear weights reordered once into oneDNN's blocked layout on CPUs whose oneDNN has bf16
  kernels (`pack_linear_weights`); outputs are bit-identical.

What each change saves is measured in BENCHMARKS.md, "BLIP-base CapFilt on a 2-core AMD EPYC with AVX512-BF16".
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import transformers
from torch.utils.flop_counter import register_flop_formula
from transformers import BlipTextConfig, BlipVisionConfig
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextLayer, BlipTextSelfAttention

from models.device import cpu_bf16_kernels, cpu_has_fast_bf16

CHANGES = ("mask", "shared", "vision", "packed")


# ------------------------------------------------------------------------------------------- shared image rows
@dataclass
class _Rows:
    states: torch.Tensor  # one state tensor per image
    rows: torch.Tensor  # text row -> image index
    group: int | None  # rows per image when every image has that many consecutive rows, else None
    memo: dict = field(default_factory=dict)  # attention module -> (keys, values) per image, for the whole block


_ROWS: contextvars.ContextVar[_Rows | None] = contextvars.ContextVar("capfilt_shared_image_rows", default=None)


@contextlib.contextmanager
def shared_image_rows(model: torch.nn.Module, states: torch.Tensor, rows: torch.Tensor) -> Iterator[torch.Tensor]:
    """Text row r cross-attends to states[rows[r]]. Yields the encoder states to pass to the model in this block:
    `states` itself (one per image) when `model` shares image keys/values, else the states copied per row."""
    if not any(isinstance(m, CrossAttention) and m.share_images for m in model.modules()):
        yield states.index_select(0, rows.to(states.device))
        return
    token = _ROWS.set(_Rows(states, rows.to(states.device), _group_size(rows, states.shape[0])))
    try:
        yield states
    finally:
        _ROWS.reset(token)


def _group_size(rows: torch.Tensor, images: int) -> int | None:
    """N when rows is [0]*N + [1]*N + ... over all `images` (N captions per image), else None."""
    if rows.numel() == 0 or rows.numel() % images:
        return None
    group = rows.numel() // images
    return group if torch.equal(rows.cpu(), torch.arange(images).repeat_interleave(group)) else None


class CrossAttention(BlipTextSelfAttention):
    """BLIP's text cross-attention with the mask routed (`mask`) and image keys/values shared across rows
    (`shared`). Outside a `shared_image_rows` block it is transformers' forward (its cache included)."""

    route_mask = True
    share_images = True

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                **kwargs):
        if self.route_mask and encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = attention_mask  # a no-op once transformers passes the mask itself
        shared = _ROWS.get() if self.share_images else None
        if shared is None or encoder_hidden_states is None:
            return super().forward(hidden_states, attention_mask=attention_mask,
                                   encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, **kwargs)
        if encoder_hidden_states is not shared.states or encoder_attention_mask is not None:
            raise RuntimeError("shared_image_rows: the model was called with other encoder states or a mask than the "
                               "block's (one state per image, no mask)")
        if self not in shared.memo:  # projected once per image; gathered per row once, unless grouped
            shape = (*shared.states.shape[:-1], -1, self.attention_head_size)
            # contiguous (images, heads, tokens, size), as transformers' cache holds them: every decoding step reads
            # them, and strided copies made the steps slower (BENCHMARKS.md, "Re-measured after the patches...")
            key = self.key(shared.states).view(shape).transpose(1, 2).contiguous()
            value = self.value(shared.states).view(shape).transpose(1, 2).contiguous()
            if not shared.group:
                key, value = key.index_select(0, shared.rows), value.index_select(0, shared.rows)
            shared.memo[self] = key, value
        key, value = shared.memo[self]
        rows, length = hidden_states.shape[:2]
        heads, size = self.num_attention_heads, self.attention_head_size
        # Grouped: each image's rows stacked as one query block, so its keys/values are read once per step.
        images = rows // shared.group if shared.group else rows
        query = self.query(hidden_states).view(images, -1, heads, size).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(size)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, value)  # (images, heads, rows per image * length, size)
        return context.transpose(1, 2).reshape(rows, length, heads * size), None


# ------------------------------------------------------------------------------------------------ vision attention
@dataclass(frozen=True)
class Kernels:
    """The kernel choices a role may make where several give the same function (a benchmark compares them)."""

    packed_weights: bool = True  # bf16 CPU linear layers on oneDNN-packed weights, where oneDNN has bf16 kernels
    # The ViT's attention image by image in bf16 on CPUs with native bf16; it beat both torch's fused kernel and
    # eager over the batch there (BENCHMARKS.md, "BLIP-base CapFilt on a 2-core AMD EPYC with AVX512-BF16").
    vision_per_image: bool = True


def choose_kernels(model: torch.nn.Module, kernels: Kernels) -> None:
    """Apply `kernels` to a patched model's vision attention (packed weights: `pack_linear_weights`)."""
    for module in model.modules():
        if isinstance(module, VisionAttention):
            module.per_image = kernels.vision_per_image


class VisionAttention(BlipAttention):
    """The ViT's attention; attention weights are not returned (nothing in capfilt asks for them)."""

    per_image = True  # Kernels.vision_per_image

    def forward(self, hidden_states: torch.Tensor, **kwargs):
        batch, length, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        if (self.per_image and query.device.type == "cpu" and query.dtype == torch.bfloat16
                and not torch.is_grad_enabled() and cpu_has_fast_bf16()):
            context = attention_per_image(query, key, value, self.scale)
        else:
            context = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, dropout_p=self.dropout.p if self.training else 0.0, scale=self.scale)
        return self.projection(context.transpose(1, 2).reshape(batch, length, dim)), None


def attention_per_image(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
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


# ------------------------------------------------------------------------------------------------- packed weights
class PackedLinear(torch.nn.Linear):
    """nn.Linear whose bf16 weight also has a oneDNN-packed copy (not a parameter: checkpoints are unchanged), used
    when no gradient is needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return super().forward(x)
        # bf16 input, as autocast (which a direct oneDNN call bypasses) would cast it
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16).reshape(-1, x.shape[-1]), self.packed_weight,
                                               self.bias, "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])


def _pack(layer: torch.nn.Linear) -> None:
    layer.packed_weight = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach())
    layer.__class__ = PackedLinear


def pack_linear_weights(model: torch.nn.Module) -> int:
    """Pack every bf16 CPU nn.Linear of `model` (idempotent). Returns how many layers use packed weights: 0 when
    this CPU's oneDNN has no bf16 kernels (AVX2-only CPUs) or the check failed."""
    if not cpu_bf16_kernels() or not verified("packed"):
        return 0
    count = 0
    for layer in model.modules():
        weight = getattr(layer, "weight", None)
        if type(layer) is torch.nn.Linear and weight.dtype == torch.bfloat16 and weight.device.type == "cpu":
            _pack(layer)
        count += isinstance(layer, PackedLinear)
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


# ------------------------------------------------------------------------------------------------ applying them
def patch_blip(model: torch.nn.Module) -> torch.nn.Module:
    """Swap in every change that holds on this transformers (idempotent); see `verified`."""
    mask, shared, vision = verified("mask"), verified("shared"), verified("vision")
    for module in model.modules():
        if type(module) is BlipAttention and vision:
            module.__class__ = VisionAttention
        if isinstance(module, BlipTextLayer) and hasattr(module, "crossattention") and (mask or shared):
            attention = getattr(module.crossattention, "self", None)  # NLVR2's twin attention has none
            if type(attention) is BlipTextSelfAttention:
                attention.__class__ = CrossAttention
                attention.route_mask, attention.share_images = mask, shared
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """transformers' plain modules again (the naive baseline of the benchmarks, the reference of the tests)."""
    for module in model.modules():
        for ours, theirs in ((CrossAttention, BlipTextSelfAttention), (VisionAttention, BlipAttention),
                             (PackedLinear, torch.nn.Linear)):
            if type(module) is ours:
                module.__class__ = theirs
                if ours is PackedLinear:
                    del module.packed_weight
    return model


@functools.cache
def verified(change: str) -> bool:
    """Whether `change` gives transformers' results on a one-layer input here; warns once when it does not."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        try:
            problem = _CHECKS[change]()
        except Exception as exc:  # noqa: BLE001 - any failure of a change means it does not hold here
            problem = f"{type(exc).__name__}: {exc}"
    if problem:
        warnings.warn(f"capfilt: the '{change}' change to BLIP does not hold on transformers "
                      f"{transformers.__version__} ({problem}); transformers' own path is used instead",
                      RuntimeWarning, stacklevel=3)
    return not problem


def _differs(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-5) -> str | None:
    if ours.shape != theirs.shape:
        return f"shape {tuple(ours.shape)} against {tuple(theirs.shape)}"
    error = (ours.float() - theirs.float()).abs().max().item()
    return f"outputs differ by {error:.3g}" if not error <= atol else None


def _cross_attention() -> tuple[BlipTextSelfAttention, CrossAttention]:
    config = BlipTextConfig(hidden_size=32, num_attention_heads=4, encoder_hidden_size=24,
                            attention_probs_dropout_prob=0)
    plain = BlipTextSelfAttention(config, is_cross_attention=True, layer_idx=0).eval()
    ours = BlipTextSelfAttention(config, is_cross_attention=True, layer_idx=0).eval()
    ours.load_state_dict(plain.state_dict())
    ours.__class__ = CrossAttention
    return plain, ours


def _check_mask() -> str | None:
    plain, ours = _cross_attention()
    ours.share_images = False
    hidden, states = torch.randn(3, 5, 32), torch.randn(3, 7, 24)
    mask = torch.zeros(3, 1, 1, 7)
    mask[:, :, :, 5:] = torch.finfo(torch.float32).min  # two padded encoder tokens
    theirs = plain(hidden, encoder_hidden_states=states, encoder_attention_mask=mask)[0]
    return _differs(ours(hidden, attention_mask=mask, encoder_hidden_states=states)[0], theirs)


def _check_shared() -> str | None:
    plain, ours = _cross_attention()
    model = torch.nn.ModuleList([ours])
    states = torch.randn(3, 7, 24)
    for rows in ([0, 0, 1, 1, 2, 2], [0, 0, 0, 2, 2, 2, 2, 2]):  # grouped; uneven, one image without rows
        rows = torch.tensor(rows)
        with shared_image_rows(model, states, rows) as passed:
            for length in (4, 1):  # a prompt, then a decoding step that reuses the block's keys/values
                hidden = torch.randn(len(rows), length, 32)
                theirs = plain(hidden, encoder_hidden_states=states[rows])[0]
                problem = _differs(ours(hidden, encoder_hidden_states=passed)[0], theirs)
                if problem:
                    return f"rows {rows.tolist()}: {problem}"
    return None


def _check_vision() -> str | None:
    plain = BlipAttention(BlipVisionConfig(hidden_size=32, num_attention_heads=2, attention_dropout=0)).eval()
    ours = BlipAttention(plain.config).eval()
    ours.load_state_dict(plain.state_dict())
    ours.__class__ = VisionAttention
    x = torch.randn(2, 9, 32)
    problem = _differs(ours(x)[0], plain(x)[0])
    if problem is None and cpu_has_fast_bf16():  # the bf16 path image by image
        plain, ours, x = plain.to(torch.bfloat16), ours.to(torch.bfloat16), x.to(torch.bfloat16)
        problem = _differs(ours(x)[0], plain(x)[0], atol=0.0)
    return problem


def _check_packed() -> str | None:
    layer = torch.nn.Linear(32, 16).to(torch.bfloat16)
    x = torch.randn(3, 4, 32, dtype=torch.bfloat16)
    theirs = layer(x)
    _pack(layer)
    return _differs(layer(x), theirs, atol=0.0)


_CHECKS = {"mask": _check_mask, "shared": _check_shared, "vision": _check_vision, "packed": _check_packed}
