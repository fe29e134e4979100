#!/usr/bin/env python
"""Tiny-model fixtures made by the UPSTREAM LAVIS code (salesforce-lavis), for capfilt's converter tests.

What
    For each task below, build the upstream LAVIS model class with tiny sizes, seed it, re-initialise its
    weights with N(0, 0.2) (all >1-dim parameters; 1-dim ones keep upstream's init), run upstream's own
    inference code on four scikit-image photos, and write
        tests/fixtures/upstream/lavis-<task>/model.pth      {"model": model.state_dict()}  (LAVIS's container)
        tests/fixtures/upstream/lavis-<task>/expected.json  config, settings and the outputs
    Tasks:
        caption               lavis.models.blip_models.blip_caption.BlipCaption.generate (beam 3, 20/5, "a picture of ")
        retrieval             lavis.models.blip_models.blip_retrieval.BlipRetrieval (saved: momentum encoders, queues,
                              temp included); ITM/ITC computed by BlipITM.forward (match_head "itm" / "itc") built
                              on the SAME modules of that BlipRetrieval
        vqa                   lavis.models.blip_models.blip_vqa.BlipVQA.predict_answers ("generate" and "rank")
        blip2-retrieval       lavis.models.blip2_models.blip2_qformer.Blip2Qformer; ITM/ITC by
                              Blip2ITM.forward (blip2_image_text_matching.py, a subclass that only adds forward)
                              applied to the Blip2Qformer instance, plus Blip2Qformer.compute_itm
        blip2-opt-caption     lavis.models.blip2_models.blip2_opt.Blip2OPT.generate (LAVIS's own modeling_opt OPT)

How to run
    bash scripts/upstream/lavis_env.sh          # creates .upstream/lavis-venv (idempotent)
    .upstream/lavis-venv/bin/python scripts/upstream/lavis_fixtures.py [--photos DIR] [--out DIR] [--tasks a,b]
    Deterministic: seeded, one CPU thread, float32, eval mode; two runs give byte-identical files.
    Photos: astronaut, coffee, chelsea (.png) and rocket (.jpg: scikit-image ships it as a JPEG) from --photos
    (default: the main venv's skimage/data), opened with PIL, .convert("RGB"), then LAVIS's blip_image_eval
    processor (BlipImageEvalProcessor(image_size=64): bicubic Resize((64, 64)), ToTensor, CLIP mean/std).

Why tiny
    The released checkpoints are hundreds of MB to GBs and cannot be downloaded here (no hub, no GCS).
    Tiny random models (ViT embed 32, depth 2, heads 4, patch 16, image 64; BERT hidden 32, 2 layers, 4 heads,
    intermediate 64; projection 16) exercise every key and code path of the converter in well under 2 MB each.
    N(0, 0.2) instead of upstream's 0.02 init, because at this size 0.02 makes every image give the same output.

Versions / environment (see lavis_env.sh)
    salesforce-lavis 1.0.2 (installed --no-deps), transformers 4.26.1, tokenizers 0.13.3, timm 0.4.12,
    fairscale 0.4.4, torch 2.14.1 + torchvision 0.29.1 (the builds on this machine's disk; run on the CPU).
    LAVIS 1.0.2 declares transformers>=4.25,<4.27 and needs it: from 4.27 on, generate() repeat_interleaves
    EVERY tensor in model_kwargs by num_beams, and LAVIS already expands encoder_hidden_states itself
    (XBertLMHeadDecoder.generate_from_encoder, BlipVQA._generate_answers), so 4.33.3 fails with a batch
    mismatch (12 vs 36). 4.26.1 was checked: its
    generation/beam_search.py BeamHypotheses.add does
        score = sum_logprobs / (hyp.shape[-1] ** self.length_penalty)
    i.e. a finished hypothesis' score is divided by the WHOLE sequence length (prompt/BOS tokens included, as
    transformers 4.15-4.26 did), not by the generated length (transformers >= 4.36 changed that).

Import shim (why: lavis/__init__.py, lavis/models/__init__.py and lavis/processors/__init__.py import every
dataset builder, task and model, which pull decord, opencv, spacy, webdataset, pycocotools, ...)
    - sys.modules gets empty package objects for "lavis", "lavis.models" and "lavis.processors" whose __path__
      is the installed package directory, so the real submodules (blip_caption.py, med.py, vit.py, ...) import
      unchanged without running those __init__ files. registry.register_model/register_processor do
      `from lavis.models import BaseModel` / `from lavis.processors import BaseProcessor`, so those two names
      are put on the stand-in packages (the real classes).
    - "cv2" is a stand-in empty module: only lavis/processors/randaugment.py imports it (training-time
      augmentation, imported by blip_processors.py at module level, never used at evaluation).
    - no torch._six shim was needed: timm 0.4.12 imports fine with torch 2.14.

Monkeypatches (each replaces one call that would need the hub / the network, nothing else)
    - BertTokenizer.from_pretrained("bert-base-uncased") in lavis/models/blip_models/blip.py and
      lavis/models/blip2_models/blip2.py -> BertTokenizer(vocab_file=tests/fixtures/upstream/vocab.txt,
      do_lower_case=True); upstream's own init_tokenizer then adds [DEC] (212) and, for BLIP, [ENC] (213).
    - BLIP: VisionTransformerEncoder.from_config only knows "base"/"large", and from_config downloads the
      finetuned checkpoint, so the model classes are constructed directly: cls(VisionTransformerEncoder(tiny
      args), XBertEncoder/XBertLMHeadDecoder(config=BertConfig(tiny)), ...) -- the same constructors from_config
      calls, minus load_checkpoint_from_config.
    - BLIP-2: lavis.models.blip2_models.blip2.create_eva_vit_g (downloads eva_vit_g.pth) -> lavis' own
      eva_vit.VisionTransformer with tiny args (use_mean_pooling=False, qkv_bias=True, LayerNorm eps 1e-6 as
      create_eva_vit_g; patch 16 instead of 14; mlp_ratio 4; kept float32: no convert_weights_to_fp16).
      BertConfig.from_pretrained / BertLMHeadModel.from_pretrained("bert-base-uncased") inside
      Blip2Base.init_Qformer -> a tiny BertConfig built here / BertLMHeadModel(config) (Q-Former's own class).
    - Blip2OPT: AutoTokenizer.from_pretrained(opt_model, use_fast=False) and
      OPTForCausalLM.from_pretrained(opt_model, torch_dtype=torch.float16) are called on a temp dir where a tiny
      OPTConfig model (LAVIS's modeling_opt.OPTForCausalLM) and a tiny byte-level BPE GPT2Tokenizer were saved;
      only torch_dtype is forced to float32 (the contract wants float32, and fp16 on the CPU does not run:
      Blip2Base.maybe_autocast is a no-op on the CPU). The tokenizer files are copied into the fixture folder.
    - To record token ids, the decoders' generate methods are wrapped (instance attribute) so their return
      value is kept; what upstream returns is unchanged.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import types
from functools import partial
from unittest import mock

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(REPO, "tests", "fixtures", "upstream")
VOCAB = os.path.join(FIX, "vocab.txt")
DEFAULT_PHOTOS = os.path.join(REPO, ".venv", "lib", "python3.11", "site-packages", "skimage", "data")
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
SEED = 1234
# Added to the decoder's output bias of [SEP] (the end token) in the caption and VQA models, so that beam hypotheses
# finish at different lengths: at this size and N(0, 0.2) the end token is otherwise never chosen, and the scoring of
# finished hypotheses (BLIP's whole-length rule against transformers 5's new-token rule) would go untested.
EOS_BIAS = {"caption": float(os.environ.get("EOS_BIAS_CAPTION", "2.0")),
            "vqa": float(os.environ.get("EOS_BIAS_VQA", "1.5"))}
# Added to the apostrophe's output bias in the caption model, so that some captions hold one: BLIP's decoded form
# ("man's", transformers 5's WordPiece decoding gives "man ' s") is then tested against upstream too.
APOSTROPHE_BIAS = float(os.environ.get("APOSTROPHE_BIAS", "1.5"))

# ---------------------------------------------------------------------------------------------- import shim
_spec = importlib.util.find_spec("lavis")
_ROOT = os.path.dirname(_spec.origin)


def _stub_package(name, path):
    mod = types.ModuleType(name)
    mod.__path__ = [path]
    mod.__file__ = os.path.join(path, "__init__.py")
    sys.modules[name] = mod
    return mod


sys.modules.setdefault("cv2", types.ModuleType("cv2"))
_stub_package("lavis", _ROOT)
_lm = _stub_package("lavis.models", os.path.join(_ROOT, "models"))
_lp = _stub_package("lavis.processors", os.path.join(_ROOT, "processors"))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from importlib import metadata  # noqa: E402

from lavis.models.base_model import BaseModel  # noqa: E402

_lm.BaseModel = BaseModel
from lavis.processors.base_processor import BaseProcessor  # noqa: E402

_lp.BaseProcessor = BaseProcessor

import transformers  # noqa: E402
from transformers import BertTokenizer  # noqa: E402
from transformers.models.bert.configuration_bert import BertConfig  # noqa: E402

import lavis.models.blip_models.blip as lavis_blip  # noqa: E402
import lavis.models.blip2_models.blip2 as lavis_blip2  # noqa: E402
from lavis.models.blip_models.blip_caption import BlipCaption  # noqa: E402
from lavis.models.blip_models.blip_retrieval import BlipRetrieval  # noqa: E402
from lavis.models.blip_models.blip_image_text_matching import BlipITM  # noqa: E402
from lavis.models.blip_models.blip_vqa import BlipVQA  # noqa: E402
from lavis.models.med import XBertEncoder, XBertLMHeadDecoder  # noqa: E402
from lavis.models.vit import VisionTransformerEncoder  # noqa: E402
from lavis.models import eva_vit  # noqa: E402
from lavis.models.blip2_models import Qformer as lavis_qformer  # noqa: E402
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer  # noqa: E402
from lavis.models.blip2_models.blip2_image_text_matching import Blip2ITM  # noqa: E402
from lavis.processors.blip_processors import (  # noqa: E402
    BlipCaptionProcessor,
    BlipImageEvalProcessor,
    BlipQuestionProcessor,
)


class _LocalBertTokenizer(BertTokenizer):
    """Stands in for BertTokenizer in lavis' blip.py / blip2.py: from_pretrained reads the fixture vocab."""

    @classmethod
    def from_pretrained(cls, name, *args, **kwargs):
        assert name == "bert-base-uncased", name
        return BertTokenizer(vocab_file=VOCAB, do_lower_case=True, **kwargs)


lavis_blip.BertTokenizer = _LocalBertTokenizer
lavis_blip2.BertTokenizer = _LocalBertTokenizer

# ---------------------------------------------------------------------------------------------- tiny sizes
IMAGE_SIZE = 64
VIT = dict(img_size=IMAGE_SIZE, patch_size=16, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0)
BERT = dict(
    vocab_size=214, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0, add_type_embeddings=False,
    encoder_width=32, add_cross_attention=True,
)  # = LAVIS configs/models/med_config.json with the tiny sizes
EMBED_DIM = 16
QUEUE_SIZE = 8
TEXTS = [
    "a picture of a cat",
    "a man with a red car",
    "a woman standing in the street",
    "a white cup on a table",
    "a tree under the blue sky",
]
QUESTIONS = [
    "what is the man wearing?",
    "what color is the cup?",
    "what animal is this?",
    "what is in the sky?",
]
CANDIDATES = ["cat", "dog", "man", "red", "white", "blue", "yes", "no"]


def versions():
    out = {}
    for p in ["salesforce-lavis", "transformers", "torch", "torchvision", "timm", "fairscale", "tokenizers",
              "pillow"]:
        out[p] = metadata.version(p)
    return out


def reinit(model, seed):
    """N(0, 0.2) for every >1-dim parameter (shared/tied ones once), in named_parameters order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.2)


def end_bias(decoder, tokenizer, bias):
    """`bias` on [SEP]'s output bias (cls.predictions.bias, which decoder.bias is, as upstream ties them)."""
    with torch.no_grad():
        decoder.cls.predictions.bias[tokenizer.sep_token_id] += bias
    assert decoder.cls.predictions.decoder.bias is decoder.cls.predictions.bias


def load_photos(photo_dir, image_size):
    from PIL import Image

    proc = BlipImageEvalProcessor(image_size=image_size)
    ims = []
    for n in PHOTOS:  # scikit-image ships rocket as .jpg, the others as .png
        path = next(p for p in (os.path.join(photo_dir, n + e) for e in (".png", ".jpg")) if os.path.exists(p))
        ims.append(proc(Image.open(path).convert("RGB")))
    return torch.stack(ims)


def tiny_vit():
    # what VisionTransformerEncoder.from_config does for "base", with the tiny sizes
    vit = VisionTransformerEncoder(**VIT, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0,
                                   norm_layer=None)
    vit.vision_width = VIT["embed_dim"]
    return vit


def bert_config():
    return BertConfig(**BERT)


def floats(t):
    return t.detach().double().tolist()


def write(task, model, expected, extra_files=()):
    d = os.path.join(ARGS.out, f"lavis-{task}")
    os.makedirs(d, exist_ok=True)
    sd = model.state_dict()
    # plain dict of contiguous tensors (an OrderedDict's _metadata is dropped); tied weights stay shared
    sd = {k: v for k, v in sd.items()}
    torch.save({"model": sd}, os.path.join(d, "model.pth"))
    for src, name in extra_files:
        shutil.copyfile(src, os.path.join(d, name))
    base = {
        "source": "lavis",
        "upstream": versions(),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    base.update(expected)
    base.setdefault("image_size", IMAGE_SIZE)
    base.setdefault("photos", PHOTOS)
    base["state_dict_prefixes"] = sorted({k.split(".")[0] for k in sd})
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(base, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"wrote {d}: {len(sd)} keys, {os.path.getsize(os.path.join(d, 'model.pth'))} bytes")


class Recorder:
    """Wraps a bound method (instance attribute) and keeps what it returned."""

    def __init__(self, obj, name):
        self.orig = getattr(obj, name)
        self.calls = []
        setattr(obj, name, self)

    def __call__(self, *a, **kw):
        out = self.orig(*a, **kw)
        self.calls.append(out)
        return out


# ---------------------------------------------------------------------------------------------- BLIP tasks
def task_caption(images):
    torch.manual_seed(SEED)
    prompt = "a picture of "
    model = BlipCaption(tiny_vit(), XBertLMHeadDecoder(config=bert_config()), prompt=prompt, max_txt_len=40)
    reinit(model, SEED + 1)
    end_bias(model.text_decoder, model.tokenizer, EOS_BIAS["caption"])
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[model.tokenizer.convert_tokens_to_ids("'")] += APOSTROPHE_BIAS
    model.eval()
    settings = dict(use_nucleus_sampling=False, num_beams=3, max_length=20, min_length=5, top_p=0.9,
                    repetition_penalty=1.0, num_captions=1)
    rec = Recorder(model.text_decoder, "generate")
    with torch.no_grad():
        captions = model.generate({"image": images}, **settings)
        ids = rec.calls[-1]
        # one photo at a time gives the same (checked, recorded)
        single = [model.generate({"image": images[i:i + 1]}, **settings)[0] for i in range(len(PHOTOS))]
    assert single == captions, (single, captions)
    tok = model.tokenizer
    expected = {
        "config": dict(vit=VIT, bert=BERT, vit_layer_norm_eps=1e-6, prompt=prompt, max_txt_len=40,
                       prompt_length=model.prompt_length),
        "tokens": dict(pad=tok.pad_token_id, cls=tok.cls_token_id, sep=tok.sep_token_id, bos_dec=tok.bos_token_id,
                       enc=tok.enc_token_id, vocab_size=len(tok)),
        "captions": captions,
        "caption_ids": ids.tolist(),
        "settings": dict(settings, prompt=prompt, decoder_input="[DEC] + prompt tokens, final [SEP] dropped",
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, batch=len(PHOTOS),
                         length_penalty=1.0, caption_strip="output[len(prompt):] of batch_decode"),
        "tied_decoder_weights": model.text_decoder.cls.predictions.decoder.weight
        is model.text_decoder.bert.embeddings.word_embeddings.weight,
    }
    write("caption", model, expected)


def task_retrieval(images):
    torch.manual_seed(SEED)
    text_proc = BlipCaptionProcessor(prompt="", max_words=50)  # LAVIS retrieval eval text processor
    texts = [text_proc(t) for t in TEXTS]
    model = BlipRetrieval(tiny_vit(), XBertEncoder(config=bert_config(), add_pooling_layer=False),
                          queue_size=QUEUE_SIZE, alpha=0.4, embed_dim=EMBED_DIM, momentum=0.995,
                          negative_all_rank=False, max_txt_len=35)
    reinit(model, SEED + 2)  # momentum copies are re-drawn too: they differ from the main weights on purpose
    model.eval()
    # BlipITM built on the SAME modules (its forward is upstream's ITM/ITC inference path)
    itm = BlipITM(model.visual_encoder, model.text_encoder, embed_dim=EMBED_DIM, max_txt_len=35)
    itm.vision_proj, itm.text_proj, itm.itm_head = model.vision_proj, model.text_proj, model.itm_head
    itm.eval()
    itm_p, itm_logits, itc = [], [], []
    with torch.no_grad():
        for i in range(len(PHOTOS)):
            img = images[i:i + 1].expand(len(texts), -1, -1, -1)
            logits = itm({"image": img, "text_input": texts}, match_head="itm")
            itm_logits.append(floats(logits))
            itm_p.append(floats(F.softmax(logits, dim=1)[:, 1]))
            sim = itm({"image": images[i:i + 1], "text_input": texts}, match_head="itc")  # (1, n_text)
            itc.append(floats(sim[0]))
        image_embeds = model.visual_encoder.forward_features(images)
        image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
        text = model.tokenizer(texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        text_feat = F.normalize(model.text_proj(model.text_encoder.forward_text(text).last_hidden_state[:, 0, :]),
                                dim=-1)
        check = image_feat @ text_feat.t()
    assert torch.allclose(check, torch.tensor(itc, dtype=torch.float32), atol=1e-5)
    tok = model.tokenizer
    enc = tok(texts, padding="longest", return_tensors="pt")
    expected = {
        "config": dict(vit=VIT, bert=BERT, vit_layer_norm_eps=1e-6, embed_dim=EMBED_DIM, queue_size=QUEUE_SIZE,
                       max_txt_len=35, momentum=0.995, alpha=0.4),
        "texts": texts,
        "text_ids_itc": enc.input_ids.tolist(),
        "text_ids_itm": torch.cat([torch.full_like(enc.input_ids[:, :1], tok.enc_token_id),
                                   enc.input_ids[:, 1:]], 1).tolist(),
        "text_attention_mask": enc.attention_mask.tolist(),
        "itm": itm_p,
        "itm_logits": itm_logits,
        "itc": itc,
        "image_embeds": floats(image_feat),
        "text_embeds": floats(text_feat),
        "settings": dict(
            itm_path="BlipITM.forward(match_head='itm'): input_ids[:,0] = [ENC] (tokenizer.enc_token_id), "
                     "text_encoder with cross-attention to all ViT tokens, itm_head on token 0, softmax class 1",
            itc_path="BlipITM.forward(match_head='itc'): [CLS] text, mode='text'; cosine of normalised "
                     "vision_proj(ViT token 0) and text_proj(text token 0); no temperature",
            text_padding="longest (BlipITM); image_embeds/text_embeds computed with max_length 35 as "
                         "compute_sim_matrix does",
            text_processor="blip_caption (pre_caption), prompt ''"),
        "temp": float(model.temp.item()),
    }
    write("retrieval", model, expected)


def task_vqa(images):
    torch.manual_seed(SEED)
    qproc = BlipQuestionProcessor(max_words=50)
    questions = [qproc(q) for q in QUESTIONS]
    model = BlipVQA(tiny_vit(), XBertEncoder(config=bert_config(), add_pooling_layer=False),
                    XBertLMHeadDecoder(config=bert_config()), max_txt_len=35)
    reinit(model, SEED + 3)
    end_bias(model.text_decoder, model.tokenizer, EOS_BIAS["vqa"])
    model.eval()
    gen = dict(num_beams=3, inference_method="generate", max_len=10, min_len=1)
    k_test = len(CANDIDATES)
    rank = dict(inference_method="rank", num_ans_candidates=k_test)
    rec = Recorder(model.text_decoder, "generate")
    with torch.no_grad():
        answers_generate = model.predict_answers({"image": images, "text_input": list(questions)}, **gen)
        gen_ids = rec.calls[-1]
        # (forward is wrapped only now: generate() inspects forward's signature)
        fwd = Recorder(model.text_decoder, "forward")
        answers_rank = model.predict_answers({"image": images, "text_input": list(questions)},
                                             answer_list=CANDIDATES, **rank)
        # second decoder call of _rank_answers: per (question, top-k candidate) summed LM loss
        # (label_smoothing 0.1, as upstream's BertLMHeadModel); first call: first-token logits
        first_logits = fwd.calls[0].logits[:, 0, :]
        loss = fwd.calls[1].loss.view(len(questions), k_test)
        del model.text_decoder.forward
    tok = model.tokenizer
    ans = tok(CANDIDATES, padding="longest", return_tensors="pt")
    ans.input_ids[:, 0] = tok.bos_token_id
    first_tok = ans.input_ids[:, 1]
    topk_probs, topk_ids = F.softmax(first_logits, dim=1).index_select(1, first_tok).topk(k_test, dim=1)
    scores = torch.empty(len(questions), k_test)
    for b in range(len(questions)):
        scores[b, topk_ids[b]] = -loss[b]
    expected = {
        "config": dict(vit=VIT, bert=BERT, vit_layer_norm_eps=1e-6, max_txt_len=35),
        "questions": questions,
        "question_ids": [[tok.enc_token_id] + ids[1:] for ids in tok(questions).input_ids],
        "answers_generate": answers_generate,
        "answers_generate_ids": gen_ids.tolist(),
        "candidates": CANDIDATES,
        "candidate_ids": ans.input_ids.tolist(),
        "answers_rank": answers_rank,
        "rank_log_probs": floats(scores),
        "rank_first_token_probs": floats(F.softmax(first_logits, dim=1).index_select(1, first_tok)),
        "k_test": k_test,
        "settings": dict(
            generate=dict(gen, decoder_input="[DEC]", eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                          length_penalty=1.0, repetition_penalty=1.0),
            rank=dict(rank, note="rank_log_probs = -(sum over answer tokens of CrossEntropy with "
                                 "label_smoothing=0.1), candidates tokenised padding longest with [DEC] first; "
                                 "argmax picks the answer"),
            question_encoding="questions tokenised padding longest, input_ids[:,0]=[ENC], text_encoder "
                              "cross-attends to all ViT tokens; decoder cross-attends to the question states",
            question_processor="blip_question"),
    }
    write("vqa", model, expected)


# ---------------------------------------------------------------------------------------------- BLIP-2 tasks
QFORMER = dict(
    vocab_size=212, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0, type_vocab_size=2,
)  # bert-base-uncased's config.json with tiny sizes; vocab 212 = the base vocabulary (bert-base: 30522),
#    resized by upstream to len(tokenizer) = 213 ([DEC] added)
EVA = dict(img_size=IMAGE_SIZE, patch_size=16, use_mean_pooling=False, embed_dim=32, depth=2, num_heads=4,
           mlp_ratio=4.0, qkv_bias=True)
NUM_QUERY = 32
CROSS_FREQ = 2


def _tiny_eva(img_size, drop_path_rate=0.0, use_checkpoint=False, precision="fp32"):
    assert img_size == IMAGE_SIZE
    return eva_vit.VisionTransformer(**EVA, drop_path_rate=drop_path_rate,
                                     norm_layer=partial(nn.LayerNorm, eps=1e-6), use_checkpoint=use_checkpoint)


@contextlib.contextmanager
def blip2_offline():
    def cfg_from_pretrained(name, *a, **kw):
        assert name == "bert-base-uncased", name
        return BertConfig(**QFORMER)

    def lm_from_pretrained(cls, name, config=None, **kw):
        assert name == "bert-base-uncased", name
        return cls(config)

    with mock.patch.object(lavis_blip2, "create_eva_vit_g", _tiny_eva), \
            mock.patch.object(lavis_blip2.BertConfig, "from_pretrained", cfg_from_pretrained), \
            mock.patch.object(lavis_qformer.BertLMHeadModel, "from_pretrained", classmethod(lm_from_pretrained)):
        yield


def task_blip2_retrieval(images):
    torch.manual_seed(SEED)
    with blip2_offline():
        model = Blip2Qformer(vit_model="eva_clip_g", img_size=IMAGE_SIZE, drop_path_rate=0,
                             use_grad_checkpoint=False, vit_precision="fp32", freeze_vit=True,
                             num_query_token=NUM_QUERY, cross_attention_freq=CROSS_FREQ, embed_dim=EMBED_DIM,
                             max_txt_len=32)
    reinit(model, SEED + 4)
    model.eval()
    texts = [BlipCaptionProcessor(prompt="", max_words=50)(t) for t in TEXTS]
    itm_p, itm_logits, itm_ci, itc = [], [], [], []
    with torch.no_grad():
        for i in range(len(PHOTOS)):
            img = images[i:i + 1]
            # Blip2ITM.forward tokenises without padding: one (photo, text) pair per call
            logits = torch.cat([Blip2ITM.forward(model, {"image": img, "text_input": [t]}, match_head="itm")
                                for t in texts])
            itm_logits.append(floats(logits))
            itm_p.append(floats(F.softmax(logits, dim=1)[:, 1]))
            sim = torch.cat([Blip2ITM.forward(model, {"image": img, "text_input": [t]}, match_head="itc")
                             for t in texts])  # (n_text, 1)
            itc.append(floats(sim[:, 0]))
            img = images[i:i + 1].expand(len(texts), -1, -1, -1)
            # Blip2Qformer.compute_itm (used by its compute_sim_matrix), on padding-max_length text
            vit = model.ln_vision(model.visual_encoder(img)).float()
            t = model.tokenizer(texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            itm_ci.append(floats(model.compute_itm(vit, t.input_ids, t.attention_mask)))
        feats = model.extract_features({"image": images}, mode="image")
        tfeats = model.extract_features({"text_input": texts}, mode="text")
    tok = model.tokenizer
    enc = tok(texts, padding="longest", return_tensors="pt")
    expected = {
        "config": dict(eva_vit=EVA, vit_layer_norm_eps=1e-6, ln_vision_eps=1e-5, qformer=QFORMER,
                       qformer_vocab_after_resize=len(tok), num_query_token=NUM_QUERY,
                       cross_attention_freq=CROSS_FREQ, embed_dim=EMBED_DIM, max_txt_len=32, freeze_vit=True,
                       vit_precision="fp32"),
        "tokens": dict(pad=tok.pad_token_id, cls=tok.cls_token_id, sep=tok.sep_token_id, bos_dec=tok.bos_token_id,
                       vocab_size=len(tok)),
        "texts": texts,
        "text_ids": enc.input_ids.tolist(),
        "text_attention_mask": enc.attention_mask.tolist(),
        "itm": itm_p,
        "itm_logits": itm_logits,
        "itm_compute_itm": itm_ci,
        "itc": itc,
        "image_embeds": floats(feats.image_embeds_proj),
        "text_embeds": floats(tfeats.text_embeds_proj[:, 0, :]),
        "settings": dict(
            itm_path="Blip2ITM.forward(match_head='itm') on the Blip2Qformer: [CLS] text (no [ENC]) after the "
                     "32 queries, itm_head on each query output, logits averaged over queries -> itm_logits; "
                     "itm = softmax(itm_logits)[:,1]",
            itm_compute_itm="Blip2Qformer.compute_itm: mean over queries of itm_head logit class 1 (raw logit, "
                            "no softmax) = itm_logits[..., 1] up to text padding",
            itc_path="Blip2ITM.forward(match_head='itc'): max over the 32 queries of the cosine of normalised "
                     "vision_proj(query output) and text_proj(text [CLS]); no temperature",
            image_embeds="extract_features(mode='image').image_embeds_proj: [photo][query][embed_dim]",
            text_embeds="extract_features(mode='text').text_embeds_proj[:, 0]",
            text_processor="blip_caption (pre_caption), prompt ''"),
        "temp": float(model.temp.item()),
    }
    write("blip2-retrieval", model, expected)


# ------------------------------------------------------------------ BLIP-2 OPT: tiny OPT + byte-level BPE tokenizer
OPT = dict(vocab_size=None, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
           max_position_embeddings=128, word_embed_proj_dim=32, do_layer_norm_before=True, dropout=0.1,
           attention_dropout=0.0, activation_function="relu", pad_token_id=1, bos_token_id=2, eos_token_id=2,
           enable_bias=True, layer_norm_elementwise_affine=True)
BPE_CORPUS = (
    "a photo of a cat . a photo of a dog . a photo of a man . a photo of a woman . a picture of the sky .\n"
    "the man is standing in the street with a red car . a white cup of coffee on the table .\n"
    "a rocket on the launch pad . an astronaut in a white suit . a cat lying on the floor .\n"
    "two people sitting at a table in a room . a tree under the blue sky . a small house near the water .\n"
)
N_MERGES = 120


def _bytes_to_unicode():
    # GPT-2's byte <-> unicode table (same as transformers.models.gpt2.tokenization_gpt2.bytes_to_unicode)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_bpe(dirname):
    """A deterministic byte-level BPE (GPT-2 style) learnt on BPE_CORPUS: vocab.json + merges.txt."""
    import regex as re

    b2u = _bytes_to_unicode()
    pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    words = {}
    for w in pat.findall(BPE_CORPUS):
        key = tuple(b2u[b] for b in w.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(N_MERGES):
        pairs = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties by the pair itself
        merges.append(best)
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for b in range(256):
        vocab.setdefault(b2u[b], len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    with open(os.path.join(dirname, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0)
    with open(os.path.join(dirname, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    # what facebook/opt-*'s tokenizer_config.json says (GPT2Tokenizer, add_bos_token prepends </s>)
    with open(os.path.join(dirname, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True, "add_prefix_space": False,
                   "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>",
                   "errors": "replace", "model_max_length": 1000000000000000019884624838656}, f, indent=1)
    with open(os.path.join(dirname, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"}, f, indent=1)
    return len(vocab)


# OPT has no output bias (its lm_head is its word embeddings), so the end token, "\n", is made likely another way:
# the final LayerNorm's bias raised on one coordinate and "\n"'s embedding row laid on that coordinate. Its logit
# is then NEWLINE_END[1] * (NEWLINE_END[0] + that coordinate of the normalised state): high on average, varying from
# step to step, so beams end at different lengths and the beam-length rule is tested. ("\n" is never an input:
# a caption ends at it.)
NEWLINE_END = tuple(float(x) for x in os.environ.get("NEWLINE_END", "2.0,1.2").split(","))


def newline_end(opt, newline_id):
    with torch.no_grad():
        opt.model.decoder.final_layer_norm.bias[0] += NEWLINE_END[0]
        row = opt.model.decoder.embed_tokens.weight[newline_id]
        row.zero_()
        row[0] = NEWLINE_END[1]
    assert opt.lm_head.weight is opt.model.decoder.embed_tokens.weight


def task_blip2_opt_caption(images):
    from lavis.models.blip2_models import blip2_opt as lavis_blip2_opt
    from lavis.models.blip2_models.modeling_opt import OPTConfig, OPTForCausalLM

    tmp = tempfile.mkdtemp(prefix="lavis-tiny-opt-")
    try:
        vocab_size = build_bpe(tmp)
        torch.manual_seed(SEED)
        # OPT's embedding matrix has spare rows past its tokenizer (50272 for 50265 tokens: a multiple of 8), where
        # transformers' BLIP-2 puts its <image> token; the tiny one is padded to a multiple of 8 likewise.
        opt_cfg = dict(OPT, vocab_size=-(-(vocab_size + 1) // 8) * 8)
        OPTForCausalLM(OPTConfig(**opt_cfg)).save_pretrained(tmp, safe_serialization=False)
        orig_fp = OPTForCausalLM.from_pretrained.__func__

        def fp32_from_pretrained(cls, name, *a, torch_dtype=None, **kw):
            assert name == tmp and torch_dtype == torch.float16, (name, torch_dtype)
            return orig_fp(cls, name, *a, torch_dtype=torch.float32, **kw)

        torch.manual_seed(SEED)
        prompt = "a photo of"
        with blip2_offline(), mock.patch.object(lavis_blip2_opt.OPTForCausalLM, "from_pretrained",
                                                classmethod(fp32_from_pretrained)):
            model = lavis_blip2_opt.Blip2OPT(vit_model="eva_clip_g", img_size=IMAGE_SIZE, drop_path_rate=0,
                                             use_grad_checkpoint=False, vit_precision="fp32", freeze_vit=True,
                                             num_query_token=NUM_QUERY, opt_model=tmp, prompt=prompt,
                                             max_txt_len=32)
        reinit(model, SEED + 5)
        newline_end(model.opt_model, model.eos_token_id)
        model.eval()
        assert model.opt_model.dtype == torch.float32
        settings = dict(use_nucleus_sampling=False, num_beams=5, max_length=30, min_length=8, top_p=0.9,
                        repetition_penalty=1.0, length_penalty=1.0, num_captions=1, temperature=1)
        rec = Recorder(model.opt_model, "generate")
        with torch.no_grad():
            captions = model.generate({"image": images}, **settings)
            ids = rec.calls[-1]
            single = [model.generate({"image": images[i:i + 1]}, **settings)[0] for i in range(len(PHOTOS))]
        tok = model.opt_tokenizer
        prompt_ids = tok(prompt).input_ids
        expected = {
            "config": dict(eva_vit=EVA, vit_layer_norm_eps=1e-6, ln_vision_eps=1e-5, qformer=QFORMER,
                           qformer_vocab_after_resize=None, num_query_token=NUM_QUERY,
                           cross_attention_freq=CROSS_FREQ, opt=opt_cfg, prompt=prompt, max_txt_len=32,
                           freeze_vit=True, vit_precision="fp32", opt_dtype="float32",
                           tokenizer="byte-level BPE (GPT2Tokenizer, slow): vocab.json + merges.txt here",
                           bpe_merges=N_MERGES),
            "prompt_ids": prompt_ids,
            "eos_token_id": model.eos_token_id,
            "captions": captions,
            "captions_one_by_one": single,
            "caption_ids": ids.tolist(),
            "settings": dict(settings, prompt=prompt, max_new_tokens=settings["max_length"],
                             note="LAVIS passes max_length as max_new_tokens; min_length counts prompt tokens "
                                  "(input_ids, not the 32 query embeddings); eos = id of '\\n'; beam scores "
                                  "divided by input_ids length (prompt + generated); captions = batch_decode("
                                  "outputs[:, len(prompt_ids):], skip_special_tokens=True).strip()",
                             batch=len(PHOTOS)),
        }
        write("blip2-opt-caption", model, expected,
              extra_files=[(os.path.join(tmp, n), n) for n in
                           ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ BLIP-2 Flan-T5: tiny T5 + byte-level BPE tokenizer
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
          layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # Flan-T5's config.json with tiny sizes


def build_t5_tokenizer(dirname):
    """T5's layout over build_bpe's merges: <pad>=0 (also the decoder's start), </s>=1 appended to every text,
    <unk>=2; a tokenizer.json that LAVIS's T5TokenizerFast and transformers 5's AutoTokenizer read alike."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tmp = tempfile.mkdtemp(prefix="lavis-t5-bpe-")
    try:
        build_bpe(tmp)
        with open(os.path.join(tmp, "vocab.json")) as f:
            opt_vocab = json.load(f)
        with open(os.path.join(tmp, "merges.txt")) as f:
            merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for token in opt_vocab:
        if token not in ("<s>", "<pad>", "</s>", "<unk>"):
            vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(os.path.join(dirname, "tokenizer.json"))
    with open(os.path.join(dirname, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>", "extra_ids": 0, "model_max_length": 512}, f, indent=1)
    with open(os.path.join(dirname, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, f, indent=1)
    return len(vocab)


def task_blip2_t5_caption(images):
    from lavis.models.blip2_models import blip2_t5 as lavis_blip2_t5
    from lavis.models.blip2_models.modeling_t5 import T5Config, T5ForConditionalGeneration

    tmp = tempfile.mkdtemp(prefix="lavis-tiny-t5-")
    out_t5 = os.path.join(ARGS.out, "lavis-blip2-t5-caption", "t5")
    try:
        vocab_size = build_t5_tokenizer(tmp)
        # Flan-T5's embedding has spare rows past its tokenizer (32128 for 32100), as OPT's: a multiple of 8 here
        t5_cfg = dict(T5, vocab_size=-(-(vocab_size + 1) // 8) * 8)
        torch.manual_seed(SEED)
        T5ForConditionalGeneration(T5Config(**t5_cfg)).save_pretrained(tmp, safe_serialization=False)
        torch.manual_seed(SEED)
        prompt = "a photo of"
        with blip2_offline():
            model = lavis_blip2_t5.Blip2T5(vit_model="eva_clip_g", img_size=IMAGE_SIZE, drop_path_rate=0,
                                           use_grad_checkpoint=False, vit_precision="fp32", freeze_vit=True,
                                           num_query_token=NUM_QUERY, t5_model=tmp, prompt=prompt, max_txt_len=32)
        # LAVIS casts Flan-T5 to bf16 (its own autocast is off on a CPU, where the fp32 queries then meet bf16
        # weights): fp32 here, as on capfilt's side
        model.t5_model.float()
        reinit(model, SEED + 6)
        model.eval()
        assert model.t5_model.config.dense_act_fn == "gelu"  # LAVIS's override of Flan-T5's gelu_new
        settings = dict(use_nucleus_sampling=False, num_beams=5, max_length=30, min_length=1, top_p=0.9,
                        repetition_penalty=1.0, length_penalty=1.0, num_captions=1, temperature=1)
        rec = Recorder(model.t5_model, "generate")
        with torch.no_grad():
            captions = model.generate({"image": images}, **settings)
            ids = rec.calls[-1]
        expected = {
            "config": dict(eva_vit=EVA, vit_layer_norm_eps=1e-6, ln_vision_eps=1e-5, qformer=QFORMER,
                           num_query_token=NUM_QUERY, cross_attention_freq=CROSS_FREQ, t5=t5_cfg,
                           t5_dense_act_fn_set_by_lavis="gelu", prompt=prompt, max_txt_len=32,
                           vit_precision="fp32", t5_dtype="float32 (LAVIS: bfloat16)",
                           tokenizer="byte-level BPE in T5's layout (tokenizer.json in t5/)"),
            "prompt_ids": model.t5_tokenizer(prompt).input_ids,
            "eos_token_id": model.t5_tokenizer.eos_token_id,
            "captions": captions,
            "caption_ids": ids.tolist(),
            "settings": dict(settings, prompt=prompt, max_new_tokens=settings["max_length"],
                             note="Blip2T5.generate: encoder input = 32 query embeddings then the tokenised prompt "
                                  "('a photo of </s>'); T5's generate from inputs_embeds, max_new_tokens=max_length, "
                                  "min_length counts the decoder's tokens (its start <pad> included); beam scores "
                                  "divided by the decoder sequence's length; captions = batch_decode(outputs, "
                                  "skip_special_tokens=True)", batch=len(PHOTOS)),
        }
        write("blip2-t5-caption", model, expected)
        # the language model's directory a user would name (--language-model): its config and tokenizer (the
        # weights are in the .pth here; LAVIS's released files hold none)
        os.makedirs(out_t5, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(os.path.join(tmp, name), os.path.join(out_t5, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TASKS = {
    "caption": task_caption,
    "retrieval": task_retrieval,
    "vqa": task_vqa,
    "blip2-retrieval": task_blip2_retrieval,
    "blip2-opt-caption": task_blip2_opt_caption,
    "blip2-t5-caption": task_blip2_t5_caption,
}


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=DEFAULT_PHOTOS)
    ap.add_argument("--out", default=FIX)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ARGS = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    images = load_photos(ARGS.photos, IMAGE_SIZE)
    for t in ARGS.tasks.split(","):
        TASKS[t](images)


if __name__ == "__main__":
    main()
