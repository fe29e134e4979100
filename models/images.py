"""Turning untrusted image bytes, paths, PIL images or arrays into the RGB uint8 arrays every model takes."""
from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

# Pillow's own limit (about 89.5 Mpx) only *warns* between 1x and 2x; capfilt refuses anything above it.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# How the formats of pipelines.reader.IMAGE_EXTENSIONS begin (WebP: RIFF, a length, WEBP): bytes that start like one
# but cannot be read are a damaged image, not some other file.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class ImageError(ValueError):
    """An input that is not a usable image; `error_type` is the stable code written to output rows."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB image, or raise ImageError with a specific error_type.

    The pixel count is checked against max_pixels from the header before any pixel is decoded, so a decompression
    bomb costs no memory; that limit applies above Pillow's own MAX_IMAGE_PIXELS too (see _open). Animated images
    yield their first frame.
    """
    if not data:
        raise ImageError("empty_image", "the image file is zero bytes")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half a picture
    try:
        image = _open(data)
    except Image.DecompressionBombError as exc:  # a format's own check, above 2x Pillow's limit (WebP, MPO)
        raise ImageError("decompression_bomb", f"image header declares too many pixels: {exc}") from None
    except Image.UnidentifiedImageError:
        if _is_webp(data) or data.startswith(SIGNATURES):
            raise ImageError(_damage(data), "the file starts like an image but its header cannot be read") from None
        raise ImageError("not_an_image", "the bytes are not in any image format Pillow can read") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse a header is a corrupt image
        raise ImageError(_damage(data, exc), f"cannot read image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("decompression_bomb", f"{width}x{height} pixels is above the limit of {max_pixels}")
    if width < 1 or height < 1:
        raise ImageError("corrupt_image", f"image has an empty size {width}x{height}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency notices; handled in to_rgb
            image.load()
    except Image.DecompressionBombError as exc:  # a format's own check while decoding (TIFF tiles)
        raise ImageError("decompression_bomb", f"image declares too many pixels: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - decoder bugs on hostile data must not escape as crashes
        raise ImageError(_damage(data, exc), f"cannot decode image data: {exc}") from None
    return to_rgb(image)


def _open(data: bytes) -> Image.Image:
    """Image.open, with decode_image's limit the one that applies instead of Pillow's global MAX_IMAGE_PIXELS.

    Pillow warns between 1x and 2x its limit (ignored: the caller checks the size) and refuses above 2x before the
    size can be seen; then the header is parsed again by the format's own plugin, in Image.open's order, without
    Pillow's check. MAX_IMAGE_PIXELS is never changed, so other threads keep Pillow's limit; the formats that check
    again in their own plugins (WebP and MPO headers, TIFF tiles) still stop at 2x Pillow's limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        Image.init()
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            try:
                if accept is None or accept(data[:16]) is True:
                    return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, struct.error):  # not this format: what Image.open skips too
                continue
        raise


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _damage(data: bytes, exc: Exception | None = None) -> str:
    """truncated_image when the decoder says so or the file is shorter than it says it is (a WebP records its
    length in its RIFF header; libwebp refuses a cut file at its header without saying why), else corrupt_image."""
    if _is_webp(data) and len(data) < 8 + int.from_bytes(data[4:8], "little"):
        return "truncated_image"
    return "truncated_image" if exc is not None and "truncated" in str(exc).lower() else "corrupt_image"


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB without surprises: 16-bit and float images are rescaled, not clipped; alpha is dropped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max(initial=0)
        if mode.startswith("I;16") or top > 255:
            high = 65535.0
        else:
            high = 1.0 if mode == "F" and top <= 1.0 else 255.0  # float images usually hold [0, 1]
        gray = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Accept a path, raw bytes, a PIL image or an HxW / HxWxC array; return an RGB PIL image."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), max_pixels)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError("missing_image", f"no image file at {str(path)!r}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError("missing_image", f"cannot read {str(path)!r}: {exc.strerror}") from None
        try:
            return decode_image(data, max_pixels)
        except ImageError as exc:
            raise ImageError(exc.error_type, f"{str(path)!r}: {exc}") from None
    raise ImageError("not_an_image", f"expected a path, bytes, a PIL image or a numpy array, got {type(image).__name__}")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or array.size == 0:
        raise ImageError("not_an_image", f"an image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.integer):
            # the dtype's range is the image's range: uint16 0..65535 maps onto 0..255, never clipped
            high = float(np.iinfo(array.dtype).max) if array.max(initial=0) > 255 else 255.0
            array = np.clip(array.astype(np.float64) / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        elif np.issubdtype(array.dtype, np.floating):
            values = array.astype(np.float64)
            scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0  # floats in [0, 1] are the usual convention
            array = np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)
        else:
            raise ImageError("not_an_image", f"an image array must be numeric, got dtype {array.dtype}")
    return to_rgb(Image.fromarray(array))


def resize(image: Image.Image, size: int) -> np.ndarray:
    """BLIP's transform: bicubic resize to size x size (no crop); uint8 HxWx3. Normalisation runs on the model's device."""
    return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)
