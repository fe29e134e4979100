"""The BLIP model that training works on: one vision encoder shared by the three heads BLIP pre-trains together.

`BlipTrainee` holds the modules of transformers' BLIP classes under their own names (vision_model, text_encoder,
text_decoder, vision_proj, text_proj, itm_head) plus ITC's learned temperature, so a trained model exports to a
captioner (BlipForConditionalGeneration), a filter (BlipForImageTextRetrieval) or a VQA model
(BlipForQuestionAnswering) by copying state dicts, and any of those initialises a trainee back. With `tie=True`
(the default of pre-training; `--no-tie-text` turns it off), a fresh trainee's text encoder and decoder share every
layer but self-attention, as in BLIP's pre-training: the language-modelling loss then also trains the cross-attention
that ITM uses, which is what lets the filter see position (RESULTS.md). Fine-tuning starts from exported roles, which
are untied again (BLIP fine-tunes each task's model on its own).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipTextConfig,
)
from transformers.models.blip.modeling_blip import BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel, BlipTextModel

from models import tiny
from models.loading import CLIP_MEAN, CLIP_STD, load_checkpoint
from models.patches import patch_blip
from models.task_models import (GROUNDING_BINS, NLVR_MERGE_LAYER, BlipForGrounding, BlipForNlvr, box_token_ids,
                                box_tokens)
from training import objectives

EXPORT_CLASSES = {
    "caption": BlipForConditionalGeneration,
    "retrieval": BlipForImageTextRetrieval,
    "vqa": BlipForQuestionAnswering,
}
# Which trainee modules each exported class carries.
EXPORT_MODULES = {
    "caption": ("vision_model", "text_decoder"),
    "retrieval": ("vision_model", "text_encoder", "vision_proj", "text_proj", "itm_head"),
    "vqa": ("vision_model", "text_encoder", "text_decoder"),
}
TEMPERATURE = 0.07  # ITC's initial temperature, learned, clamped to [0.001, 0.5] as in BLIP


def world_tokenizer():
    """The tokenizer of the shape world: tiny.py's WordPiece base plus every word the world's texts use."""
    from shapeworld.captions import VOCABULARY

    base = tiny.tiny_vocabulary()
    known = set(base)
    return tiny.build_tokenizer(base + [word for word in VOCABULARY if word not in known])


def world_config(tokenizer, size: str = "small") -> BlipConfig:
    return tiny.tiny_config(len(tokenizer), size=size)


def sincos_positions(vision_config) -> torch.Tensor:
    """2-D sine-cosine position embeddings for the patch grid (as MAE initialises its ViT), zero for [CLS]:
    (1, 1 + grid * grid, hidden). A learned table started this way knows where each patch is from step one; from a
    random start, a small ViT trained on the shape world took ~800 steps to tell left from right (RESULTS.md)."""
    grid, hidden = vision_config.image_size // vision_config.patch_size, vision_config.hidden_size
    quarter = hidden // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def encode(coordinate: torch.Tensor) -> torch.Tensor:
        angles = coordinate.flatten()[:, None].double() * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.zeros(1, 1 + grid * grid, hidden, dtype=torch.float64)
    table[0, 1:, : 4 * quarter] = torch.cat([encode(columns), encode(rows)], dim=1)
    return table.float()


class BlipTrainee(nn.Module):
    def __init__(self, config: BlipConfig):
        super().__init__()
        self.config = config
        text: BlipTextConfig = config.text_config
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)
        self.text_decoder = BlipTextLMHeadModel(text)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, config.image_text_hidden_size)
        self.text_proj = nn.Linear(text.hidden_size, config.image_text_hidden_size)
        self.itm_head = nn.Linear(text.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(TEMPERATURE))
        patch_blip(self)  # fused vision attention; the cross-attention mask fix

    def forward(self, pixel_values: torch.Tensor, batch, names=objectives.OBJECTIVES, generator=None,
                margin: float = 0.0):
        """The losses `names` for a tokenized batch (objectives.tokenize / tokenize_questions)."""
        return objectives.losses(self, pixel_values, batch, names, generator, margin)

    @classmethod
    def create(cls, config: BlipConfig, seed: int, tie: bool = False, vision: str | None = None) -> BlipTrainee:
        """A fresh model; the same seed gives the same weights. Initialised the way transformers initialises BLIP;
        `tie`: see tie_text. `vision`: a folder holding a pre-trained vision encoder (a classify job's vision/
        export) that replaces the fresh one, as BLIP starts from a ViT pre-trained on ImageNet."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            modules = {task: EXPORT_CLASSES[task](config) for task in ("caption", "retrieval")}
            init_vision(modules["retrieval"].vision_model)
        trainee = cls(config)
        trainee.load_parts(modules["retrieval"], EXPORT_MODULES["retrieval"])
        trainee.load_parts(modules["caption"], ("text_decoder",))
        if vision is not None:
            load_vision(trainee.vision_model, vision)
        if tie:
            trainee.tie_text()
        return trainee

    def tie_text(self) -> None:
        """Share the text encoder's embeddings (and so the decoder's output matrix, tied to them), cross-attention
        and feed-forward layers with the decoder (BLIP's pre-training: the two differ only in self-attention,
        bidirectional or causal)."""
        decoder = self.text_decoder.bert
        decoder.embeddings = self.text_encoder.embeddings
        self.text_decoder.cls.predictions.decoder.weight = self.text_encoder.embeddings.word_embeddings.weight
        for encoder_layer, decoder_layer in zip(self.text_encoder.encoder.layer, decoder.encoder.layer):
            decoder_layer.crossattention = encoder_layer.crossattention
            decoder_layer.intermediate = encoder_layer.intermediate
            decoder_layer.output = encoder_layer.output

    @classmethod
    def from_checkpoints(cls, names: dict[str, str]) -> tuple[BlipTrainee, object]:
        """A trainee from exported roles ({task: zoo name or directory}); later tasks overwrite shared modules."""
        loaded = {task: load_checkpoint(name, task=task) for task, name in names.items()}
        first = next(iter(loaded.values()))
        trainee = cls(first.model.config)
        for task, checkpoint in loaded.items():
            trainee.load_parts(checkpoint.model, EXPORT_MODULES[task])
        return trainee, first.tokenizer

    def load_parts(self, model: nn.Module, parts) -> None:
        for part in parts:
            getattr(self, part).load_state_dict(getattr(model, part).state_dict())

    def export(self, task: str, directory, tokenizer) -> Path:
        """Write this model as the transformers class of `task` in Hugging Face layout (safetensors)."""
        directory = Path(directory)
        with torch.random.fork_rng(devices=[]):
            model = EXPORT_CLASSES[task](self.config)
        for part in EXPORT_MODULES[task]:
            getattr(model, part).load_state_dict(getattr(self, part).state_dict())
        model.eval().save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)
        write_preprocessor(directory, self.config.vision_config.image_size)
        return directory


class TaskTrainee(nn.Module):
    """A fine-tuning of one of capfilt's own task models (NLVR2, grounding) from a pre-trained BLIP's exported roles,
    trained as the model itself and exported as it is (`save_pretrained`)."""

    task = ""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.config = model.config
        patch_blip(self.model)  # fused vision attention; the cross-attention mask fix

    @classmethod
    def from_base(cls, roles: dict[str, str]) -> tuple[TaskTrainee, object]:
        """From a pre-training's exported caption and retrieval models ({task: directory})."""
        missing = {"caption", "retrieval"} - set(roles)
        if missing:
            raise ValueError(f"fine-tuning {cls.task} starts from a pre-trained model's caption and retrieval exports; "
                             f"{', '.join(sorted(missing))} missing")
        base = {task: load_checkpoint(roles[task], task=task) for task in ("caption", "retrieval")}
        trainee = cls.build(base["retrieval"].model, base["caption"].model, base["retrieval"].tokenizer)
        return trainee, trainee.tokenizer

    def export(self, task: str, directory, tokenizer=None) -> Path:
        if task != self.task:
            raise ValueError(f"a {self.task} trainee exports a {self.task} model, not {task!r}")
        directory = Path(directory)
        self.model.eval().save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        write_preprocessor(directory, self.config.vision_config.image_size)
        return directory


class NlvrTrainee(TaskTrainee):
    task = "nlvr"

    @classmethod
    def build(cls, retrieval, caption, tokenizer) -> NlvrTrainee:
        """BLIP's start for NLVR2: the ITM encoder's cross-attention copied into both images' attentions (self0,
        self1) and output projections (dense0, dense1); the merging layers and the head fresh."""
        config = BlipConfig.from_dict(retrieval.config.to_dict())
        config.nlvr_merge_layer = min(NLVR_MERGE_LAYER, config.text_config.num_hidden_layers // 2)
        config.architectures = ["BlipForNlvr"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = BlipForNlvr(config)
        model.vision_model.load_state_dict(retrieval.vision_model.state_dict())
        state = {}
        for key, value in retrieval.text_encoder.state_dict().items():
            if ".crossattention.self." in key:
                for twin in ("self0", "self1"):
                    state[key.replace(".crossattention.self.", f".crossattention.{twin}.")] = value
            elif ".crossattention.output.dense." in key:
                for twin in ("dense0", "dense1"):
                    state[key.replace(".output.dense.", f".output.{twin}.")] = value
            else:
                state[key] = value
        missing, unexpected = model.text_encoder.load_state_dict(state, strict=False)
        if unexpected or any("merge_layer" not in key for key in missing):
            raise ValueError(f"the pre-trained text encoder does not fit the NLVR2 model: {missing or unexpected}")
        return cls(model, tokenizer)

    def forward(self, pixel_values, batch, names=("nlvr",), generator=None, margin: float = 0.0):
        return {"nlvr": objectives.nlvr_loss(self.model, pixel_values, batch)}


class GroundingTrainee(TaskTrainee):
    task = "grounding"

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__(model, tokenizer)
        ids = box_token_ids(tokenizer)
        self.box_tokens = (ids[0], ids[1], GROUNDING_BINS)

    @classmethod
    def build(cls, retrieval, caption, tokenizer) -> GroundingTrainee:
        """The toolbox's start for grounding: both text encoders from the pre-trained ITM encoder, the box decoder
        from its captioner's, the vocabulary grown by the box tokens ([unused339] ... [unused980], which BERT's
        vocabulary holds and the world's lacks: their rows fresh)."""
        vocabulary = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
        grown = tiny.build_tokenizer(vocabulary + box_tokens())
        config = BlipConfig.from_dict(retrieval.config.to_dict())
        config.text_config.vocab_size = len(grown)
        config.grounding_bins = GROUNDING_BINS
        config.architectures = ["BlipForGrounding"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = BlipForGrounding(config)
        model.vision_model.load_state_dict(retrieval.vision_model.state_dict())
        for target, source in ((model.text_encoder, retrieval.text_encoder),
                               (model.multimodal_encoder, retrieval.text_encoder),
                               (model.text_decoder, caption.text_decoder)):
            _load_growing(target, source.state_dict())
        model.tie_weights()
        return cls(model, grown)

    def forward(self, pixel_values, batch, names=("grounding",), generator=None, margin: float = 0.0):
        return {"grounding": objectives.grounding_loss(self.model, pixel_values, batch, self.box_tokens)}


def _load_growing(module: nn.Module, state: dict) -> None:
    """Load `state` into `module`, whose vocabulary-sized tensors are larger: their first rows are copied."""
    own = module.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if own[key].shape == value.shape:
                own[key].copy_(value)
            else:
                own[key][: value.shape[0]].copy_(value)


class VisionClassifier(nn.Module):
    """BLIP's vision encoder with a linear classifier per label on its [CLS] state: the ImageNet role, pre-training
    the ViT on labelled images before BLIP's pre-training starts from it. Only the encoder is exported ("vision")."""

    def __init__(self, config: BlipConfig, classes: dict[str, int]):
        super().__init__()
        self.config = config
        self.vision_model = BlipVisionModel(config.vision_config)
        hidden = config.vision_config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in classes.items()})
        patch_blip(self)  # the vision attention kernel, as in BlipTrainee

    @classmethod
    def create(cls, config: BlipConfig, classes: dict[str, int], seed: int) -> VisionClassifier:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config, classes)
            init_vision(model.vision_model)
        return model

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor, names=("classify",), generator=None,
                margin: float = 0.0) -> dict[str, torch.Tensor]:
        """{"classify": the sum over labels of the cross-entropy}; `labels` (B, labels) in the heads' order."""
        cls = self.vision_model(pixel_values=pixel_values).last_hidden_state[:, 0]
        return {"classify": sum(F.cross_entropy(head(cls).float(), labels[:, k])
                                for k, head in enumerate(self.heads.values()))}

    def export(self, task: str, directory, tokenizer=None) -> Path:
        if task != "vision":
            raise ValueError(f"a vision classifier exports its vision encoder only (task 'vision'), not {task!r}")
        directory = Path(directory)
        self.vision_model.eval().save_pretrained(directory, safe_serialization=True)
        write_preprocessor(directory, self.config.vision_config.image_size)
        return directory


def init_vision(vision: BlipVisionModel) -> None:
    """ViT's own initialisation (transformers leaves BLIP's ViT weights at ~1e-10; ViT draws them with std 0.02)
    and the sine-cosine position table."""
    for param in vision.parameters():
        if param.dim() > 1:
            nn.init.trunc_normal_(param, std=0.02)
    with torch.no_grad():
        vision.embeddings.position_embedding.copy_(sincos_positions(vision.config))


def load_vision(vision: BlipVisionModel, folder) -> None:
    """Load a vision encoder exported by a classify job (safetensors only) into `vision`; ValueError when the
    folder holds none or one of another shape."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} holds no exported vision encoder (model.safetensors)")
    try:
        vision.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise ValueError(f"the vision encoder in {str(folder)!r} does not fit this model's: {exc}") from None


def write_preprocessor(directory: Path, size: int) -> None:
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "BlipImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
         "resample": 3, "do_normalize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
         "do_rescale": True, "rescale_factor": 1 / 255}, indent=1) + "\n", encoding="utf-8")
