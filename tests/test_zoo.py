"""Zoo and safe loading: names, hub ids and directories resolve; only safe Hugging Face layouts load."""
from __future__ import annotations

import dataclasses
import json
import pickle
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from models import tiny
from models.answerer import Answerer
from models.captioner import Captioner
from models.loading import ModelLoadError, list_models, load_checkpoint, resolve
from models.matcher import Matcher

SEED_NAMES = [  # the model names of the seeds' tables (PROTOCOLS.md)
    "blip-base_3rdparty_caption", "blip-base_8xb16_refcoco", "blip-base_3rdparty_vqa", "blip-base_3rdparty_retrieval",
    "blip-base_3rdparty_nlvr", "blip2-opt2.7b_3rdparty-zeroshot_caption", "blip2-opt2.7b_3rdparty-zeroshot_vqa",
    "blip2_3rdparty_retrieval",
]
TINY_NAMES = ["tiny-random_caption", "tiny-random_retrieval", "tiny-random_vqa"]
HUB_ID = "Salesforce/blip-itm-base-coco"
ROLES = {"caption": Captioner, "retrieval": Matcher, "vqa": Answerer}


def outputs(role, pixels):
    """What a role computes for two images: captions, match scores, or answers (generated and ranked)."""
    if isinstance(role, Captioner):
        return role.caption(pixels), role.sample(pixels, ["a", "b"], num_captions=2)
    if isinstance(role, Matcher):
        scores = role.score(pixels, [["a cat", "two dogs"], ["the sky"]])
        return np.concatenate([scores.itm, scores.itc]).round(5).tolist()
    return role.answer(pixels, ["what is it", "how many"]), role.rank(pixels, ["what is it", "how many"], ["yes", "no", "two"])


def save_tiny(task: str, directory) -> None:
    model, tokenizer = tiny.build_tiny(task)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# ---------------------------------------------------------------- the zoo


def test_list_models_has_seed_and_tiny_names():
    """list_models contains every seed model name and the three tiny models, sorted."""
    names = list_models()
    assert set(SEED_NAMES + TINY_NAMES) <= set(names)
    assert names == sorted(names)


def test_list_models_filters_by_task():
    """list_models(task) returns exactly the names of that task."""
    captions = list_models("caption")
    assert "tiny-random_caption" in captions and "blip-base_3rdparty_caption" in captions
    assert "tiny-random_vqa" not in captions
    assert {"blip-base_3rdparty_nlvr", "tiny-random_nlvr"} <= set(list_models("nlvr"))
    assert all(resolve(name).task == "nlvr" for name in list_models("nlvr"))
    assert list_models("no-such-task") == []


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_entry_resolves(name):
    """Every zoo entry resolves to a random-weight seed (tiny or base size), a hub repo id (org/name), a checkpoint
    shipped in models/checkpoints, or an unavailable note, with its task."""
    spec = resolve(name)
    assert spec.name == name and spec.task and spec.family in ("blip", "blip2", "clip")
    assert spec.kind in ("tiny", "random", "hub", "dir", "unavailable")
    if spec.kind == "dir":
        assert (Path(spec.location) / "config.json").is_file() and "models/checkpoints" in spec.location
    if spec.kind == "hub":
        assert spec.location.count("/") == 1
    if spec.kind in ("tiny", "random"):
        seed, _, variant = spec.location.partition(":")
        assert seed.isdigit() and variant in ("", "t5")


# ---------------------------------------------------------------- resolve


def test_resolve_zoo_names():
    """Zoo names map to their source: a tiny seed, a hub repo, or unavailable with the reason."""
    spec = resolve("tiny-random_caption")
    assert (spec.kind, spec.task, spec.family, spec.location) == ("tiny", "caption", "blip", "0")
    spec = resolve("blip-base_3rdparty_retrieval")
    assert (spec.kind, spec.task, spec.location) == ("hub", "retrieval", HUB_ID)
    spec = resolve("blip-base_3rdparty_nlvr")
    assert spec.kind == "unavailable" and ".pth" in spec.location


@pytest.mark.parametrize("name,location", [(HUB_ID, HUB_ID), ("hf:" + HUB_ID, HUB_ID),
                                           ("org/name@v1.0", "org/name@v1.0")])
def test_resolve_hub_ids(name, location):
    """org/name (optionally hf: prefixed, optionally @revision) is a hub id with no task known yet."""
    spec = resolve(name)
    assert (spec.kind, spec.location, spec.task) == ("hub", location, None)


def test_resolve_existing_directory(tmp_path):
    """An existing directory resolves to itself (absolute), even one that looks like org/name."""
    nested = tmp_path / "org" / "name"
    nested.mkdir(parents=True)
    spec = resolve(str(nested))
    assert (spec.kind, spec.location) == ("dir", str(nested.resolve()))


@pytest.mark.parametrize("name", ["no-such-model", "", "   ", "./missing/dir", "a/b/c"])
def test_resolve_unknown_names_raise(name):
    """Names that are no zoo entry, no directory and no org/name hub id are a ModelLoadError."""
    with pytest.raises(ModelLoadError):
        resolve(name)


def test_resolve_refuses_non_strings():
    """A non-string model name is a ModelLoadError, not a TypeError."""
    with pytest.raises(ModelLoadError):
        resolve(None)


# ---------------------------------------------------------------- load_checkpoint: what cannot be had


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_hub_name_without_network_fails_fast_with_advice(monkeypatch, offline):
    """A hub model with no network fails within seconds, telling the user to download it and pass the directory."""
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "10")  # _fetch setdefault()s it: keep os.environ as it was
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint("blip-base_3rdparty_retrieval")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "download" in message and "pass DIR" in message and HUB_ID in message
    assert "\n" not in message


def test_unavailable_zoo_name_gives_a_clear_error():
    """A zoo name with no Hugging Face checkpoint says so and why (the toolbox's .pth only)."""
    with pytest.raises(ModelLoadError, match="no checkpoint in Hugging Face layout") as info:
        load_checkpoint("blip-base_3rdparty_nlvr")
    assert ".pth" in str(info.value)


def test_task_mismatch_gives_a_clear_error(tmp_path):
    """Asking a caption model for VQA fails naming both tasks, for a zoo name, a directory and a role."""
    with pytest.raises(ModelLoadError, match="caption model.*vqa model"):
        load_checkpoint("tiny-random_caption", task="vqa")
    save_tiny("caption", tmp_path)
    with pytest.raises(ModelLoadError, match="caption model.*retrieval model"):
        load_checkpoint(str(tmp_path), task="retrieval")
    with pytest.raises(ModelLoadError, match="vqa model"):
        Captioner.load("tiny-random_vqa")
    with pytest.raises(ModelLoadError, match="not a caption model"):
        Captioner(load_checkpoint("tiny-random_retrieval"))


def test_roles_refuse_blip2_checkpoints():
    """A BLIP-2 checkpoint is refused by the BLIP-only roles with a clear error."""
    checkpoint = dataclasses.replace(load_checkpoint("tiny-random_caption"), family="blip2")
    with pytest.raises(ModelLoadError, match="blip2"):
        Captioner(checkpoint)


# ---------------------------------------------------------------- load_checkpoint: local directories


@pytest.mark.parametrize("task", ["caption", "retrieval", "vqa"])
def test_saved_tiny_model_round_trips(tmp_path, photos, task):
    """save_pretrained + tokenizer into a directory, then load_checkpoint(dir): same task, same outputs."""
    save_tiny(task, tmp_path)
    loaded = load_checkpoint(str(tmp_path))
    original = load_checkpoint(f"tiny-random_{task}")
    assert (loaded.task, loaded.family, loaded.spec.kind) == (task, "blip", "dir")
    assert loaded.fingerprint.startswith("sha256:") and loaded.image_size == original.image_size
    a = ROLES[task](original, device="cpu", precision="fp32")
    b = ROLES[task](loaded, device="cpu", precision="fp32")
    assert b.enc_id == a.enc_id and b.bos_id == a.bos_id
    pixels = a.prepare(photos[:2])
    assert outputs(b, pixels) == outputs(a, pixels)


def test_directory_without_config_is_refused(tmp_path):
    """A directory without config.json is not a Hugging Face model."""
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_checkpoint(str(tmp_path))


def test_pickle_only_directory_is_refused_without_unpickling(tmp_path):
    """A checkpoint with only pytorch_model.bin is refused, and the pickle inside is never executed."""
    save_tiny("caption", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "pickle-was-executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelLoadError, match="pytorch_model.bin.*safetensors only"):
        load_checkpoint(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_remote_code_is_refused(tmp_path, config_file):
    """A config.json or tokenizer_config.json with auto_map (remote code) is refused."""
    save_tiny("caption", tmp_path)
    path = tmp_path / config_file
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="auto_map"):
        load_checkpoint(str(tmp_path))


def test_unknown_architecture_is_refused(tmp_path):
    """A config.json naming an architecture capfilt does not run is refused, listing what it runs."""
    save_tiny("caption", tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = ["BertModel"]
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="BertModel.*BlipForConditionalGeneration"):
        load_checkpoint(str(tmp_path))


def test_invalid_config_json_is_refused(tmp_path):
    """A config.json that is not JSON is a ModelLoadError."""
    save_tiny("caption", tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_checkpoint(str(tmp_path))


def test_tiny_models_are_deterministic():
    """The same tiny seed builds the same weights; the tiny tokenizer has BLIP's [DEC] / [ENC] tokens."""
    a, tokenizer = tiny.build_tiny("retrieval", seed=0)
    b, _ = tiny.build_tiny("retrieval", seed=0)
    c, _ = tiny.build_tiny("retrieval", seed=1)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    assert tokenizer.bos_token == "[DEC]" and tokenizer.convert_tokens_to_ids("[ENC]") != tokenizer.unk_token_id


def test_corrupt_safetensors_is_a_model_load_error(tmp_path):
    """A model.safetensors that is not a safetensors file is a ModelLoadError, like every other unloadable model."""
    save_tiny("caption", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError):
        load_checkpoint(str(tmp_path))


def test_directory_without_tokenizer_is_refused(tmp_path):
    """A checkpoint saved without its tokenizer is refused rather than run with an empty vocabulary."""
    model, _ = tiny.build_tiny("caption")
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError):
        load_checkpoint(str(tmp_path))
