"""From model-stage rows to a committed shard's table and stats (shared by the Ray and in-process runners)."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from schemas.capfilt import COLUMN_NAMES, STATUS_OK, no_retries, sample_schema


def shard_table(rows: list[dict], embedding_dim: int) -> pa.Table:
    """Rows (in tar order) as an Arrow table of the run's schema; absent columns are null."""
    schema = sample_schema(embedding_dim)
    columns = {name: [row.get(name) for row in rows] for name in COLUMN_NAMES}
    columns["image_embedding"] = embedding_array(columns["image_embedding"], embedding_dim)
    return pa.Table.from_pydict(columns, schema=schema)


def embedding_array(embeddings: list, dim: int) -> pa.FixedSizeListArray:
    """Fixed-size float32 lists; a null row keeps zeros underneath (DuckDB's list functions read the child
    values of null rows and refuse NULLs there)."""
    values = np.zeros((len(embeddings), dim), dtype=np.float32)
    valid = np.array([e is not None for e in embeddings], dtype=bool)
    for i, embedding in enumerate(embeddings):
        if embedding is not None:
            values[i] = embedding
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim, mask=pa.array(~valid))


def shard_stats(shard_id: str, url: str, rows: list[dict], started: float, retries: dict | None = None) -> dict:
    """The done-marker's content: counts by status and error type, whether the shard was read to its end, and
    the work redone after failures (`retries`, keys of schemas.capfilt.RETRY_COUNTS; zeros when not given)."""
    errors: dict[str, int] = {}
    for row in rows:
        if row["status"] != STATUS_OK:
            errors[row["error_type"]] = errors.get(row["error_type"], 0) + 1
    shard_errors = [row for row in rows if row.get("key") is None]
    return {
        "shard": shard_id,
        "url": url,
        "samples": sum(1 for row in rows if row.get("key") is not None),
        "ok": sum(1 for row in rows if row["status"] == STATUS_OK),
        "errors": errors,
        "partial": bool(shard_errors),
        "shard_error": shard_errors[0]["error_message"] if shard_errors else None,
        "retries": {**no_retries(), **(retries or {})},
        "seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
