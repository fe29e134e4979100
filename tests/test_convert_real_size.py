"""The real BLIP and BLIP-2 models convert completely: the key lists and shapes that LAVIS and the toolbox build at
real size from their own model configs (tests/fixtures/upstream/real-size/, written by
scripts/upstream/{lavis,toolbox}_real_size.py), converted
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
UPSTREAM_T5 = Path(__file__).parent / "fixtures" / "upstream" / "lavis-blip2-t5-caption"
# what the upstream configs say, which the weights' shapes must give back
EXPECTED = {
    "lavis-caption": dict(task="caption", vision=(768, 12, 12, 384), text_vocab=30524),
    "lavis-retrieval": dict(task="retrieval", vision=(768, 12, 12, 384), text_vocab=30524),
    "lavis-vqa": dict(task="vqa", vision=(768, 12, 12, 480), text_vocab=30524),
    "lavis-blip2-retrieval": dict(task="retrieval", vision=(1408, 39, 16, 224), qformer=(768, 12, 12), queries=32),
    "lavis-blip2-opt-caption": dict(task="caption", vision=(1408, 39, 16, 364), qformer=(768, 12, 12), queries=32,
                                    opt=(2560, 32, 32, 50272)),
    "lavis-blip2-t5-caption": dict(task="caption", vision=(1408, 39, 16, 364), qformer=(768, 12, 12), queries=32,
                                   t5=(2048, 24, 32, 32128)),
    "toolbox-caption": dict(task="caption", vision=(768, 12, 12, 384), text_vocab=30524),
    "toolbox-retrieval": dict(task="retrieval", vision=(768, 12, 12, 384), text_vocab=30524),
    "toolbox-vqa": dict(task="vqa", vision=(768, 12, 12, 480), text_vocab=30524),
    "toolbox-blip2-retrieval": dict(task="retrieval", vision=(1408, 39, 16, 364), qformer=(768, 12, 12),
                                    queries=32),
    # its config reads the 39-layer ViT's last layer but one (out_indices=-2): 38 layers run
    "toolbox-blip2-opt-caption": dict(task="caption", vision=(1408, 38, 16, 364), qformer=(768, 12, 12), queries=32,
                                      opt=(2560, 32, 32, 50272)),
}
EXPECTED["toolbox-nlvr"] = dict(task="nlvr", vision=(768, 12, 12, 384), text_vocab=30524, merge_layer=6)
EXPECTED["toolbox-grounding"] = dict(task="grounding", vision=(768, 12, 12, 384), text_vocab=30524, bins=640)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory) -> Path:
    """bert-base-uncased's 30522 entries (its special tokens at their ids, stand-ins for the rest)."""
    directory = tmp_path_factory.mktemp("bert")
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"[unused{i}]" for i in range(99, 994)]
    words += [f"w{i}" for i in range(30522 - len(words))]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory


def meta_state(name: str) -> dict[str, torch.Tensor]:
    record = json.loads((REAL / f"{name}.json").read_text())
    dtypes = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "long": torch.int64}
    return {k: torch.empty(shape, dtype=dtypes.get(dtype, torch.float32), device="meta")
            for k, (shape, dtype) in record["keys"].items()}


@pytest.fixture(scope="module")
def flan_t5_xl(tmp_path_factory) -> Path:
    """google/flan-t5-xl's directory as a user has it, less its weights (LAVIS's .pth holds them): its published
    config, and a stand-in tokenizer."""
    from transformers import T5Config

    directory = tmp_path_factory.mktemp("flan-t5-xl")
    T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
             num_heads=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
             pad_token_id=0, eos_token_id=1).save_pretrained(directory)
    for path in (UPSTREAM_T5 / "t5").iterdir():
        if path.name != "config.json":
            (directory / path.name).write_bytes(path.read_bytes())
    return directory


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_real_sized_upstream_models_convert_completely(name, bert_vocab, flan_t5_xl):
    record = json.loads((REAL / f"{name}.json").read_text())
    state = meta_state(name)
    if name == "toolbox-blip2-opt-caption":
        # the toolbox saves no OPT (its state_dict hook drops it): OPT-2.7b's keys under the toolbox's name for it,
        # text_backbone., with the shapes LAVIS's real-size list holds
        state.update({"text_backbone." + k[len("opt_model."):]: v for k, v in meta_state("lavis-blip2-opt-caption")
                      .items() if k.startswith("opt_model.")})
    expected = EXPECTED[name]
    tokenizer = OPT_TOKENIZER if "opt" in expected else None if "t5" in expected else bert_vocab
    model, _, conversion = build(state, Path(f"/downloads/{name}.pth"), tokenizer=tokenizer,
                                 language_model=flan_t5_xl if "t5" in expected else None)
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
    if "t5" in expected:
        t = config.text_config
        assert (t.d_model, t.num_layers, t.num_heads, t.vocab_size) == expected["t5"]
        assert t.dense_act_fn == "gelu" and conversion.config_overrides == {"text_config.dense_act_fn": "gelu"}
    if "opt" in expected:
        t = config.text_config
        assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.vocab_size) == expected["opt"]
    if "merge_layer" in expected:  # BLIP's layers 6-11 merge the two images' cross-attention outputs
        assert config.nlvr_merge_layer == expected["merge_layer"]
    if "bins" in expected:
        assert config.grounding_bins == expected["bins"]
        assert "prefix [unused339] = 344, 641 bins 345 ... 985" in " ".join(conversion.fixes)  # bert-base-uncased's
    if name.endswith("-retrieval") and "blip2" not in name:  # momentum encoders, queues, temp: training-only
        assert any("_m." in key for key in conversion.dropped) and any("queue" in k for k in conversion.dropped)

