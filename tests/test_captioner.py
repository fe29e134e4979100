"""Captioner: beam captions (BLIP's evaluation protocol) and per-sample seeded nucleus samples (CapFilt)."""
from __future__ import annotations

import pytest
import torch

from models.captioner import PROMPT
from models.sampling import derive_seed, row_uniforms

IDS = ["s0", "s1", "s2", "s3", "s4"]


@pytest.fixture(scope="module")
def pixels(captioner, photos):
    """The five photographs as one prepared uint8 batch."""
    return captioner.prepare(photos)


def by_id(ids, captions):
    return dict(zip(ids, captions))


# ---------------------------------------------------------------- seeded sampling


@pytest.mark.parametrize("role", ["captioner", "captioner_default"])
def test_samples_do_not_depend_on_batch_size_or_order(request, role, photos):
    """A sample's captions are the same alone (batch of 1), in a batch of 5, and in a shuffled batch of 5."""
    cap = request.getfixturevalue(role)
    pixels = cap.prepare(photos)
    batch = by_id(IDS, cap.sample(pixels, IDS, seed=7, num_captions=2))
    alone = {sid: cap.sample(pixels[i : i + 1], [sid], seed=7, num_captions=2)[0] for i, sid in enumerate(IDS)}
    order = [3, 0, 4, 2, 1]
    shuffled = by_id([IDS[i] for i in order], cap.sample(pixels[order], [IDS[i] for i in order], seed=7, num_captions=2))
    assert batch == alone == shuffled
    assert all(len(captions) == 2 and all(isinstance(c, str) and c for c in captions) for captions in batch.values())


def test_samples_do_not_depend_on_batch_neighbours(captioner, pixels):
    """A sample's captions stay the same when its batch neighbours are other images with other ids."""
    first = captioner.sample(pixels[[0, 1]], ["s0", "s1"], seed=7)[0]
    again = captioner.sample(pixels[[0, 3, 4]], ["s0", "other-a", "other-b"], seed=7)[0]
    assert first == again


def test_samples_are_reproducible(captioner, pixels):
    """The same call twice gives the same captions."""
    assert captioner.sample(pixels, IDS, seed=3) == captioner.sample(pixels, IDS, seed=3)


def test_different_seeds_give_different_captions(captioner, pixels):
    """Changing the job seed changes every sample's caption."""
    seed0 = captioner.sample(pixels, IDS, seed=0)
    seed1 = captioner.sample(pixels, IDS, seed=1)
    assert all(a != b for a, b in zip(seed0, seed1))


def test_different_sample_ids_give_different_captions(captioner, pixels):
    """The same image under two sample ids gets two different captions (the id seeds the stream)."""
    twice = captioner.sample(pixels[[0, 0]], ["id-a", "id-b"], seed=0)
    assert twice[0] != twice[1]


def test_captions_of_one_sample_differ(captioner, pixels):
    """The num_captions captions of one sample are distinct draws."""
    for captions in captioner.sample(pixels, IDS, seed=0, num_captions=3):
        assert len(set(captions)) == 3


def test_caption_index_prefix_property(captioner, pixels):
    """Caption j does not depend on num_captions: the 1- and 2-caption results are prefixes of the 3-caption one."""
    three = captioner.sample(pixels, IDS, seed=5, num_captions=3)
    one = captioner.sample(pixels, IDS, seed=5, num_captions=1)
    two = captioner.sample(pixels, IDS, seed=5, num_captions=2)
    assert [c[:1] for c in three] == one
    assert [c[:2] for c in three] == two


def test_sample_validates_arguments(captioner, pixels):
    """Mismatched ids and num_captions < 1 are ValueErrors."""
    with pytest.raises(ValueError, match="sample ids"):
        captioner.sample(pixels, IDS[:2])
    with pytest.raises(ValueError, match="num_captions"):
        captioner.sample(pixels, IDS, num_captions=0)


def test_derive_seed_is_pinned_and_distinguishes_its_parts():
    """derive_seed is a fixed function of (seed, parts) (same value in every process and release), 63-bit."""
    assert derive_seed(0, "sample-1", 0) == 1254259051985977963
    values = {derive_seed(0, "sample-1", 0), derive_seed(1, "sample-1", 0), derive_seed(0, "sample-2", 0),
              derive_seed(0, "sample-1", 1)}
    assert len(values) == 4 and all(0 <= v < 2**63 for v in values)


def test_row_uniforms_depend_only_on_the_row_seed():
    """Row r of row_uniforms depends on seeds[r] only, not on the other rows."""
    together = row_uniforms([11, 22, 33], 6)
    assert together.shape == (3, 6)
    assert (together[1] == row_uniforms([22], 6)[0]).all()
    assert ((together >= 0) & (together < 1)).all()


# ---------------------------------------------------------------- beam captions


def test_caption_strips_the_prompt_and_respects_max_length(captioner, pixels, spy):
    """The decoder sees [DEC] + prompt, generates at most max_length tokens in all, and the prompt is stripped."""
    import models.captioner as module

    calls = spy(module, "blip_beam_search")
    captions = captioner.caption(pixels, max_length=12, min_length=8)
    prompt_ids = captioner.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    best = calls[0][2]
    assert len(best) == len(pixels) == len(captions)
    for caption, out in zip(captions, best):
        assert out[0] == captioner.bos_id
        assert out[1 : 1 + len(prompt_ids)].eq(torch.tensor(prompt_ids)).all()
        # the whole sequence, end token excluded, counts against the lengths (BLIP's rule)
        assert 8 <= len(out) <= 12 and captioner.sep_id not in out.tolist()
        generated = out[1 + len(prompt_ids) :]
        assert caption and not caption.startswith("a picture of")
        assert caption == captioner.tokenizer.decode(generated, skip_special_tokens=True,
                                                     clean_up_tokenization_spaces=True).strip()


def test_captions_are_decoded_in_blips_cleaned_up_form(captioner):
    """BLIP's decoded form, as transformers 4.15 gave it: WordPiece's spaces around punctuation cleaned up (transformers
    5 leaves "a man ' s hat"); the same decode serves captions, synthetic captions and answers."""
    ids = captioner.tokenizer(["a man's hat, don't go ."], add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert captioner.tokenizer.batch_decode(ids, skip_special_tokens=True) == ["a man ' s hat, don ' t go."]
    assert captioner.decode(ids) == ["a man's hat, don't go."]


def test_caption_with_another_prompt_strips_that_prompt(captioner, pixels, spy):
    """A custom prompt is fed to the decoder and stripped from the output, like the default one."""
    import models.captioner as module

    calls = spy(module, "blip_beam_search")
    captions = captioner.caption(pixels[:2], prompt="a photo of the ")
    fed = captioner.tokenizer.decode(calls[0][0][1][0], skip_special_tokens=True)
    assert fed == "a photo of the"
    assert all(not c.startswith("a photo of the") for c in captions)


def test_beam_captions_do_not_depend_on_the_batch(captioner, pixels):
    """Beam captions of an image are the same alone and in a batch (fp32)."""
    batch = captioner.caption(pixels)
    assert batch == [captioner.caption(pixels[i : i + 1])[0] for i in range(len(pixels))]


def test_default_precision_captions(captioner_default, pixels):
    """At the default precision, beam captions and samples are non-empty strings, one per image."""
    assert captioner_default.precision in ("bf16", "fp32")
    captions = captioner_default.caption(pixels)
    samples = captioner_default.sample(pixels, IDS, num_captions=2)
    assert len(captions) == len(samples) == len(pixels)
    assert all(isinstance(c, str) and c for c in captions)
    assert all(len(s) == 2 and all(s) for s in samples)
