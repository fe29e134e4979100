"""Loading a pickle that may hold only plain containers, strings and numbers (never code or classes)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .fields import DatasetFormatError


class _PlainUnpickler(pickle.Unpickler):
    # Every way a pickle can run code (REDUCE, INST, OBJ, NEWOBJ, STACK_GLOBAL, EXT*) first resolves
    # a global through find_class, so refusing all globals leaves only built-in data types loadable.
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain data is allowed")


def load_plain_pickle(path) -> Any:
    """The data in a pickle of dicts / lists / tuples / strings / numbers; a DatasetFormatError otherwise.

    Python 2 pickles (refs(unc).p of the RefCOCO release) load too: their byte strings decode as UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found")
    with path.open("rb") as handle:
        try:
            return _PlainUnpickler(handle, encoding="utf-8").load()
        # A truncated or corrupt pickle fails in many ways (EOFError, KeyError, TypeError, ...).
        except Exception as error:
            raise DatasetFormatError(path, f"not a plain-data pickle ({error})") from error
