"""Evaluation suites: a YAML file of tasks, loaded and checked, with errors naming the file and the field.

A suite names its models by role (`models: {captioner: NAME, ...}`), a data root, optional protocol overrides per
task type, and a list of tasks (type, role, dataset format and files, split, protocol overrides). `${NAME}` in the
data root or a dataset path is replaced by a variable given by the caller (the job gives `FIXTURES`) or else an
environment variable. Relative paths: dataset files against the data root; a relative `data_root` against the
suite file's folder (no data root: the suite file's folder).

A task's protocol is its model family's (evaluation/protocols.py: BLIP and BLIP-2 differ, in values and in keys),
the family read from the model's name (`models.names.family_of`), after any --model override. The suite-level
`protocol` defaults of a task type apply to every task of that type, so they may use only settings the families of
those tasks share (batch sizes, metrics, ...); a family's own settings belong on its tasks.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evaluation.loaders import FORMATS
from evaluation.protocols import (FAMILY_NAMES, TASK_TYPES, ProtocolError, families_of, has_protocol,
                                  merge_protocol)
from models.names import family_of

SUITE_DIR = Path(__file__).with_name("suites")
SUITE_KEYS = {"name", "description", "data_root", "models", "protocol", "tasks"}
TASK_KEYS = {"name", "title", "benchmark", "type", "model", "split", "dataset", "protocol"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the field."""

    def __init__(self, path, where: str, message: str):
        super().__init__(f"{path}: {where}: {message}" if where else f"{path}: {message}")


@dataclass(frozen=True)
class DatasetSpec:
    format: str
    files: dict[str, Path]  # annotations / questions / refs / instances / answer_list -> absolute path
    images: Path
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    benchmark: str  # the key of published numbers (evaluation/published.yaml)
    type: str
    role: str
    model: str
    split: str
    dataset: DatasetSpec
    protocol: dict
    family: str = "blip"  # of the model: whose protocol `protocol` is (blip | blip2)


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    models: dict[str, str]  # role -> model name, after --model overrides
    tasks: list[Task]
    uses_fixtures: bool


def _get(obj: Mapping, key: str, kind, path, where: str, required: bool = True, default=None):
    if key not in obj or obj[key] is None:
        if required:
            raise SuiteError(path, where, f"missing field '{key}'")
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = {str: "a string", dict: "a mapping", list: "a list"}.get(kind[0] if isinstance(kind, tuple) else kind)
        raise SuiteError(path, f"{where}.{key}" if where else key, f"should be {expected}, got {type(value).__name__}")
    return value


def _no_unknown(obj: Mapping, known: set, path, where: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in known)
    if unknown:
        raise SuiteError(path, where or "top level", f"unknown field(s) {unknown} (known: {', '.join(sorted(known))})")


def _expand(text: str, variables: Mapping[str, str], path, where: str, used: set | None = None) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if used is not None:
            used.add(name)
        if name in variables:
            return str(variables[name])
        if name in os.environ:
            return os.environ[name]
        hint = " (pass --data-root DIR instead)" if where == "data_root" else ""
        raise SuiteError(path, where, f"${{{name}}} is not set: set the environment variable {name}{hint}")

    return _VARIABLE.sub(value, text)


def _resolve(text: str, base: Path, variables, path, where: str, used: set | None = None) -> Path:
    resolved = Path(_expand(text, variables, path, where, used)).expanduser()
    return resolved if resolved.is_absolute() else (base / resolved)


def load_suite(path, data_root: str | None = None, variables: Mapping[str, str] | None = None,
               models: Mapping[str, str] | None = None, tasks: list[str] | None = None) -> Suite:
    """Read and check a suite. `data_root` replaces the suite's own; `models` overrides roles (--model ROLE=NAME);
    `tasks` keeps only the named tasks (in suite order)."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(path, "", "suite file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(path, "", f"not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise SuiteError(path, "top level", "should be a mapping with 'models' and 'tasks'")
    _no_unknown(raw, SUITE_KEYS, path, "")
    variables = dict(variables or {})
    used: set[str] = set()  # the variables the paths really use (a --data-root replaces the suite's own)

    name = _get(raw, "name", str, path, "", required=False, default=path.stem)
    root_text = data_root if data_root is not None else _get(raw, "data_root", str, path, "", required=False)
    root = path.resolve().parent
    if root_text is not None:
        root = (Path(_expand(root_text, variables, path, "data_root", used)).expanduser() if data_root is not None
                else _resolve(root_text, path.resolve().parent, variables, path, "data_root", used)).resolve()

    role_models = dict(_get(raw, "models", dict, path, ""))
    for role, model in role_models.items():
        if not isinstance(model, str) or not model.strip():
            raise SuiteError(path, f"models.{role}", "should be a model name (zoo name, hub repo id or directory)")
    for role, model in (models or {}).items():
        if role not in role_models:
            raise SuiteError(path, "models", f"--model {role}={model}: no role '{role}' in this suite "
                                             f"(roles: {', '.join(role_models)})")
        role_models[role] = model

    defaults = _get(raw, "protocol", dict, path, "", required=False, default={})
    for key, value in defaults.items():
        if key not in TASK_TYPES or not isinstance(value, dict):
            raise SuiteError(path, f"protocol.{key}", f"should be a task type ({', '.join(TASK_TYPES)}) "
                                                      "mapped to protocol settings")
        _check_defaults(key, value, path)
    entries = _get(raw, "tasks", list, path, "")
    if not entries:
        raise SuiteError(path, "tasks", "the suite lists no task")
    parsed = [_task(entry, i, path, root, variables, role_models, defaults, used) for i, entry in enumerate(entries)]
    _check_names_and_roles(parsed, path)
    if tasks:
        known = [t.name for t in parsed]
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise SuiteError(path, "tasks", f"--tasks names {unknown}, not in this suite (tasks: {', '.join(known)})")
        parsed = [t for t in parsed if t.name in tasks]
    roles = {t.role for t in parsed}
    return Suite(name, path, _get(raw, "description", str, path, "", required=False, default=""),
                 {r: m for r, m in role_models.items() if r in roles}, parsed, "FIXTURES" in used)


def _task(entry, index: int, path: Path, root: Path, variables, role_models: dict, defaults: dict, used: set) -> Task:
    where = f"tasks[{index}]"
    if not isinstance(entry, dict):
        raise SuiteError(path, where, f"should be a mapping, got {type(entry).__name__}")
    _no_unknown(entry, TASK_KEYS, path, where)
    name = _get(entry, "name", str, path, where)
    if not _NAME.match(name):
        raise SuiteError(path, f"{where}.name", f"{name!r}: use letters, digits, '_', '-' or '.'")
    where = f"tasks[{index}] ({name})"
    task_type = _get(entry, "type", str, path, where)
    if task_type not in TASK_TYPES:
        raise SuiteError(path, f"{where}.type", f"unknown task type {task_type!r} (known: {', '.join(TASK_TYPES)})")
    role = _get(entry, "model", str, path, where)
    if role not in role_models:
        raise SuiteError(path, f"{where}.model", f"role {role!r} is not in 'models' (roles: {', '.join(role_models)})")
    split = _get(entry, "split", (str, int), path, where)
    dataset = _dataset(_get(entry, "dataset", dict, path, where), task_type, path, f"{where}.dataset", root, variables,
                       used)
    overrides = _get(entry, "protocol", dict, path, where, required=False, default={})
    model = role_models[role]
    family = family_of(model)
    if not has_protocol(family, task_type):
        raise SuiteError(path, f"{where}.model", f"role {role!r} is {model!r}, a {FAMILY_NAMES.get(family, family)} "
                                                 f"model: capfilt evaluates {task_type} tasks on "
                                                 f"{', '.join(FAMILY_NAMES[f] for f in families_of(task_type))} "
                                                 "models only")
    try:
        merge_protocol(task_type, defaults.get(task_type, {}), family=family)
    except ProtocolError as exc:
        raise SuiteError(path, f"protocol.{task_type}.{exc.field}", f"{exc} (it applies to task {name!r}, whose "
                                                                    f"model {model!r} is {FAMILY_NAMES[family]})") from None
    try:
        protocol = merge_protocol(task_type, defaults.get(task_type, {}), overrides, family=family)
    except ProtocolError as exc:
        raise SuiteError(path, f"{where}.protocol.{exc.field}", str(exc)) from None
    if task_type == "vqa" and protocol["mode"] == "rank" and "answer_list" not in dataset.files:
        raise SuiteError(path, f"{where}.dataset", "protocol mode 'rank' needs an 'answer_list' file")
    return Task(name=name, title=_get(entry, "title", str, path, where, required=False, default=name),
                benchmark=_get(entry, "benchmark", str, path, where, required=False, default=name),
                type=task_type, role=role, model=model, split=str(split), dataset=dataset, protocol=protocol,
                family=family)


def _check_defaults(task_type: str, value: dict, path: Path) -> None:
    """A suite-level default must suit the protocol of at least one family of `task_type` (each task checks it
    against its own model's family)."""
    errors = []
    for family in families_of(task_type):
        try:
            merge_protocol(task_type, value, family=family)
            return
        except ProtocolError as exc:
            errors.append(exc)
    first = errors[0]
    raise SuiteError(path, f"protocol.{task_type}.{first.field}", str(first))


def _dataset(raw: dict, task_type: str, path: Path, where: str, root: Path, variables, used: set) -> DatasetSpec:
    name = _get(raw, "format", str, path, where)
    spec = FORMATS.get(name)
    if spec is None:
        raise SuiteError(path, f"{where}.format", f"unknown format {name!r} (known: {', '.join(FORMATS)})")
    if task_type not in spec.task_types:
        raise SuiteError(path, f"{where}.format", f"{name!r} has no {task_type} data "
                                                  f"(it serves {', '.join(spec.task_types)} tasks)")
    _no_unknown(raw, {"format", "images", *spec.required, *spec.optional, *spec.options}, path, where)
    files = {}
    for key in spec.required + spec.optional:
        text = _get(raw, key, str, path, where, required=key in spec.required)
        if text is not None:
            files[key] = _resolve(text, root, variables, path, f"{where}.{key}", used)
    images = _resolve(_get(raw, "images", str, path, where), root, variables, path, f"{where}.images", used)
    options = {key: str(raw[key]) for key in spec.options if raw.get(key) is not None}
    return DatasetSpec(name, files, images, options)


def _check_names_and_roles(tasks: list[Task], path: Path) -> None:
    seen, role_types, role_sizes = set(), {}, {}
    for task in tasks:
        if task.name in seen:
            raise SuiteError(path, f"tasks ({task.name})", f"duplicate task name {task.name!r}")
        seen.add(task.name)
        other = role_types.setdefault(task.role, task.type)
        if other != task.type:
            raise SuiteError(path, f"tasks ({task.name}).model", f"role {task.role!r} serves {other} tasks and "
                                                                  f"{task.type} tasks: one role is one model")
        # A role's model loads once, at one input size: the first task's `image_size` (0: the checkpoint's).
        size = task.protocol.get("image_size", 0)
        first, first_size = role_sizes.setdefault(task.role, (task.name, size))
        if size != first_size:
            raise SuiteError(path, f"tasks ({task.name}).protocol.image_size",
                             f"{size}, but task {first!r} runs role {task.role!r} at {first_size}: a role's model "
                             "loads once, at one image size (give this task its own role)")


def parse_model_overrides(values: list[str] | None) -> dict[str, str]:
    """`--model ROLE=NAME` arguments -> {role: name}."""
    out = {}
    for value in values or []:
        role, sep, name = value.partition("=")
        if not sep or not role.strip() or not name.strip():
            raise ValueError(f"--model {value!r}: expected ROLE=NAME (e.g. captioner=blip-base_3rdparty_caption)")
        out[role.strip()] = name.strip()
    return out
