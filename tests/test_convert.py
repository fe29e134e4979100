"""The converter's refusals and its command line, on hand-made checkpoints. (Whether a conversion is exact is shown
against the upstream code's own checkpoints and outputs: tests/test_convert_upstream.py.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.convert import convert, converted, read_state_dict
from models.names import ModelLoadError, check_model, resolve
from tests.hostile import Boom

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lavis_caption() -> dict[str, torch.Tensor]:
    """The upstream LAVIS captioner's state dict (the checked-in fixture)."""
    return read_state_dict(FIXTURES / "lavis-caption" / "model.pth")


@pytest.fixture
def tokenizer_dir(tmp_path) -> Path:
    directory = tmp_path / "tokenizer"
    directory.mkdir()
    (directory / "vocab.txt").write_text((FIXTURES / "vocab.txt").read_text())
    return directory


def save(path: Path, state: dict) -> Path:
    torch.save({"model": state}, path)
    return path


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, tokenizer_dir):
    """weights_only: the archive's object is never built, so the file it would create never appears."""
    sentinel = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Boom(str(sentinel))}, path)
    with pytest.raises(ModelLoadError) as info:
        convert(path, tmp_path / "out", tokenizer=tokenizer_dir)
    message = str(info.value)
    assert "refuses it and ran nothing" in message and "\n" not in message
    assert not sentinel.exists() and not (tmp_path / "out").exists()
    # the payload is real: a full unpickler runs it
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_the_command_line_refuses_a_hostile_pickle_in_one_line(tmp_path):
    sentinel = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save(Boom(str(sentinel)), path)
    done = subprocess.run([sys.executable, "-m", "models", "convert", str(path), "--to", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not sentinel.exists()


def test_not_a_checkpoint_and_no_state_dict_are_one_sentence(tmp_path, tokenizer_dir):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="not a readable PyTorch checkpoint"):
        read_state_dict(junk)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ModelLoadError, match="holds no state dict"):
        read_state_dict(empty)
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")


def test_unknown_keys_are_an_error_naming_them(tmp_path, lavis_caption, tokenizer_dir):
    state = dict(lavis_caption, **{"visual_encoder.blocks.0.attn.rel_pos": torch.zeros(3)})
    with pytest.raises(ModelLoadError, match=r"1 keys .* no reason to be dropped: visual_encoder\.blocks\.0\.attn"):
        convert(save(tmp_path / "x.pth", state), tmp_path / "out", tokenizer=tokenizer_dir, head_dim=8)


def test_a_missing_parameter_and_a_wrong_shape_are_errors_naming_them(tmp_path, lavis_caption, tokenizer_dir):
    state = {k: v for k, v in lavis_caption.items() if k != "text_decoder.bert.encoder.layer.1.output.dense.bias"}
    with pytest.raises(ModelLoadError, match=r"1 parameters .*text_decoder\.bert\.encoder\.layer\.1\.output\.dense"):
        convert(save(tmp_path / "x.pth", state), tmp_path / "out", tokenizer=tokenizer_dir, head_dim=8)
    key = "text_decoder.bert.encoder.layer.0.output.dense.weight"
    state = dict(lavis_caption, **{key: torch.zeros(3, 3)})
    with pytest.raises(ModelLoadError, match=r"shapes differ for text_decoder\.bert\.encoder\.layer\.0\.output"):
        convert(save(tmp_path / "y.pth", state), tmp_path / "out", tokenizer=tokenizer_dir, head_dim=8)
    assert not (tmp_path / "out").exists()


def test_an_untied_decoder_is_refused(tmp_path, lavis_caption, tokenizer_dir):
    key = "text_decoder.cls.predictions.decoder.weight"
    state = dict(lavis_caption, **{key: lavis_caption[key] + 1})
    with pytest.raises(ModelLoadError, match="differs from .*word_embeddings"):
        convert(save(tmp_path / "x.pth", state), tmp_path / "out", tokenizer=tokenizer_dir, head_dim=8)


def test_layouts_the_converter_does_not_build_say_so_in_one_line(tmp_path, lavis_caption, tokenizer_dir):
    nlvr = dict(lavis_caption, **{"cls_head.0.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelLoadError, match="nlvr checkpoint: LAVIS's and the original BLIP's NLVR2 model puts "
                                             r"\[ENC\] first .*\(blip-base_3rdparty_nlvr\)"):
        convert(save(tmp_path / "n.pth", nlvr), tmp_path / "out", tokenizer=tokenizer_dir)
    with pytest.raises(ModelLoadError, match="in no layout capfilt knows"):
        convert(save(tmp_path / "u.pth", {"backbone.w": torch.zeros(2)}), tmp_path / "out", tokenizer=tokenizer_dir)


UPSTREAM = Path(__file__).parent / "fixtures" / "upstream"


def test_a_blip2_captioner_without_its_language_model_names_what_to_pass(tmp_path):
    """The toolbox never saves BLIP-2's frozen OPT: the converter asks for its directory in one line, and reads
    the tokenizer from there once given."""
    source = UPSTREAM / "toolbox-blip2-opt-caption" / "model.pth"
    with pytest.raises(ModelLoadError, match="needs a tokenizer.*--language-model DIR"):
        convert(source, tmp_path / "out", head_dim=8)
    tokenizer = UPSTREAM / "toolbox-blip2-opt-caption" / "opt"
    with pytest.raises(ModelLoadError, match="holds no language model.*--language-model DIR.*facebook/opt-2.7b"):
        convert(source, tmp_path / "out", head_dim=8, tokenizer=tokenizer)
    with pytest.raises(ModelLoadError, match="it converts to caption or vqa, not retrieval"):
        convert(source, tmp_path / "out", head_dim=8, task="retrieval")
    record = convert(source, tmp_path / "vqa", head_dim=8, task="vqa", language_model=tokenizer)
    assert record.task == "vqa" and (tmp_path / "vqa" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "vqa" / "config.json").read_text())["architectures"] == \
        ["Blip2ForConditionalGeneration"]


def test_a_task_the_checkpoint_does_not_hold_is_refused(tmp_path, tokenizer_dir):
    with pytest.raises(ModelLoadError, match="is a caption checkpoint; it converts to caption, not retrieval"):
        convert(FIXTURES / "lavis-caption" / "model.pth", tmp_path / "out", task="retrieval",
                tokenizer=tokenizer_dir, head_dim=8)


def test_without_a_tokenizer_the_error_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPFILT_TOKENIZER", raising=False)
    source = tmp_path / "model.pth"
    source.write_bytes((FIXTURES / "lavis-caption" / "model.pth").read_bytes())
    with pytest.raises(ModelLoadError, match=r"needs a tokenizer.*hf download bert-base-uncased"):
        convert(source, tmp_path / "out", head_dim=8)
    # a vocabulary of another size is named as such
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n")
    with pytest.raises(ModelLoadError, match="has 8 tokens with .DEC. and .ENC., but the checkpoint's vocabulary has 214"):
        convert(source, tmp_path / "out", tokenizer=other, head_dim=8)


def test_a_pth_is_a_model_name(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"")
    assert resolve(str(path)).kind == "pth" and check_model(str(path), "caption").kind == "pth"
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve(str(tmp_path / "absent.pth"))


def test_the_zoo_names_the_seed_download_beside_the_hub_id():
    """An unavailable seed model names its .pth and the command that converts it."""
    with pytest.raises(ModelLoadError) as info:
        check_model("blip-base_3rdparty_nlvr")
    message = str(info.value)
    assert "https://download.openmmlab.com/mmclassification/v1/blip/blip-base_3rdparty_nlvr_20230427-3b14d33f.pth" in message
    assert "python -m models convert blip-base_3rdparty_nlvr_20230427-3b14d33f.pth --to DIR" in message
    zoo = json.loads((ROOT / "models" / "zoo.json").read_text())
    assert zoo["blip-base_3rdparty_caption"]["pth"].endswith("blip-base_3rdparty_coco-caption_20230419-a5b71af3.pth")
    # a BLIP-2 captioner's route names the language model the toolbox does not save, and the task
    from models.names import pth_route

    route = pth_route("blip2-opt2.7b_3rdparty-zeroshot_vqa")
    assert "CAPFILT_LANGUAGE_MODEL=OPT_DIR" in route and "--language-model OPT_DIR --task vqa" in route
    assert "--language-model" not in pth_route("blip2_3rdparty_retrieval")


def test_a_pth_converts_once_into_a_cache_keyed_by_its_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPFILT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "seed" / "blip.pth"
    source.parent.mkdir()
    source.write_bytes((FIXTURES / "lavis-caption" / "model.pth").read_bytes())
    (source.parent / "vocab.txt").write_text((FIXTURES / "vocab.txt").read_text())  # a tokenizer beside the .pth
    monkeypatch.setenv("CAPFILT_HEAD_DIM", "8")
    first = converted(source, "caption")
    record = json.loads((first / "capfilt_conversion.json").read_text())
    assert first.parent == tmp_path / "cache" / "converted" and first.name.startswith(record["sha256"][:16])
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert converted(source, "caption") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again


def test_hub_blip_configs_follow_the_original_vit_eps_and_say_so_once(tmp_path, caplog):
    """A BLIP directory whose config transformers 4 wrote (every Salesforce BLIP on the hub) at the default eps 1e-5
    runs at the original ViT's 1e-6, said once; one capfilt trained (transformers 5) keeps its own."""
    import logging

    import models.loading as loading
    from models import tiny

    model, tokenizer = tiny.build_tiny("caption")
    for version, folder in (("4.26.0.dev0", "hub"), ("5.23.0", "ours")):
        model.save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
        config = json.loads((tmp_path / folder / "config.json").read_text())
        config["transformers_version"] = version
        (tmp_path / folder / "config.json").write_text(json.dumps(config))
    loading._EPS_SAID.clear()
    with caplog.at_level(logging.WARNING, logger="capfilt.models"):
        hub = loading.load_checkpoint(str(tmp_path / "hub"))
        loading.load_checkpoint(str(tmp_path / "hub"))
        ours = loading.load_checkpoint(str(tmp_path / "ours"))
    norms = [m for m in hub.model.vision_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms) and hub.model.config.vision_config.layer_norm_eps == 1e-6
    assert all(m.eps == 1e-5 for m in ours.model.vision_model.modules() if isinstance(m, torch.nn.LayerNorm))
    said = [r for r in caplog.records if "eps" in r.getMessage()]
    assert len(said) == 1 and "1e-05 becomes the original ViT's 1e-06" in said[0].getMessage()
