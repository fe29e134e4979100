"""Reading webdataset / img2dataset tar shards as untrusted input: samples grouped by key, nothing unpickled.

Members are read into memory only for the extensions capfilt uses; nothing is extracted to disk, so member
names are never paths. Every problem becomes data (a sample problem or a shard problem), never an exception.
"""
from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from pipelines.sources import filesystem

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TEXT_EXTENSIONS = ("txt", "json")
MAX_IMAGE_BYTES = 64 << 20  # a web image above 64 MB is refused unread: it is a bomb or not a web image
MAX_TEXT_BYTES = 1 << 20
# webdataset's rule: the key is the member path up to the first dot of its basename.
KEY_PATTERN = re.compile(r"^((?:.*/|)[^./][^/]*?)\.([^/]*)$")


class _TarInfo(tarfile.TarInfo):
    """Notes when the archive stops without its end-of-archive block: tarfile ends such a stream silently,
    which would hide a shard cut exactly between two members."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            tar.cut_short = True
            raise


@dataclass
class RawSample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes (images and texts only)
    problem: tuple[str, str] | None = None  # (error_type, message) that makes the sample an error row


@dataclass
class ShardProblem:
    """Something wrong with the shard itself; the samples read before it are kept."""

    error_type: str  # unreadable_shard | truncated_shard
    message: str


def read_shard(url: str, max_image_bytes: int = MAX_IMAGE_BYTES) -> Iterator[RawSample | ShardProblem]:
    """Samples of one shard, in tar order; a trailing ShardProblem when the shard is unreadable or cut short."""
    current: RawSample | None = None
    seen: set[str] = set()
    try:
        fs, path = filesystem(url)
        with fs.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*", tarinfo=_TarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    continue  # directories and links carry no sample data
                match = KEY_PATTERN.match(member.name)
                if match is None:
                    continue  # no extension: not a sample member
                key, extension = match.group(1), match.group(2).lower()
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = RawSample(key)
                    if key in seen:
                        current.problem = ("duplicate_key", f"key {key!r} appears again later in the shard")
                    elif _unsafe(key):
                        current.problem = ("unsafe_member_name", f"member name {member.name!r} is absolute or escapes the shard")
                    seen.add(key)
                if extension in IMAGE_EXTENSIONS:
                    limit = max_image_bytes
                elif extension in TEXT_EXTENSIONS:
                    limit = MAX_TEXT_BYTES
                else:
                    continue  # other members (.pyd, .pth, ...) are never read, so never unpickled
                if member.size > limit:
                    current.problem = current.problem or (
                        f"oversized_{'image' if limit == max_image_bytes else 'text'}",
                        f"member {member.name!r} is {member.size} bytes, above the limit of {limit}",
                    )
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise EOFError(f"member {member.name!r} is cut short")
                current.members.setdefault(extension, data)
            if getattr(tar, "cut_short", False):
                raise EOFError("the archive ends without its end-of-archive block")
    except (tarfile.ReadError, EOFError, OSError, ValueError) as exc:
        problem = _classify(exc, started=current is not None)
        if current is not None:
            if problem.error_type == "truncated_shard":
                current.problem = ("truncated_shard", f"the shard ends inside this sample: {exc}")
            yield current
        yield problem
        return
    if current is not None:
        yield current


def _unsafe(key: str) -> bool:
    return key.startswith("/") or ".." in posixpath.normpath(key).split("/") or "\\" in key


def _classify(exc: Exception, started: bool) -> ShardProblem:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return ShardProblem("unreadable_shard", f"shard not found: {text}")
    if started or "unexpected end" in text.lower() or isinstance(exc, EOFError):
        return ShardProblem("truncated_shard", f"shard is cut short: {text}")
    return ShardProblem("unreadable_shard", f"not a readable tar archive: {text}")
