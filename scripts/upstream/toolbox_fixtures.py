"""Upstream fixtures from the OpenMMLab toolbox (mmpretrain 1.2.0 + mmengine + mmcv-lite).

What: tiny, seeded BLIP / BLIP-2 models built by mmpretrain's OWN registry from dict configs shaped
like the toolbox's real configs (configs/blip/blip-base_8xb32_{caption,retrieval,vqa}.py,
configs/blip2/blip2_8xb32_retrieval.py, configs/blip2/blip2-opt2.7b_8xb32_caption.py) with tiny
sizes, run through the toolbox's own inference code (its test pipeline for the photos, its
MultiModalDataPreprocessor, its predict / extract_feat / compute_score_matrix paths), and saved as
tests/fixtures/upstream/toolbox-<task>/{model.pth, expected.json}. model.pth is the container the
toolbox's released checkpoints use: {"state_dict": model.state_dict(), "meta": {plain types}}.
These let capfilt's checkpoint converter be tested against the real toolbox key layout and
numerics without downloading anything.

How to run (from the repo root):
    bash scripts/upstream/toolbox_env.sh            # creates .upstream/toolbox-venv (idempotent)
    .upstream/toolbox-venv/bin/python scripts/upstream/toolbox_fixtures.py [--photos DIR] [--out DIR]
                                                    [--tasks caption,retrieval,vqa,blip2-retrieval,blip2-opt-caption]

Why tiny: real checkpoints are hundreds of MB to GB and need the hub; ViT 32-wide x 2 layers,
BERT 32-wide x 2 layers etc. keep each model.pth well under 2 MB while exercising every module
(and every state-dict key family) the real models have. Weights are re-initialised with
normal(std=0.2) for every >1-dim parameter AFTER building (BLIP's default init makes outputs near
constant at this size); the saved state_dict is exactly what produced the outputs. float32, eval.

Shims / offline substitutes (all documented here, none changes the toolbox's model code):
  * torchvision: the only torchvision that matches torch 2.13 on PyPI is a CUDA build (0.28.0),
    whose C extension cannot load beside the CPU torch; its import then dies in
    torchvision/_meta_registrations.py ("operator torchvision::nms does not exist").
    mmpretrain imports torchvision only for dataset transforms and box ops (grounding), none of
    which are used here, so an empty module is put in sys.modules['torchvision._meta_registrations']
    before importing; the rest of torchvision's Python code imports normally.
  * "bert-base-uncased" (BlipTokenizer / Blip2Tokenizer name_or_path): pointed at a temporary local
    directory holding tests/fixtures/upstream/vocab.txt; the toolbox's own from_pretrained
    override then adds [DEC] (bos) and, for BlipTokenizer, [ENC] itself.
  * Qformer(model_style='bert-base-uncased') calls BertConfig.from_pretrained(model_style):
    model_style is pointed at a temporary directory holding the tiny BertConfig as config.json.
  * OPTForCausalLM(name_or_path='facebook/opt-2.7b') and AutoTokenizer('facebook/opt-2.7b'):
    pointed at a temporary directory where the toolbox's own OPTForCausalLM class (from
    mmpretrain/models/multimodal/blip2/modeling_opt.py) built from a tiny OPTConfig was saved with
    save_pretrained, plus a small byte-level BPE vocabulary (GPT2Tokenizer files) written here.
    The toolbox's registry then calls from_pretrained on that directory, as it would on the hub id.
  * ITCHead queue_size: 57600 in the real config; 64 here (a 16 x 57600 queue is 3.7 MB).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# --- shim: see header -------------------------------------------------------------------------
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402
import mmengine  # noqa: E402
import mmcv  # noqa: E402
import mmpretrain  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS, TRANSFORMS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402
import mmpretrain.models  # noqa: E402,F401  (registers everything)
import mmpretrain.datasets  # noqa: E402,F401

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = os.path.join(REPO, "tests", "fixtures", "upstream", "vocab.txt")
DEFAULT_PHOTOS = os.path.join(REPO, ".venv", "lib", "python3.11", "site-packages", "skimage", "data")
PHOTOS_DIR = [None]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
IMG = 64
PATCH = 16
SEED = 0
# Added to the decoder's output bias of [SEP] (the end token) in the caption and VQA models, so that beam hypotheses
# finish at different lengths and the scoring of finished hypotheses is tested (at this size and N(0, 0.2) the end
# token is otherwise never chosen).
EOS_BIAS = {"caption": float(os.environ.get("EOS_BIAS_CAPTION", "2.0")),
            "vqa": float(os.environ.get("EOS_BIAS_VQA", "2.0"))}


def end_bias(decoder, tokenizer, bias):
    """`bias` on [SEP]'s output bias (cls.predictions.bias; decoder.bias is the same tensor upstream)."""
    with torch.no_grad():
        decoder.cls.predictions.bias[tokenizer.sep_token_id] += bias
# the toolbox's data_preprocessor (configs/_base_/datasets/coco_*.py)
PREPROC = dict(type="MultiModalDataPreprocessor",
               mean=[122.770938, 116.7460125, 104.09373615],
               std=[68.5005327, 66.6321579, 70.32316305], to_rgb=True)

VERSIONS = {"mmpretrain": mmpretrain.__version__, "mmengine": mmengine.__version__,
            "mmcv-lite": mmcv.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}


def med_config(**over):
    """The toolbox's med_config dict with tiny sizes."""
    cfg = dict(architectures=["BertModel"], attention_probs_dropout_prob=0.1, hidden_act="gelu",
               hidden_dropout_prob=0.1, hidden_size=32, initializer_range=0.02,
               intermediate_size=64, layer_norm_eps=1e-12, max_position_embeddings=512,
               model_type="bert", num_attention_heads=4, num_hidden_layers=2, pad_token_id=0,
               add_type_embeddings=False, vocab_size=214, encoder_width=32,
               add_cross_attention=True)
    cfg.update(over)
    return cfg


def tiny_vit():
    """configs/blip/*: VisionTransformer(arch='b', img_size=384, patch_size=16, out_type='raw'),
    with the arch as a custom dict. final_norm / pre_norm / norm_cfg are the class defaults,
    as in the real config (final_norm=True, pre_norm=False, LN eps=1e-6)."""
    return dict(type="VisionTransformer",
                arch=dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64),
                img_size=IMG, patch_size=PATCH, out_type="raw")


def tiny_eva(out_indices=-1):
    """configs/blip2/*: BEiTViT as 'eva-g without the final layer', tiny sizes."""
    cfg = dict(type="BEiTViT",
               arch=dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64),
               img_size=IMG, patch_size=PATCH, layer_scale_init_value=0.0, use_abs_pos_emb=True,
               use_rel_pos_bias=False, final_norm=False, use_shared_rel_pos_bias=False,
               out_type="raw")
    if out_indices != -1:
        cfg["out_indices"] = out_indices
    return cfg


def reinit(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():  # shared (tied) parameters are visited once
            if p.dim() > 1:
                p.normal_(0.0, 0.2)


def photo_path(photos_dir, name):
    """scikit-image ships rocket as .jpg, the others as .png."""
    for ext in (".png", ".jpg"):
        if os.path.exists(os.path.join(photos_dir, name + ext)):
            return os.path.join(photos_dir, name + ext)
    raise FileNotFoundError(os.path.join(photos_dir, name + ".png"))


def load_images(photos_dir, preprocessor):
    """The toolbox's test pipeline (LoadImageFromFile -> Resize bicubic pillow -> PackInputs),
    then the model's MultiModalDataPreprocessor (BGR->RGB, mean/std)."""
    pipeline = [TRANSFORMS.build(t) for t in (
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=(IMG, IMG), interpolation="bicubic", backend="pillow"),
        dict(type="PackInputs"))]
    inputs = []
    for name in PHOTOS:
        r = {"img_path": photo_path(photos_dir, name)}
        for t in pipeline:
            r = t(r)
        inputs.append(r["inputs"])
    # batched with mmengine's default_collate, as mmpretrain.apis' inferencers do
    # (ImageCaptionInferencer etc.): a stacked (N, 3, H, W) uint8 batch
    from mmengine.dataset import default_collate
    data = preprocessor({"inputs": default_collate(inputs), "data_samples": None},
                        training=False)
    return data["images"]


def plain(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def save(out_dir, task, model, expected, cfg):
    d = os.path.join(out_dir, "toolbox-" + task)
    os.makedirs(d, exist_ok=True)
    sd = model.state_dict()
    meta = {"source": "toolbox", "mmpretrain_version": mmpretrain.__version__,
            "class": expected["class"], "seed": SEED,
            "config": json.dumps(cfg, sort_keys=True)}
    torch.save({"state_dict": sd, "meta": meta}, os.path.join(d, "model.pth"))
    expected = dict(expected)
    expected["state_dict_prefixes"] = sorted({k.split(".")[0] for k in sd})
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    size = os.path.getsize(os.path.join(d, "model.pth"))
    print(f"toolbox-{task}: {len(sd)} keys, {size} bytes, prefixes {expected['state_dict_prefixes']}")
    return d


def base_expected(task, cls, cfg, settings):
    return {"source": "toolbox",
            "upstream": {"package": "mmpretrain " + VERSIONS["mmpretrain"], **VERSIONS},
            "class": cls, "config": cfg, "image_size": IMG, "photos": list(PHOTOS),
            "photo_files": [os.path.basename(photo_path(PHOTOS_DIR[0], n)) for n in PHOTOS],
            "preprocess": {"pipeline": "LoadImageFromFile(cv2, BGR) -> Resize((64, 64), "
                           "bicubic, pillow) -> PackInputs -> MultiModalDataPreprocessor("
                           "to_rgb=True, mean/std below)", **{k: PREPROC[k] for k in ("mean", "std")}},
            "settings": settings}


def blip_tokenizer_cfg(tmp):
    d = os.path.join(tmp, "bert-base-uncased")
    if not os.path.isdir(d):
        os.makedirs(d)
        shutil.copy(VOCAB, os.path.join(d, "vocab.txt"))
    return d


def tok_info(tok):
    return {"class": type(tok).__name__, "len": len(tok), "bos_token": tok.bos_token,
            "bos_token_id": tok.bos_token_id, "sep_token_id": tok.sep_token_id,
            "pad_token_id": tok.pad_token_id, "cls_token_id": tok.cls_token_id,
            "additional_special_tokens": tok.additional_special_tokens,
            "additional_special_tokens_ids": tok.additional_special_tokens_ids}


# ----------------------------------------------------------------------------------------------
def task_caption(photos_dir, out_dir, tmp):
    cfg = dict(type="BlipCaption",
               vision_encoder=tiny_vit(),
               tokenizer=dict(type="BlipTokenizer", name_or_path="bert-base-uncased"),
               decoder_head=dict(type="SeqGenerationHead",
                                 decoder=dict(type="XBertLMHeadDecoder", med_config=med_config())),
               prompt="a picture of ", max_txt_len=20,
               data_preprocessor=dict(PREPROC))
    build = json.loads(json.dumps(cfg))
    build["tokenizer"]["name_or_path"] = blip_tokenizer_cfg(tmp)
    torch.manual_seed(SEED)
    model = MODELS.build(build)
    reinit(model, SEED)
    end_bias(model.seq_gen_head.decoder, model.tokenizer, EOS_BIAS["caption"])
    model.eval()
    images = load_images(photos_dir, model.data_preprocessor)

    # capture the token ids generate() returns, without changing anything
    captured = {}
    head_predict = model.seq_gen_head.predict

    def spy(*a, **k):
        out = head_predict(*a, **k)
        captured.setdefault("sequences", []).append(out.sequences)
        captured.setdefault("prompt_ids", []).append(k["input_ids"])
        return out
    model.seq_gen_head.predict = spy
    with torch.no_grad():
        samples = model.predict(images)
    captions = [s.pred_caption for s in samples]
    seqs = captured["sequences"][0]

    # The same calls BlipCaption.predict makes, with min_length=5 (LAVIS/capfilt's setting).
    # BlipCaption.predict does not forward kwargs, so SeqGenerationHead.predict's default
    # min_length=2 is what the toolbox itself uses.
    with torch.no_grad():
        image_embeds = model.visual_encoder(images)[0]
        prompt = model.tokenizer([model.prompt] * image_embeds.size(0), padding="longest",
                                 return_tensors="pt")
        prompt.input_ids[:, 0] = model.tokenizer.bos_token_id
        prompt.input_ids = prompt.input_ids[:, :-1]
        out5 = head_predict(input_ids=prompt.input_ids, encoder_hidden_states=image_embeds,
                            sep_token_id=model.tokenizer.sep_token_id,
                            pad_token_id=model.tokenizer.pad_token_id, min_length=5,
                            output_attentions=True, return_dict_in_generate=True)
    dec5 = model.tokenizer.batch_decode(out5.sequences, skip_special_tokens=True)
    captions5 = [t[len(model.prompt):] for t in dec5]
    model.seq_gen_head.predict = head_predict

    sd = model.state_dict()
    exp = base_expected("caption", "mmpretrain.models.multimodal.blip.blip_caption.BlipCaption", cfg, {
        "predict": "BlipCaption.predict(images) -> SeqGenerationHead.predict defaults",
        "num_beams": 3, "max_length": 20, "min_length": 2, "use_nucleus_sampling": False,
        "repetition_penalty": 1.0, "length_penalty": 1.0, "eos_token_id": "sep_token_id (3)",
        "pad_token_id": 0, "prompt": "a picture of ",
        "prompt_ids_note": "tokenizer(prompt) with [CLS] replaced by bos [DEC] and the last ([SEP]) "
                           "dropped; max_length/min_length count these prompt tokens",
        "caption_strip": "batch_decode(skip_special_tokens=True)[len(prompt):]",
        "captions_min_length_5": "same calls with min_length=5 (LAVIS / capfilt setting)",
        "beam_score": "transformers 4.33.3 BeamHypotheses.add: sum_logprobs / hyp.shape[-1] ** "
                      "length_penalty, hyp = whole sequence incl. prompt",
        "generation_cache": "the toolbox's prepare_inputs_for_generation takes `past=`, which "
                            "transformers 4.33 never passes (it passes past_key_values), so every "
                            "step re-runs the whole sequence without a cache"})
    exp.update({
        "tokenizer": tok_info(model.tokenizer),
        "prompt_ids": captured["prompt_ids"][0].tolist(),
        "captions": captions,
        "caption_ids": seqs.tolist(),
        "captions_min_length_5": captions5,
        "caption_ids_min_length_5": out5.sequences.tolist(),
        "tied": {"seq_gen_head.decoder.cls.predictions.decoder.weight is "
                 "seq_gen_head.decoder.bert.embeddings.word_embeddings.weight":
                 bool(model.seq_gen_head.decoder.cls.predictions.decoder.weight
                      is model.seq_gen_head.decoder.bert.embeddings.word_embeddings.weight),
                 "both keys in state_dict": all(k in sd for k in (
                     "seq_gen_head.decoder.cls.predictions.decoder.weight",
                     "seq_gen_head.decoder.bert.embeddings.word_embeddings.weight"))},
        "vit_layernorm_eps": model.visual_encoder.ln1.eps,
    })
    save(out_dir, "caption", model, exp, cfg)


TEXTS = ["a picture of a cat", "a man with a red car", "a woman standing near a tree",
         "two people sitting at a table", "a blue sky above the water"]


def task_retrieval(photos_dir, out_dir, tmp):
    cfg = dict(type="BlipRetrieval",
               tokenizer=dict(type="BlipTokenizer", name_or_path="bert-base-uncased"),
               vision_backbone=tiny_vit(),
               text_backbone=dict(type="XBertEncoder", med_config=med_config()),
               vision_neck=dict(type="Linear", in_features=32, out_features=16),
               text_neck=dict(type="Linear", in_features=32, out_features=16),
               head=dict(type="ITCHead", embed_dim=16, queue_size=64),
               multimodal_head=dict(type="ITMHead", hidden_size=32, with_pooler=False),
               topk=256, max_txt_len=35,
               data_preprocessor=dict(PREPROC))
    build = json.loads(json.dumps(cfg))
    build["tokenizer"]["name_or_path"] = blip_tokenizer_cfg(tmp)
    torch.manual_seed(SEED)
    model = MODELS.build(build)
    reinit(model, SEED)
    model.copy_params()  # momentum encoders = online ones, as the toolbox's __init__ leaves them
    model.eval()
    images = load_images(photos_dir, model.data_preprocessor)
    n_t = len(TEXTS)
    with torch.no_grad():
        img = model.extract_feat(images, None)
        txt = model.extract_feat(None, [DataSample(text=list(TEXTS))])
        text_ids_itc = txt["text_ids"].clone()
        feats = {**img, **txt}
        # predict_all's own [ENC] substitution
        text_ids = feats["text_ids"]
        text_ids[:, 0] = model.tokenizer.additional_special_tokens_ids[0]
        model.topk = n_t  # score every pair (topk=256 in the real config, > our 5 texts)
        score_i2t = model.compute_score_matrix_i2t(feats["image_feat"], feats["image_embeds"],
                                                   feats["text_feat"], text_ids,
                                                   feats["text_attn_mask"])
        model.topk = images.size(0)  # t2i ranks the 4 images
        score_t2i = model.compute_score_matrix_t2i(feats["image_feat"], feats["image_embeds"],
                                                   feats["text_feat"], text_ids,
                                                   feats["text_attn_mask"])
        itc = feats["image_feat"] @ feats["text_feat"].t()
        # the same calls compute_score_matrix_i2t makes, per pair, keeping both ITM logits
        itm_logits = torch.zeros(images.size(0), n_t, 2)
        for i in range(images.size(0)):
            enc = feats["image_embeds"][i].repeat(n_t, 1, 1)
            out = model.text_backbone(text_ids, attention_mask=feats["text_attn_mask"],
                                      encoder_hidden_states=enc,
                                      encoder_attention_mask=torch.ones(enc.size()[:-1],
                                                                        dtype=torch.long),
                                      return_dict=True)
            itm_logits[i] = model.multimodal_head((out.last_hidden_state[:, 0, :],))
        itm = itm_logits.softmax(-1)[..., 1]
        check = (itm_logits[..., 1] + itc - score_i2t).abs().max().item()
        assert check < 1e-5, check
    exp = base_expected("retrieval", "mmpretrain.models.multimodal.blip.blip_retrieval.BlipRetrieval",
                        cfg, {"max_txt_len": 35, "text_padding": "max_length",
                              "topk": "i2t: number of texts, t2i: number of images",
                              "itm_text_first_token": "[ENC] (additional_special_tokens_ids[0]) "
                                                      "replaces [CLS] (predict_all), attention "
                                                      "mask unchanged; ITC text keeps [CLS]"})
    exp.update({
        "tokenizer": tok_info(model.tokenizer),
        "texts": list(TEXTS),
        "text_ids_itc": text_ids_itc.tolist(),
        "text_ids_itm": text_ids.tolist(),
        "text_attention_mask": feats["text_attn_mask"].tolist(),
        "itm": itm.tolist(),
        "itm_logits": itm_logits.tolist(),
        "itc": itc.tolist(),
        "score_matrix_i2t": score_i2t.tolist(),
        "score_matrix_t2i": score_t2i.tolist(),
        "score_matrix_note": "the toolbox's retrieval score = ITM logit[:, 1] (raw, no softmax) "
                             "+ ITC cosine (no temperature)",
        "image_embeds": feats["image_feat"].tolist(),
        "text_embeds": feats["text_feat"].tolist(),
        "temp": model.temp.item(),
        "vit_layernorm_eps": model.vision_backbone.ln1.eps,
    })
    save(out_dir, "retrieval", model, exp, cfg)


QUESTIONS = ["what is the man", "what color is the table", "what is on the table",
             "what is in the sky"]
CANDIDATES = ["yes", "no", "cat", "dog", "man", "red", "blue", "two"]


def task_vqa(photos_dir, out_dir, tmp):
    def make_cfg(method):
        head = dict(type="VQAGenerationHead",
                    decoder=dict(type="XBertLMHeadDecoder", med_config=med_config()),
                    inference_method=method)
        if method == "rank":
            head["answer_list_path"] = "answer_list.json"
        return dict(type="BlipVQA",
                    tokenizer=dict(type="BlipTokenizer", name_or_path="bert-base-uncased"),
                    vision_backbone=tiny_vit(),
                    multimodal_backbone=dict(type="XBertEncoder", med_config=med_config()),
                    head=head, data_preprocessor=dict(PREPROC))
    cfg = make_cfg("generate")
    build = json.loads(json.dumps(cfg))
    build["tokenizer"]["name_or_path"] = blip_tokenizer_cfg(tmp)
    torch.manual_seed(SEED)
    model = MODELS.build(build)
    reinit(model, SEED)
    end_bias(model.vqa_head.decoder, model.tokenizer, EOS_BIAS["vqa"])
    model.eval()
    images = load_images(photos_dir, model.data_preprocessor)

    captured = {}
    head_predict = model.vqa_head.predict

    def spy(feats, data_samples=None):
        out = head_predict(feats, data_samples)
        captured["out"] = out
        return out
    model.vqa_head.predict = spy
    with torch.no_grad():
        samples = model.predict(images, [DataSample(question=q) for q in QUESTIONS])
    model.vqa_head.predict = head_predict
    answers_generate = [s.pred_answer for s in samples]
    answer_ids = captured["out"]

    # rank mode: the same config with inference_method='rank', same weights
    ans_path = os.path.join(tmp, "answer_list.json")
    with open(ans_path, "w") as f:
        json.dump(CANDIDATES, f)
    rank_cfg = make_cfg("rank")
    rbuild = json.loads(json.dumps(rank_cfg))
    rbuild["tokenizer"]["name_or_path"] = blip_tokenizer_cfg(tmp)
    rbuild["head"]["answer_list_path"] = ans_path
    rmodel = MODELS.build(rbuild)
    rmodel.load_state_dict(model.state_dict())
    rmodel.eval()
    with torch.no_grad():
        rsamples = rmodel.predict(images, [DataSample(question=q) for q in QUESTIONS])
    answers_rank = [s.pred_answer for s in rsamples]
    qtok = model.tokenizer(QUESTIONS, padding="longest", return_tensors="pt")
    qtok.input_ids[:, 0] = model.tokenizer.additional_special_tokens_ids[0]
    exp = base_expected("vqa", "mmpretrain.models.multimodal.blip.blip_vqa.BlipVQA", cfg, {
        "generate": {"num_beams": 3, "max_len": 10, "min_len": 1,
                     "note": "VQAGenerationHead.predict_generate: bos [DEC] start, num_beams=3 (head default), "
                             "max_length=10, min_length=1, eos=[SEP], hard-coded"},
        "rank": "VQAGenerationHead.predict_rank: candidates tokenized padding longest with [CLS] "
                "replaced by [DEC]; top-k by first-token prob, then argmax of -loss (sum over "
                "tokens, CrossEntropy label_smoothing=0.1, reduction none); the first-token "
                "probability is NOT added to the final score",
        "k_test": rmodel.vqa_head.num_ans_candidates,
        "question_first_token": "[ENC] replaces [CLS]; questions padding longest"})
    exp.update({
        "tokenizer": tok_info(model.tokenizer),
        "questions": list(QUESTIONS),
        "question_ids": qtok.input_ids.tolist(),
        "answers_generate": answers_generate,
        "answer_ids_generate": plain(answer_ids),
        "candidates": list(CANDIDATES),
        "answers_rank": answers_rank,
        "k_test": rmodel.vqa_head.num_ans_candidates,
        "inference_methods": ["generate", "rank"],
    })
    save(out_dir, "vqa", model, exp, cfg)


# ----------------------------------------------------------------------------------------------
def qformer_dir(tmp, vocab_size):
    d = os.path.join(tmp, "qformer-bert")
    os.makedirs(d, exist_ok=True)
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=512)
    cfg.save_pretrained(d)
    return d, cfg.to_diff_dict()


def task_blip2_retrieval(photos_dir, out_dir, tmp):
    qdir, qcfg = qformer_dir(tmp, 212)
    cfg = dict(type="Blip2Retrieval",
               tokenizer=dict(type="Blip2Tokenizer", name_or_path="bert-base-uncased"),
               vision_backbone=tiny_eva(),
               multimodal_backbone=dict(type="Qformer", model_style="bert-base-uncased",
                                        vision_model_width=32, add_cross_attention=True,
                                        cross_attention_freq=2, num_query_token=8),
               vision_neck=dict(type="LinearClsHead", in_channels=32, num_classes=16),
               text_neck=dict(type="LinearClsHead", in_channels=32, num_classes=16),
               multimodal_head=dict(type="ITMHead", hidden_size=32, with_pooler=False),
               topk=128,
               data_preprocessor=dict(PREPROC))
    build = json.loads(json.dumps(cfg))
    build["tokenizer"]["name_or_path"] = blip_tokenizer_cfg(tmp)
    build["multimodal_backbone"]["model_style"] = qdir
    torch.manual_seed(SEED)
    model = MODELS.build(build)
    # Blip2Retrieval.__init__ takes no max_txt_len (the real config's max_txt_len=35 is a
    # TypeError) yet BlipRetrieval.preprocess_text reads self.max_txt_len
    model.max_txt_len = 35
    reinit(model, SEED)
    model.eval()
    images = load_images(photos_dir, model.data_preprocessor)
    n_t = len(TEXTS)
    with torch.no_grad():
        img = model.extract_feat(images, None)
        txt = model.extract_feat(None, [DataSample(text=list(TEXTS))])
        feats = {**img, **txt}
        model.topk = n_t
        score_i2t = model.compute_score_matrix_i2t(feats["image_feat"], feats["image_embeds"],
                                                   feats["text_feat"], feats["text_ids"],
                                                   feats["text_attn_mask"])
        q2t = torch.einsum("iqd,td->itq", feats["image_feat"], feats["text_feat"])
        itc = q2t.max(-1).values
        nq = model.query_tokens.size(1)
        itm_logits_q = torch.zeros(images.size(0), n_t, nq, 2)
        for i in range(images.size(0)):
            enc = feats["image_embeds"][i].repeat(n_t, 1, 1)
            qt = model.query_tokens.expand(n_t, -1, -1)
            am = torch.cat([torch.ones(qt.size()[:-1], dtype=torch.long),
                            feats["text_attn_mask"]], dim=1)
            out = model.multimodal_backbone.bert(
                feats["text_ids"], query_embeds=qt, attention_mask=am,
                encoder_hidden_states=enc,
                encoder_attention_mask=torch.ones(enc.size()[:-1], dtype=torch.long),
                return_dict=True)
            itm_logits_q[i] = model.multimodal_head((out.last_hidden_state[:, :nq, :],))
        toolbox_score = itm_logits_q[..., 1].mean(-1)
        check = (toolbox_score + itc - score_i2t).abs().max().item()
        assert check < 1e-5, check
        itm_logits = itm_logits_q.mean(2)
        itm = itm_logits.softmax(-1)[..., 1]
    exp = base_expected("blip2-retrieval",
                        "mmpretrain.models.multimodal.blip2.blip2_retriever.Blip2Retrieval", cfg, {
                            "max_txt_len": 35, "text_padding": "max_length", "topk": n_t,
                            "itm_text_first_token": "[CLS] kept (no [ENC] in BLIP-2)",
                            "num_query_token": 8})
    exp.update({
        "qformer_bert_config": qcfg,
        "tokenizer": tok_info(model.tokenizer),
        "texts": list(TEXTS),
        "text_ids": feats["text_ids"].tolist(),
        "text_attention_mask": feats["text_attn_mask"].tolist(),
        "itm": itm.tolist(),
        "itm_note": "softmax(mean over queries of the ITM logits)[1] (LAVIS / HF way)",
        "itm_logits": itm_logits.tolist(),
        "itm_toolbox_score": toolbox_score.tolist(),
        "itm_toolbox_score_note": "the toolbox's own ITM score: mean over queries of the raw "
                                  "class-1 logit (no softmax); score_matrix = this + itc",
        "itc": itc.tolist(),
        "itc_note": "max over queries of cosine(normalised query feat, normalised text feat), "
                    "no temperature",
        "score_matrix_i2t": score_i2t.tolist(),
        "image_embeds": feats["image_feat"].tolist(),
        "text_embeds": feats["text_feat"].tolist(),
        "temp": model.temp.item(),
    })
    save(out_dir, "blip2-retrieval", model, exp, cfg)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


OPT_WORDS = ["a", "photo", "of", "the", "cat", "dog", "man", "woman", "red", "car", "tree",
             "sky", "cup", "coffee", "rocket", "on", "with", "in", "and", "table", "white",
             "black", "sitting", "standing", "picture", "person", "blue", "water"]


def opt_dir(tmp):
    """A tiny OPT (the toolbox's own OPTForCausalLM class) + a byte-level BPE tokenizer, saved
    where AutoTokenizer / OPTForCausalLM.from_pretrained can load them."""
    from mmpretrain.models.multimodal.blip2.modeling_opt import OPTForCausalLM
    d = os.path.join(tmp, "opt-tiny")
    os.makedirs(d, exist_ok=True)
    b2u = bytes_to_unicode()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    merges = []
    for w in OPT_WORDS:
        for word in ("Ġ" + w, w):
            cur = word[0]
            for ch in word[1:]:
                new = cur + ch
                if new not in vocab:
                    merges.append(f"{cur} {ch}")
                    vocab[new] = len(vocab)
                cur = new
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True,
                   "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>",
                   "pad_token": "<pad>", "errors": "replace", "model_max_length": 1000000}, f)
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>",
                   "pad_token": "<pad>"}, f)
    vsize = ((len(vocab) + 15) // 16) * 16
    ocfg = transformers.OPTConfig(vocab_size=vsize, hidden_size=32, num_hidden_layers=2,
                                  ffn_dim=64, num_attention_heads=4, max_position_embeddings=128,
                                  word_embed_proj_dim=32, do_layer_norm_before=True,
                                  pad_token_id=1, bos_token_id=2, eos_token_id=2,
                                  enable_bias=True, torch_dtype="float32")
    torch.manual_seed(SEED)
    OPTForCausalLM(ocfg).save_pretrained(d)
    return d, ocfg.to_diff_dict(), len(vocab)


# OPT has no output bias (its lm_head is its word embeddings), so the end token, "\n", is made likely another way:
# the final LayerNorm's bias raised on one coordinate and "\n"'s embedding row laid on that coordinate. Its logit
# is then NEWLINE_END[1] * (NEWLINE_END[0] + that coordinate of the normalised state): high on average, varying from
# step to step, so beams end at different lengths and the beam-length rule is tested. ("\n" is never an input:
# a caption ends at it.) As scripts/upstream/lavis_fixtures.py does.
NEWLINE_END = tuple(float(x) for x in os.environ.get("NEWLINE_END", "2.0,1.2").split(","))
# VQA's length penalty -1 favours short answers: a weaker end, or every answer would be empty
NEWLINE_END_VQA = tuple(float(x) for x in os.environ.get("NEWLINE_END_VQA", "2.0,0.8").split(","))


def newline_end(opt, newline_id, shift_scale=NEWLINE_END):
    with torch.no_grad():
        opt.model.decoder.final_layer_norm.bias[0] += shift_scale[0]
        row = opt.model.decoder.embed_tokens.weight[newline_id]
        row.zero_()
        row[0] = shift_scale[1]
    assert opt.lm_head.weight is opt.model.decoder.embed_tokens.weight


BLIP2_QUESTIONS = ["what is the man wearing", "what color is the cup", "what animal is this",
                   "is there a rocket in the sky"]  # of different lengths: the prompts are padded (left)


def task_blip2_opt_caption(photos_dir, out_dir, tmp):
    blip2_opt(photos_dir, out_dir, tmp, vqa=False)


def task_blip2_opt_vqa(photos_dir, out_dir, tmp):
    blip2_opt(photos_dir, out_dir, tmp, vqa=True)


def blip2_opt(photos_dir, out_dir, tmp, vqa):
    """Blip2Caption, or Blip2VQA (the same modules, so the same weights: its zero-shot answers, prompt
    "Question: {} Answer:", 10 new tokens, length penalty -1, all hard-coded in its predict)."""
    qdir, qcfg = qformer_dir(tmp, 212)
    odir, ocfg, n_vocab = opt_dir(tmp)
    cfg = dict(type="Blip2VQA" if vqa else "Blip2Caption",
               tokenizer=dict(type="AutoTokenizer", name_or_path="facebook/opt-2.7b",
                              use_fast=False),
               vision_backbone=dict(tiny_eva(out_indices=-2), frozen_stages=2),
               text_backbone=dict(type="OPTForCausalLM", name_or_path="facebook/opt-2.7b"),
               multimodal_backbone=dict(type="Qformer", model_style="bert-base-uncased",
                                        vision_model_width=32, add_cross_attention=True,
                                        cross_attention_freq=2, num_query_token=8),
               vision_neck=dict(type="LinearClsHead", in_channels=32, num_classes=32),
               prompt="Question: {} Answer:" if vqa else "a photo of", max_txt_len=10 if vqa else 30,
               data_preprocessor=dict(PREPROC))
    build = json.loads(json.dumps(cfg))
    build["tokenizer"]["name_or_path"] = odir
    build["text_backbone"]["name_or_path"] = odir
    build["multimodal_backbone"]["model_style"] = qdir
    torch.manual_seed(SEED)
    model = MODELS.build(build)
    reinit(model, SEED)
    newline_end(model.text_backbone, model.eos_token_id, NEWLINE_END_VQA if vqa else NEWLINE_END)
    model.eval()
    images = load_images(photos_dir, model.data_preprocessor)
    captured = {}
    gen = model.text_backbone.generate

    def spy(*a, **k):
        out = gen(*a, **k)
        captured["ids"] = out
        captured["kwargs"] = {kk: v for kk, v in k.items()
                              if kk not in ("inputs_embeds", "attention_mask")}
        return out
    model.text_backbone.generate = spy
    with torch.no_grad():
        if vqa:
            samples = model.predict(images, [DataSample(question=q) for q in BLIP2_QUESTIONS])
            ids = captured["ids"]
            alone = [model.predict(images[i:i + 1], [DataSample(question=q)])[0].pred_answer
                     for i, q in enumerate(BLIP2_QUESTIONS)]
            captured["ids"] = ids
        else:
            samples = model.predict(images)
    model.text_backbone.generate = gen
    if vqa:
        answers = [s.pred_answer for s in samples]
        exp = base_expected("blip2-opt-vqa", "mmpretrain.models.multimodal.blip2.blip2_opt_vqa.Blip2VQA", cfg, {
            **plain(captured["kwargs"]),
            "note": "all hard-coded in Blip2VQA.predict: prompts 'Question: {} Answer:' tokenised padding "
                    "longest on the LEFT, after the 8 query embeddings (mask 0 on the padding); generation "
                    "from inputs_embeds, so input_ids start as [[bos=2]]; answers = batch_decode(skip_special_"
                    "tokens=True).strip()"})
        exp.update({"questions": BLIP2_QUESTIONS, "answers": answers, "answers_one_by_one": alone,
                    "answer_ids": captured["ids"].tolist(), "opt_config": ocfg})
        d = save(out_dir, "blip2-opt-vqa", model, exp, cfg)
        save_opt(model, d, odir)
        return
    captions = [s.pred_caption for s in samples]
    ptok = model.tokenizer("a photo of", return_tensors="pt")
    exp = base_expected("blip2-opt-caption",
                        "mmpretrain.models.multimodal.blip2.blip2_caption.Blip2Caption", cfg, {
                            **plain(captured["kwargs"]),
                            "note": "all hard-coded in Blip2Caption.predict; max_new_tokens = "
                                    "max_txt_len (30); generation from inputs_embeds "
                                    "([queries; prompt embeds]); transformers 4.33 starts "
                                    "input_ids as [[bos=2]] (a placeholder, not fed to the model), "
                                    "so caption_ids = [2] + new tokens and the beam length "
                                    "normalisation divides by 1 + number of new tokens",
                            "vision_out_indices": "-2 (as the real config: the last ViT layer "
                                                  "is computed but its output is not used)"})
    exp.update({
        "qformer_bert_config": qcfg,
        "opt_config": ocfg,
        "opt_tokenizer": {"class": type(model.tokenizer).__name__, "bpe_vocab": n_vocab,
                          "eos_token_id_used": model.eos_token_id,
                          "eos_note": "the toolbox uses tokenizer('\\n').input_ids[0] as eos"},
        "prompt": "a photo of",
        "prompt_ids": ptok.input_ids.tolist(),
        "captions": captions,
        "caption_ids": captured["ids"].tolist(),
        "state_dict_note": "Blip2Caption.state_dict() drops every text_backbone.* key (its "
                           "_igonre_saving_llm_keys_hook); the tiny OPT used is saved beside it in "
                           "opt/ (save_pretrained + tokenizer files)",
    })
    d = save(out_dir, "blip2-opt-caption", model, exp, cfg)
    save_opt(model, d, odir)


def save_opt(model, d, odir):
    """The tiny OPT beside the .pth, which holds none (Hugging Face layout, for --language-model)."""
    od = os.path.join(d, "opt")
    if os.path.isdir(od):
        shutil.rmtree(od)
    model.text_backbone.config._name_or_path = "tiny stand-in for facebook/opt-2.7b"
    model.text_backbone.save_pretrained(od, safe_serialization=False)
    for fn in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(odir, fn), os.path.join(od, fn))


# ----------------------------------------------------------------------------------------------
# NLVR2 (configs/blip/blip-base_8xb32_nlvr.py) and RefCOCO grounding (configs/blip/blip-base_8xb16_refcoco.py)
PAIRS = [(0, 1), (2, 3), (1, 2), (3, 0)]  # photo indices: (left, right)
SENTENCES = ["the left image shows a person", "there is a cat in one of the images",
             "both images show a red car near a tree", "a woman"]
EXPRESSIONS = ["the man on the left", "a red cat", "the small blue car near the tree", "tree"]
GROUND_BOXES = [(4.0, 8.0, 40.0, 60.0), (10.0, 0.0, 64.0, 30.0), (0.0, 0.0, 64.0, 64.0), (20.0, 16.0, 36.0, 48.0)]


def task_nlvr(photos_dir, out_dir, tmp):
    cfg = dict(type="BlipNLVR",
               vision_backbone=tiny_vit(),
               tokenizer=dict(type="BlipTokenizer", name_or_path="bert-base-uncased"),
               multimodal_backbone=dict(type="BertModel", config=med_config(nlvr=True, num_hidden_layers=8),
                                        add_pooling_layer=False),
               data_preprocessor=dict(PREPROC))
    build = json.loads(json.dumps(cfg))
    build["tokenizer"]["name_or_path"] = blip_tokenizer_cfg(tmp)
    build["multimodal_backbone"]["config"] = transformers.BertConfig(**cfg["multimodal_backbone"]["config"])
    torch.manual_seed(SEED)
    model = MODELS.build(build)
    reinit(model, SEED)
    model.eval()
    photos = load_images(photos_dir, model.data_preprocessor)
    # BlipNLVR.forward's input: (B, 2, C, H, W), permuted and flattened to all left images then all right ones
    pairs = torch.stack([torch.stack([photos[a], photos[b]]) for a, b in PAIRS])
    samples = [DataSample(text=t, gt_label=i % 2) for i, t in enumerate(SENTENCES)]
    with torch.no_grad():
        out = model(pairs, [DataSample(text=t) for t in SENTENCES], mode="predict")
        loss = model(pairs, samples, mode="loss")["loss"]
    scores = [s.pred_score.tolist() for s in out]
    exp = base_expected("nlvr", "mmpretrain.models.multimodal.blip.blip_nlvr.BlipNLVR", cfg, {
        "predict": "BlipNLVR.forward(images (B, 2, C, H, W), samples, mode='predict'): softmax of the head's "
                   "logits; pred_label = argmax (1: the sentence is true)",
        "text": "tokenizer(texts, padding='longest', truncation=True, max_length=35); the first token stays "
                "[CLS] (the original BLIP puts [ENC] there; the toolbox does not)",
        "merge": "cross-attention outputs of the two images averaged in layers 0-5, merged by merge_layer from "
                 "layer 6 (hard-coded in the toolbox's BertSelfOutput); 8 layers here so both kinds are present",
        "loss": "cross entropy against gt_label = index % 2"})
    exp.update({"tokenizer": tok_info(model.tokenizer), "pairs": PAIRS, "sentences": SENTENCES,
                "scores": scores, "labels": [int(s.pred_label) for s in out], "gt_labels": [i % 2 for i in range(4)],
                "loss": float(loss)})
    save(out_dir, "nlvr", model, exp, cfg)


def grounding_tokenizer_cfg(tmp):
    """The fixtures' vocabulary with BERT's [unused339] ... [unused980] after it: the grounding head reads its
    prefix and bin tokens by these names (bert-base-uncased has them among its unused tokens)."""
    d = os.path.join(tmp, "bert-base-uncased-grounding")
    if not os.path.isdir(d):
        os.makedirs(d)
        with open(VOCAB) as f:
            words = f.read().split("\n")
        words = [w for w in words if w] + [f"[unused{339 + i}]" for i in range(642)]
        with open(os.path.join(d, "vocab.txt"), "w") as f:
            f.write("\n".join(words) + "\n")
    return d


def task_grounding(photos_dir, out_dir, tmp):
    vocab = 212 + 642 + 2
    med = med_config(vocab_size=vocab)
    cfg = dict(type="BlipGrounding",
               visual_encoder=tiny_vit(),
               text_encoder=dict(type="XBertEncoder", med_config=med),
               multimodal_encoder=dict(type="XBertEncoder", med_config=med),
               tokenizer=dict(type="BlipTokenizer", name_or_path="bert-base-uncased"),
               head=dict(type="GroundingHead", decoder=dict(type="XBertLMHeadDecoder", med_config=med),
                         box_l1_loss_coeff=4.0, box_giou_loss_coeff=2.0),
               data_preprocessor=dict(PREPROC))
    build = json.loads(json.dumps(cfg))
    build["tokenizer"]["name_or_path"] = grounding_tokenizer_cfg(tmp)
    torch.manual_seed(SEED)
    model = MODELS.build(build)
    reinit(model, SEED)
    model.eval()
    images = load_images(photos_dir, model.data_preprocessor)
    sizes = []
    for name in PHOTOS:
        import PIL.Image
        with PIL.Image.open(photo_path(photos_dir, name)) as im:
            sizes.append(im.size)  # (width, height)
    # the toolbox's Resize records scale_factor (w_scale, h_scale); predict maps the box back with it
    scales = [(IMG / w, IMG / h) for w, h in sizes]
    with torch.no_grad():
        out = model.predict(images, [DataSample(text=t, scale_factor=sc) for t, sc in zip(EXPRESSIONS, scales)])
        unit = model.predict(images, [DataSample(text=t) for t in EXPRESSIONS])
        train = [DataSample(text=t, box=torch.tensor(b), img_shape=(IMG, IMG)) for t, b in zip(EXPRESSIONS, GROUND_BOXES)]
        losses = model.loss(images, train)
    head = model.grounding_head
    exp = base_expected("grounding", "mmpretrain.models.multimodal.blip.blip_grounding.BlipGrounding", cfg, {
        "predict": "BlipGrounding.predict: text encoder (mode text) -> multimodal encoder (encoder_embeds, against "
                   "the image) -> GroundingHead.predict: 4 greedy steps from [unused339] over [image; text] states, "
                   "logits + bbox_prob_mask (-10000 outside the bins), bins -> cxcywh / 640 -> xyxy, clipped to "
                   "[0, 1], times the input size over scale_factor",
        "prompt": "BlipGrounding sets self.prompt = 'localize instance: ' and never reads it: the text is the "
                  "expression as given, padding longest, max_length 128, [CLS] first",
        "loss": "GroundingHead.loss on boxes xyxy in img_shape pixels: per-token CE of the 4 bins weighted by "
                "L1 * 4 (per coordinate, clamp 0-5) and (1 - GIoU) * 2 of the argmax box, mean"})
    exp.update({"tokenizer": tok_info(model.tokenizer), "expressions": EXPRESSIONS, "photo_sizes": sizes,
                "scale_factors": scales,
                "pred_bboxes": [s.pred_bboxes.tolist()[0] for s in out],
                "pred_bboxes_unit_scale": [s.pred_bboxes.tolist()[0] for s in unit],
                "prefix_id": int(head.prefix_ids[0]), "bin_ids": [int(head.target_ids[0]), int(head.target_ids[-1])],
                "train_boxes": GROUND_BOXES, "losses": {k: float(v) for k, v in losses.items()}})
    d = save(out_dir, "grounding", model, exp, cfg)
    shutil.copy(os.path.join(grounding_tokenizer_cfg(tmp), "vocab.txt"), os.path.join(d, "vocab.txt"))


TASKS = {"caption": task_caption, "retrieval": task_retrieval, "vqa": task_vqa,
         "blip2-retrieval": task_blip2_retrieval, "blip2-opt-caption": task_blip2_opt_caption,
         "blip2-opt-vqa": task_blip2_opt_vqa, "nlvr": task_nlvr, "grounding": task_grounding}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", default=DEFAULT_PHOTOS)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "upstream"))
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    init_default_scope("mmpretrain")
    PHOTOS_DIR[0] = args.photos
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.tasks.split(","):
            TASKS[t](args.photos, args.out, tmp)


if __name__ == "__main__":
    main()
