"""The procedural world: its physics, its ground truth, its captions, and the reader that judges videos by it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from world.captions import EN_FRAMES, TRAIN_FRAMES, ZH_FRAMES, Phrasing, caption, training_captions
from world.reading import read_clip
from world.render import render
from world.scene import GRAVITY, all_combinations, held_out_combinations, is_held_out, sample_scene
from world.vocabulary import CAMERAS, COLORS, MOTIONS, OBJECTS, SETTINGS

FPS = 16


def scene(rng=None, **attrs):
    base = {"color": "red", "object": "ball", "motion": "bounces", "setting": "grass", "camera": "static"}
    return sample_scene(base | attrs, rng or np.random.default_rng(0))


def test_the_world_has_what_the_captions_name():
    assert set(COLORS) >= {"red", "orange", "yellow", "green", "blue", "purple", "white"}
    assert set(OBJECTS) >= {"ball", "box"}
    assert set(MOTIONS) >= {"bounces", "rolls left", "rolls right", "falls", "is thrown", "stays still"}
    assert len(SETTINGS) >= 4 and set(CAMERAS) == {"static", "pans left", "pans right"}


def test_a_bounce_follows_gravity_and_loses_energy():
    s = scene()
    height = s.simulate(33, FPS)[:, 1]
    in_air = np.flatnonzero(height > 0.02)
    # Within a flight, the second difference is -g / fps^2 (free fall sampled at the frame rate).
    flight = in_air[: np.argmax(np.diff(in_air) > 1)] if (np.diff(in_air) > 1).any() else in_air
    second = np.diff(height[flight], 2)
    assert np.allclose(second[1:-1], -GRAVITY / FPS**2, rtol=0.05)
    landings = np.flatnonzero((height[1:-1] < height[:-2]) & (height[1:-1] <= height[2:]))
    assert len(landings) >= 1
    peaks = [height[: landings[0]].max()] + [
        height[a:b].max() for a, b in zip(landings, [*landings[1:], 33], strict=True)
    ]
    assert peaks[1] < peaks[0] * s.restitution**2 * 1.1  # each rebound lower: energy lost at the bounce


def test_rolls_slow_by_friction_and_never_reverse():
    for motion, sign in (("rolls left", -1), ("rolls right", 1)):
        s = scene(motion=motion)
        pos = s.simulate(33, FPS)
        assert np.all(pos[:, 1] == 0)
        speed = np.diff(pos[:, 0]) * sign
        assert np.all(speed >= 0) and speed[0] > speed[-1]
        assert np.allclose(np.diff(speed)[speed[1:] > 0.01], -s.friction / FPS**2, rtol=0.1)


def test_falls_lands_and_rests_throw_is_a_parabola_still_is_still():
    falls = scene(motion="falls").simulate(33, FPS)
    assert falls[0, 1] > 0.2 and np.all(falls[-8:, 1] == 0)
    thrown = scene(motion="is thrown").simulate(33, FPS)
    assert thrown[:, 1].argmax() > 0 and abs(thrown[-1, 0] - thrown[0, 0]) > 0.2
    still = scene(motion="stays still").simulate(33, FPS)
    assert np.ptp(still, 0).max() == 0


def test_ground_truth_masks_positions_and_camera():
    clip = render(scene(motion="rolls right", camera="pans left"), 17, 64)
    assert clip.frames.shape == (17, 64, 64, 3) and clip.frames.dtype == np.uint8
    for frame, mask, (cx, cy) in zip(clip.frames, clip.masks, clip.centers, strict=True):
        ys, xs = np.nonzero(mask)
        assert abs(xs.mean() + 0.5 - cx) < 1 and abs(ys.mean() + 0.5 - cy) < 1
        assert np.linalg.norm(np.median(frame[mask], 0) - COLORS["red"]) < 60
    assert np.all(np.diff(clip.camera) < 0)  # pans left: the view's left edge moves left
    # The same scene at the final shape: the same motion at twice the pixels.
    big = render(clip.scene, 17, 128)
    assert np.allclose(big.centers, clip.centers * 2, atol=1.0)


def test_render_is_seeded():
    a = render(scene(np.random.default_rng(3)), 17, 64).frames
    b = render(scene(np.random.default_rng(3)), 17, 64).frames
    assert np.array_equal(a, b)


def test_captions_in_both_languages_and_five_phrasings():
    attrs = {"color": "red", "object": "ball", "motion": "bounces", "setting": "grass", "camera": "static"}
    assert "红色的球在草地上弹跳" in training_captions(attrs)
    assert caption(attrs, Phrasing("en", 0, 0b01000)) == "a red ball bounces on the grass"
    assert caption(attrs, Phrasing("zh", 0, 0b11111)) == "红色的球在草地上弹起来"
    assert caption(attrs | {"color": "orange"}, Phrasing("en", 0, 0)).startswith("an orange ball")
    texts = training_captions(attrs)
    assert len([t for t in texts if t.isascii()]) >= 5 and len([t for t in texts if not t.isascii()]) >= 5
    assert TRAIN_FRAMES >= 5 and len(EN_FRAMES) > TRAIN_FRAMES and len(ZH_FRAMES) > TRAIN_FRAMES
    held = {caption(attrs, Phrasing(lang, f, 0)) for lang in ("en", "zh") for f in range(TRAIN_FRAMES, len(EN_FRAMES))}
    assert not held & set(texts)
    panning = caption(attrs | {"camera": "pans left"}, Phrasing("en", 0, 0))
    assert panning.endswith("the camera pans left")


def test_held_out_combinations_leave_every_value_trained():
    held = held_out_combinations()
    assert 0.05 < len(held) / (len(all_combinations()) / len(CAMERAS)) < 0.15
    trained = [a for a in all_combinations() if not is_held_out(a)]
    for key, values in (("color", COLORS), ("object", OBJECTS), ("motion", MOTIONS), ("setting", SETTINGS)):
        assert {a[key] for a in trained} == set(values)


@pytest.mark.parametrize("size,frames", [(64, 17), (128, 33)])
def test_the_reader_reads_the_ground_truth(size, frames):
    rng = np.random.default_rng(11)
    combos = all_combinations()
    right, total = 0, 0
    for _ in range(40):
        attrs = combos[rng.integers(len(combos))]
        reading = read_clip(render(sample_scene(attrs, rng), frames, size).frames)
        for key in ("setting", "color", "object", "motion", "camera"):
            right += getattr(reading, key) == attrs[key]
            total += 1
    assert right / total >= 0.97


def test_the_reader_finds_no_object_and_no_motion_in_an_empty_scene():
    clip = render(scene(motion="stays still"), 17, 64)
    around = np.array([cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in clip.masks])
    empty = np.where(around[..., None], np.median(clip.frames, axis=(0, 2), keepdims=True), clip.frames)
    reading = read_clip(empty.astype(np.uint8))
    assert reading.color is None and reading.motion is None and reading.static
    with pytest.raises(ValueError, match="uint8"):
        read_clip(clip.frames.astype(np.float32))
