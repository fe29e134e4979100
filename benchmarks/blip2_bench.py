"""BLIP-2 CapFilt throughput, and the weights' memory of each BLIP-2 combination.

    .venv/bin/python benchmarks/blip2_bench.py                      # ViT-g + Q-Former at full size (minutes)
    .venv/bin/python benchmarks/blip2_bench.py --size tiny --quick  # smoke run (seconds; a test runs it)
    .venv/bin/python benchmarks/blip2_bench.py --memory             # weights of each combination, no run

Throughput, all measured in this run on this machine: the CapFilt stage (captioner, then the Q-Former filter on the
web caption and every synthetic one) with the vision pass shared by both roles, the same stage with each role
running its own vision pass, and the naive loop: per image, transformers' `generate`, then one full
`Blip2ForImageTextRetrieval` ITM forward per caption, batch 1, fp32 (the peers' way) and in the stage's precision.
`--size vitg` is the real ViT-g (39 layers, 1408 wide) and Q-Former (BERT-base, 32 queries) with random weights and
an OPT-125m-shaped language model instead of OPT-2.7b, whose weights would not fit this benchmark's memory twice
over on a 24 GiB machine; ViT-g is most of the cost. Generation is forced to 20 new tokens per caption.

`--memory` counts the parameters of the public checkpoints' architectures (built on torch's meta device, nothing
allocated) and gives the bytes their weights take in bf16 as the model actor holds them (the Q-Former and its
query tokens stay fp32, as transformers keeps them): a lower bound for the GPU memory of one model actor, without
activations, CUDA context or the generation cache.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

import capfilt_bench as bench
from models.images import decode_image, resize
from models.inference import load_role
from models.sampling_config import Sampling
from pipelines.batches import shard_batches
from pipelines.stage import CapFiltStage
from evaluation.fixtures import PHOTOS, photo
from pipelines.tars import jpeg_bytes

NEW_TOKENS = bench.NEW_TOKENS


def sampling(stage: CapFiltStage, num_captions: int) -> Sampling:
    """Every caption costs exactly NEW_TOKENS new tokens (lengths count the start token and the prompt)."""
    length = stage.captioner.start_length(stage.prompt) + NEW_TOKENS
    return Sampling(num_captions=num_captions, max_length=length, min_length=length)


def naive_seconds_per_image(captioner: str, filter_name: str, images, captions: list[str], num_captions: int,
                            precision: str) -> float:
    """The peers' way: one image at a time, transformers' generate for `num_captions` captions, then one full ITM
    forward (its own vision pass) per caption, the web one included."""
    cap = load_role(captioner, "caption", precision=precision)
    itm = load_role(filter_name, "retrieval", precision=precision)
    ids, mask = cap.input_ids([cap.default_prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        for array, web in zip(images, captions):
            with cap.autocast():
                out = cap.model.generate(pixel_values=cap.pixel_values(array[None]), input_ids=ids,
                                         attention_mask=mask, do_sample=True, top_p=Sampling().top_p,
                                         repetition_penalty=Sampling().repetition_penalty,
                                         num_return_sequences=num_captions, max_new_tokens=NEW_TOKENS,
                                         min_new_tokens=NEW_TOKENS, eos_token_id=cap.eos_id, pad_token_id=cap.pad_id)
            synthetic = cap.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            for text in [web] + synthetic:
                encoded = itm.tokenizer(text, return_tensors="pt")
                with itm.autocast():
                    itm.model(pixel_values=itm.pixel_values(array[None]), input_ids=encoded["input_ids"],
                              attention_mask=encoded["attention_mask"], use_image_text_matching_head=True)
    return (time.perf_counter() - start) / len(images)


def throughput_rows(args) -> list[tuple[str, str]]:
    captioner, filter_name = f"{args.size}-random-blip2_caption", f"{args.size}-random-blip2_retrieval"
    n = args.num_captions
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shard = bench.make_shards(Path(tmp), 1, args.batch_size)[0]
        stage = CapFiltStage(captioner, filter_name, precision="auto")
        if not stage.shared_vision:
            raise SystemExit(f"{captioner} and {filter_name} do not share their vision weights")
        stage.sampling = sampling(stage, n)
        batch = next(shard_batches("b", str(shard), stage.image_sizes, args.batch_size))
        rows.append(("models", f"{captioner} + {filter_name}, {stage.captioner.precision} on "
                               f"{stage.captioner.device}, batch {len(batch.ok)}, N={n} captions of {NEW_TOKENS} new "
                               "tokens + the web caption"))
        stage(batch)  # warm-up
        pairs = []
        for _ in range(args.repeats):  # shared and unshared in turn, so both see the same machine
            for shared in (True, False):
                stage.shared_vision = shared  # unshared: the filter runs its own pass through the same weights
                started = time.perf_counter()
                stage(batch)
                pairs.append((shared, (time.perf_counter() - started) / len(batch.ok)))
        stage.shared_vision = True
        shared_s = statistics.median(s for shared, s in pairs if shared)
        own_s = statistics.median(s for shared, s in pairs if not shared)
        peak_rss = psutil.Process().memory_info().rss
        prompt, size = stage.prompt, stage.captioner.image_size
        del stage
    images = [resize(decode_image(jpeg_bytes(photo(name))), size) for name, _, _ in PHOTOS][: args.naive_images]
    webs = [caption for _, caption, _ in PHOTOS][: args.naive_images]
    naive = {p: naive_seconds_per_image(captioner, filter_name, images, webs, n, p) for p in ("fp32", "auto")}
    rows += [
        ("stage, one vision pass per image for both roles", f"{1 / shared_s:.3f} images/s, {shared_s:.2f} s/image"),
        ("stage, each role its own vision pass", f"{1 / own_s:.3f} images/s, {own_s:.2f} s/image"),
        ("the shared vision pass", f"{own_s / shared_s:.2f}x"),
        (f"naive loop, fp32, {len(images)} images", f"{1 / naive['fp32']:.3f} images/s, {naive['fp32']:.2f} s/image"),
        (f"naive loop, the stage's precision, {len(images)} images",
         f"{1 / naive['auto']:.3f} images/s, {naive['auto']:.2f} s/image"),
        ("stage against the naive loop (fp32)", f"{naive['fp32'] / shared_s:.1f}x"),
        ("stage against the naive loop (same precision)", f"{naive['auto'] / shared_s:.1f}x"),
        ("process RSS after the stage", f"{peak_rss / 2**30:.1f} GiB"),
        ("prompt", repr(prompt)),
    ]
    return rows


# The public checkpoints' architectures: what transformers' configs hold for them (ViT-g and the Q-Former are
# Blip2Config's defaults; the language models as published).
OPT = {"opt-2.7b": dict(hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
                        word_embed_proj_dim=2560),
       "opt-6.7b": dict(hidden_size=4096, num_hidden_layers=32, ffn_dim=16384, num_attention_heads=32,
                        word_embed_proj_dim=4096)}
T5 = {"flan-t5-xl": dict(d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32, d_kv=64),
      "flan-t5-xxl": dict(d_model=4096, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64, d_kv=64)}


def _weights(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, bytes in bf16 with the Q-Former and the query tokens in fp32)."""
    params = fp32 = 0
    for name, tensor in model.named_parameters():
        params += tensor.numel()
        if name.startswith(("qformer.", "query_tokens")):
            fp32 += tensor.numel()
    return params, 2 * (params - fp32) + 4 * fp32


def memory_rows() -> list[tuple[str, str]]:
    import transformers

    def build(cls, config):
        with torch.device("meta"):
            return cls(config)

    captioners = {}
    for name, shape in OPT.items():
        text = transformers.OPTConfig(vocab_size=50272, **shape)
        captioners[name] = _weights(build(transformers.Blip2ForConditionalGeneration,
                                          transformers.Blip2Config(text_config=text.to_dict())))
    for name, shape in T5.items():
        text = transformers.T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                     **shape)
        captioners[name] = _weights(build(transformers.Blip2ForConditionalGeneration,
                                          transformers.Blip2Config(text_config=text.to_dict())))
    retrieval = _weights(build(transformers.Blip2ForImageTextRetrieval, transformers.Blip2Config()))
    vision = _weights(build(transformers.Blip2VisionModel, transformers.Blip2VisionConfig()))
    clip_l = _weights(build(transformers.CLIPModel, transformers.CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                           patch_size=14, image_size=224, projection_dim=768), projection_dim=768)))
    gib = 2**30
    rows = [("ViT-g alone", f"{vision[0] / 1e6:.0f} M parameters, {vision[1] / gib:.2f} GiB"),
            ("Q-Former filter (blip2_3rdparty_retrieval)", f"{retrieval[0] / 1e6:.0f} M, {retrieval[1] / gib:.2f} GiB"),
            ("CLIP ViT-L/14 scorer", f"{clip_l[0] / 1e6:.0f} M, {clip_l[1] / gib:.2f} GiB")]
    for name, (params, size) in captioners.items():
        shared = size + retrieval[1] - vision[1]
        rows.append((f"captioner BLIP-2 {name}", f"{params / 1e6:.0f} M, {size / gib:.2f} GiB"))
        rows.append((f"{name} captioner + Q-Former filter, vision shared (+ CLIP ViT-L/14)",
                     f"{shared / gib:.2f} GiB ({(shared + clip_l[1]) / gib:.2f} GiB)"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["vitg", "tiny"], default="vitg")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-captions", type=int, default=5)
    p.add_argument("--naive-images", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2, one repeat, one naive image")
    p.add_argument("--memory", action="store_true", help="only the weights' memory of each combination")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.repeats, args.naive_images = 2, 1, 1
    rows = memory_rows() if args.memory else throughput_rows(args)
    bench.print_table("blip2_bench.py", argv, rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
