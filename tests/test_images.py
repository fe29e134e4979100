"""models.images: untrusted bytes, paths, PIL images and arrays -> RGB, with stable error codes; BLIP's transform."""
from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from models.images import ImageError, decode_image, load_image
from models.loading import load_checkpoint
from models.matcher import Matcher
from tests.hostile import png_header_only


def error_type(call, *args, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        call(*args, **kwargs)
    return info.value.error_type


# ---------------------------------------------------------------- decode_image: refusals


def test_zero_bytes_is_empty_image():
    """Zero bytes are `empty_image`."""
    assert error_type(decode_image, b"") == "empty_image"


def test_random_bytes_are_not_an_image():
    """Bytes in no image format are `not_an_image`, also when they start like a RIFF file that is not a WebP."""
    noise = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    assert error_type(decode_image, noise) == "not_an_image"
    assert error_type(decode_image, b"RIFF\x10\x00\x00\x00WAVE" + noise) == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_file_is_truncated_image(encode, astronaut, fmt):
    """A file cut in the middle of its pixel data is `truncated_image`, never half a picture (a WebP's RIFF
    header records its length: libwebp refuses the cut file at its header, the length tells why)."""
    data = encode(astronaut, fmt)
    assert error_type(decode_image, data[: len(data) // 2]) == "truncated_image"


def test_webp_cut_after_its_header_is_truncated_and_damaged_in_place_is_corrupt(encode):
    """A WebP cut just after RIFF/length/WEBP is `truncated_image`; one of full length whose frame header is
    zeroed is `corrupt_image`."""
    data = encode(Image.new("RGB", (16, 16), (0, 128, 255)), "WEBP")
    assert error_type(decode_image, data[:12]) == "truncated_image"
    assert error_type(decode_image, data[:20] + bytes(20) + data[40:]) == "corrupt_image"


def test_png_with_a_damaged_header_chunk_is_corrupt_image(encode):
    """A PNG whose IHDR checksum is wrong starts with the PNG signature: `corrupt_image`, not `not_an_image`."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (0, 128, 255)), "PNG"))
    data[29] ^= 0xFF  # the IHDR CRC: 8 bytes of signature, 8 of chunk length and type, 13 of IHDR data
    assert error_type(decode_image, bytes(data)) == "corrupt_image"


@pytest.mark.parametrize("max_pixels", [100, 150, 199])  # 2x, 1.33x and just above the limit
def test_more_pixels_than_max_pixels_is_decompression_bomb(encode, max_pixels):
    """A 20x10 PNG is refused when max_pixels is below 200, including between 1x and 2x the limit."""
    data = encode(Image.new("RGB", (20, 10)), "PNG")
    assert error_type(decode_image, data, max_pixels=max_pixels) == "decompression_bomb"
    assert decode_image(data, max_pixels=200).size == (20, 10)


@pytest.mark.parametrize("size", [(15, 10), (30, 10)])  # 1.5x (Pillow warns) and 3x (Pillow refuses) its limit
def test_max_pixels_above_pillows_limit_is_the_limit(monkeypatch, encode, size):
    """Pillow's MAX_IMAGE_PIXELS (lowered to 100 here, to keep the images tiny) does not override max_pixels:
    a solid PNG above it decodes when max_pixels allows its size, and is `decompression_bomb` at Pillow's value.
    Pillow's global limit is left as it was."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encode(Image.new("RGB", size, (0, 128, 255)), "PNG")
    image = decode_image(data, max_pixels=1000)
    assert image.size == size and np.asarray(image)[0, 0].tolist() == [0, 128, 255]
    assert error_type(decode_image, data, max_pixels=100) == "decompression_bomb"
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.parametrize("side", [10_000, 20_000])  # 1.1x (Pillow only warns) and 4.5x Pillow's own limit
def test_bomb_header_is_refused_before_decoding(side):
    """A header declaring 10^8 / 4x10^8 pixels is `decompression_bomb` from the header alone (its data is junk)."""
    assert error_type(decode_image, png_header_only(side, side)) == "decompression_bomb"


# ---------------------------------------------------------------- decode_image: awkward but valid files


def test_cmyk_jpeg_decodes_to_rgb(encode):
    """A CMYK JPEG comes back RGB with its colour (pure red) preserved."""
    image = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert image.mode == "RGB"
    np.testing.assert_allclose(np.asarray(image)[8, 8], [255, 0, 0], atol=3)


def test_palette_png_with_transparency_decodes_without_warning(encode):
    """A palette PNG with a transparent index decodes to its palette colours, without Pillow's warning."""
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    data = encode(palette, "PNG", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = decode_image(data)
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :2].tolist() == [[0, 255, 0], [255, 0, 0]]


def test_16bit_png_is_rescaled_not_clipped(encode):
    """A 16-bit grayscale PNG (mode I;16) maps 0..65535 onto 0..255 instead of saturating above 255."""
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = np.asarray(decode_image(data))
    assert pixels.shape == (1, 4, 3)
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_animated_gif_yields_first_frame(encode):
    """An animated GIF decodes to its first frame (red), not a later one (blue)."""
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image = decode_image(data)
    assert image.mode == "RGB"
    assert np.asarray(image)[4, 4].tolist() == [255, 0, 0]


def test_one_pixel_image_decodes(encode):
    """A 1x1 grayscale PNG is a valid 1x1 RGB image."""
    image = decode_image(encode(Image.new("L", (1, 1), 7), "PNG"))
    assert image.mode == "RGB" and image.size == (1, 1)
    assert np.asarray(image).tolist() == [[[7, 7, 7]]]


# ---------------------------------------------------------------- load_image: accepted inputs


def test_load_image_accepts_path_and_bytes(tmp_path, encode, astronaut):
    """A str path, a Path and raw bytes of a PNG give the original pixels."""
    data = encode(astronaut, "PNG")
    path = tmp_path / "astronaut.png"
    path.write_bytes(data)
    for source in (str(path), path, data, bytearray(data)):
        image = load_image(source)
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), astronaut)


def test_load_image_accepts_pil_images(astronaut):
    """An RGB PIL image is kept; a grayscale or RGBA one becomes RGB."""
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(astronaut))), astronaut)
    gray = load_image(Image.fromarray(astronaut[..., 0]))
    assert gray.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(gray)[..., 1], astronaut[..., 0])
    rgba = load_image(Image.fromarray(np.dstack([astronaut, np.full(astronaut.shape[:2], 9, np.uint8)])))
    np.testing.assert_array_equal(np.asarray(rgba), astronaut)


def test_load_image_accepts_arrays(astronaut):
    """HxWx3 uint8, HxW, HxWx4, CHW and float arrays in [0, 1] all give the same RGB pixels."""
    expected = astronaut
    for array in (
        astronaut,
        np.moveaxis(astronaut, -1, 0),  # CHW
        np.dstack([astronaut, np.zeros(astronaut.shape[:2], np.uint8)]),  # HxWx4
        astronaut.astype(np.float32) / 255.0,  # floats in [0, 1]
        astronaut.astype(np.float64),  # floats in [0, 255]
    ):
        np.testing.assert_array_equal(np.asarray(load_image(array)), expected)
    gray = np.asarray(load_image(astronaut[..., 1]))
    assert gray.shape == astronaut.shape and (gray == astronaut[..., 1:2]).all()


def test_uint16_array_is_rescaled_like_a_16bit_image():
    """A uint16 array gives the same pixels as the same data as a 16-bit PIL image (rescaled, not clipped)."""
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    np.testing.assert_array_equal(np.asarray(load_image(values)), np.asarray(load_image(Image.fromarray(values))))


def test_float_pil_image_in_unit_range_matches_float_array(encode):
    """A float32 image in [0, 1] decoded from a TIFF (mode F) gives the same pixels as the float array itself."""
    values = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    from_file = np.asarray(decode_image(encode(Image.fromarray(values, mode="F"), "TIFF")))
    np.testing.assert_array_equal(from_file, np.asarray(load_image(values)))


# ---------------------------------------------------------------- load_image: refusals


def test_load_image_rejects_missing_path_and_directory(tmp_path):
    """A path to nothing, or to a directory, is `missing_image` naming the path."""
    with pytest.raises(ImageError, match="nope.png") as info:
        load_image(tmp_path / "nope.png")
    assert info.value.error_type == "missing_image"
    assert error_type(load_image, str(tmp_path)) == "missing_image"


def test_load_image_from_path_keeps_the_decode_error_type(tmp_path, encode, astronaut):
    """A truncated file on disk is `truncated_image` and the message names the file."""
    path = tmp_path / "cut.jpg"
    path.write_bytes(encode(astronaut, "JPEG")[:4000])
    with pytest.raises(ImageError, match="cut.jpg") as info:
        load_image(path)
    assert info.value.error_type == "truncated_image"


@pytest.mark.parametrize("shape,dtype", [((2, 2, 2, 3), np.uint8), ((5, 6, 2), np.uint8), ((0, 4, 3), np.uint8),
                                         ((4, 4, 3), bool)])
def test_load_image_rejects_bad_arrays(shape, dtype):
    """Arrays that are not HxW / HxWx{1,3,4} / CHW images, empty, or not numeric are `not_an_image`."""
    assert error_type(load_image, np.zeros(shape, dtype)) == "not_an_image"


@pytest.mark.parametrize("thing", [object(), 42, None, [[0, 0, 0]]])
def test_load_image_rejects_non_images(thing):
    """Objects that are not paths, bytes, PIL images or arrays are `not_an_image`."""
    assert error_type(load_image, thing) == "not_an_image"


def test_load_image_passes_max_pixels_through(encode):
    """load_image on bytes applies the caller's max_pixels."""
    assert error_type(load_image, encode(Image.new("RGB", (20, 10))), max_pixels=150) == "decompression_bomb"


# ---------------------------------------------------------------- BLIP's transform vs transformers' processor


@pytest.mark.parametrize("size", [32, 384])
def test_prepare_and_pixel_values_match_blip_image_processor(photos, size):
    """Role.prepare + pixel_values equals transformers' PIL-backed BLIP image processor at the same size."""
    from transformers import BlipImageProcessorPil

    checkpoint = dataclasses.replace(load_checkpoint("tiny-random_retrieval"), image_size=size)
    role = Matcher(checkpoint, device="cpu", precision="fp32")
    processor = BlipImageProcessorPil(size={"height": size, "width": size})
    ours = role.pixel_values(role.prepare(photos))
    reference = processor(images=[Image.fromarray(p).convert("RGB") for p in photos], return_tensors="pt")["pixel_values"]
    assert ours.shape == reference.shape == (len(photos), 3, size, size)
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().max().item() < 1e-5


def test_prepare_gives_uint8_batches_at_model_size(matcher, photos):
    """prepare turns photos of different sizes (and a grayscale one) into one (B, S, S, 3) uint8 batch."""
    batch = matcher.prepare(photos)
    assert batch.shape == (len(photos), matcher.image_size, matcher.image_size, 3)
    assert batch.dtype == np.uint8


@pytest.mark.parametrize("shape", [(1, 32, 32), (1, 16, 16, 3), (1, 3, 32, 32)])
def test_pixel_values_rejects_wrong_shapes(matcher, shape):
    """pixel_values refuses batches that are not (B, S, S, 3)."""
    with pytest.raises(ValueError, match="expected uint8 images"):
        matcher.pixel_values(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("batch", [np.zeros((1, 32, 40, 3), np.uint8), np.full((1, 32, 32, 3), 0.5, np.float32)],
                         ids=["wrong-width", "float"])
def test_pixel_values_rejects_wrong_width_or_dtype(matcher, batch):
    """pixel_values refuses a batch of the wrong width or of non-uint8 values."""
    with pytest.raises(ValueError):
        matcher.pixel_values(batch)
