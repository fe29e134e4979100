"""capfilt's own model classes for the two BLIP tasks transformers has no class for: NLVR2 (`BlipForNlvr`, the
original BLIP's `BLIP_NLVR` as the toolbox runs it) and RefCOCO grounding (`BlipForGrounding`, the toolbox's
`BlipGrounding`). Both are transformers `PreTrainedModel`s made of transformers' BLIP parts (safetensors, configs,
`from_pretrained`), with parameter names the converter's toolbox mapping reaches unchanged.

NLVR2: the sentence runs through the image-grounded text encoder, whose cross-attention layers attend to the two
images apart (`self0`, `self1`), project each (`dense0`, `dense1`), and join them: averaged in the first half of
the layers, concatenated and merged by a linear layer from `config.nlvr_merge_layer` on (6 of BLIP-base's 12). The
[CLS] state feeds a 2-layer MLP; class 1 is "true".

Grounding: a text-only BERT encodes the referring expression; a second BERT takes its states (not tokens) and
cross-attends to the image; the decoder starts from the box prefix token and cross-attends to the image states and
the fused text states together, writing the box (cx, cy, w, h) as 4 tokens of `config.grounding_bins + 1` bins.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BlipConfig, BlipTextLMHeadModel, BlipTextModel, BlipVisionModel
from transformers.models.blip.modeling_blip import BlipPreTrainedModel
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

NLVR_MERGE_LAYER = 6  # BLIP's med.py: layers from the 7th on concatenate and merge the two images' outputs
GROUNDING_BINS = 640  # the toolbox's image_res: 641 bin tokens, box coordinate k / 640
BOX_PREFIX = "[unused339]"  # the decoder's first token; the bins are [unused340] ... [unused980]


def bin_tokens(bins: int = GROUNDING_BINS) -> list[str]:
    return [f"[unused{340 + i}]" for i in range(bins + 1)]


def box_tokens(bins: int = GROUNDING_BINS) -> list[str]:
    """The grounding decoder's own tokens: the prefix, then the bins."""
    return [BOX_PREFIX, *bin_tokens(bins)]


def box_token_ids(tokenizer, bins: int = GROUNDING_BINS) -> list[int]:
    """Their ids in `tokenizer` (its unknown token's id for one it lacks)."""
    return tokenizer.convert_tokens_to_ids(box_tokens(bins))


class TwinOutput(nn.Module):
    """The two images' attention outputs projected apart, averaged or (`merge`) concatenated and merged, then
    BERT's dropout, residual and LayerNorm."""

    def __init__(self, config, merge: bool):
        super().__init__()
        self.dense0 = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense1 = nn.Linear(config.hidden_size, config.hidden_size)
        if merge:  # BLIP defines an activation beside it and never applies it; neither does capfilt
            self.merge_layer = nn.Linear(config.hidden_size * 2, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context0, context1, input_tensor):
        first, second = self.dense0(context0), self.dense1(context1)
        if hasattr(self, "merge_layer"):
            joined = self.merge_layer(torch.cat([first, second], dim=-1))
        else:
            joined = (first + second) / 2
        return self.LayerNorm(self.dropout(joined) + input_tensor)


class TwinCrossAttention(nn.Module):
    """NLVR2's cross-attention in place of a BlipTextLayer's: `encoder_hidden_states` holds the two images' states
    concatenated along the tokens (B, 2N, D), as `BlipForNlvr` passes them; each half gets its own attention."""

    def __init__(self, config, layer_idx: int, merge: bool):
        super().__init__()
        self.self0 = BlipTextSelfAttention(config, is_cross_attention=True, layer_idx=layer_idx)
        self.self1 = BlipTextSelfAttention(config, is_cross_attention=True, layer_idx=layer_idx)
        self.output = TwinOutput(config, merge)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **kwargs):
        half = encoder_hidden_states.shape[1] // 2
        masks = (None, None) if attention_mask is None else (attention_mask[..., :half], attention_mask[..., half:])
        context0, _ = self.self0(hidden_states, encoder_hidden_states=encoder_hidden_states[:, :half],
                                 encoder_attention_mask=masks[0])
        context1, _ = self.self1(hidden_states, encoder_hidden_states=encoder_hidden_states[:, half:],
                                 encoder_attention_mask=masks[1])
        return self.output(context0, context1, hidden_states), None


class BlipForNlvr(BlipPreTrainedModel):
    config_class = BlipConfig
    main_input_name = "pixel_values"

    def __init__(self, config: BlipConfig):
        super().__init__(config)
        text = config.text_config
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)
        merge_from = getattr(config, "nlvr_merge_layer", NLVR_MERGE_LAYER)
        for index, layer in enumerate(self.text_encoder.encoder.layer):
            layer.crossattention = TwinCrossAttention(text, index, merge=index >= merge_from)
        width = text.hidden_size
        self.cls_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
        self.post_init()

    def forward(self, input_ids, attention_mask, pixel_values=None, image_states=None):
        """Logits (B, 2) of sentence b about its two images: `pixel_values` (B, 2, 3, S, S), or their vision
        states `image_states` (B, 2, N, D). The sentence's first token is the tokenizer's [CLS], as the toolbox's."""
        if image_states is None:
            pairs = pixel_values.shape[0]
            image_states = self.vision_model(pixel_values=pixel_values.flatten(0, 1))[0].unflatten(0, (pairs, 2))
        states = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                   encoder_hidden_states=image_states.flatten(1, 2), return_dict=True)
        return self.cls_head(states.last_hidden_state[:, 0, :])


class BlipForGrounding(BlipPreTrainedModel):
    config_class = BlipConfig
    main_input_name = "pixel_values"
    _tied_weights_keys = {  # the decoder's, named from here as transformers' BlipForConditionalGeneration does
        "text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias",
        "text_decoder.cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: BlipConfig):
        super().__init__(config)
        text = config.text_config
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(text, add_pooling_layer=False)  # run without images (its cross-attention unused)
        self.multimodal_encoder = BlipTextModel(text, add_pooling_layer=False)  # from the text states (its embeddings unused)
        self.text_decoder = BlipTextLMHeadModel(text)
        self.post_init()

    def fuse(self, image_states, input_ids, attention_mask):
        """(the decoder's encoder states, their mask): the image's states followed by the expression's, encoded
        alone and then against the image."""
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        fused = self.multimodal_encoder(encoder_embeds=text.last_hidden_state, attention_mask=attention_mask,
                                        encoder_hidden_states=image_states, return_dict=True).last_hidden_state
        image_mask = attention_mask.new_ones(image_states.shape[:2])
        return torch.cat([image_states, fused], dim=1), torch.cat([image_mask, attention_mask], dim=1)

    def box_logits(self, box_ids, states, mask, bin_range: tuple[int, int]):
        """The decoder's logits after each of `box_ids` (prefix, then bins), every token outside the bins
        [first, last] pushed down by 10,000 as the toolbox masks them."""
        logits = self.text_decoder(input_ids=box_ids, encoder_hidden_states=states, encoder_attention_mask=mask,
                                   return_dict=True).logits
        outside = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
        outside[bin_range[0]:bin_range[1] + 1] = False
        return logits + outside.to(logits.dtype) * -10000.0

    def forward(self, input_ids, attention_mask, box_ids, bin_range, pixel_values=None, image_states=None):
        if image_states is None:
            image_states = self.vision_model(pixel_values=pixel_values)[0]
        states, mask = self.fuse(image_states, input_ids, attention_mask)
        return self.box_logits(box_ids, states, mask, bin_range)


CLASSES = {"BlipForNlvr": BlipForNlvr, "BlipForGrounding": BlipForGrounding}


def model_class(architecture: str) -> type:
    """The class of a config's architecture name: transformers' own, or one of capfilt's above."""
    import transformers

    return CLASSES.get(architecture) or getattr(transformers, architecture)
