"""NLVR2 examples from the official JSON-lines files (train.json, dev.json, test1.json)."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import DatasetFormatError, field, image_path, load_json_lines, optional_field


@dataclass(frozen=True)
class NLVRRecord:
    identifier: str  # "{split}-{set}-{pair}-{sentence}"
    sentence: str
    label: bool
    left_image: str  # relative to the image root
    right_image: str
    left_url: str | None = None
    right_url: str | None = None


_LABELS = {"true": True, "false": False}


def read_nlvr2(path, image_dir: str = "") -> list[NLVRRecord]:
    """One record per line: {"identifier", "sentence", "label": "True"/"False", "left_url", "right_url"}.

    Image names follow the official convention: identifier "{split}-{set}-{pair}-{sentence}" has the
    images "{split}-{set}-{pair}-img0.png" (left) and "...-img1.png" (right), stored under "{split}/"
    and, for train, under the numbered "directory" the line names.
    """
    records, seen = [], set()
    for number, row in load_json_lines(path):
        where = f"line {number}"
        identifier = field(row, "identifier", str, path, where)
        parts = identifier.split("-")
        if len(parts) != 4 or not all(parts):
            raise DatasetFormatError(path, f"{where}.identifier {identifier!r} is not '{{split}}-{{set}}-{{pair}}-{{sentence}}'")
        if identifier in seen:
            raise DatasetFormatError(path, f"{where}: duplicate identifier {identifier!r}")
        seen.add(identifier)
        sentence = field(row, "sentence", str, path, where)
        raw_label = field(row, "label", (str, bool), path, where)
        label = raw_label if isinstance(raw_label, bool) else _LABELS.get(raw_label.lower())
        if label is None:
            raise DatasetFormatError(path, f"{where}.label should be 'True' or 'False', got {raw_label!r}")
        folder = parts[0]
        directory = optional_field(row, "directory", (str, int), path, where)
        if directory is not None:
            folder = f"{folder}/{directory}"
        stem = f"{folder}/{'-'.join(parts[:3])}"
        records.append(NLVRRecord(
            identifier, sentence, label,
            image_path(image_dir, f"{stem}-img0.png"), image_path(image_dir, f"{stem}-img1.png"),
            optional_field(row, "left_url", str, path, where), optional_field(row, "right_url", str, path, where),
        ))
    return records
