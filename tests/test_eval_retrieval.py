"""Retrieval recalls and BLIP's ITC -> ITM rerank on small hand-made similarity matrices."""
import numpy as np
import pytest

from evaluation.metrics.retrieval import rerank_scores, reranked_recalls, retrieval_recalls

# 3 images x 5 texts; texts 0, 1 describe image 0, text 2 image 1, texts 3, 4 image 2.
TXT2IMG = [0, 0, 1, 2, 2]
ITC = np.array([
    [0.9, 0.1, 0.8, 0.2, 0.3],   # image 0: its text 0 is first                 -> rank 0
    [0.7, 0.6, 0.5, 0.1, 0.2],   # image 1: its text 2 comes after 0.7 and 0.6  -> rank 2
    [0.1, 0.2, 0.3, 0.4, 0.05],  # image 2: its best text (3) is first          -> rank 0
])
# Columns, text -> image ranks: t0 [0.9 0.7 0.1] -> 0; t1 [0.1 0.6 0.2] -> 2; t2 [0.8 0.5 0.3] -> 1;
# t3 [0.2 0.1 0.4] -> 0; t4 [0.3 0.2 0.05] -> 2.


def test_recalls_from_hand_computed_ranks():
    result = retrieval_recalls(ITC, TXT2IMG, ks=(1, 2, 10))
    assert result["i2t_r1"] == pytest.approx(100 * 2 / 3)
    assert result["i2t_r2"] == pytest.approx(100 * 2 / 3)
    assert result["i2t_r10"] == 100.0
    assert result["t2i_r1"] == pytest.approx(40.0)
    assert result["t2i_r2"] == pytest.approx(60.0)
    assert result["t2i_r10"] == 100.0
    assert result["i2t_r_mean"] == pytest.approx((200 / 3 + 200 / 3 + 100) / 3)
    assert result["t2i_r_mean"] == pytest.approx((40 + 60 + 100) / 3)
    assert result["r_mean"] == pytest.approx((result["i2t_r_mean"] + result["t2i_r_mean"]) / 2)


def test_default_keys_are_r1_r5_r10():
    keys = set(retrieval_recalls(ITC, TXT2IMG))
    assert keys == {f"{d}_{m}" for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "r_mean")} | {"r_mean"}


def test_ties_with_a_negative_count_against_the_query_but_not_ties_between_positives():
    # image 0 owns texts 0 and 1; image 1 owns text 2.
    tied_with_negative = np.array([[0.5, 0.1, 0.5], [0.0, 0.0, 1.0]])
    assert retrieval_recalls(tied_with_negative, [0, 0, 1], ks=(1,))["i2t_r1"] == 50.0
    tied_positives = np.array([[0.5, 0.5, 0.1], [0.0, 0.0, 1.0]])
    assert retrieval_recalls(tied_positives, [0, 0, 1], ks=(1,))["i2t_r1"] == 100.0


def _perfect_itm(calls):
    def itm(images, texts):
        calls.append((images.tolist(), texts.tolist()))
        return np.where(np.asarray(TXT2IMG)[texts] == images, 10.0, 0.0)
    return itm


def test_rerank_scores_top_k_get_itm_plus_itc_others_minus_inf():
    calls = []
    i2t, t2i = rerank_scores(ITC, _perfect_itm(calls), k=2)
    assert len(calls) == 3 + 5 and all(len(images) == 2 for images, _ in calls)
    assert calls[0] == ([0, 0], [0, 2])  # image 0's two best texts by ITC
    assert calls[3] == ([0, 1], [0, 0])  # text 0's two best images by ITC
    expected_row0 = np.array([10.9, -np.inf, 0.8, -np.inf, -np.inf])
    np.testing.assert_allclose(i2t[0], expected_row0)
    # Text 1's own image (0) is not among its two best by ITC, so it stays at -inf.
    np.testing.assert_allclose(t2i[1], [-np.inf, 0.6, 0.2])
    assert t2i.shape == (5, 3) and i2t.shape == (3, 5)


def test_reranked_recalls_itc_only_and_after_rerank():
    result = reranked_recalls(ITC, _perfect_itm([]), TXT2IMG, k=2, ks=(1, 2))
    assert result["itc"]["t2i_r1"] == pytest.approx(40.0)
    # After the rerank: image 1's text is outside its 2 candidates (miss); texts 1 and 4 likewise.
    assert result["reranked"]["i2t_r1"] == pytest.approx(100 * 2 / 3)
    assert result["reranked"]["i2t_r2"] == pytest.approx(100 * 2 / 3)
    assert result["reranked"]["t2i_r1"] == pytest.approx(60.0)
    assert result["reranked"]["t2i_r2"] == pytest.approx(60.0)


def test_a_positive_left_at_minus_inf_ranks_behind_every_tied_negative():
    # k = 1: image 1 keeps only text 0; its own text 2 ties at -inf with texts 1, 3 and 4, so it
    # ranks 4th (0-based), a miss at R@4. Ranking ties in its favour would make it 1st.
    result = reranked_recalls(ITC, _perfect_itm([]), TXT2IMG, k=1, ks=(4,))
    assert result["reranked"]["i2t_r4"] == pytest.approx(100 * 2 / 3)


@pytest.mark.parametrize(
    ("scores", "txt2img", "kwargs", "message"),
    [
        (ITC, [0, 0, 1, 2], {}, "entries"),
        (ITC, [0, 0, 1, 1, 1], {}, "no text"),
        (ITC, [0, 0, 1, 2, 3], {}, "outside"),
        (np.where(ITC > 0.8, np.nan, ITC), TXT2IMG, {}, "NaN"),
        (ITC, TXT2IMG, {"img2txt": [[0], [2], [3, 4]]}, "disagrees"),
        (ITC, TXT2IMG, {"scores_t2i": ITC}, "shape"),
        (ITC[0], TXT2IMG, {}, "images x texts"),
    ],
)
def test_invalid_inputs(scores, txt2img, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_recalls(scores, txt2img, **kwargs)


def test_itm_fn_must_return_one_finite_score_per_pair():
    with pytest.raises(ValueError, match="2 pairs"):
        rerank_scores(ITC, lambda images, texts: np.zeros(1), k=2)
    with pytest.raises(ValueError, match="non-finite"):
        rerank_scores(ITC, lambda images, texts: np.full(len(images), np.nan), k=2)
