"""The load-time changes to BLIP's cross-attention: results unchanged, image keys/values projected once per image."""
from __future__ import annotations

import numpy as np
import torch

from models import Captioner, Matcher


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
    prompt_length = captioner._prompt_ids("a picture of ", 1).shape[1]
    seeds = [derive_seed(3, sid, j) for sid in "abc" for j in range(4)]
    nucleus = SeededNucleus(row_uniforms(seeds, 30), prompt_length)
    plain = captioner._generate(states, "a picture of ", do_sample=False, num_beams=1, max_length=30, min_length=10,
                                repetition_penalty=1.1, logits_processor=LogitsProcessorList([nucleus]))
    assert [c for group in captions for c in group] == plain
