"""Loading annotation files and checking their fields, with errors that name the file and the field."""
from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any


class DatasetFormatError(ValueError):
    """An annotation file is missing or does not have the layout its reader expects."""

    def __init__(self, path: str | Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object", float: "a number"}


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def _is_kind(value: Any, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):  # JSON true/false must not pass for an id or a number
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def check_kind(value: Any, kind, path, where: str) -> Any:
    """`value` if it is of `kind`, else a DatasetFormatError naming `where` (e.g. "annotations[3].caption")."""
    if not _is_kind(value, kind):
        raise DatasetFormatError(path, f"{where} should be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def field(obj: Any, key: str, kind, path, where: str) -> Any:
    """obj[key], checked to be present and of `kind`."""
    check_kind(obj, dict, path, where)
    if key not in obj:
        raise DatasetFormatError(path, f"{where}: missing field '{key}'")
    return check_kind(obj[key], kind, path, f"{where}.{key}")


def optional_field(obj: dict, key: str, kind, path, where: str, default=None) -> Any:
    if key not in obj or obj[key] is None:
        return default
    return check_kind(obj[key], kind, path, f"{where}.{key}")


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found")
    return path


def load_json(path) -> Any:
    path = _existing(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(path, f"not valid JSON ({error})") from error


def load_json_lines(path) -> list[tuple[int, Any]]:
    """(line number, object) for every non-blank line."""
    path = _existing(path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DatasetFormatError(path, f"line {number} is not valid JSON ({error})") from error
    return rows


def image_path(image_dir: str, name: str) -> str:
    """Image path relative to the image root: `image_dir` (a prefix the caller chooses) joined with `name`."""
    name = name[2:] if name.startswith("./") else name
    return posixpath.join(image_dir, name) if image_dir else name
