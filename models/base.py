"""What every role shares (`Role`: a checkpoint placed on a device, its precision, image normalisation, token
helpers) and what BLIP's roles add (`BlipRole`: BLIP's [DEC] / [SEP] / [ENC] token conventions)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.device import autocast, resolve_device, resolve_precision
from models.images import load_image, resize
from models.loading import Checkpoint, ModelLoadError, load_checkpoint
from models.patches import Kernels, choose_kernels, pack_linear_weights


def keep_fp32(model: torch.nn.Module) -> None:
    """Return to fp32 what the model's class keeps there (BLIP-2's Q-Former and query tokens, as transformers'
    `from_pretrained(dtype=bfloat16)` does: their layer norms and softmax stay fp32; autocast runs their matmuls in
    bf16)."""
    for name in getattr(model, "_keep_in_fp32_modules", None) or ():
        part = getattr(model, name, None)
        if isinstance(part, torch.nn.Parameter):
            part.data = part.data.float()
        elif isinstance(part, torch.nn.Module):
            part.float()


class Role:
    """A model in one role (captioner, filter, answerer, scorer) of one family. Construct from a checkpoint or with
    `Role.load(name)`; `image_size` runs the vision encoder at another size than its checkpoint's, its position
    embeddings interpolated (as a protocol such as LAVIS's 364 px BLIP-2 captioning asks)."""

    task: str = ""
    family: str = "blip"

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", precision: str = "auto",
                 kernels: Kernels = Kernels(), image_size: int | None = None):
        if checkpoint.task != self.task:
            raise ModelLoadError(f"{checkpoint.spec.name!r} is a {checkpoint.task} model, not a {self.task} model")
        if checkpoint.family != self.family:
            raise ModelLoadError(f"{checkpoint.spec.name!r} is a {checkpoint.family} model, not a {self.family} one")
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = checkpoint.model.to(self.device).eval()
        if self.precision == "bf16":
            # Weights cast once: autocast would re-cast every weight at every decoding step (1.4x slower
            # generation measured on this CPU). Inputs are cast by the autocast context around each forward.
            self.model = self.model.to(torch.bfloat16)
            keep_fp32(self.model)
            if self.device.type == "cpu" and kernels.packed_weights:
                pack_linear_weights(self.model)
        choose_kernels(self.model, kernels)
        self.tokenizer = checkpoint.tokenizer
        self.native_image_size = checkpoint.image_size
        self.image_size = int(image_size or checkpoint.image_size)
        self._mean = torch.tensor(checkpoint.image_mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(checkpoint.image_std, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def load(cls, name: str, device: str = "auto", precision: str = "auto", kernels: Kernels = Kernels(),
             image_size: int | None = None):
        return cls(load_checkpoint(name, task=cls.task), device=device, precision=precision, kernels=kernels,
                   image_size=image_size)

    @property
    def embedding_dim(self) -> int:
        """Width of the role's image-text embeddings (filters and scorers)."""
        config = self.model.config
        return int(getattr(config, "image_text_hidden_size", None) or config.projection_dim)

    def vision_weights(self) -> dict[str, torch.Tensor]:
        """The vision encoder's weights, to compare with another role's (equal weights: one vision pass for both)."""
        return self.model.vision_model.state_dict()

    def autocast(self):
        return autocast(self.device, self.precision)

    def prepare(self, images: Sequence) -> np.ndarray:
        """Paths, PIL images or arrays -> a uint8 batch (B, S, S, 3) at this model's input size."""
        return np.stack([resize(load_image(image), self.image_size) for image in images])

    def pixel_values(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> normalised float (B, 3, S, S) on the model's device."""
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # arrays from Ray's object store are read-only; torch wants writable memory
        batch = torch.as_tensor(images)
        expected = (self.image_size, self.image_size, 3)
        if batch.dtype != torch.uint8 or batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(f"expected uint8 images of shape (B, {self.image_size}, {self.image_size}, 3), "
                             f"got {batch.dtype} {tuple(batch.shape)}; Role.prepare makes them")
        batch = batch.to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float()
        return (batch - self._mean) / self._std

    def share_vision(self, other: Role) -> bool:
        """Use `other`'s vision encoder when it is this one's: equal weights (every tensor compared, never a name),
        image size, normalisation, device and precision. Then one copy sits in memory, and vision states computed by
        either role serve both. Returns whether it is shared."""
        if (self.image_size, self.device, self.precision) != (other.image_size, other.device, other.precision):
            return False
        if not (torch.equal(self._mean, other._mean) and torch.equal(self._std, other._std)):
            return False
        mine, theirs = self.vision_weights(), other.vision_weights()
        if mine.keys() != theirs.keys() or not all(
                mine[k].shape == theirs[k].shape and mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k])
                for k in mine):
            return False
        self.model.vision_model = other.model.vision_model
        return True

    @torch.inference_mode()
    def encode_images(self, images) -> torch.Tensor:
        """One vision-transformer pass: (B, patches + 1, hidden)."""
        with self.autocast():
            return self.model.vision_model(pixel_values=self.pixel_values(images),
                                           interpolate_pos_encoding=self.image_size != self.native_image_size)[0]

    def tokenize(self, texts: Sequence[str], max_length: int, first_token: int | None = None):
        """Padded token ids and mask on the device; `first_token` replaces [CLS] (BLIP's [ENC] / [DEC] convention)."""
        encoded = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        )
        ids = encoded["input_ids"].to(self.device)
        if first_token is not None:
            ids[:, 0] = first_token
        return ids, encoded["attention_mask"].to(self.device)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


class BlipRole(Role):
    """Base of BLIP's Captioner, Matcher and Answerer: BERT's tokenizer with [DEC] as the decoder's start, [SEP] as
    its end and [ENC] first for the image-grounded encoder."""

    def __init__(self, checkpoint: Checkpoint, **kwargs):
        super().__init__(checkpoint, **kwargs)
        text = self.model.config.text_config
        self.bos_id = text.bos_token_id  # [DEC]
        self.sep_id = text.sep_token_id  # [SEP], the decoder's eos
        self.pad_id = text.pad_token_id
        self.enc_id = self._enc_token_id()

    def decode(self, ids) -> list[str]:
        """Token ids (a (B, L) tensor or a list of 1-d tensors) -> texts in BLIP's decoded form: WordPiece's spaces
        around punctuation cleaned up ("a man's hat", not "a man ' s hat"), as the transformers BLIP ran (4.15) did
        by default; transformers 5 no longer does unless asked."""
        rows = [row.tolist() for row in ids]
        return [text.strip() for text in
                self.tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=True)]

    def _enc_token_id(self) -> int:
        # BLIP's [ENC] follows [DEC] in the vocabulary (30523 after 30522); some tokenizers do not name it.
        found = self.tokenizer.convert_tokens_to_ids("[ENC]")
        if found is not None and found != self.tokenizer.unk_token_id:
            return int(found)
        return int(self.bos_id) + 1
