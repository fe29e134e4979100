"""Shape world scenes: group-scene geometry, mixed scenes, deterministic rendering with distinct backgrounds."""
from __future__ import annotations

import numpy as np
import pytest

from shapeworld.scenes import (COLORS, COUNTS, EDGE, GAP, IMAGE_SIZE, MAX_SIDE, MIN_SIDE, POSITIONS, SHAPES,
                               combinations, positions_of, render, sample_mixed_scene, sample_scene)


def _inside_half(box, position, size):
    x0, y0, x1, y1 = box
    return {"left": x1 <= 0.45 * size, "right": x0 >= 0.55 * size,
            "top": y1 <= 0.45 * size, "bottom": y0 >= 0.55 * size}[position]


def _apart(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_combinations_are_every_attribute_tuple_in_a_fixed_order():
    every = combinations()
    assert len(every) == len(set(every)) == 4 * 6 * 3 * 4 == 288
    assert every == combinations() and every[0] == ("circle", "red", 1, "left")
    assert {c[0] for c in every} == set(SHAPES) and {c[1] for c in every} == set(COLORS)
    assert {c[2] for c in every} == set(COUNTS) and {c[3] for c in every} == set(POSITIONS)


@pytest.mark.parametrize("size", [IMAGE_SIZE, 64])
def test_group_scenes_hold_identical_things_inside_the_named_half_only(size):
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng, combo, size=size) for combo in combinations()]
    scenes += [sample_scene(rng, size=size) for _ in range(300)]
    for scene in scenes:
        assert len(scene.things) == scene.count and scene.size == size
        sides = {(t.box[2] - t.box[0], t.box[3] - t.box[1]) for t in scene.things}
        assert len(sides) == 1  # identical things
        (w, h), = sides
        assert w == h and 4 <= w <= round(MAX_SIDE * size / IMAGE_SIZE)
        for n, thing in enumerate(scene.things):
            assert (thing.shape, thing.color) == (scene.shape, scene.color)
            x0, y0, x1, y1 = thing.box
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert _inside_half(thing.box, scene.position, size), (scene.position, thing.box)
            assert all(_apart(thing.box, other.box) for other in scene.things[n + 1:])
        # the named half is the only half holding the whole group: the position is unambiguous
        others = [p for p in POSITIONS if p != scene.position]
        assert not any(all(_inside_half(t.box, p, size) for t in scene.things) for p in others)
        assert positions_of(scene.things, size) == {scene.position}


def test_object_sides_span_min_to_max_side_and_three_things_fit():
    rng = np.random.default_rng(1)
    sides = [s.things[0].box[2] - s.things[0].box[0] for s in (sample_scene(rng) for _ in range(400))]
    assert min(sides) >= MIN_SIDE - 12 and max(sides) == MAX_SIDE and np.mean(sides) > (MIN_SIDE + MAX_SIDE) / 2 - 6
    three = [sample_scene(rng, ("square", "red", 3, p)) for p in POSITIONS for _ in range(20)]
    assert all(len(s.things) == 3 for s in three)
    three_sides = [s.things[0].box[2] - s.things[0].box[0] for s in three]
    assert min(three_sides) >= MIN_SIDE and max(three_sides) <= (IMAGE_SIZE - 2 * EDGE - 2 * GAP) // 3  # in a row


def test_mixed_scenes_have_distinct_non_overlapping_things():
    rng = np.random.default_rng(3)
    for _ in range(300):
        scene = sample_mixed_scene(rng)
        assert (scene.shape, scene.color, scene.count, scene.position) == (None,) * 4
        assert 2 <= len(scene.things) <= 3
        assert len({(t.shape, t.color) for t in scene.things}) == len(scene.things)
        for n, thing in enumerate(scene.things):
            x0, y0, x1, y1 = thing.box
            assert 0 <= x0 < x1 <= scene.size and 0 <= y0 < y1 <= scene.size
            assert all(_apart(thing.box, other.box) for other in scene.things[n + 1:])


def test_same_rng_seed_gives_the_same_scene_and_different_seeds_differ():
    assert sample_scene(np.random.default_rng(5)) == sample_scene(np.random.default_rng(5))
    assert sample_mixed_scene(np.random.default_rng(5)) == sample_mixed_scene(np.random.default_rng(5))
    assert len({sample_scene(np.random.default_rng(s)) for s in range(20)}) == 20


def test_render_is_deterministic_and_paints_shapes_in_their_colour():
    rng = np.random.default_rng(11)
    scene = sample_scene(rng, ("square", "blue", 2, "right"))
    image = render(scene)
    assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert image.tobytes() == render(scene).tobytes()
    pixels = np.asarray(image)
    for thing in scene.things:
        x0, y0, x1, y1 = thing.box
        assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == COLORS["blue"]
    assert tuple(pixels[2, 2]) != COLORS["blue"]


def test_backgrounds_vary_and_stay_far_from_every_object_colour():
    rng = np.random.default_rng(2)
    scenes = [sample_scene(rng) for _ in range(300)]
    bases = np.array([s.background for s in scenes], dtype=float)
    assert len({s.background for s in scenes}) > 250 and len({s.texture for s in scenes}) == 300
    colors = np.array(list(COLORS.values()), dtype=float)
    distances = np.linalg.norm(bases[:, None, :] - colors[None, :, :], axis=2)
    assert distances.min() >= 100
    hues = {int(np.argmax(b)) for b in bases if b.max() - b.min() > 20}
    assert hues == {0, 1, 2}  # reddish, greenish and bluish tints all occur
    # the rendered background (gradient + noise) is not flat and stays darkish
    empty = scenes[0].__class__(None, None, None, None, (), scenes[0].background, scenes[0].texture)
    pixels = np.asarray(render(empty)).astype(float)
    assert 1.0 < pixels.std() < 30 and pixels.max() < 235
