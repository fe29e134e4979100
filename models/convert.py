"""Convert the seeds' `.pth` checkpoints (the toolbox's, LAVIS's, the original BLIP's) into Hugging Face layout.

    python -m models convert SRC.pth --to DIR [--task caption|retrieval|vqa] [--tokenizer DIR]

The file is read with `torch.load(weights_only=True)` only: an archive that needs anything but tensors and plain
containers is refused and nothing in it runs. The key mapping is data (models/layouts.py). The conversion is exact
or refused: every parameter of the target model comes from the source with its shape, every source key is used or
dropped for a stated reason, and anything else is an error naming the keys. DIR then loads like any local model.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models import layouts
from models.names import ModelLoadError

# BLIP's ViT is timm's, whose LayerNorm eps is 1e-6; transformers' BlipVisionConfig defaults to 1e-5.
BLIP_VISION_EPS = 1e-6
BERT_EPS = 1e-12
# The width of one attention head in every released BLIP and BLIP-2 (ViT-B/L, BERT-base): a checkpoint holds the
# weights but not the number of heads, which is the width divided by this. $CAPFILT_HEAD_DIM sets another for a
# model trained with other heads (the tests' tiny upstream models have 8-wide heads).
HEAD_DIM = 64
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_HELP = ("BLIP's tokenizer is bert-base-uncased's (capfilt adds [DEC] and [ENC] as BLIP does): get it where "
                  "the hub is reachable (`hf download bert-base-uncased vocab.txt tokenizer_config.json --local-dir "
                  "DIR`, or any Salesforce/blip-* model directory) and pass --tokenizer DIR, set CAPFILT_TOKENIZER=DIR, "
                  "or put its vocab.txt beside the .pth")
CONVERSION_RECORD = "capfilt_conversion.json"


@dataclass
class Conversion:
    """What a conversion did: enough to say it was exact."""

    source: str
    sha256: str
    layout: str
    task: str
    used: int
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> why it was left out
    fixes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines = [f"{self.source}: {self.layout} layout, {self.task} model; {self.used} tensors used, "
                 f"{len(self.dropped)} dropped"]
        lines += [f"  dropped {count}: {reason}" for reason, count in sorted(reasons.items())]
        lines += [f"  fixed: {fix}" for fix in self.fixes]
        return "\n".join(lines)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` file, read safely: torch's weights-only unpickler, which builds tensors and plain
    containers and refuses everything else before it runs."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{str(path)!r} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise ModelLoadError(f"{str(path)!r} needs more than tensors and plain containers to unpickle, so capfilt "
                             f"refuses it and ran nothing in it ({detail.strip()[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file raises many types; the user needs one line
        raise ModelLoadError(f"{str(path)!r} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                             f"{str(exc)[:160]})") from None
    state = _unwrap(saved)
    if state is None:
        raise ModelLoadError(f"{str(path)!r} holds no state dict (expected a dict of tensors, or one under 'model' "
                             "or 'state_dict')")
    return state


def _unwrap(saved) -> dict[str, torch.Tensor] | None:
    if isinstance(saved, dict):
        tensors = {k: v for k, v in saved.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(saved):
            return tensors
        for name in ("model", "state_dict", "module"):
            if isinstance(saved.get(name), dict):
                inner = _unwrap(saved[name])
                if inner is not None:
                    return inner
    return None


def map_keys(state: dict[str, torch.Tensor], layout: layouts.Layout, task: str):
    """(target state dict, dropped {key: reason}); unknown keys are an error naming them."""
    _, components = layouts.BLIP_TASKS[task]
    mapped, dropped, unknown = {}, {}, []
    for key, tensor in state.items():
        target, reason = layouts.rename(layout, key)
        if target is None and reason is None:
            unknown.append(key)
        elif target is None:
            dropped[key] = reason
        elif target.split(".", 1)[0] not in components:
            dropped[key] = f"not part of a {task} model (the checkpoint holds more than one task's parts)"
        else:
            mapped[target] = tensor
    if unknown:
        raise ModelLoadError(f"{len(unknown)} keys of this {layout.name} checkpoint have no place in a {task} model "
                             f"and no reason to be dropped: {_some(unknown)}")
    return mapped, dropped


def _some(keys, n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def blip_config(mapped: dict[str, torch.Tensor], tokenizer, head_dim: int):
    """A BlipConfig read off the weights' shapes (heads: the width over `head_dim`); BLIP's own eps and token ids."""
    from transformers import BlipConfig

    def count(pattern: str) -> int:
        return len({m.group(1) for k in mapped if (m := re.match(pattern, k))})

    def shape(key: str) -> tuple[int, ...]:
        if key not in mapped:
            raise ModelLoadError(f"the checkpoint has no {key} (after renaming), which every BLIP model has")
        return tuple(mapped[key].shape)

    width = shape("vision_model.embeddings.class_embedding")[-1]
    if width % head_dim:
        raise ModelLoadError(f"the vision width {width} is not a multiple of the head width {head_dim} "
                             "(--head-dim, $CAPFILT_HEAD_DIM)")
    patch = shape("vision_model.embeddings.patch_embedding.weight")[-1]
    grid = round((shape("vision_model.embeddings.position_embedding")[1] - 1) ** 0.5)
    vision = dict(hidden_size=width, num_hidden_layers=count(r"vision_model\.encoder\.layers\.(\d+)\."),
                  num_attention_heads=width // head_dim,
                  intermediate_size=shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0],
                  image_size=grid * patch, patch_size=patch, layer_norm_eps=BLIP_VISION_EPS)
    text_prefix = next(p for p in ("text_decoder.bert.", "text_encoder.") if f"{p}embeddings.word_embeddings.weight" in mapped)
    vocab, text_width = shape(f"{text_prefix}embeddings.word_embeddings.weight")
    sep = tokenizer.convert_tokens_to_ids("[SEP]")
    text = dict(vocab_size=vocab, hidden_size=text_width, num_attention_heads=text_width // head_dim,
                num_hidden_layers=count(re.escape(text_prefix) + r"encoder\.layer\.(\d+)\."),
                intermediate_size=shape(f"{text_prefix}encoder.layer.0.intermediate.dense.weight")[0],
                max_position_embeddings=shape(f"{text_prefix}embeddings.position_embeddings.weight")[0],
                encoder_hidden_size=shape(f"{text_prefix}encoder.layer.0.crossattention.self.key.weight")[1],
                layer_norm_eps=BERT_EPS, bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
                pad_token_id=tokenizer.pad_token_id, sep_token_id=sep, eos_token_id=sep)
    projection = mapped["vision_proj.weight"].shape[0] if "vision_proj.weight" in mapped else 256
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=projection,
                      image_text_hidden_size=projection)


def blip_tokenizer(directory: Path, vocab_size: int):
    """BLIP's tokenizer from a directory: a BERT vocabulary with [DEC] and [ENC] added after it, as BLIP's
    init_tokenizer does (bert-base-uncased's 30522 tokens become 30524), or a BLIP model's tokenizer as it is."""
    from transformers import AutoTokenizer, BertTokenizer

    if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    elif (directory / "vocab.txt").is_file():
        # vocab=, not vocab_file=: transformers 5 builds a 5-token vocabulary from vocab_file=.
        tokenizer = BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    else:
        raise ModelLoadError(f"{str(directory)!r} holds no tokenizer (vocab.txt, tokenizer.json); {TOKENIZER_HELP}")
    if tokenizer.convert_tokens_to_ids("[SEP]") in (None, tokenizer.unk_token_id):
        raise ModelLoadError(f"the tokenizer in {str(directory)!r} is not BERT's WordPiece (no [SEP]); {TOKENIZER_HELP}")
    added = [t for t in ("[DEC]", "[ENC]") if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if added:
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) != vocab_size:
        raise ModelLoadError(f"the tokenizer in {str(directory)!r} has {len(tokenizer)} tokens with [DEC] and [ENC], "
                             f"but the checkpoint's vocabulary has {vocab_size}; {TOKENIZER_HELP}")
    return tokenizer, added


def find_tokenizer(source: Path, tokenizer: str | os.PathLike | None) -> Path:
    """The tokenizer directory: the one named, else $CAPFILT_TOKENIZER, else the .pth's own folder when it holds one."""
    for candidate in (tokenizer, os.environ.get("CAPFILT_TOKENIZER")):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_dir():
                raise ModelLoadError(f"the tokenizer directory {str(path)!r} does not exist; {TOKENIZER_HELP}")
            return path
    if any((source.parent / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        return source.parent
    raise ModelLoadError(f"{str(source)!r} needs a tokenizer, which a .pth does not hold; {TOKENIZER_HELP}")


def _fill_tied(model, mapped: dict[str, torch.Tensor], fixes: list[str]) -> None:
    """transformers ties the decoder's output layer to its word embeddings (and the two biases): a source that
    saved only one side fills the other; one whose two sides differ is not the model transformers runs."""
    for target, origin in (getattr(model, "_tied_weights_keys", None) or {}).items():
        if origin not in mapped:
            continue
        if target not in mapped:
            mapped[target] = mapped[origin]
            fixes.append(f"{target} tied to {origin}, as the original decoder is")
        elif not torch.equal(mapped[target], mapped[origin]):
            raise ModelLoadError(f"{target} differs from {origin}, which transformers ties it to: this checkpoint's "
                                 "decoder is not a BLIP decoder")


def convert(source: str | os.PathLike, to: str | os.PathLike, task: str | None = None,
            tokenizer: str | os.PathLike | None = None, head_dim: int | None = None,
            replace: bool = True) -> Conversion:
    """Convert a `.pth` into a Hugging Face-layout directory `to` (written whole, or not at all)."""
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering

    source = Path(source)
    state = read_state_dict(source)
    if any(key.startswith(layouts.BLIP2_MARKERS) for key in state):
        raise ModelLoadError(f"{str(source)!r} is a BLIP-2 checkpoint: converting BLIP-2 .pth files is not built yet; "
                             "the zoo's blip2-* names load the same models from the hub")
    layout = layouts.detect(state)
    if layout is None:
        raise ModelLoadError(f"{str(source)!r} is in no layout capfilt knows (the toolbox's, LAVIS's, the original "
                             f"BLIP's); its keys start {_some({k.split('.')[0] for k in state}, 4)}")
    found = layouts.task_of(layout, state)
    if found in layouts.NOT_YET:
        raise ModelLoadError(f"{str(source)!r} is a {found} checkpoint: {layouts.NOT_YET[found]}")
    if found is None:
        raise ModelLoadError(f"{str(source)!r}: its components tell no task capfilt converts "
                             f"({_some({k.split('.')[0] for k in state}, 8)})")
    choices = ("caption", "retrieval") if found == "pretrain" else (found,)
    if task is None and found == "pretrain":
        raise ModelLoadError(f"{str(source)!r} is a pre-trained BLIP holding a captioner and a filter: name one "
                             "with --task caption or --task retrieval")
    task = task or found
    if task not in choices:
        raise ModelLoadError(f"{str(source)!r} is a {found} checkpoint; it converts to {' or '.join(choices)}, "
                             f"not {task}")
    mapped, dropped = map_keys(state, layout, task)
    text_key = next(k for k in mapped if k.endswith("embeddings.word_embeddings.weight"))
    tok, added = blip_tokenizer(find_tokenizer(source, tokenizer), mapped[text_key].shape[0])
    fixes = [f"vision LayerNorm eps {BLIP_VISION_EPS} (the original ViT's; transformers' default is 1e-5)"]
    if added:
        fixes.append(f"{' and '.join(added)} added to the tokenizer after its {len(tok) - len(added)} tokens, as "
                     "BLIP's init_tokenizer does")
    head_dim = head_dim or int(os.environ.get("CAPFILT_HEAD_DIM") or HEAD_DIM)
    config = blip_config(mapped, tok, head_dim)
    model_class = {"caption": BlipForConditionalGeneration, "retrieval": BlipForImageTextRetrieval,
                   "vqa": BlipForQuestionAnswering}[task]
    with torch.device("meta"):
        model = model_class(config)
    _fill_tied(model, mapped, fixes)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected))
    wrong = sorted(k for k in set(mapped) & set(expected) if tuple(mapped[k].shape) != tuple(expected[k].shape))
    if missing or extra or wrong:
        parts = [f"{len(missing)} parameters of the {task} model are not in it ({_some(missing)})" if missing else "",
                 f"{len(extra)} renamed keys are not in the model ({_some(extra)})" if extra else "",
                 "shapes differ for " + ", ".join(f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}"
                                                  for k in wrong[:4]) if wrong else ""]
        raise ModelLoadError(f"{str(source)!r} does not convert exactly: " + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v.float().contiguous() for k, v in mapped.items()}, assign=True, strict=True)
    model.tie_weights()
    record = Conversion(str(source), file_sha256(source), layout.name, task, len(state) - len(dropped), dropped, fixes)
    _write(model.eval(), tok, config.vision_config.image_size, record, Path(to), replace)
    return record


def _write(model, tokenizer, image_size: int, record: Conversion, to: Path, replace: bool) -> None:
    """Write the directory beside its final name and rename it into place: a reader sees all of it or none. Without
    `replace`, a directory already there (another process's conversion of the same file) is kept."""
    to.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{to.name}.", dir=to.parent))
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        processor = {"image_processor_type": "BlipImageProcessor", "do_resize": True, "resample": 3,
                     "size": {"height": image_size, "width": image_size}, "do_rescale": True,
                     "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
                     "image_std": list(CLIP_STD), "do_convert_rgb": True}
        (staging / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
        (staging / CONVERSION_RECORD).write_text(json.dumps(record.__dict__, indent=2) + "\n")
        if to.exists() and replace:
            shutil.rmtree(to)
        if not to.exists():
            staging.rename(to)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def cache_root() -> Path:
    return Path(os.environ.get("CAPFILT_CACHE") or Path.home() / ".cache" / "capfilt") / "converted"


def converted(source: str | os.PathLike, task: str | None = None) -> Path:
    """The Hugging Face-layout directory of a `.pth`, converted once into a cache keyed by the file's hash (and the
    task, for a pre-trained checkpoint that holds two)."""
    source = Path(source).expanduser()
    if not source.is_file():
        raise ModelLoadError(f"{str(source)!r} does not exist")
    digest = file_sha256(source)[:16]
    directory = cache_root() / (f"{digest}-{task}" if task else digest)
    if not (directory / CONVERSION_RECORD).is_file():
        try:
            convert(source, directory, task=task, replace=False)
        except ModelLoadError as exc:
            if task is None and "name one with --task" in str(exc):
                raise ModelLoadError(f"{str(source)!r} is a pre-trained BLIP holding a captioner and a filter: "
                                     "convert it with `python -m models convert FILE.pth --to DIR --task caption` "
                                     "(or retrieval) and name DIR") from None
            raise
    return directory
