"""Hostile and awkward inputs shared by the reader, image and corpus tests: encoded images, bomb headers, pickles
that would leave a file behind if anything ever loaded them."""
from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image, fmt: str = "PNG", **options) -> bytes:
    """The bytes Pillow writes for `image` (a PIL image or an array) in `fmt`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def image_bytes(fmt: str = "JPEG", size=(40, 30), seed: int = 0) -> bytes:
    """A width x height image of random colours (seeded) in `fmt`."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return encode(pixels, fmt)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height RGB pixels, followed by a token IDAT: the shape of a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


class Boom:
    """Unpickling this would create a file: proof that a pickle member was never loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_payload(sentinel) -> bytes:
    """A pickle that creates the file `sentinel` when loaded."""
    return pickle.dumps(Boom(str(sentinel)))
