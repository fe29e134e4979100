"""The key lists and shapes of the OpenMMLab toolbox's (mmpretrain 1.2.0) BLIP and BLIP-2 models at their real sizes,
as mmpretrain builds them from its own released configs (mmpretrain/.mim/configs/blip*/*.py, the configs of the
checkpoints in its metafile.yml): tests/fixtures/upstream/real-size/toolbox-*.json, in the format of the LAVIS ones
(scripts/upstream/lavis_real_size.py), so that the converter's handling of the toolbox's real layouts can be tested.
Run in the test-only toolbox environment:

    bash scripts/upstream/toolbox_env.sh && .upstream/toolbox-venv/bin/python scripts/upstream/toolbox_real_size.py

Each config file is read with mmengine's Config.fromfile and its `model` built as it is (but for Blip2Retrieval's
max_txt_len, below) by mmpretrain's registry (MODELS.build), on the meta device (shapes, no memory, no weights):
parameters and floating-point buffers are moved there as modules register them, because a global
`torch.device("meta")` breaks the .item() calls of upstream init code (integer buffers, a few KB of position and
token ids, stay on the CPU). MODELS.build loads no weights (the configs have no init_cfg and load_from is None;
init_weights() is the runner's, not called). transformers' warnings are silenced (the tokenizer-class notice the
hub's bert-base-uncased gives as well), so that the script prints one line per model.
Blip2Caption's state_dict() drops the OPT (text_backbone) keys by its own hook: what it returns, what the toolbox
saves, is recorded.

What needs the network is replaced, none of it changing a key or a shape:
  * tokenizers "bert-base-uncased" (BlipTokenizer, Blip2Tokenizer) and "facebook/opt-2.7b" (AutoTokenizer): the
    tokenizers' from_pretrained (PreTrainedTokenizerBase's and AutoTokenizer's) is given local directories instead
    of the hub ids: a stand-in of bert-base-uncased's 30522 entries (its special tokens and [unused0..993] at their
    ids, the rest fillers; the toolbox itself then adds [DEC] and [ENC]), written to a temporary directory, and, for
    OPT, the small byte-level BPE tokenizer of tests/fixtures/upstream/toolbox-blip2-opt-caption/opt (OPT's keys do
    not depend on it; Blip2Caption only takes its id of "\\n" and the prompt's length from it).
  * Qformer(model_style="bert-base-uncased") calls BertConfig.from_pretrained: transformers' BertConfig() defaults,
    which are bert-base-uncased's config.
  * OPTForCausalLM(name_or_path="facebook/opt-2.7b") (the toolbox's own class, modeling_opt.py): built from
    facebook/opt-2.7b's published config (OPT_2_7B) instead of from_pretrained.
  * VQAGenerationHead's answer_list_path (a URL, read with mmengine.load): a one-answer stand-in list (the answers
    are no weights).
  * Blip2Retrieval.__init__ takes no max_txt_len, which its config passes (a TypeError): it is set as an attribute
    after building, as BlipRetrieval's text preprocessing reads it.
The torchvision shim of scripts/upstream/toolbox_fixtures.py (imported here for it, its offline settings and the
versions) is used as it is.

Checked when written: the built models' parameter counts (tied weights once) equal the "Parameters" of
metafile.yml for all but blip2-opt-caption, whose metafile figure is one EVA layer (25,248,768) more than its config
builds (39 layers, as in the keys here).
"""
import contextlib
import copy
import json
import os
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))
import toolbox_fixtures as tf  # noqa: E402  (the toolbox's import shims, offline settings, versions)

import mmengine  # noqa: E402
import torch.nn as nn  # noqa: E402
from mmengine import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.models.multimodal.blip2.modeling_opt import OPTForCausalLM  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402
from transformers import AutoTokenizer, BertConfig, OPTConfig, PreTrainedTokenizerBase  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

OUT = os.path.join(tf.REPO, "tests", "fixtures", "upstream", "real-size")
SITE = os.path.dirname(os.path.dirname(tf.mmpretrain.__file__))  # where mmpretrain is installed
CONFIGS = os.path.join("mmpretrain", ".mim", "configs")  # the released configs, as the package installs them
OPT_TOKENIZER = os.path.join(tf.REPO, "tests", "fixtures", "upstream", "toolbox-blip2-opt-caption", "opt")
# name -> config of the released checkpoint (metafile.yml)
MODELS_TO_DUMP = {
    "caption": "blip/blip-base_8xb32_caption.py",  # blip-base_3rdparty_coco-caption_20230419-a5b71af3.pth
    "retrieval": "blip/blip-base_8xb32_retrieval.py",  # blip-base_3rdparty_coco-retrieval_20230419-a1804d2c.pth
    "vqa": "blip/blip-base_8xb32_vqa.py",  # blip-base_3rdparty-capflit_vqa_20230505-81488941.pth
    "nlvr": "blip/blip-base_8xb32_nlvr.py",  # blip-base_3rdparty_nlvr_20230427-3b14d33f.pth
    "grounding": "blip/blip-base_8xb16_refcoco.py",  # blip-base_8xb16_refcoco_20230508-d2d10f4c.pth
    "blip2-retrieval": "blip2/blip2_8xb32_retrieval.py",  # blip2_3rdparty_pretrain_20230505-f7ef4390.pth
    "blip2-opt-caption": "blip2/blip2-opt2.7b_8xb32_caption.py",  # blip2-opt2.7b_3rdparty_pretrain_20230505-b51db4e1
}
# facebook/opt-2.7b's config.json
OPT_2_7B = dict(vocab_size=50272, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
                max_position_embeddings=2048, word_embed_proj_dim=2560, do_layer_norm_before=True, pad_token_id=1,
                bos_token_id=2, eos_token_id=2)
VQA_ANSWER_LIST = "https://storage.googleapis.com/sfr-vision-language-research/datasets/answer_list.json"


def bert_vocab(directory):
    """bert-base-uncased's 30522 entries: [PAD] 0, [unused0..98] 1-99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103,
    [unused99..993] 104-998 (the grounding head uses [unused339..980]), then stand-ins."""
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"[unused{i}]" for i in range(99, 994)]
    words += [f"w{i}" for i in range(30522 - len(words))]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(words) + "\n")
    return directory


@contextlib.contextmanager
def empty_weights():
    """Parameters and floating-point buffers go to the meta device as modules register them (the rest of the code,
    which calls .item() on CPU tensors, runs as it is). Integer buffers (position ids, GroundingHead's token ids: a
    few KB) stay on the CPU, as upstream init code reads them back."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        if param is not None and not param.is_meta:  # a meta one is registered as it is: tied weights stay tied
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        if tensor is not None and tensor.is_floating_point():
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent)

    with mock.patch.object(nn.Module, "register_parameter", parameter), \
            mock.patch.object(nn.Module, "register_buffer", buffer):
        yield


@contextlib.contextmanager
def offline(local_tokenizers):
    """The replacements of the docstring, for the time of a build."""
    def local(from_pretrained):
        def load(cls, name, *args, **kwargs):
            path = local_tokenizers.get(name, name)  # AutoTokenizer calls the tokenizer class with the path again
            assert os.path.isdir(path), name
            return from_pretrained(cls, path, *args, **kwargs)
        return classmethod(load)

    def bert_config(cls, name, *args, **kwargs):
        assert name == "bert-base-uncased", name
        return cls()

    def opt(cls, name, *args, **kwargs):
        assert name == "facebook/opt-2.7b", name
        return cls(OPTConfig(**OPT_2_7B))

    def answer_list(path, *args, **kwargs):
        assert path == VQA_ANSWER_LIST, path
        return ["stand-in answer"]

    with mock.patch.object(PreTrainedTokenizerBase, "from_pretrained",
                           local(PreTrainedTokenizerBase.__dict__["from_pretrained"].__func__)), \
            mock.patch.object(AutoTokenizer, "from_pretrained",
                              local(AutoTokenizer.__dict__["from_pretrained"].__func__)), \
            mock.patch.object(BertConfig, "from_pretrained", classmethod(bert_config)), \
            mock.patch.object(OPTForCausalLM, "from_pretrained", classmethod(opt)), \
            mock.patch.object(mmengine, "load", answer_list):
        yield


def model_config(config_file):
    """The `model` of a released config, as the toolbox's tools read it."""
    return copy.deepcopy(Config.fromfile(os.path.join(SITE, CONFIGS, config_file)).model)


def build(config_file, local_tokenizers):
    cfg = model_config(config_file)
    max_txt_len = cfg.pop("max_txt_len") if cfg.type == "Blip2Retrieval" else None  # see the docstring
    with offline(local_tokenizers), empty_weights():
        model = MODELS.build(cfg)
    if max_txt_len is not None:
        model.max_txt_len = max_txt_len
    return model


def dump(name, model, config_file):
    state = model.state_dict()
    assert all(v.is_meta or not v.is_floating_point() for v in state.values())
    record = {"source": "toolbox", "class": f"{type(model).__module__}.{type(model).__name__}",
              "config": os.path.join(CONFIGS, config_file), "upstream": dict(tf.VERSIONS),
              "keys": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()}}
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"toolbox-{name}.json"), "w") as f:
        json.dump(record, f, indent=0, sort_keys=True)
        f.write("\n")
    print(f"toolbox-{name}: {len(state)} keys, {sum(v.numel() for v in state.values()) / 1e6:.1f}M values")


def main(names=tuple(MODELS_TO_DUMP)):
    init_default_scope("mmpretrain")
    transformers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        local_tokenizers = {"bert-base-uncased": bert_vocab(os.path.join(tmp, "bert-base-uncased")),
                            "facebook/opt-2.7b": OPT_TOKENIZER}
        for name in names:
            dump(name, build(MODELS_TO_DUMP[name], local_tokenizers), MODELS_TO_DUMP[name])


if __name__ == "__main__":
    main()
