"""The load-time changes to transformers' BLIP modules: results unchanged, image keys/values projected once per
image, each change checked at load and replaced by transformers' own path when its check fails."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from models import Captioner, Matcher, patches
from models.device import cpu_bf16_kernels, cpu_description, cpu_has_fast_bf16

needs_onednn_bf16 = pytest.mark.skipif(not cpu_bf16_kernels(),
                                       reason=f"oneDNN has no bf16 kernels on this CPU ({cpu_description()})")
needs_native_bf16 = pytest.mark.skipif(not cpu_has_fast_bf16(),
                                       reason=f"no native bf16 on this CPU ({cpu_description()})")


def images(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def key_rows(model) -> list[int]:
    """Rows seen by every cross-attention key projection, recorded by forward hooks."""
    seen: list[int] = []
    for name, module in model.named_modules():
        if name.endswith("crossattention.self.key"):
            module.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    return seen


def test_itm_with_shared_image_rows_equals_repeated_states():
    """ITM of texts sharing one image equals ITM with that image's states repeated per text (fp32)."""
    matcher = Matcher.load("tiny-random_retrieval", precision="fp32")
    states, _ = matcher.image_features(images(2))
    texts = ["a red circle", "two squares", "a cat", "nothing at all", "blue"]
    index = torch.tensor([0, 0, 0, 1, 1])
    shared = matcher.itm(states, texts, image_index=index)
    repeated = matcher.itm(states[index], texts)
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-6)


def test_filter_projects_image_keys_once_per_image():
    """Scoring 7 texts against 2 images runs each cross-attention key projection on 2 rows, not 7."""
    matcher = Matcher.load("tiny-random_retrieval", precision="fp32")
    seen = key_rows(matcher.model)
    matcher.score(images(2), [["a", "b", "c", "d"], ["e", "f", "g"]])
    assert seen and set(seen) == {2}


def test_sampling_projects_image_keys_once_per_image_and_keeps_captions():
    """N sampled captions per image project the image keys once per image; captions equal the unshared path's."""
    captioner = Captioner.load("tiny-random_caption", precision="fp32")
    seen = key_rows(captioner.model)
    pixels = images(3)
    captions = captioner.sample(pixels, ["a", "b", "c"], seed=3, num_captions=4)
    assert seen and set(seen) == {3}
    # The same rows decoded with each image's states repeated (no sharing) give the same captions.
    from models.sampling import SeededNucleus, derive_seed, row_uniforms
    from transformers import LogitsProcessorList

    states = captioner.encode_images(pixels).repeat_interleave(4, dim=0)
    prompt_length = captioner.prompt_ids("a picture of ", 1).shape[1]
    seeds = [derive_seed(3, sid, j) for sid in "abc" for j in range(4)]
    nucleus = SeededNucleus(row_uniforms(seeds, 30), prompt_length)
    plain = captioner.generate(states, "a picture of ", do_sample=False, num_beams=1, max_length=30, min_length=10,
                                repetition_penalty=1.1, logits_processor=LogitsProcessorList([nucleus]))
    assert [c for group in captions for c in group] == plain


def roles_with_and_without_packing(monkeypatch, cls, name):
    packed = cls.load(name, device="cpu", precision="bf16")
    plain = cls.load(name, device="cpu", precision="bf16", kernels=patches.Kernels(packed_weights=False))
    return packed, plain


@needs_onednn_bf16
def test_packed_linear_weights_give_bit_identical_captions_and_scores(monkeypatch):
    """bf16 roles on the CPU use oneDNN-packed linear weights; samples, ITM/ITC scores and embeddings are the same
    bits as with plain bf16 weights."""
    captioner, plain_captioner = roles_with_and_without_packing(monkeypatch, Captioner, "tiny-random_caption")
    matcher, plain_matcher = roles_with_and_without_packing(monkeypatch, Matcher, "tiny-random_retrieval")
    linears = [m for m in captioner.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, patches.PackedLinear) for m in linears)
    assert not any(isinstance(m, patches.PackedLinear) for m in plain_captioner.model.modules())
    pixels, ids = images(5), list("abcde")
    captions = captioner.sample(pixels, ids, seed=2, num_captions=3)
    assert captions == plain_captioner.sample(pixels, ids, seed=2, num_captions=3)
    assert captioner.caption(pixels) == plain_captioner.caption(pixels)
    texts = [["a web caption", *group] for group in captions]
    scores, plain = matcher.score(pixels, texts), plain_matcher.score(pixels, texts)
    for field in ("itm", "itc", "text_embeddings", "image_embeddings"):
        np.testing.assert_array_equal(getattr(scores, field), getattr(plain, field))


@needs_onednn_bf16
def test_packed_linear_keeps_gradients_and_fp32_roles_are_not_packed():
    """With gradients wanted, a packed layer runs the plain forward (gradients reach its weight); fp32 roles keep
    transformers' layers."""
    from models.patches import pack_linear_weights

    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    assert pack_linear_weights(layer) == 1
    x = torch.randn(3, 2, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        packed_out = layer(x)
    layer(x).float().sum().backward()
    assert layer.weight.grad is not None and packed_out.shape == (3, 2, 4)
    torch.testing.assert_close(packed_out, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    fp32 = Matcher.load("tiny-random_retrieval", device="cpu", precision="fp32")
    assert not any(isinstance(m, patches.PackedLinear) for m in fp32.model.modules())


@needs_onednn_bf16
def test_flop_counter_counts_packed_linear_layers():
    """torch's FlopCounterMode (the benchmark's FLOP count) counts a packed layer as the matmul it is."""
    from torch.utils.flop_counter import FlopCounterMode

    from models.patches import pack_linear_weights

    layer = torch.nn.Linear(32, 16).to(torch.bfloat16)
    pack_linear_weights(layer)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        layer(torch.randn(4, 5, 32, dtype=torch.bfloat16))
    assert counter.get_total_flops() == 2 * 4 * 5 * 32 * 16


def test_flop_counter_counts_fused_cpu_attention_as_its_two_matmuls():
    """torch's counter has no formula for its fused CPU attention (it counted 0, and the benchmark's roofline missed
    the ViTs' attention); both attention paths now count q k^T and p v."""
    from torch.utils.flop_counter import FlopCounterMode

    from models.patches import attention_per_image

    query, key, value = torch.randn(3, 2, 16, 8), torch.randn(3, 2, 20, 8), torch.randn(3, 2, 20, 4)
    with torch.inference_mode(), FlopCounterMode(display=False) as fused:
        torch.nn.functional.scaled_dot_product_attention(query, key, value)
    with torch.inference_mode(), FlopCounterMode(display=False) as eager:
        attention_per_image(query, key, value, 0.5)
    assert fused.get_total_flops() == eager.get_total_flops() == 2 * 3 * 2 * 16 * 20 * (8 + 4)


def test_itm_with_equal_rows_per_image_equals_repeated_states():
    """With the same number of consecutive texts per image (web + synthetic captions), the texts attend to their
    image as one block; ITM and the sampled captions equal those from each image's states repeated per row."""
    from models.patches import _group_size

    assert _group_size(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == 2
    assert _group_size(torch.tensor([0, 0, 0, 1, 1]), 2) is None and _group_size(torch.tensor([0, 1, 0, 1]), 2) is None
    assert _group_size(torch.tensor([0, 0]), 2) is None  # the second image has no rows
    matcher = Matcher.load("tiny-random_retrieval", precision="fp32")
    states, _ = matcher.image_features(images(3))
    texts = ["a red circle", "two squares", "a cat", "nothing at all", "blue", "one green triangle at the top"]
    index = torch.tensor([0, 0, 1, 1, 2, 2])
    seen = key_rows(matcher.model)
    shared = matcher.itm(states, texts, image_index=index)
    assert set(seen) == {3}
    torch.testing.assert_close(shared, matcher.itm(states[index], texts), rtol=1e-5, atol=1e-6)


@needs_native_bf16
def test_vision_attention_per_image_is_transformers_eager_attention_in_bf16(monkeypatch):
    """bf16 inference on the CPU: the ViT's attention image by image gives the bits of transformers' eager attention
    over the whole batch. fp32 and training take torch's fused kernel, equal to eager within float rounding."""
    from transformers import BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipAttention

    def patched(attention):
        ours = BlipAttention(attention.config).eval().to(attention.qkv.weight.dtype)
        ours.load_state_dict(attention.state_dict())
        ours.__class__ = patches.VisionAttention
        return ours

    torch.manual_seed(0)
    for heads in (2, 4):  # heads of 24 and 12 dims: scales 24^-0.5 and 12^-0.5; of 16 (below): 1/4, a power of 2
        attention = BlipAttention(BlipVisionConfig(hidden_size=48, num_attention_heads=heads)).eval().to(torch.bfloat16)
        x = torch.randn(3, 37, 48, dtype=torch.bfloat16) * 4
        with torch.inference_mode():
            assert torch.equal(patched(attention)(x)[0], attention(x)[0])
    attention = BlipAttention(BlipVisionConfig(hidden_size=48, num_attention_heads=3)).eval()
    x = torch.randn(3, 37, 48)
    ours = patched(attention)
    with torch.inference_mode():
        fp32 = ours(x)[0]
        torch.testing.assert_close(fp32, attention(x)[0])
    fused_calls, fused = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: fused_calls.append(1) or fused(*args, **kwargs))
    attention, ours = attention.to(torch.bfloat16), ours.to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    with torch.inference_mode():
        eager, per_image = attention(x)[0], ours(x)[0]
    assert torch.equal(per_image, eager) and not fused_calls  # the per-image path, not the fused kernel
    training = ours(x.requires_grad_())[0]
    assert fused_calls and training.requires_grad
    torch.testing.assert_close(training, eager, rtol=0.02, atol=0.02)


def test_every_change_holds_on_the_installed_transformers():
    """The load-time checks pass on the locked versions, so the roles run every change (packed weights where the
    CPU's oneDNN has bf16 kernels)."""
    assert all(patches.verified(change) for change in ("mask", "shared", "vision"))
    assert patches.verified("packed") or not cpu_bf16_kernels()
    matcher = Matcher.load("tiny-random_retrieval", precision="fp32")
    kinds = {type(m) for m in matcher.model.modules()}
    assert patches.CrossAttention in kinds and patches.VisionAttention in kinds


def test_uneven_texts_per_image_in_one_call_equal_per_image_calls_and_transformers():
    """Images with 0, 1, 3 and 8 texts scored in one call: ITM and ITC equal one call per image and transformers'
    unpatched modules, with the image states repeated per text. No warning (FutureWarning included) is raised."""
    matcher = Matcher.load("tiny-random_retrieval", precision="fp32")
    plain = patches.unpatch(Matcher.load("tiny-random_retrieval", precision="fp32").model)
    pixels = images(4)
    words = "a red circle two squares at the top one green triangle blue cat".split()
    texts = [[], ["one caption"], [" ".join(words[i:i + 3]) for i in range(3)],
             [" ".join(words[i:i + 1 + i % 4]) for i in range(8)]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = matcher.score(pixels, texts)
    assert scores.itm.shape == (12,) and list(scores.image_index) == [1, 2, 2, 2] + [3] * 8
    for i in range(1, 4):
        alone = matcher.score(pixels[i:i + 1], [texts[i]])
        at = scores.image_index == i
        np.testing.assert_allclose(scores.itm[at], alone.itm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores.itc[at], alone.itc, rtol=1e-5, atol=1e-6)
    states, _ = matcher.image_features(pixels)
    flat = [t for group in texts for t in group]
    ids, mask = matcher.tokenize(flat, 35, first_token=matcher.enc_id)
    with torch.inference_mode():
        out = plain.text_encoder(input_ids=ids, attention_mask=mask,
                                 encoder_hidden_states=states[torch.as_tensor(scores.image_index)]).last_hidden_state
        reference = torch.softmax(plain.itm_head(out[:, 0, :]), dim=-1)[:, 1]
    np.testing.assert_allclose(scores.itm, reference.numpy(), rtol=1e-5, atol=1e-6)
    # two images, all texts on the first: the second image's states must never be read for them
    two = matcher.score(pixels[:2], [["a", "b"], []])
    np.testing.assert_allclose(two.itm, matcher.score(pixels[:1], [["a", "b"]]).itm, rtol=1e-5, atol=1e-6)


def test_a_change_that_fails_its_check_falls_back_with_one_warning(monkeypatch):
    """A change made to fail (its cross-attention now off by 1%) is not applied: one warning names it and the
    transformers version, and captions and scores equal transformers' plain modules."""
    real = patches.CrossAttention.forward
    monkeypatch.setattr(patches.CrossAttention, "forward",
                        lambda self, *args, **kwargs: (real(self, *args, **kwargs)[0] * 1.01, None))
    patches.verified.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            matcher = Matcher.load("tiny-random_retrieval", precision="fp32")
            captioner = Captioner.load("tiny-random_caption", precision="fp32")
        messages = [str(w.message) for w in caught]
        assert len(messages) == 2 and all("transformers" in m for m in messages)  # 'mask' and 'shared', once each
        assert {"'mask'", "'shared'"} == {m.split()[2] for m in messages}
        assert not any(isinstance(m, patches.CrossAttention) for m in matcher.model.modules())
        plain_matcher = Matcher.load("tiny-random_retrieval", precision="fp32")
        plain_captioner = Captioner.load("tiny-random_caption", precision="fp32")
        patches.unpatch(plain_matcher.model), patches.unpatch(plain_captioner.model)
        pixels, texts = images(3), [["a red circle", "two"], [], ["blue", "a cat", "green triangle"]]
        ours, theirs = matcher.score(pixels, texts), plain_matcher.score(pixels, texts)
        np.testing.assert_allclose(ours.itm, theirs.itm, rtol=1e-5, atol=1e-6)
        assert captioner.sample(pixels, list("abc"), num_captions=2) == plain_captioner.sample(pixels, list("abc"),
                                                                                               num_captions=2)
    finally:
        patches.verified.cache_clear()


def test_bf16_asked_for_on_a_cpu_without_onednn_bf16_runs_unpacked(monkeypatch):
    """On an AVX2-only CPU (here: its capability query answering so), bf16 roles run without packed weights,
    warn once that bf16 is emulated, and give the same captions as bf16 without packing here."""
    import models.device

    monkeypatch.setattr(patches, "cpu_bf16_kernels", lambda: False)
    monkeypatch.setattr(models.device, "cpu_has_fast_bf16", lambda: False)
    models.device._warn_emulated_bf16.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captioner = Captioner.load("tiny-random_caption", device="cpu", precision="bf16")
        Matcher.load("tiny-random_retrieval", device="cpu", precision="bf16")
    assert len(caught) == 1 and "emulated" in str(caught[0].message) and "--precision auto" in str(caught[0].message)
    assert not any(isinstance(m, patches.PackedLinear) for m in captioner.model.modules())
    assert models.device.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert captioner.sample(images(2), ["a", "b"]) == Captioner.load(
        "tiny-random_caption", device="cpu", precision="bf16",
        kernels=patches.Kernels(packed_weights=False)).sample(images(2), ["a", "b"])
    models.device._warn_emulated_bf16.cache_clear()
