"""Writing img2dataset-style shards: KEY.jpg + KEY.txt + KEY.json per sample, in a plain tar (the shape world, the
benchmarks and the tests write their corpora with it)."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sample_members(key: str, image: bytes | None, caption: str | bytes | None, url: str, extension: str = "jpg",
                   size: tuple[int, int] | None = None) -> dict[str, bytes]:
    """The members img2dataset writes for one sample: KEY.jpg, KEY.txt, KEY.json."""
    members: dict[str, bytes] = {}
    if image is not None:
        members[f"{key}.{extension}"] = image
    if caption is not None:
        members[f"{key}.txt"] = caption if isinstance(caption, bytes) else caption.encode("utf-8")
    text = caption.decode("utf-8", "replace") if isinstance(caption, bytes) else caption
    meta = {"url": url, "caption": text, "key": key, "status": "success", "error_message": None,
            "width": size[0] if size else None, "height": size[1] if size else None,
            "original_width": size[0] if size else None, "original_height": size[1] if size else None,
            "exif": None, "sha256": hashlib.sha256(image).hexdigest() if image else None}
    members[f"{key}.json"] = json.dumps(meta).encode("utf-8")
    return members


def write_tar(path: Path, members: dict[str, bytes] | list[tuple[str, bytes]]) -> Path:
    """A tar of the given members, in order (plain tarfile, as img2dataset's writer produces)."""
    import tarfile

    items = members.items() if isinstance(members, dict) else members
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path
