"""The real BLIP and BLIP-2 models convert completely: the key lists and shapes that LAVIS builds at real size from
its own model configs (tests/fixtures/upstream/real-size/, written by scripts/upstream/lavis_real_size.py), converted
on the meta device, fill every parameter of the transformers class with its shape and use or drop every key.
Marked slow, as the issue asks (it takes seconds: nothing is allocated): `make test-slow`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.convert import build

REAL = Path(__file__).parent / "fixtures" / "upstream" / "real-size"
OPT_TOKENIZER = Path(__file__).parent / "fixtures" / "upstream" / "lavis-blip2-opt-caption"  # a stand-in for OPT's
# what the upstream configs say, which the weights' shapes must give back
EXPECTED = {
    "lavis-caption": dict(task="caption", vision=(768, 12, 12, 384), text_vocab=30524),
    "lavis-retrieval": dict(task="retrieval", vision=(768, 12, 12, 384), text_vocab=30524),
    "lavis-vqa": dict(task="vqa", vision=(768, 12, 12, 480), text_vocab=30524),
    "lavis-blip2-retrieval": dict(task="retrieval", vision=(1408, 39, 16, 224), qformer=(768, 12, 12), queries=32),
    "lavis-blip2-opt-caption": dict(task="caption", vision=(1408, 39, 16, 364), qformer=(768, 12, 12), queries=32,
                                    opt=(2560, 32, 32, 50272)),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory) -> Path:
    """bert-base-uncased's 30522 entries (its special tokens at their ids, stand-ins for the rest)."""
    directory = tmp_path_factory.mktemp("bert")
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(30522 - len(words))]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_real_sized_upstream_models_convert_completely(name, bert_vocab):
    record = json.loads((REAL / f"{name}.json").read_text())
    dtypes = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "long": torch.int64}
    state = {k: torch.empty(shape, dtype=dtypes.get(dtype, torch.float32), device="meta")
             for k, (shape, dtype) in record["keys"].items()}
    expected = EXPECTED[name]
    tokenizer = OPT_TOKENIZER if "opt" in expected else bert_vocab
    model, _, conversion = build(state, Path(f"/downloads/{name}.pth"), tokenizer=tokenizer)
    assert conversion.task == expected["task"] and conversion.layout == record["source"]
    # every key used or dropped with a reason (build refuses anything else), every parameter filled (strict load)
    assert conversion.used + len(conversion.dropped) == len(state)
    assert all(conversion.dropped.values())
    config = model.config
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.image_size) == \
        expected["vision"]
    assert vision.layer_norm_eps == 1e-6
    if "text_vocab" in expected:
        assert config.text_config.vocab_size == expected["text_vocab"]
        assert config.text_config.num_attention_heads == 12
    if "qformer" in expected:
        q = config.qformer_config
        assert (q.hidden_size, q.num_hidden_layers, q.num_attention_heads) == expected["qformer"]
        assert q.cross_attention_frequency == 2 and config.num_query_tokens == expected["queries"]
    if "opt" in expected:
        t = config.text_config
        assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.vocab_size) == expected["opt"]
    if name == "lavis-retrieval":  # momentum encoders, queues and temp: dropped as training-only
        assert any("_m." in key for key in conversion.dropped) and "image_queue" in conversion.dropped
