"""The physics-plausibility scorer on its synthetic suite: plausible clips beat every violation,
each violation hits the subscore it targets, and odd input gives a valid answer or a clear error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.synthetic_clips import KINDS, PLAUSIBLE, VIOLATIONS, synthetic_clip
from monitoring.physics import SUBSCORES, score_video

FPS = 16
MARGIN = 0.15

# The subscores each violation must pull down; every other subscore should barely notice it.
TARGETS = {
    "reversed_gravity": ("gravity",),
    "teleport": ("object_continuity",),
    "vanish": ("object_continuity",),
    "flicker": ("flicker", "temporal_consistency"),
    "size_change": ("mass_conservation",),
    "energy_gain": ("energy_conservation",),
}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    # 9 clips of 33 frames at 128x128, scored once for the whole module.
    return {kind: score_video(synthetic_clip(kind), FPS) for kind in KINDS}


def assert_valid(result: dict) -> None:
    assert isinstance(result["score"], float) and 0.0 <= result["score"] <= 1.0
    assert set(result["subscores"]) == set(SUBSCORES)
    for name, value in result["subscores"].items():
        if value is None:
            assert result["notes"][name], f"{name} is None without a reason"
        else:
            assert isinstance(value, float) and 0.0 <= value <= 1.0, (name, value)
            assert name not in result["notes"]
    assert isinstance(result["object_tracked"], bool)
    json.dumps(result)  # the result goes into logs and metrics as is


def test_suite_is_deterministic_and_well_formed():
    assert set(TARGETS) == set(VIOLATIONS)
    clip = synthetic_clip("bounce", frames=9, size=64, seed=3)
    assert clip.shape == (9, 64, 64, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, synthetic_clip("bounce", frames=9, size=64, seed=3))
    with pytest.raises(ValueError, match="unknown synthetic clip kind"):
        synthetic_clip("levitate")


def test_every_result_is_valid(results):
    for result in results.values():
        assert_valid(result)


def test_plausible_clips_beat_every_violation(results):
    scores = {kind: results[kind]["score"] for kind in (*PLAUSIBLE, *VIOLATIONS)}
    worst_plausible = min(scores[k] for k in PLAUSIBLE)
    best_violation = max(scores[k] for k in VIOLATIONS)
    assert worst_plausible - best_violation >= MARGIN, scores
    for kind in PLAUSIBLE:
        assert scores[kind] >= 0.9, (kind, results[kind])


def test_plausible_clips_use_the_subscores_that_apply(results):
    bounce, roll = results["bounce"], results["roll"]
    assert bounce["object_tracked"] and roll["object_tracked"]
    assert all(v is not None for v in bounce["subscores"].values()), bounce["notes"]
    # a rolling ball never flies nor bounces: those two do not apply, and say why
    assert roll["subscores"]["gravity"] is None and "free flight" in roll["notes"]["gravity"]
    assert roll["subscores"]["energy_conservation"] is None and "bounce" in roll["notes"]["energy_conservation"]
    # gravity is measured pointing down (image y grows down), the energy lost at each bounce
    assert bounce["details"]["acceleration_px_per_frame2"] > 0
    assert all(r < 1 for r in bounce["details"]["energy_ratios"])


@pytest.mark.parametrize("violation", VIOLATIONS)
def test_each_violation_hits_its_subscore(results, violation):
    bounce = results["bounce"]["subscores"]
    broken = results[violation]["subscores"]
    for name in TARGETS[violation]:
        assert broken[name] is not None, results[violation]["notes"]
        assert broken[name] <= 0.3 and bounce[name] - broken[name] >= 0.5, (name, broken[name], bounce[name])
    for name in set(SUBSCORES) - set(TARGETS[violation]):
        if broken[name] is not None:
            assert broken[name] >= 0.8, (violation, name, broken[name])


def test_violations_are_explained_in_details(results):
    assert results["reversed_gravity"]["details"]["acceleration_px_per_frame2"] < 0
    assert [e["kind"] for e in results["teleport"]["details"]["events"]] == ["teleport"]
    assert [e["kind"] for e in results["vanish"]["details"]["events"]] == ["vanish"]
    assert max(results["energy_gain"]["details"]["energy_ratios"]) > 1.3
    assert results["size_change"]["details"]["area_cv"] > 0.3


def test_static_clip_says_so(results):
    static = results["static"]
    assert_valid(static)
    assert not static["object_tracked"]
    assert static["subscores"]["temporal_consistency"] is not None and static["subscores"]["flicker"] is not None
    for name in ("motion_smoothness", "object_continuity", "gravity", "energy_conservation", "mass_conservation"):
        assert static["subscores"][name] is None
        assert "static" in static["notes"][name]


def test_too_short_clips_say_so():
    two = score_video(synthetic_clip("bounce", frames=2), FPS)
    assert_valid(two)
    assert two["subscores"]["temporal_consistency"] is not None
    for name in ("motion_smoothness", "object_continuity", "gravity", "energy_conservation", "mass_conservation"):
        assert two["subscores"][name] is None and "too short" in two["notes"][name]

    one = score_video(synthetic_clip("bounce", frames=1), FPS)
    assert_valid(one)
    assert all(v is None for v in one["subscores"].values())
    assert all("too short" in one["notes"][name] for name in SUBSCORES)
    assert one["score"] == 0.5  # no evidence either way


def test_ordering_holds_at_preview_size():
    # the "preview" preset: 17 frames of 64x64
    scores = {k: score_video(synthetic_clip(k, frames=17, size=64), FPS)["score"] for k in (*PLAUSIBLE, *VIOLATIONS)}
    assert min(scores[k] for k in PLAUSIBLE) > max(scores[k] for k in VIOLATIONS), scores


def test_random_noise_gets_a_valid_low_score(results):
    # what our tiny random-weight model makes: coloured noise
    rng = np.random.default_rng(0)
    for frames in (
        rng.integers(0, 256, (33, 128, 128, 3), dtype=np.uint8),
        rng.integers(0, 256, (17, 64, 80, 3), dtype=np.uint8),
    ):
        result = score_video(frames, FPS)
        assert_valid(result)
        assert result["score"] < 0.5
        assert result["score"] < min(results[k]["score"] for k in VIOLATIONS)


@pytest.mark.parametrize(
    ("frames", "fps", "message"),
    [
        (np.zeros((4, 32, 32, 3), np.float32), FPS, "uint8"),
        (np.zeros((4, 32, 32), np.uint8), FPS, "shape"),
        (np.zeros((4, 32, 32, 4), np.uint8), FPS, "shape"),
        (np.zeros((32, 32, 3), np.uint8), FPS, "shape"),
        (np.zeros((0, 32, 32, 3), np.uint8), FPS, "at least one frame"),
        (np.zeros((4, 8, 8, 3), np.uint8), FPS, "16x16"),
        ([[[[0, 0, 0]]]], FPS, "uint8"),  # a nested list is an int64 array
        (np.zeros((4, 32, 32, 3), np.uint8), 0, "fps"),
        (np.zeros((4, 32, 32, 3), np.uint8), -16, "fps"),
        (np.zeros((4, 32, 32, 3), np.uint8), math.nan, "fps"),
        (np.zeros((4, 32, 32, 3), np.uint8), math.inf, "fps"),
        (np.zeros((4, 32, 32, 3), np.uint8), "16", "fps"),
        (np.zeros((4, 32, 32, 3), np.uint8), True, "fps"),
    ],
)
def test_bad_input_raises(frames, fps, message):
    with pytest.raises(ValueError, match=message):
        score_video(frames, fps)


def test_accepts_numpy_fps_and_non_contiguous_frames():
    clip = synthetic_clip("roll", frames=12, size=64)
    result = score_video(clip[:, :, ::-1], np.float32(12.0))  # mirrored: a view with negative strides
    assert_valid(result)
    assert result["fps"] == 12.0
