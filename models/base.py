"""What every BLIP role shares: a checkpoint placed on a device, image normalisation, token helpers."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.device import autocast, resolve_device, resolve_precision
from models.images import load_image, resize
from models.loading import Checkpoint, ModelLoadError, load_checkpoint
from models.patches import Kernels, choose_kernels, pack_linear_weights


class Role:
    """Base of Captioner, Matcher and Answerer. Construct from a checkpoint or with `Role.load(name)`."""

    task: str = ""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", precision: str = "auto",
                 kernels: Kernels = Kernels()):
        if checkpoint.task != self.task:
            raise ModelLoadError(f"{checkpoint.spec.name!r} is a {checkpoint.task} model, not a {self.task} model")
        if checkpoint.family != "blip":
            raise ModelLoadError(
                f"{checkpoint.spec.name!r} is a {checkpoint.family} model; capfilt's {self.task} role runs BLIP models only so far"
            )
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = checkpoint.model.to(self.device).eval()
        if self.precision == "bf16":
            # Weights cast once: autocast would re-cast every weight at every decoding step (1.4x slower
            # generation measured on this CPU). Inputs are cast by the autocast context around each forward.
            self.model = self.model.to(torch.bfloat16)
            if self.device.type == "cpu" and kernels.packed_weights:
                pack_linear_weights(self.model)
        choose_kernels(self.model, kernels)
        self.tokenizer = checkpoint.tokenizer
        self.image_size = checkpoint.image_size
        self._mean = torch.tensor(checkpoint.image_mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(checkpoint.image_std, device=self.device).view(1, 3, 1, 1) * 255.0
        text = self.model.config.text_config
        self.bos_id = text.bos_token_id  # [DEC]
        self.sep_id = text.sep_token_id  # [SEP], the decoder's eos
        self.pad_id = text.pad_token_id
        self.enc_id = self._enc_token_id()

    @classmethod
    def load(cls, name: str, device: str = "auto", precision: str = "auto", kernels: Kernels = Kernels()):
        return cls(load_checkpoint(name, task=cls.task), device=device, precision=precision, kernels=kernels)

    def _enc_token_id(self) -> int:
        # BLIP's [ENC] follows [DEC] in the vocabulary (30523 after 30522); some tokenizers do not name it.
        found = self.tokenizer.convert_tokens_to_ids("[ENC]")
        if found is not None and found != self.tokenizer.unk_token_id:
            return int(found)
        return int(self.bos_id) + 1

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

    @torch.inference_mode()
    def encode_images(self, images) -> torch.Tensor:
        """One vision-transformer pass: (B, patches + 1, hidden)."""
        with self.autocast():
            return self.model.vision_model(pixel_values=self.pixel_values(images))[0]

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
