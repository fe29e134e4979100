"""The CapFilt output contract: one Arrow schema for the per-shard Parquet files, and the run / marker files."""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2"  # 2: the CLIP scorer's web_clip and synthetic[].clip (issue 25)

# Every column, with what a curator needs to know about it. The schema below is built from this table.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("shard", pa.string(), "id of the input shard (file stem, made unique across the input list)"),
    ("key", pa.string(), "the sample key inside its shard (the tar member name without extension); null for a shard-level error row"),
    ("status", pa.string(), "'ok' when the image was decoded and scored, else 'error'"),
    ("error_type", pa.string(), "stable code of the failure when status = 'error' (see README), else null"),
    ("error_message", pa.string(), "human-readable detail of the failure, else null"),
    ("url", pa.string(), "source URL from the img2dataset metadata (KEY.json), when present"),
    ("web_caption", pa.string(), "the original alt-text (KEY.txt, else the json 'caption'); null when the sample has none"),
    ("web_caption_invalid_utf8", pa.bool_(), "true when the caption bytes were not UTF-8 and were decoded with replacement characters"),
    ("web_itm", pa.float32(), "filter ITM p(match) of image and web caption; null without a caption or on error"),
    ("web_itc", pa.float32(), "filter ITC cosine similarity of image and web caption (BLIP-2: the largest over its 32 "
                              "query embeddings); null without a caption or on error"),
    ("web_clip", pa.float32(), "CLIP scorer's cosine similarity of image and web caption (--scorer); null without a "
                               "scorer, a caption, or on error"),
    ("synthetic", pa.list_(pa.struct([("text", pa.string()), ("itm", pa.float32()), ("itc", pa.float32()),
                                      ("clip", pa.float32())])),
     "the captioner's nucleus-sampled captions, in sampling order, each with its filter ITM p(match), ITC cosine and "
     "CLIP cosine (null without --scorer)"),
    ("image_embedding", None, "L2-normalised image embedding of the filter (fixed-size float32 list): BLIP's ITC "
                              "embedding; for a BLIP-2 filter the normalised mean of its 32 query embeddings; null on "
                              "error"),
    ("width", pa.int32(), "width of the decoded image in pixels"),
    ("height", pa.int32(), "height of the decoded image in pixels"),
    ("image_format", pa.string(), "extension of the image member (jpg, png, webp, ...)"),
    ("original_width", pa.int32(), "img2dataset metadata: width of the image before img2dataset resized it"),
    ("original_height", pa.int32(), "img2dataset metadata: height of the image before img2dataset resized it"),
    ("sha256", pa.string(), "img2dataset metadata: sha256 of the downloaded image bytes"),
    ("metadata", pa.string(), "the sample's whole KEY.json, as text, for any field not given a column"),
]

COLUMN_DOCS = {name: doc for name, _, doc in COLUMNS}
COLUMN_NAMES = [name for name, _, _ in COLUMNS]
STATUS_OK, STATUS_ERROR = "ok", "error"


def sample_schema(embedding_dim: int) -> pa.Schema:
    """The schema of every per-shard Parquet file of a run whose filter embeds into `embedding_dim` floats."""
    fields = []
    for name, dtype, doc in COLUMNS:
        if name == "image_embedding":
            dtype = pa.list_(pa.float32(), embedding_dim)
        fields.append(pa.field(name, dtype, metadata={"doc": doc}))
    return pa.schema(fields, metadata={"capfilt_schema_version": SCHEMA_VERSION})


# Layout of a run directory. The done-marker is the only commit point: a shard is in the run when its marker exists,
# and every reader of a run (pipelines/select.py, export, shapeworld/evidence.py) lists its files from the markers.
# The markers sit in a folder whose name starts with "_", and the writer's temporary names start with ".", so the
# usual Parquet readers of OUT/shards (pyarrow.dataset, pandas.read_parquet, DuckDB's *.parquet glob) skip both.
RUN_FILE = "run.json"  # the full configuration; a re-run must match it
SHARD_DIR = "shards"  # shards/{shard}.parquet, then shards/_done/{shard}.json (the done-marker, written last)
PARQUET_SUFFIX = ".parquet"
MARKER_DIR = "_done"  # inside SHARD_DIR
MARKER_SUFFIX = ".json"
LEGACY_MARKER_SUFFIX = ".done.json"  # runs written before issue 24: shards/{shard}.done.json, still read as markers
HIDDEN_PREFIXES = ("_", ".")  # names pyarrow.dataset (so pandas) ignores; a Parquet name never starts with one
HIDDEN_PARQUET_PREFIX = "@"  # outside the shard-id alphabet: "_x" is written as @_x.parquet, never a collision

# An export folder (pipelines/export.py), laid out as img2dataset lays out its output: per exported shard
# {name}.tar (KEY.<image> + KEY.txt + KEY.json), then {name}.parquet (a row per sample of the tar), then
# {name}_stats.json; and the manifest, written last, that lists every file of the export. Export replaces a
# folder only when the manifest says capfilt wrote it. {name} is the source shard's id, or with --samples-per-shard
# img2dataset's numbering: 00000, 00001, ... (EXPORT_SHARD_DIGITS wide, img2dataset's default oom_shard_count).
EXPORT_MANIFEST = "export.json"
EXPORT_FORMAT = "capfilt-export/2"  # 2: KEY.json keeps its caption, capfilt's choice under "capfilt"; .parquet files
EXPORT_LISTING_FORMATS = ("capfilt-export/1", EXPORT_FORMAT)  # manifests whose "files" list every file of the export
EXPORT_SHARD_FILES = (".tar", ".parquet", "_stats.json")  # one exported shard: {name} + each, in the order written
EXPORT_SHARD_DIGITS = 5
EXPORT_KEY = "capfilt"  # capfilt's own entry in an exported KEY.json and {name}_stats.json, beside img2dataset's

# The columns of an exported shard's {name}.parquet: img2dataset's (its downloader's schema, without the extra input
# columns of --save_additional_columns, which stay in KEY.json), then capfilt's. The schema is built from this table.
EXPORT_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("url", pa.string(), "img2dataset: the image's URL (KEY.json)"),
    ("caption", pa.string(), "img2dataset: the original alt-text (KEY.json, else the source's KEY.txt)"),
    ("key", pa.string(), "img2dataset: the sample's key, its member name in the tar"),
    ("status", pa.string(), "img2dataset: the download's status (KEY.json; else 'success', as every image in a tar is)"),
    ("error_message", pa.string(), "img2dataset: null for a success (KEY.json)"),
    ("width", pa.int32(), "img2dataset: width of the image in the tar (KEY.json, else as the run decoded it)"),
    ("height", pa.int32(), "img2dataset: height of the image in the tar (KEY.json, else as the run decoded it)"),
    ("original_width", pa.int32(), "img2dataset: width of the image before img2dataset resized it (KEY.json)"),
    ("original_height", pa.int32(), "img2dataset: height of the image before img2dataset resized it (KEY.json)"),
    ("exif", pa.string(), "img2dataset: the image's EXIF tags as JSON text (KEY.json)"),
    ("sha256", pa.string(), "img2dataset: sha256 of the downloaded image bytes (KEY.json)"),
    ("capfilt_caption", pa.string(), "capfilt: the chosen caption, KEY.txt (the best kept one)"),
    ("capfilt_source", pa.string(), "capfilt: where the chosen caption came from, 'web' or 'synthetic'"),
    ("capfilt_caption_index", pa.int32(), "capfilt: the chosen caption's caption_index (0 the web caption, 1..N the "
                                          "synthetic ones in sampling order)"),
    ("capfilt_itm", pa.float32(), "capfilt: the chosen caption's filter ITM p(match)"),
    ("capfilt_itc", pa.float32(), "capfilt: the chosen caption's filter ITC cosine"),
    ("capfilt_clip", pa.float32(), "capfilt: the chosen caption's CLIP cosine (null without --scorer)"),
    ("capfilt_captions", pa.int32(), "capfilt: how many captions of the sample were kept (KEY.json capfilt.captions)"),
    ("capfilt_shard", pa.string(), "capfilt: id of the run's shard the sample was read from"),
]
IMG2DATASET_COLUMNS = [name for name, _, _ in EXPORT_COLUMNS if not name.startswith(f"{EXPORT_KEY}_")]


def export_schema() -> pa.Schema:
    """The schema of every {name}.parquet of an export."""
    return pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in EXPORT_COLUMNS])

# The done-marker's "fingerprint" (pipelines/fingerprint.py): what the run read of its input shard, checked before
# export reads the shard again and when a re-run resumes.
FINGERPRINT_FIELD = "fingerprint"


def parquet_name(shard_id: str) -> str:
    """The file name of a shard's Parquet inside SHARD_DIR."""
    prefix = HIDDEN_PARQUET_PREFIX if shard_id.startswith(HIDDEN_PREFIXES) else ""
    return prefix + shard_id + PARQUET_SUFFIX


def marker_name(shard_id: str) -> str:
    """The done-marker's path inside SHARD_DIR."""
    return f"{MARKER_DIR}/{shard_id}{MARKER_SUFFIX}"

# The done-marker's "retries" counts (the run summary has the same, over the run): work redone after a failure,
# which costs time but leaves no trace in the rows. Zero in a run where nothing failed.
RETRY_COUNTS: dict[str, str] = {
    "batches_retried": "batches sent to a model actor again after a failure (its crash, an exception)",
    "batches_isolated": "batches that failed on every try and were split: each sample run alone on its actor",
    "samples_isolated": "samples run alone because their batch was split",
    "samples_retried": "samples sent again after failing alone (one that fails every time alone is an error row)",
    "decode_restarts": "decode tasks started again, one sample per batch, after every attempt's process died",
}


def no_retries() -> dict[str, int]:
    """The retry counts of work that went through the first time."""
    return dict.fromkeys(RETRY_COUNTS, 0)
