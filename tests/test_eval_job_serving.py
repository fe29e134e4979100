"""RoleServer, the class evaluation's Ray actors wrap: the same role code as CapFilt, BLIP's ITM logit for reranking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.serving import RoleServer


@pytest.fixture(scope="module")
def server() -> RoleServer:
    return RoleServer("tiny-random_retrieval", "retrieval", device="cpu", precision="fp32", threads=1)


def test_itm_logits_are_the_itm_heads_match_logit(server, photos):
    role = server.role
    images = role.prepare(photos[:3])
    embeddings = server.index_images([10, 11, 12], images)
    np.testing.assert_allclose(embeddings, role.image_features(images)[1].numpy(), atol=1e-6)
    texts = ["a cat", "a cup of coffee", "a rocket on the pad", "an astronaut"]
    pairs = [12, 10, 11, 12]
    logits = server.itm_logits(pairs, texts)
    ids, mask = role.tokenize(texts, 35, first_token=role.enc_id)
    with torch.inference_mode():
        direct = role.model(input_ids=ids, attention_mask=mask, pixel_values=role.pixel_values(images[[2, 0, 1, 2]]),
                            use_itm_head=True).itm_score[:, 1]
    np.testing.assert_allclose(logits, direct.numpy(), rtol=1e-4, atol=1e-5)
    # BLIP reranks with the logit: p(match) is its softmax, so the order of the two agrees for one image
    probs = role.score(images[[2]], [[texts[0], texts[3]]]).itm
    assert (logits[0] > logits[3]) == (probs[0] > probs[1])
    assert server.clear_images() == 3 and server.image_states == {}


def test_generation_and_ranking_match_the_roles(photos):
    captioner = RoleServer("tiny-random_caption", "caption", device="cpu", precision="fp32")
    images = captioner.role.prepare(photos[:2])
    settings = {"prompt": "a picture of ", "num_beams": 3, "max_length": 20, "min_length": 5, "repetition_penalty": 1.0}
    assert captioner.caption(images, settings) == captioner.role.caption(images)
    answerer = RoleServer("tiny-random_vqa", "vqa", device="cpu", precision="fp32")
    images = answerer.role.prepare(photos[:2])
    questions = ["what is this?", "what color is it?"]
    assert answerer.answer(images, questions, {"num_beams": 3, "max_length": 10, "min_length": 1}) == \
        answerer.role.answer(images, questions)
    answerer.set_candidates(["cat", "red", "coffee", "yes"])
    assert answerer.rank(images, questions, k=2) == answerer.role.rank(images, questions, ["cat", "red", "coffee", "yes"], k=2)


def test_a_model_that_cannot_load_is_reported_not_raised():
    info = RoleServer("blip-base_3rdparty_nlvr", "caption", device="cpu").info()
    assert "no checkpoint in Hugging Face layout" in info["error"]
    info = RoleServer("tiny-random_caption", "caption", device="cpu", precision="bf16").info()
    assert info["fingerprint"].startswith("tiny") and info["precision"] == "bf16" and info["image_size"] == 32


class LocalPool:
    """The RolePool interface over RoleServers in this process: routing as the Ray pool routes, without Ray."""

    def __init__(self, servers: list[RoleServer]):
        self.servers = servers
        self.size = len(servers)
        self.image_size = servers[0].role.image_size
        self.info = servers[0].info()

    def map(self, method, calls):
        for number, (actor, args) in enumerate(calls):
            yield getattr(self.servers[number % self.size if actor is None else actor], method)(*args)

    def broadcast(self, method, *args):
        return [getattr(server, method)(*args) for server in self.servers]


def test_retrieval_split_over_actors_gives_the_same_recalls_as_one(tmp_path):
    """Images are split over actors by index and every ITM pair must reach the actor holding its image's states."""
    from evaluation.fixtures import build_fixtures
    from evaluation.loaders import load_dataset
    from evaluation.metrics import reranked_recalls
    from evaluation.suite import SUITE_DIR, load_suite
    from evaluation.tasks import run_retrieval

    fixtures = build_fixtures(tmp_path / "fixtures")
    suite = load_suite(SUITE_DIR / "fixtures.yaml", variables={"FIXTURES": str(fixtures)}, tasks=["coco_retrieval"])
    task = suite.tasks[0]
    data = load_dataset(task)
    servers = [RoleServer("tiny-random_retrieval", "retrieval", "cpu", "fp32") for _ in range(2)]
    one = run_retrieval(task, data, LocalPool(servers[:1])).metrics
    two = run_retrieval(task, data, LocalPool(servers)).metrics
    assert one == two and servers[0].image_states == {} and servers[1].image_states == {}
    # the same numbers straight from the role and the metric module
    role = servers[0].role
    images = role.prepare([r.image for r in data.records])
    texts = [t for r in data.records for t in r.references]
    txt2img = [i for i, r in enumerate(data.records) for _ in r.references]
    itc = servers[0].index_images(list(range(len(images))), images) @ role.text_embeddings(texts).numpy().T
    direct = reranked_recalls(itc, lambda i, t: servers[0].itm_logits(list(i), [texts[j] for j in t]), txt2img,
                              task.protocol["k"])
    assert one == {**direct["reranked"], **{f"itc:{k}": v for k, v in direct["itc"].items()}}


def test_caption_task_runs_the_metrics_its_protocol_names(tmp_path, monkeypatch):
    """METEOR's JVM starts only when the protocol asks for it; scores come back x100, as the papers print them."""
    from dataclasses import replace

    from evaluation.fixtures import build_fixtures
    from evaluation.loaders import load_dataset
    from evaluation.metrics import captioning
    from evaluation.suite import SUITE_DIR, load_suite
    from evaluation.tasks import run_caption

    fixtures = build_fixtures(tmp_path / "fixtures")
    task = load_suite(SUITE_DIR / "fixtures.yaml", variables={"FIXTURES": str(fixtures)}, tasks=["nocaps"]).tasks[0]
    data = load_dataset(task, limit=3)
    pool = LocalPool([RoleServer("tiny-random_caption", "caption", "cpu", "fp32")])

    def no_jvm(*args):
        raise AssertionError("METEOR ran although the protocol leaves it out")

    monkeypatch.setattr(captioning, "_meteor", no_jvm)
    outcome = run_caption(replace(task, protocol={**task.protocol, "metrics": ["BLEU-4", "CIDEr"]}), data, pool)
    assert set(outcome.metrics) == {"BLEU-4", "CIDEr"} and outcome.unavailable == {} and outcome.samples == 3
    assert [p["image_id"] for p in outcome.predictions] == [r.image_id for r in data.records]
    monkeypatch.setattr(captioning, "_meteor", lambda gts, res: 0.25)
    outcome = run_caption(replace(task, protocol={**task.protocol, "metrics": ["METEOR", "SPICE"]}), data, pool)
    assert outcome.metrics == {"METEOR": 25.0}
    spice_ok, _ = captioning.spice_status()
    assert spice_ok or "SPICE" in outcome.unavailable  # never reported as 0
