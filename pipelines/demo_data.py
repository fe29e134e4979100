"""Demo and test corpora: img2dataset-style shards built from the photographs scikit-image ships."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

# (skimage.data function, a correct caption, an unrelated caption a web page might carry)
PHOTOS = [
    ("astronaut", "an astronaut in a white suit in front of a flag", "cheap flights book now"),
    ("coffee", "a cup of coffee on a saucer", "IMG_2041.JPG"),
    ("chelsea", "a tabby cat looking to the side", "best deals on car insurance"),
    ("rocket", "a rocket on a launch pad", "click here"),
    ("coins", "old coins laid out in rows", "a bowl of soup"),
    ("camera", "a man with a camera on a tripod", "DSC0001"),
    ("horse", "the silhouette of a horse", "a red sports car"),
    ("page", "a page of printed text", "sunset over the sea"),
]


def photo(name: str) -> np.ndarray:
    from skimage import data

    array = getattr(data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return array


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


def build_demo_shards(directory: Path, shards: int = 3, per_shard: int = 8, broken: bool = True) -> list[Path]:
    """Shards of real photographs with web-like captions: correct ones, unrelated ones, a missing one, and
    (with `broken`) a truncated JPEG and a sample without an image, so the demo shows error rows too."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    images = {name: photo(name) for name, _, _ in PHOTOS}
    for s in range(shards):
        members: dict[str, bytes] = {}
        for i in range(per_shard):
            index = s * per_shard + i
            name, good, bad = PHOTOS[index % len(PHOTOS)]
            key = f"{s:05d}{i:04d}"
            array = images[name]
            caption = None if index % 11 == 7 else (bad if index % 3 == 2 else good)
            data = jpeg_bytes(array)
            if broken and s == 0 and i == per_shard - 1:
                data = data[: len(data) // 3]  # cut short: an error row 'truncated_image'
            if broken and s == shards - 1 and i == per_shard - 1:
                data = None  # no image member: an error row 'missing_image'
            size = (array.shape[1], array.shape[0])
            members.update(sample_members(key, data, caption, f"https://example.com/{name}/{index}.jpg", size=size))
        paths.append(write_tar(directory / f"{s:05d}.tar", members))
    return paths
