"""The key layouts of the seeds' `.pth` checkpoints, as data: one table per source layout, read by models/convert.py.

A layout names, for each of its top-level components (a key prefix), the Hugging Face component it becomes and the
rules that rename the keys inside it; the keys it drops on purpose, with the reason; and how its components tell
the task. A rule is (source regex, target template), matched against the whole key after the component prefix;
the first rule that matches wins, and a key no rule matches is an error naming it. Torch-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Inside a component whose module names already are transformers' (BLIP's med.py is BERT's code, as is the
# toolbox's XBert): every key keeps its name.
SAME = ((r"(.+)", r"\1"),)

# The timm-style ViT of the original BLIP and of LAVIS -> transformers' BlipVisionModel.
TIMM_VIT = (
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"encoder.layers.\1.mlp.fc\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
)

# The toolbox's (mmpretrain's) VisionTransformer -> transformers' BlipVisionModel.
MM_VIT = (
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.projection\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"layers\.(\d+)\.ln1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"layers\.(\d+)\.ln2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"layers\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"layers\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (r"layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
    (r"ln1\.(weight|bias)", r"post_layernorm.\1"),
)

# BLIP-2's EVA ViT-g: no bias on the keys, so q_bias and v_bias are apart; the converter joins them into
# transformers' one qkv bias (q, zeros, v). LAVIS's names, then the toolbox's.
EVA_QV = (
    (r"blocks\.(\d+)\.attn\.(q|v)_bias", r"encoder.layers.\1.self_attn.\2_bias"),
    (r"layers\.(\d+)\.attn\.(q|v)_bias", r"encoder.layers.\1.self_attn.\2_bias"),
)
LAVIS_EVA = TIMM_VIT[:-1] + EVA_QV[:1]  # EVA has no final norm of its own: BLIP-2 adds ln_vision
MM_EVA = MM_VIT[:-1] + EVA_QV[1:]
POST_NORM = ((r"(weight|bias)", r"post_layernorm.\1"),)
# BLIP-2's Q-Former, a BERT with query layers: its embeddings' LayerNorm is transformers' qformer.layernorm, its word
# and position embeddings are the retrieval model's own `embeddings` (a key starting "/" is absolute).
QFORMER = (
    (r"embeddings\.LayerNorm\.(weight|bias)", r"layernorm.\1"),
    (r"embeddings\.(word|position)_embeddings\.weight", r"/embeddings.\1_embeddings.weight"),
    (r"encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)", r"encoder.layer.\1.\2.attention.\3"),
    (r"(encoder\.layer\.\d+\.(?:attention|crossattention)\.output\..+)", r"\1"),
    (r"(encoder\.layer\.\d+\.(?:intermediate|output)(?:_query)?\..+)", r"\1"),
)
WHOLE = ((r"", r""),)  # a key that is a component by itself (query_tokens)

# What a BLIP model of each task is made of, by its transformers class: the components every one of its parameters
# belongs to. The converter fills each of them from the source, or refuses.
BLIP_TASKS = {
    "caption": ("BlipForConditionalGeneration", ("vision_model", "text_decoder")),
    "retrieval": ("BlipForImageTextRetrieval", ("vision_model", "text_encoder", "vision_proj", "text_proj", "itm_head")),
    "vqa": ("BlipForQuestionAnswering", ("vision_model", "text_encoder", "text_decoder")),
    # capfilt's own classes (models/task_models.py): transformers has none for these two tasks
    "nlvr": ("BlipForNlvr", ("vision_model", "text_encoder", "cls_head")),
    "grounding": ("BlipForGrounding", ("vision_model", "text_encoder", "multimodal_encoder", "text_decoder")),
}
BLIP2_TASKS = {
    "caption": ("Blip2ForConditionalGeneration",
                ("vision_model", "qformer", "query_tokens", "language_projection", "language_model")),
    "retrieval": ("Blip2ForImageTextRetrieval", ("vision_model", "qformer", "query_tokens", "embeddings",
                                                 "vision_projection", "text_projection", "itm_head")),
}
BLIP2_TASKS["vqa"] = BLIP2_TASKS["caption"]  # BLIP-2 answers with its captioning model and a question prompt
MODEL_TASKS = {"blip": BLIP_TASKS, "blip2": BLIP2_TASKS}
# The tasks a checkpoint of a found task converts to, where more than that one (the first is the default, or None
# where the user must choose).
CHOICES = {("blip", "pretrain"): (None, "caption", "retrieval"), ("blip2", "caption"): ("caption", "vqa")}
# Attention heads where the width over 64 is not the count: EVA ViT-g, 1408 wide in 16 heads of 88.
KNOWN_HEADS = {1408: 16}
# (layout, task) a layout can hold that capfilt refuses, with why.
NOT_YET = {
    ("lavis", "nlvr"): ("LAVIS's and the original BLIP's NLVR2 model puts [ENC] first and no fixture of its code "
                        "verifies a conversion; the seed's NLVR2 checkpoint is the toolbox's "
                        "(blip-base_3rdparty_nlvr), which converts"),
}
GROUNDING_BUFFERS = ("the grounding head's bin mask and its prefix and bin token ids, which capfilt reads off the "
                     "tokenizer's [unused339] ... [unused980] (checked equal at conversion)")

QFORMER_LM_HEAD = "the Q-Former's language-modelling head (a pre-training objective; no role reads it)"
TRAINING_ONLY = "used in training only (momentum distillation, ITC's temperature and feature queues)"
REBUILT = "a buffer transformers rebuilds itself"


@dataclass(frozen=True)
class Component:
    target: str | dict  # the transformers component it becomes; per task where it differs
    rules: tuple = SAME

    def target_for(self, task: str) -> str:
        return self.target if isinstance(self.target, str) else self.target[task]


@dataclass(frozen=True)
class Layout:
    name: str
    family: str  # blip | blip2
    description: str
    marker: str  # a regex matching the start of keys only this layout's checkpoints have
    components: dict  # source prefix (with its trailing dot) -> Component
    dropped: tuple  # (regex over the whole key, reason), checked before the components
    tasks: tuple  # (task, the source prefixes that tell it): the first whose prefixes are all present wins
    # tasks whose upstream model reads the vision encoder's last layer but one: that layer is dropped
    penultimate_vision: tuple = ()
    # what the upstream sets on a language model's config, by model type (BLIP-2)
    language_model_config: dict = field(default_factory=dict)


LAVIS = Layout(
    name="lavis",
    family="blip",
    description="LAVIS and the original BLIP code (salesforce/LAVIS, salesforce/BLIP): the same module names",
    marker=r"visual_encoder\.blocks\.",
    components={
        "visual_encoder.": Component("vision_model", TIMM_VIT),
        "text_encoder.": Component("text_encoder"),
        "text_decoder.": Component("text_decoder"),
        "vision_proj.": Component("vision_proj"),
        "text_proj.": Component("text_proj"),
        "itm_head.": Component("itm_head"),
    },
    dropped=(
        (r"(visual_encoder|text_encoder|vision_proj|text_proj|text_decoder)_m\..*", TRAINING_ONLY),
        (r"(image|text|idx)_queue|queue_ptr|ptr_queue|temp", TRAINING_ONLY),
        (r".*\.position_ids", REBUILT),
    ),
    tasks=(
        ("nlvr", ("cls_head.",)),
        ("pretrain", ("text_decoder.", "itm_head.")),
        ("vqa", ("text_encoder.", "text_decoder.")),
        ("caption", ("text_decoder.",)),
        ("retrieval", ("itm_head.",)),
    ),
)

TOOLBOX = Layout(
    name="toolbox",
    family="blip",
    description="the OpenMMLab toolbox (mmpretrain): the seeds' download links",
    marker=r"(visual_encoder|vision_backbone)\.layers\.",
    components={
        "visual_encoder.": Component("vision_model", MM_VIT),  # the captioner's name for it
        "vision_backbone.": Component("vision_model", MM_VIT),
        "text_backbone.": Component("text_encoder"),  # retrieval
        "multimodal_backbone.": Component("text_encoder"),  # VQA
        "seq_gen_head.decoder.": Component("text_decoder"),
        "vqa_head.decoder.": Component("text_decoder"),
        "vision_neck.": Component("vision_proj"),
        "text_neck.": Component("text_proj"),
        "multimodal_head.fc.": Component("itm_head"),
        "head.": Component("cls_head"),  # NLVR2's MLP (the retrieval head's queues are dropped before)
        "text_encoder.": Component("text_encoder"),  # grounding
        "multimodal_encoder.": Component("multimodal_encoder"),
        "grounding_head.decoder.": Component("text_decoder"),
    },
    dropped=(
        (r"(vision_backbone|text_backbone|vision_neck|text_neck)_m\..*", TRAINING_ONLY),
        (r"temp|head\.(temp|image_queue|text_queue|idx_queue|queue_ptr)", TRAINING_ONLY),
        (r".*\.position_ids", REBUILT),
        (r"grounding_head\.(bbox_prob_mask|prefix_ids|target_ids)", GROUNDING_BUFFERS),
    ),
    tasks=(
        ("grounding", ("grounding_head.",)),
        ("nlvr", ("head.0.",)),
        ("vqa", ("vqa_head.",)),
        ("caption", ("seq_gen_head.",)),
        ("retrieval", ("multimodal_head.",)),
    ),
)

LAVIS_BLIP2 = Layout(
    name="lavis",
    family="blip2",
    description="LAVIS's BLIP-2 (Blip2OPT, Blip2T5, Blip2Qformer)",
    marker=r"Qformer\.",
    components={
        "visual_encoder.": Component("vision_model", LAVIS_EVA),
        "ln_vision.": Component("vision_model", POST_NORM),
        "Qformer.bert.": Component("qformer", QFORMER),
        "query_tokens": Component("query_tokens", WHOLE),
        "opt_proj.": Component("language_projection"),
        "opt_model.": Component("language_model"),
        "t5_proj.": Component("language_projection"),
        "t5_model.": Component("language_model"),
        "vision_proj.": Component("vision_projection"),
        "text_proj.": Component("text_projection"),
        "itm_head.": Component("itm_head"),
    },
    dropped=(
        (r"Qformer\.cls\..*", QFORMER_LM_HEAD),
        (r"temp", TRAINING_ONLY),
        (r".*\.position_ids", REBUILT),
    ),
    tasks=(("caption", ("opt_proj.",)), ("caption", ("t5_proj.",)), ("retrieval", ("itm_head.",))),
    # Blip2T5 sets Flan-T5's activation to exact gelu (its config says gelu_new, tanh's approximation)
    language_model_config={"t5": {"dense_act_fn": "gelu"}},
)

TOOLBOX_BLIP2 = Layout(
    name="toolbox",
    family="blip2",
    description="the toolbox's BLIP-2 (Blip2Caption, Blip2VQA, Blip2Retrieval)",
    marker=r"multimodal_backbone\.bert\.",
    components={
        "vision_backbone.": Component("vision_model", MM_EVA),
        "ln_vision_backbone.": Component("vision_model", POST_NORM),
        "multimodal_backbone.bert.": Component("qformer", QFORMER),
        "query_tokens": Component("query_tokens", WHOLE),
        "vision_neck.fc.": Component({"caption": "language_projection", "vqa": "language_projection",
                                      "retrieval": "vision_projection"}),
        "text_neck.fc.": Component("text_projection"),
        "multimodal_head.fc.": Component("itm_head"),
        "text_backbone.": Component("language_model"),
    },
    dropped=(
        (r"multimodal_backbone\.cls\..*", QFORMER_LM_HEAD),
        (r"temp", TRAINING_ONLY),
        (r".*\.position_ids", REBUILT),
    ),
    tasks=(("retrieval", ("multimodal_head.",)), ("caption", ("vision_neck.",))),
    penultimate_vision=("caption", "vqa"),  # its caption and VQA configs read out_indices=-2
)

# BLIP-2 first: its checkpoints also hold keys a BLIP layout's marker could match
LAYOUTS = (LAVIS_BLIP2, TOOLBOX_BLIP2, LAVIS, TOOLBOX)


def detect(keys) -> Layout | None:
    """The layout whose marker (a regex at the start of a key) one of the keys matches, or None."""
    for layout in LAYOUTS:
        if any(re.match(layout.marker, key) for key in keys):
            return layout
    return None


def task_of(layout: Layout, keys) -> str | None:
    """The task the keys' components tell ("pretrain": a pre-trained checkpoint that holds several tasks' parts)."""
    present = set(keys)
    for task, prefixes in layout.tasks:
        if all(any(key.startswith(prefix) for key in present) for prefix in prefixes):
            return task
    return None


def rename(layout: Layout, key: str, task: str) -> tuple[str | None, str | None]:
    """(target key, None) for a key the layout maps, (None, reason) for one it drops, (None, None) for one it does
    not know."""
    for pattern, reason in layout.dropped:
        if re.fullmatch(pattern, key):
            return None, reason
    for prefix, component in layout.components.items():
        if key.startswith(prefix):
            inner = key[len(prefix):]
            for pattern, template in component.rules:
                match = re.fullmatch(pattern, inner)
                if match:
                    inside = match.expand(template)
                    if inside.startswith("/"):
                        return inside[1:], None
                    target = component.target_for(task)
                    return (f"{target}.{inside}" if inside else target), None
            return None, None
    return None, None
