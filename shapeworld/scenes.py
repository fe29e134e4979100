"""Scenes of simple coloured shapes with known attributes, and their deterministic rendering.

A group scene holds `count` identical things (same shape, colour and size) all inside one half of the image; its
position is the only half that holds the whole group. A mixed scene holds 2-3 things of pairwise distinct
(shape, colour) anywhere, for referring expressions. `render` depends on the Scene alone.
"""
from __future__ import annotations

import colorsys
import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 70, 230),
    "yellow": (245, 220, 20),
    "purple": (150, 40, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = {1: "one", 2: "two", 3: "three"}
POSITIONS = ("left", "right", "top", "bottom")

MIN_SIDE, MAX_SIDE = 24, 36  # object side at IMAGE_SIZE (a quarter to over a third of it); scaled for other sizes
EDGE = 2  # pixels kept free along the image border
GAP = 3  # pixels kept free between two things
MIN_BACKGROUND_DISTANCE = 100.0  # RGB distance between the background base colour and every object colour
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered: smooth edges that survive downscaling


@dataclass(frozen=True)
class Thing:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 pixels, inclusive-exclusive


@dataclass(frozen=True)
class Scene:
    shape: str | None
    color: str | None
    count: int | None
    position: str | None
    things: tuple[Thing, ...]
    background: tuple[int, int, int]
    texture: int
    size: int = IMAGE_SIZE


def combinations() -> list[tuple]:
    """Every (shape, color, count, position), 4 * 6 * 3 * 4 = 288, in a fixed order."""
    return list(itertools.product(SHAPES, COLORS, COUNTS, POSITIONS))


def in_half(box: tuple[int, int, int, int], position: str, size: int = IMAGE_SIZE) -> bool:
    """Whether every pixel of `box` lies in the named half (left: x < 0.45 * size, right: x >= 0.55 * size, ...)."""
    x0, y0, x1, y1 = box
    return {"left": x1 <= 0.45 * size, "right": x0 >= 0.55 * size,
            "top": y1 <= 0.45 * size, "bottom": y0 >= 0.55 * size}[position]


def positions_of(things, size: int = IMAGE_SIZE) -> set[str]:
    """The positions whose half holds every one of `things` (a group scene has exactly one)."""
    return {p for p in POSITIONS if all(in_half(t.box, p, size) for t in things)}


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 0) -> bool:
    """Whether two boxes come closer than `gap` pixels (gap 0: whether they share a pixel)."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _side_range(size: int) -> tuple[int, int]:
    return max(4, round(MIN_SIDE * size / IMAGE_SIZE)), max(4, round(MAX_SIDE * size / IMAGE_SIZE))


def _row_fit(count: int, size: int) -> int:
    """The largest side at which `count` things fit in one row along a half's long side. Sides are drawn up to it:
    drawing larger ones and shrinking them after failed placements took 15 ms per three-thing scene (most of the
    world's build time), against 2 ms now and 0.1 ms for the others."""
    return (size - 2 * EDGE - (count - 1) * GAP) // count


def _span(position: str | None, axis: int, side: int, size: int) -> tuple[int, int]:
    """Allowed range of a box's first coordinate on `axis` (0 = x, 1 = y), inclusive."""
    low, high = EDGE, size - EDGE - side
    if (axis == 0 and position == "left") or (axis == 1 and position == "top"):
        high = min(high, int(0.45 * size) - side)
    if (axis == 0 and position == "right") or (axis == 1 and position == "bottom"):
        low = max(low, int(np.ceil(0.55 * size)))
    return low, high


def _place(rng: np.random.Generator, sides: list[int], position: str | None, size: int,
           attempts: int = 60) -> list[tuple[int, int, int, int]] | None:
    """Non-overlapping square boxes of the given sides inside the named half (None: anywhere), or None."""
    boxes: list[tuple[int, int, int, int]] = []
    for side in sides:
        (xl, xh), (yl, yh) = _span(position, 0, side, size), _span(position, 1, side, size)
        if xh < xl or yh < yl:
            return None
        for _ in range(attempts):
            x, y = int(rng.integers(xl, xh + 1)), int(rng.integers(yl, yh + 1))
            box = (x, y, x + side, y + side)
            if not any(overlaps(box, other, GAP) for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def sample_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A muted, darkish or grey base colour of any hue, far from every object colour."""
    while True:
        hue, saturation, value = rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.15, 0.6)
        rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if min(np.linalg.norm(np.subtract(rgb, c)) for c in COLORS.values()) >= MIN_BACKGROUND_DISTANCE:
            return rgb


def sample_scene(rng: np.random.Generator, combination: tuple | None = None, size: int = IMAGE_SIZE) -> Scene:
    """A group scene: `combination` = (shape, color, count, position), or a uniformly drawn one."""
    if combination is None:
        combination = (SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))],
                       int(rng.integers(1, 4)), POSITIONS[rng.integers(len(POSITIONS))])
    shape, color, count, position = combination
    if shape not in SHAPES or color not in COLORS or count not in COUNTS or position not in POSITIONS:
        raise ValueError(f"unknown combination {combination!r}")
    background, texture = sample_background(rng), int(rng.integers(2**31))
    low, high = _side_range(size)
    side = int(rng.integers(low, max(low, min(high, _row_fit(count, size))) + 1))
    while True:
        for _ in range(30):
            boxes = _place(rng, [side] * count, position, size)
            if boxes is not None and positions_of([Thing(shape, color, b) for b in boxes], size) == {position}:
                things = tuple(Thing(shape, color, b) for b in boxes)
                return Scene(shape, color, count, position, things, background, texture, size)
        side = max(4, side - 2)  # three things of this side do not fit (or keep landing in a corner)


def sample_mixed_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """A mixed scene: 2-3 things of pairwise distinct (shape, color) anywhere, not overlapping."""
    pairs = list(itertools.product(SHAPES, COLORS))
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=int(rng.integers(2, 4)), replace=False)]
    background, texture = sample_background(rng), int(rng.integers(2**31))
    low, high = _side_range(size)
    sides = [int(s) for s in rng.integers(low, high + 1, size=len(chosen))]
    while (boxes := _place(rng, sides, None, size)) is None:
        sides = [max(4, s - 1) for s in sides]
    things = tuple(Thing(shape, color, box) for (shape, color), box in zip(chosen, boxes))
    return Scene(None, None, None, None, things, background, texture, size)


def _background(scene: Scene) -> np.ndarray:
    """Base colour with a gentle brightness gradient and mild noise, both seeded by `scene.texture`."""
    rng = np.random.default_rng(scene.texture)
    size = scene.size
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(8.0, 22.0)
    ys, xs = np.mgrid[0:size, 0:size] / max(1, size - 1) - 0.5
    ramp = strength * 2 * (xs * np.cos(angle) + ys * np.sin(angle))
    noise = rng.normal(0.0, 3.0, size=(size, size, 3))
    pixels = np.asarray(scene.background, dtype=np.float64) + ramp[..., None] + noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _mask(shape: str, side_x: int, side_y: int) -> Image.Image:
    """Coverage mask of one shape filling a side_x x side_y box, drawn at SUPERSAMPLE and box-filtered down."""
    w, h = side_x * SUPERSAMPLE, side_y * SUPERSAMPLE
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, w - 1, h - 1), fill=255)
    elif shape == "triangle":
        draw.polygon([(0, h - 1), (w - 1, h - 1), ((w - 1) / 2, 0)], fill=255)
    elif shape == "cross":
        arm_x, arm_y = w / 3, h / 3
        draw.rectangle(((w - arm_x) / 2, 0, (w + arm_x) / 2 - 1, h - 1), fill=255)
        draw.rectangle((0, (h - arm_y) / 2, w - 1, (h + arm_y) / 2 - 1), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask.reduce(SUPERSAMPLE)


def render(scene: Scene) -> Image.Image:
    """The RGB image of `scene`; the same Scene always gives the same pixels."""
    image = Image.fromarray(_background(scene), "RGB")
    for thing in scene.things:
        x0, y0, x1, y1 = thing.box
        image.paste(COLORS[thing.color], thing.box, _mask(thing.shape, x1 - x0, y1 - y0))
    return image
