"""The configuration of a CapFilt run, its run.json record, and the check that a re-run matches it."""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.names import check_device, check_model
from models.sampling_config import Sampling
from pipelines.sources import Shard, check_location, expand_shards
from schemas.capfilt import SCHEMA_VERSION

# What changes the output rows. Batch sizes, actor counts and devices do not (captions are seeded per sample).
RESULT_KEYS = ("inputs_digest", "captioner", "filter", "scorer", "sampling", "precision", "schema_version", "max_pixels")
MODEL_ROLES = ("captioner", "filter", "scorer")  # run.json's "models": each one's name, family and fingerprint
PACKAGES = ("torch", "transformers", "ray", "pyarrow", "pillow", "duckdb", "webdataset")


class RunConflict(ValueError):
    """The output directory holds a run made with another configuration."""


@dataclass
class CapFiltConfig:
    input: str
    output: str
    captioner: str = "tiny-random_caption"
    filter: str = "tiny-random_retrieval"
    scorer: str | None = None  # a CLIP model: adds web_clip and synthetic[].clip (BLIP-2's CapFilt ranks by them)
    sampling: Sampling = field(default_factory=Sampling)
    batch_size: int | None = None  # images per model call; default 64 on GPUs, 8 on CPUs (measured fastest there)
    device: str = "auto"
    precision: str = "auto"
    actors: int | None = None  # model actors; default one per GPU, or one on a CPU-only cluster
    model_threads: int | None = None  # torch threads per CPU model actor; default all cores of its node
    decode_workers: int | None = None  # shards decoded at once; default the CPUs left beside the model actors
    max_pixels: int | None = None
    overwrite: bool = False

    def validate(self) -> None:
        s = self.sampling
        checks = [
            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be at least 1"),
            (s.num_captions >= 1, "--num-captions must be at least 1"),
            (0 < s.top_p <= 1, "--top-p must be in (0, 1]"),
            (s.repetition_penalty > 0, "--repetition-penalty must be positive"),
            (1 <= s.min_length <= s.max_length, "need 1 <= --min-length <= --max-length"),
            (self.actors is None or self.actors >= 1, "--actors must be at least 1"),
            (self.decode_workers is None or self.decode_workers >= 1, "--decode-workers must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def check(self, locations: bool = True) -> list[Shard]:
        """Everything that can be checked without torch or Ray: the settings, the device's and the models' names
        (ModelLoadError: unknown, unavailable or of the wrong task), and with `locations` the output location and
        the input shards (LocationError), which are returned. A typo answers in about a second."""
        self.validate()
        check_device(self.device, self.precision)
        check_model(self.captioner, "caption")
        check_model(self.filter, "retrieval")
        if self.scorer is not None:
            check_model(self.scorer, "similarity")
        if not locations:
            return []
        check_location(self.output)
        return expand_shards(self.input)


def run_record(config: CapFiltConfig, shard_urls: list[str], models: dict) -> dict:
    """Everything needed to know how a run's rows were made."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    settings = asdict(config)
    settings.pop("overwrite")
    # The prompt the captioner really used (None in the settings means the captioner's own).
    settings["sampling"]["prompt"] = models.get("prompt", settings["sampling"]["prompt"])
    digest = hashlib.sha256("\n".join(sorted(shard_urls)).encode()).hexdigest()[:16]
    return {
        **{key: settings[key] for key in ("input", "captioner", "filter", "scorer", "sampling", "max_pixels")},
        "inputs_digest": digest,  # the resolved shard list: the same shards however the input is spelled
        "precision": models["precision"],
        "schema_version": SCHEMA_VERSION,
        "models": {role: models.get(role) for role in MODEL_ROLES},  # each with its family and fingerprint
        "shared_vision": models.get("shared_vision", False),
        "settings": settings,
        "shards": len(shard_urls),
        "versions": versions,
        "capfilt_commit": _git_commit(),
        "python": platform.python_version(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def check_compatible(existing: dict, new: dict) -> None:
    """Raise RunConflict naming what differs when `existing` was made with other result-affecting settings."""
    differences = []
    for key in RESULT_KEYS:
        old, now = existing.get(key), new.get(key)
        if key == "inputs_digest" and old != now:
            differences.append(f"the input shards ({existing.get('shards')} -> {new.get('shards')} shards)")
        elif isinstance(old, dict) and isinstance(now, dict):
            differences += [f"{key}.{k} ({old.get(k)!r} -> {now.get(k)!r})" for k in sorted(set(old) | set(now))
                            if old.get(k) != now.get(k)]
        elif old != now:
            differences.append(f"{key} ({old!r} -> {now!r})")
    for role in MODEL_ROLES:
        old = ((existing.get("models") or {}).get(role) or {}).get("fingerprint")
        now = (new["models"].get(role) or {}).get("fingerprint")
        if old != now:
            differences.append(f"the {role} weights")
    if differences:
        detail = ", ".join(differences)
        raise RunConflict(
            f"the output directory holds a run made with different settings: {detail}; "
            "use another --output, or --overwrite to replace it"
        )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
