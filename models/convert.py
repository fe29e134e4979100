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

from models import layouts, shapes, task_models
from models.names import ModelLoadError
from models.shapes import BLIP2_LN_VISION_EPS, BLIP_VISION_EPS, HEAD_DIM

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_HELP = ("BLIP's tokenizer is bert-base-uncased's (capfilt adds [DEC] and [ENC] as BLIP does): get it where "
                  "the hub is reachable (`hf download bert-base-uncased vocab.txt tokenizer_config.json --local-dir "
                  "DIR`, or any Salesforce/blip-* model directory) and pass --tokenizer DIR, set CAPFILT_TOKENIZER=DIR, "
                  "or put its vocab.txt beside the .pth")
LM_TOKENIZER_HELP = ("a BLIP-2 captioner reads its language model's tokenizer (facebook/opt-2.7b's for the OPT models, "
                     "google/flan-t5-xl's for the T5 ones): get it where the hub is reachable (`hf download "
                     "facebook/opt-2.7b --local-dir DIR`) and pass --language-model DIR (or set $CAPFILT_LANGUAGE_MODEL) or "
                     "--tokenizer DIR")
IMAGE_TOKEN = "<image>"  # where transformers' BLIP-2 puts the query embeddings in the language model's input
CONVERSION_RECORD = "capfilt_conversion.json"


@dataclass
class Conversion:
    """What a conversion did: enough to say it was exact."""

    source: str
    sha256: str
    layout: str
    task: str
    used: int
    # LayerNorms whose eps differs from their config's (transformers' BLIP-2 has one vision eps): capfilt's loader
    # sets them, {module path: eps}
    layer_norm_eps: dict[str, float] = field(default_factory=dict)
    # config values the upstream sets that transformers' config classes rebuild otherwise (T5Config turns
    # gated-gelu back into gelu_new): capfilt's loader sets them before the model is built, {dotted path: value}
    config_overrides: dict = field(default_factory=dict)
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
    """(target state dict, dropped {key: reason}, origin {target key: source key}); unknown keys are an error
    naming them."""
    _, components = layouts.MODEL_TASKS[layout.family][task]
    mapped, dropped, origin, unknown = {}, {}, {}, []
    for key, tensor in state.items():
        target, reason = layouts.rename(layout, key, task)
        if target is None and reason is None:
            unknown.append(key)
        elif target is None:
            dropped[key] = reason
        elif target.split(".", 1)[0] not in components:
            dropped[key] = f"not part of a {task} model (the checkpoint holds more than one task's parts)"
        else:
            mapped[target], origin[target] = tensor, key
    if unknown:
        raise ModelLoadError(f"{len(unknown)} keys of this {layout.name} checkpoint have no place in a {task} model "
                             f"and no reason to be dropped: {_some(unknown)}")
    return mapped, dropped, origin


def _some(keys, n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def blip_tokenizer(directory: Path, vocab_size: int, extra: tuple[str, ...] = ("[DEC]", "[ENC]")):
    """BLIP's tokenizer from a directory: a BERT vocabulary with [DEC] and [ENC] added after it, as BLIP's
    init_tokenizer does (bert-base-uncased's 30522 tokens become 30524; BLIP-2's Q-Former adds [DEC] alone), or a
    BLIP model's tokenizer as it is."""
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
    added = [t for t in extra if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if "[DEC]" in added:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" in added:
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) != vocab_size:
        raise ModelLoadError(f"the tokenizer in {str(directory)!r} has {len(tokenizer)} tokens with "
                             f"{' and '.join(extra)}, but the checkpoint's vocabulary has {vocab_size}; {TOKENIZER_HELP}")
    return tokenizer, added


def lm_tokenizer(directory: Path):
    """A BLIP-2 language model's tokenizer with transformers' <image> token added (where the queries go)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - a missing or foreign tokenizer raises many types
        raise ModelLoadError(f"{str(directory)!r} holds no readable tokenizer ({type(exc).__name__}); "
                             f"{LM_TOKENIZER_HELP}") from None
    added = []
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
        added.append(IMAGE_TOKEN)
    return tokenizer, added


def find_tokenizer(source: Path, tokenizer: str | os.PathLike | None, *fallbacks, help: str = TOKENIZER_HELP) -> Path:
    """The tokenizer directory: the one named, else $CAPFILT_TOKENIZER, else the fallbacks (a language model's
    directory), else the .pth's own folder when it holds one."""
    for candidate in (tokenizer, os.environ.get("CAPFILT_TOKENIZER"), *fallbacks):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_dir():
                raise ModelLoadError(f"the tokenizer directory {str(path)!r} does not exist; {help}")
            return path
    if any((source.parent / name).is_file() for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json")):
        return source.parent
    raise ModelLoadError(f"{str(source)!r} needs a tokenizer, which a .pth does not hold; {help}")


def _fill_tied(model, mapped: dict[str, torch.Tensor], fixes: list[str]) -> None:
    """transformers ties output layers to word embeddings (BLIP's decoder and its biases, OPT's lm_head): a source
    that saved only one side fills the other; one whose two sides differ is not the model transformers runs."""
    for target, origin in model.get_expanded_tied_weights_keys(all_submodels=True).items():
        if origin not in mapped:
            continue
        if target not in mapped:
            mapped[target] = mapped[origin]
            fixes.append(f"{target} tied to {origin}, as the original is")
        elif not mapped[target].is_meta and not torch.equal(mapped[target], mapped[origin]):
            if target.startswith("language_model."):  # a language model's own checkpoint decides (Flan-T5's
                fixes.append(f"{target} kept apart from {origin}, as the checkpoint holds both")  # lm_head)
                continue
            raise ModelLoadError(f"{target} differs from {origin}, which transformers ties it to: this checkpoint "
                                 "is not the model transformers runs")


def _join_qv_bias(mapped: dict[str, torch.Tensor], origin: dict[str, str], fixes: list[str]) -> None:
    """EVA ViT-g keeps q_bias and v_bias apart (no key bias); transformers' BLIP-2 holds one qkv bias (q, 0, v)."""
    joined = 0
    for key in [k for k in mapped if k.endswith(".self_attn.q_bias")]:
        layer = key[: -len("q_bias")]
        v_key = layer + "v_bias"
        if v_key not in mapped:
            raise ModelLoadError(f"{origin[key]} has no v_bias beside it")
        q, v = mapped.pop(key), mapped.pop(v_key)
        mapped[layer + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
        origin[layer + "qkv.bias"] = origin.pop(key)
        origin.pop(v_key)
        joined += 1
    if joined:
        fixes.append(f"q_bias and v_bias of {joined} ViT layers joined into transformers' qkv bias (its key part "
                     "zero, as EVA's)")


def _drop_last_vision_layer(mapped, origin, dropped) -> None:
    """The toolbox's BLIP-2 captioner reads its ViT's last layer but one (out_indices=-2): the last is unused."""
    layers = shapes.Shapes(mapped, HEAD_DIM).indices(r"vision_model\.encoder\.layers\.(\d+)\.")
    prefix = f"vision_model.encoder.layers.{layers[-1]}."
    for key in [k for k in mapped if k.startswith(prefix)]:
        del mapped[key]
        dropped[origin.pop(key)] = ("the ViT's last layer, which the toolbox's BLIP-2 captioner computes but does "
                                    "not read (out_indices=-2)")


def _language_model(mapped: dict[str, torch.Tensor], directory: str | os.PathLike | None, tokenizer,
                    head_dim: int, fixes: list[str]):
    """The language model's config, and its weights added to `mapped` when the .pth holds none (the toolbox never
    saves the frozen LLM; LAVIS's released files leave it out too): both from a Hugging Face directory."""
    import transformers

    in_pth = any(k.startswith("language_model.") for k in mapped)
    if directory is None:
        if not in_pth:
            raise ModelLoadError("this BLIP-2 checkpoint holds no language model (the frozen LLM is not saved in it): "
                                 "name its Hugging Face directory with --language-model DIR or $CAPFILT_LANGUAGE_MODEL "
                                 "(facebook/opt-2.7b for "
                                 "the toolbox's and LAVIS's OPT models, `hf download facebook/opt-2.7b --local-dir "
                                 "DIR` where the hub is reachable)")
        if not any(k.startswith("language_model.model.decoder.") for k in mapped):
            raise ModelLoadError("this BLIP-2 checkpoint's language model is not OPT, whose config capfilt reads off "
                                 "the weights; name the model's Hugging Face directory with --language-model DIR")
        return shapes.opt_config(shapes.Shapes(mapped, head_dim), tokenizer)
    directory = Path(directory).expanduser()
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"the language model directory {str(directory)!r} has no config.json")
    if "auto_map" in json.loads(config_file.read_text(encoding="utf-8")):
        raise ModelLoadError(f"{str(directory)!r} asks for remote code (auto_map); capfilt never runs checkpoint code")
    config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    if in_pth:
        return config
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    transformers.utils.logging.disable_progress_bar()
    try:  # transformers reads .bin files with torch.load(weights_only=True), as read_state_dict does
        model = auto.from_pretrained(directory, dtype=torch.float32, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - corrupt or missing weights raise many types
        raise ModelLoadError(f"cannot load the language model in {str(directory)!r}: {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None
    mapped.update({f"language_model.{k}": v for k, v in model.state_dict().items()})
    fixes.append(f"language model ({config.model_type}, {model.num_parameters():,} parameters) from {directory}, "
                 "as the .pth holds none")
    return config


def _head_dim(head_dim: int | None = None) -> int:
    return head_dim or int(os.environ.get("CAPFILT_HEAD_DIM") or HEAD_DIM)


def _task(source: Path, layout: layouts.Layout, state, task: str | None) -> str:
    found = layouts.task_of(layout, state)
    if (layout.name, found) in layouts.NOT_YET:
        raise ModelLoadError(f"{str(source)!r} is a {found} checkpoint: {layouts.NOT_YET[layout.name, found]}")
    if found is None:
        raise ModelLoadError(f"{str(source)!r}: its components tell no task capfilt converts "
                             f"({_some({k.split('.')[0] for k in state}, 8)})")
    choices = layouts.CHOICES.get((layout.family, found), (found,))
    if task is None and choices[0] is None:
        raise ModelLoadError(f"{str(source)!r} is a pre-trained BLIP holding a captioner and a filter: name one "
                             "with --task caption or --task retrieval")
    task = task or choices[0]
    if task not in choices:
        raise ModelLoadError(f"{str(source)!r} is a {found} checkpoint; it converts to "
                             f"{' or '.join(c for c in choices if c)}, not {task}")
    return task


def convert(source: str | os.PathLike, to: str | os.PathLike, task: str | None = None,
            tokenizer: str | os.PathLike | None = None, head_dim: int | None = None,
            language_model: str | os.PathLike | None = None, replace: bool = True) -> Conversion:
    """Convert a `.pth` into a Hugging Face-layout directory `to` (written whole, or not at all)."""
    source = Path(source)
    model, tok, record = build(read_state_dict(source), source, task, tokenizer, head_dim, language_model)
    record.sha256 = file_sha256(source)
    _write(model.eval(), tok, model.config.vision_config.image_size, record, Path(to), replace)
    return record


def build(state: dict[str, torch.Tensor], source: Path, task: str | None = None,
          tokenizer: str | os.PathLike | None = None, head_dim: int | None = None,
          language_model: str | os.PathLike | None = None):
    """(the transformers model, its tokenizer, the record) of a checkpoint's state dict, read from `source`; with
    meta tensors, the model is on the meta device (the real-size test)."""
    import transformers

    language_model = language_model or os.environ.get("CAPFILT_LANGUAGE_MODEL") or None
    layout = layouts.detect(state)
    if layout is None:
        raise ModelLoadError(f"{str(source)!r} is in no layout capfilt knows (the toolbox's, LAVIS's, the original "
                             f"BLIP's); its keys start {_some({k.split('.')[0] for k in state}, 4)}")
    task = _task(source, layout, state, task)
    mapped, dropped, origin = map_keys(state, layout, task)
    head_dim = _head_dim(head_dim)
    fixes = [f"vision LayerNorm eps {BLIP_VISION_EPS} (the original ViT's; transformers' BLIP default is 1e-5)"]
    norms, overrides = {}, {}
    if layout.family == "blip":
        text_key = next(k for k in mapped if k.endswith("embeddings.word_embeddings.weight"))
        tok, added = blip_tokenizer(find_tokenizer(source, tokenizer), mapped[text_key].shape[0])
        config = shapes.blip_config(mapped, tok, head_dim)
        if task == "grounding":
            _check_bins(state, tok, fixes)
    else:
        if task in layout.penultimate_vision:
            _drop_last_vision_layer(mapped, origin, dropped)
        _join_qv_bias(mapped, origin, fixes)
        norms["vision_model.post_layernorm"] = BLIP2_LN_VISION_EPS
        fixes.append(f"ln_vision eps {BLIP2_LN_VISION_EPS} (torch's default, as upstream; the ViT's own are "
                     f"{BLIP_VISION_EPS}), set by capfilt's loader")
        if task == "retrieval":
            tok, added = blip_tokenizer(find_tokenizer(source, tokenizer), mapped["embeddings.word_embeddings.weight"]
                                        .shape[0], extra=("[DEC]",))
            config = shapes.blip2_config(mapped, task, head_dim)
        else:
            tok, added = lm_tokenizer(find_tokenizer(source, tokenizer, language_model, help=LM_TOKENIZER_HELP))
            text_config = _language_model(mapped, language_model, tok, head_dim, fixes)
            for name, value in layout.language_model_config.get(text_config.model_type, {}).items():
                if getattr(text_config, name, None) != value:
                    fixes.append(f"language model {name} {value} (the {layout.name} model sets it; its config says "
                                 f"{getattr(text_config, name, None)}), set by capfilt's loader")
                    setattr(text_config, name, value)
                    overrides[f"text_config.{name}"] = value
            if len(tok) > text_config.vocab_size:
                raise ModelLoadError(f"the tokenizer has {len(tok)} tokens with {IMAGE_TOKEN}, more than the language "
                                     f"model's {text_config.vocab_size}: it is not this model's tokenizer")
            config = shapes.blip2_config(mapped, task, head_dim, text_config, tok.convert_tokens_to_ids(IMAGE_TOKEN))
    if added:
        why = "where transformers' BLIP-2 puts the queries" if IMAGE_TOKEN in added else "as the original does"
        fixes.append(f"{' and '.join(added)} added to the tokenizer after its {len(tok) - len(added)} tokens, {why}")
    model_class = task_models.model_class(layouts.MODEL_TASKS[layout.family][task][0])
    with torch.device("meta"):
        model = model_class(config)
    _fill_tied(model, mapped, fixes)
    _check_exact(source, task, model.state_dict(), mapped)
    model.load_state_dict({k: v.float().contiguous() for k, v in mapped.items()}, assign=True, strict=True)
    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # its warning on the pairs kept apart: said in `fixes`
    try:  # nothing is missing: equal pairs are tied, pairs the checkpoint holds apart stay apart
        model.tie_weights(missing_keys=set())
    finally:
        transformers.utils.logging.set_verbosity(level)
    return model, tok, Conversion(str(source), "", layout.name, task, len(state) - len(dropped), norms, overrides,
                                  dropped, fixes)


def _check_bins(state: dict[str, torch.Tensor], tokenizer, fixes: list[str]) -> None:
    """The toolbox's grounding head saves its prefix and bin token ids; capfilt reads them off the tokenizer by
    name, so the two must agree."""
    prefix, *bins = task_models.box_token_ids(tokenizer)
    if tokenizer.unk_token_id in (prefix, *bins):
        raise ModelLoadError(f"the tokenizer has no {task_models.BOX_PREFIX} ... [unused980], the box tokens the "
                             f"grounding head decodes into (bert-base-uncased has them); {TOKENIZER_HELP}")
    saved_prefix, saved_bins = (None if saved is None or saved.is_meta else saved for saved in (
        state.get("grounding_head.prefix_ids"), state.get("grounding_head.target_ids")))
    if (saved_prefix is not None and saved_prefix.tolist() != [prefix]) or (
            saved_bins is not None and saved_bins.tolist() != bins):
        raise ModelLoadError(f"the grounding head's box tokens (prefix {_ids(saved_prefix)}, bins {_ids(saved_bins)}) "
                             f"are not the tokenizer's {task_models.BOX_PREFIX} ({prefix}) and [unused340] ... "
                             f"[unused980] ({bins[0]} ... {bins[-1]}): it is not this model's tokenizer")
    fixes.append(f"box tokens read off the tokenizer: prefix {task_models.BOX_PREFIX} = {prefix}, "
                 f"{len(bins)} bins {bins[0]} ... {bins[-1]} (as the checkpoint's buffers)")


def _ids(saved) -> str:
    if saved is None:
        return "not saved"
    values = saved.tolist()
    return f"{values[0]} ... {values[-1]}" if len(values) > 1 else str(values[0])


def _check_exact(source: Path, task: str, expected: dict, mapped: dict) -> None:
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected))
    wrong = sorted(k for k in set(mapped) & set(expected) if tuple(mapped[k].shape) != tuple(expected[k].shape))
    if missing or extra or wrong:
        parts = [f"{len(missing)} parameters of the {task} model are not in it ({_some(missing)})" if missing else "",
                 f"{len(extra)} renamed keys are not in the model ({_some(extra)})" if extra else "",
                 "shapes differ for " + ", ".join(f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}"
                                                  for k in wrong[:4]) if wrong else ""]
        raise ModelLoadError(f"{str(source)!r} does not convert exactly: " + "; ".join(p for p in parts if p))


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
    language_model = os.environ.get("CAPFILT_LANGUAGE_MODEL")
    if language_model:  # a BLIP-2 captioner's frozen LLM, which the .pth may not hold, is part of the result
        digest += "-lm" + hashlib.sha256(str(Path(language_model).resolve()).encode()).hexdigest()[:8]
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
