"""The key lists and shapes of LAVIS's BLIP and BLIP-2 models at their real sizes, as LAVIS builds them from its own
model configs (configs/models/*.yaml): tests/fixtures/upstream/real-size/lavis-*.json, for the slow test that
converts them (tests/test_convert_real_size.py). Run in the test-only LAVIS environment:

    bash scripts/upstream/lavis_env.sh && .upstream/lavis-venv/bin/python scripts/upstream/lavis_real_size.py

The models are built on the meta device (shapes, no memory, no weights). What needs the network is replaced: the
released checkpoints are not loaded (`load_checkpoint_from_config`, EVA ViT-g's `eva_vit_g.pth`), bert-base-uncased's
config is transformers' BertConfig defaults (which are bert-base-uncased's) and its tokenizer a stand-in of its
30522 entries, OPT-2.7b and Flan-T5-XL are built from their published configs. None of these changes a key or a shape.
"""
import contextlib
import json
import os
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))
import lavis_fixtures as lf  # noqa: E402  (LAVIS's import shims)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import BertConfig, BertTokenizer, GPT2Tokenizer, OPTConfig, PreTrainedTokenizerFast  # noqa: E402

from lavis.models import eva_vit  # noqa: E402
from lavis.models.base_model import BaseModel  # noqa: E402
from lavis.models.blip2_models import blip2_opt  # noqa: E402
from lavis.models.blip2_models.blip2_opt import Blip2OPT  # noqa: E402
from lavis.models.blip2_models import blip2_t5  # noqa: E402
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer  # noqa: E402
from lavis.models.blip2_models.blip2_t5 import Blip2T5  # noqa: E402
from lavis.models.blip_models.blip_caption import BlipCaption  # noqa: E402
from lavis.models.blip_models.blip_retrieval import BlipRetrieval  # noqa: E402
from lavis.models.blip_models.blip_vqa import BlipVQA  # noqa: E402

from lavis.common.registry import registry  # noqa: E402

registry.register_path("library_root", lf._ROOT)  # what lavis/__init__.py (not run: see the shims) registers
OUT = os.path.join(lf.FIX, "real-size")
CONFIGS = os.path.join(os.path.dirname(lf._ROOT), "lavis", "configs", "models")
# facebook/opt-2.7b's config.json
OPT_2_7B = dict(vocab_size=50272, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
                max_position_embeddings=2048, word_embed_proj_dim=2560, do_layer_norm_before=True, pad_token_id=1,
                bos_token_id=2, eos_token_id=2)


# google/flan-t5-xl's config.json
FLAN_T5_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                  num_heads=32, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1, layer_norm_epsilon=1e-6)


def bert_vocab(path):
    """bert-base-uncased's 30522 entries: its special tokens at their ids, the rest stand-ins."""
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(30522 - len(words))]
    with open(path, "w") as f:
        f.write("\n".join(words) + "\n")


def eva_vit_g(img_size=224, drop_path_rate=0.4, use_checkpoint=False, precision="fp16"):
    """create_eva_vit_g's own model, without the download of its weights."""
    with mock.patch.object(eva_vit, "download_cached_file", lambda *a, **k: None), \
            mock.patch.object(eva_vit.torch, "load", lambda *a, **k: {}), \
            mock.patch.object(eva_vit, "interpolate_pos_embed", lambda *a: None):
        return ORIGINAL_EVA(img_size, drop_path_rate, use_checkpoint, "fp32")


ORIGINAL_EVA = eva_vit.create_eva_vit_g


@contextlib.contextmanager
def empty_weights():
    """Parameters and buffers go to the meta device as modules register them (the rest of the code, which calls
    .item() on CPU tensors, runs as it is)."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    with mock.patch.object(nn.Module, "register_parameter", parameter), \
            mock.patch.object(nn.Module, "register_buffer", buffer):
        yield


def build(model_class, config_file, **override):
    cfg = OmegaConf.load(os.path.join(CONFIGS, config_file)).model
    cfg.update(override)
    with empty_weights():
        return model_class.from_config(cfg)


def dump(name, model, config_file):
    state = model.state_dict()
    record = {"source": "lavis", "class": f"{type(model).__module__}.{type(model).__name__}",
              "config": f"lavis/configs/models/{config_file}", "upstream": lf.versions(),
              "keys": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()}}
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"lavis-{name}.json"), "w") as f:
        json.dump(record, f, indent=0, sort_keys=True)
        f.write("\n")
    print(f"lavis-{name}: {len(state)} keys, {sum(v.numel() for v in state.values()) / 1e6:.1f}M values")


def main():
    vocab = os.path.join(OUT, ".bert-vocab.txt")
    os.makedirs(OUT, exist_ok=True)
    bert_vocab(vocab)

    class Tokenizer(BertTokenizer):
        @classmethod
        def from_pretrained(cls, name, *a, **k):
            assert name == "bert-base-uncased", name
            return BertTokenizer(vocab_file=vocab, do_lower_case=True)

    opt_tok = lf.FIX + "/lavis-blip2-opt-caption"  # a byte-level BPE stand-in: OPT's keys do not depend on it
    t5_tok = lf.FIX + "/lavis-blip2-t5-caption/t5"  # likewise for Flan-T5's
    with mock.patch.object(BaseModel, "load_checkpoint_from_config", lambda self, cfg, **k: None), \
            mock.patch.object(lf.lavis_blip, "BertTokenizer", Tokenizer), \
            mock.patch.object(lf.lavis_blip2, "BertTokenizer", Tokenizer), \
            mock.patch.object(lf.lavis_blip2, "create_eva_vit_g", eva_vit_g), \
            mock.patch.object(lf.lavis_blip2.BertConfig, "from_pretrained", lambda name, *a, **k: BertConfig()), \
            mock.patch.object(lf.lavis_qformer.BertLMHeadModel, "from_pretrained",
                              classmethod(lambda cls, name, config=None, **k: cls(config))), \
            mock.patch.object(blip2_opt.AutoTokenizer, "from_pretrained",
                              lambda name, *a, **k: GPT2Tokenizer.from_pretrained(opt_tok)), \
            mock.patch.object(blip2_opt.OPTForCausalLM, "from_pretrained",
                              classmethod(lambda cls, name, *a, **k: cls(OPTConfig(**OPT_2_7B)))), \
            mock.patch.object(blip2_t5.T5TokenizerFast, "from_pretrained",
                              lambda name, *a, **k: PreTrainedTokenizerFast.from_pretrained(t5_tok)), \
            mock.patch.object(blip2_t5.T5Config, "from_pretrained",
                              lambda name, *a, **k: blip2_t5.T5Config(**FLAN_T5_XL)), \
            mock.patch.object(blip2_t5.T5ForConditionalGeneration, "from_pretrained",
                              classmethod(lambda cls, name, config=None, **k: cls(config))):
        dump("caption", build(BlipCaption, "blip_caption_base_coco.yaml"), "blip_caption_base_coco.yaml")
        dump("retrieval", build(BlipRetrieval, "blip_retrieval_coco.yaml"), "blip_retrieval_coco.yaml")
        dump("vqa", build(BlipVQA, "blip_vqav2.yaml"), "blip_vqav2.yaml")
        dump("blip2-retrieval", build(Blip2Qformer, "blip2/blip2_pretrain.yaml"), "blip2/blip2_pretrain.yaml")
        dump("blip2-opt-caption", build(Blip2OPT, "blip2/blip2_caption_opt2.7b.yaml"),
             "blip2/blip2_caption_opt2.7b.yaml")
        dump("blip2-t5-caption", build(Blip2T5, "blip2/blip2_caption_flant5xl.yaml"),
             "blip2/blip2_caption_flant5xl.yaml")
    os.remove(vocab)


if __name__ == "__main__":
    main()
