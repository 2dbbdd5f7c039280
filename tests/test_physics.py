"""The physics-plausibility scorer on its synthetic suite: plausible clips beat every violation,
each violation hits the subscore it targets and is reported with its frames and object, a camera
pan changes nothing, a still clip is not evidence, and odd input gives a valid answer or a clear
error. Real footage: tests/test_physics_footage.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.synthetic_clips import KINDS, PLAUSIBLE, VIOLATIONS, synthetic_clip
from contract.messages import PhysicsResult
from monitoring.physics import NO_EVIDENCE, SUBSCORES, VIOLATION_KINDS, laws, score_video
from monitoring.physics.held import held_frames
from monitoring.physics.tracks import Track

FPS = 16
MARGIN = 0.15

# The subscores each violation must pull down; every other subscore should barely notice it,
# except those in NOTICED (a jump or a gap is also a break between frames).
NOTICED = {
    "teleport": ("frame_continuity",),
    "vanish": ("frame_continuity",),
    "disappear": ("frame_continuity",),
    # a freeze stops the ball in mid-air, then it jumps on: a start from rest, a teleport, a bent flight
    "stutter": ("object_continuity", "arrow_of_time", "gravity"),
    "reversed": ("frame_continuity",),
}
# What each violation is reported as in "violations".
REPORTED = {
    "reversed_gravity": "gravity",
    "teleport": "teleport",
    "vanish": "vanish",
    "flicker": "flicker",
    "size_change": "size_change",
    "mass_change": "size_change",
    "energy_gain": "energy_gain",
    "disappear": "disappear",
    "stutter": "freeze",
    "reversed": "spontaneous_start",
}
TARGETS = {
    "reversed_gravity": ("gravity",),
    "teleport": ("object_continuity",),
    "vanish": ("object_continuity",),
    "flicker": ("flicker", "temporal_consistency"),
    "size_change": ("mass_conservation",),
    "mass_change": ("mass_conservation",),
    "energy_gain": ("energy_conservation",),
    "disappear": ("object_continuity",),
    "stutter": ("frame_continuity",),
    "reversed": ("arrow_of_time",),
}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    # 17 clips of 33 frames at 128x128, scored once for the whole module.
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
    assert result["evidence"] in ("motion", "camera", "none") and result["dynamics"] >= 0
    for violation in result["violations"]:
        assert set(violation) == {"kind", "frames", "track"}
        assert 0 <= violation["frames"][0] <= violation["frames"][1] < result["frames"]
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
    for kind in PLAUSIBLE:
        assert results[kind]["violations"] == [], (kind, results[kind]["violations"])
    assert bounce["object_tracked"] and roll["object_tracked"]
    # every law but time's arrow: the ball never starts or stops at once, so nothing shows which way time runs
    assert [k for k, v in bounce["subscores"].items() if v is None] == ["arrow_of_time"], bounce["notes"]
    assert "which way time runs" in bounce["notes"]["arrow_of_time"]
    # a rolling ball never flies nor bounces: those two do not apply, and say why
    assert roll["subscores"]["gravity"] is None and "free flight" in roll["notes"]["gravity"]
    assert roll["subscores"]["energy_conservation"] is None and "bounce" in roll["notes"]["energy_conservation"]
    # gravity is measured pointing down (image y grows down), the energy lost at each bounce
    assert bounce["details"]["acceleration_px_per_frame2"] > 0
    assert all(r < 1 for r in bounce["details"]["energy_ratios"])


@pytest.mark.parametrize("violation", VIOLATIONS)
def test_each_violation_hits_its_subscore(results, violation):
    bounce = results["land" if violation == "reversed" else "bounce"]["subscores"]  # what it was made from
    broken = results[violation]["subscores"]
    for name in TARGETS[violation]:
        assert broken[name] is not None, results[violation]["notes"]
        assert broken[name] <= 0.3 and bounce[name] - broken[name] >= 0.5, (name, broken[name], bounce[name])
    for name in set(SUBSCORES) - set(TARGETS[violation]) - set(NOTICED.get(violation, ())):
        if broken[name] is not None:
            assert broken[name] >= 0.8, (violation, name, broken[name])


def test_violations_are_explained_in_details(results):
    assert results["reversed_gravity"]["details"]["acceleration_px_per_frame2"] < 0
    assert [e["kind"] for e in results["teleport"]["details"]["events"]] == ["teleport"]
    assert [e["kind"] for e in results["vanish"]["details"]["events"]] == ["vanish"]
    assert max(results["energy_gain"]["details"]["energy_ratios"]) > 1.3
    assert results["size_change"]["details"]["area_cv"] > 0.3


def test_violations_are_reported_with_their_frames_and_object(results):
    for kind, reported in REPORTED.items():
        found = [v for v in results[kind]["violations"] if v["kind"] == reported]
        assert found, (kind, results[kind]["violations"])
        if kind not in ("flicker", "stutter"):  # whole-frame violations name no object
            assert all(v["track"] == 0 for v in found)
    frames = len(synthetic_clip("bounce"))
    (teleport,) = [v for v in results["teleport"]["violations"] if v["kind"] == "teleport"]
    assert teleport["frames"] == [frames // 2 - 1, frames // 2]  # where the clip makes it jump
    (vanish,) = [v for v in results["vanish"]["violations"] if v["kind"] == "vanish"]
    assert vanish["frames"] == [int(0.55 * frames), int(0.7 * frames) - 1]  # the frames it is hidden
    (gone,) = [v for v in results["disappear"]["violations"] if v["kind"] == "disappear"]
    assert gone["frames"] == [int(0.6 * frames) - 1] * 2  # the last frame it is seen
    (freeze,) = [v for v in results["stutter"]["violations"] if v["kind"] == "freeze"]
    assert freeze["frames"] == [frames // 2 - 2, frames // 2 + 1]  # the held frames and the jump after them
    (start,) = [v for v in results["reversed"]["violations"] if v["kind"] == "spontaneous_start"]
    assert start["frames"] == [21, 22]  # `land` lands between its frames 10 and 11


def test_an_object_at_rest_is_followed_not_lost(results):
    # Dropped, it lands and rests: the still background holds it, the track carries it on at rest
    land = results["land"]
    assert land["violations"] == [] and land["score"] >= 0.9
    (track,) = land["details"]["tracks"]
    assert track["frames"] == [0, 32] and track["stops"] == [11] and track["starts"] == []
    assert land["subscores"]["arrow_of_time"] == 1.0  # a stop is what forwards looks like
    # Played backwards, the ball at rest leaps up by itself: time runs the wrong way
    reversed_ = results["reversed"]
    assert reversed_["subscores"]["arrow_of_time"] <= 0.2 and reversed_["details"]["tracks"][0]["starts"] == [22]


def test_a_size_step_is_a_change_of_mass(results):
    # the ball grows by half at once mid-flight: its area steps, whatever the spread of areas says
    step = results["mass_change"]["details"]
    assert step["area_step"] > 0.6 and results["bounce"]["details"]["area_step"] < 0.1
    for kind in ("mass_change", "energy_gain"):  # one broken law is enough to fail a clip
        assert results[kind]["score"] <= 0.6, results[kind]


def test_an_object_hidden_by_another_has_not_vanished():
    # a ball unseen for five frames mid-clip, away from the border: a vanish, unless another moving
    # thing covers where it was (it passed behind it)
    t, size = 20, (64, 64)
    track = Track(*(np.full(t, np.nan) for _ in range(5)), np.zeros(t, bool), np.zeros((t, *size), bool), size)
    for i in [*range(8), *range(13, t)]:
        track.cx[i] = track.wx[i] = 10.0 + 2 * i
        track.cy[i] = track.wy[i] = 32.0
        track.area[i] = 50.0
        track.masks[i, 28:36, 6 + 2 * i : 14 + 2 * i] = True
    events, _ = laws.continuity(track, 0)
    assert [e["kind"] for e in events] == ["vanish"] and events[0]["frames"] == [8, 12]
    passing = np.zeros((t, *size), bool)
    passing[6:10, 20:44, 16:40] = True  # something moving across its place as it goes unseen
    assert laws.continuity(track, 0, passing)[0] == []


def test_gravity_judges_flights_only(results):
    # a balloon rising steadily and a ball sliding to a stop do not fly: gravity has nothing to judge
    for kind in ("rise", "slide"):
        assert results[kind]["subscores"]["gravity"] is None
        assert results[kind]["score"] >= 0.9, results[kind]
    assert "not ballistic" in results["rise"]["notes"]["gravity"]
    # the ball that slides to a stop keeps its size (it is not mistaken for the background where it rests)
    assert results["slide"]["subscores"]["mass_conservation"] >= 0.9


def test_every_object_is_tracked_and_judged(results):
    two = results["two_balls"]
    assert len(two["details"]["tracks"]) == 2
    assert two["subscores"]["gravity"] >= 0.9  # the bouncing one; the rolling one has no flight


@pytest.mark.parametrize("kind", ["bounce", "roll", "two_balls", "land"])
@pytest.mark.parametrize("pan", [0.25, -0.15])
def test_a_camera_pan_changes_nothing(results, kind, pan):
    """The same scene filmed by a panning camera scores as the still camera's (within 0.05)."""
    panned = score_video(synthetic_clip(kind, pan=pan), FPS)
    assert panned["details"]["camera"]["moving"]
    assert panned["details"]["camera"]["pan_px_per_frame"] == pytest.approx(-pan * 128 / FPS, abs=0.1)
    assert abs(panned["score"] - results[kind]["score"]) <= 0.05, (panned, results[kind])


def test_a_pan_over_a_still_scene_is_plausible():
    panned = score_video(synthetic_clip("static", pan=0.25), FPS)
    assert panned["evidence"] == "camera" and panned["score"] >= 0.9


def test_no_motion_is_not_enough_evidence(results):
    frozen = np.repeat(synthetic_clip("bounce")[:1], 33, axis=0)
    grey = np.full((33, 64, 64, 3), 128, np.uint8)
    for still in (results["static"], score_video(frozen, FPS), score_video(grey, FPS)):
        assert_valid(still)
        assert still["evidence"] == "none" and still["dynamics"] < 0.03
        assert still["score"] == NO_EVIDENCE  # nothing to judge it by: not "perfect"
    # a still clip can still be broken: flicker brings it under "no evidence"
    flickering = grey.copy()
    flickering[1::2] += 20
    assert score_video(flickering, FPS)["score"] < NO_EVIDENCE


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


def test_repeated_frames_are_a_frame_rate_not_a_stutter(results):
    # 16 fps content converted to 20 fps: every fourth frame shown twice
    for kind in ("bounce", "teleport"):
        clip = synthetic_clip(kind)
        shown = [k for k in range(len(clip)) for _ in range(2 if k % 4 == 3 else 1)]
        converted = score_video(clip[shown], FPS * 1.25)
        assert_valid(converted)
        assert converted["details"]["repeated_frames"] == [k + k // 4 + 1 for k in range(3, len(clip), 4)]
        assert abs(converted["score"] - results[kind]["score"]) < 0.02
    # violations name the frames of the clip as given
    (teleport,) = [v for v in converted["violations"] if v["kind"] == "teleport"]
    jump = len(clip) // 2
    assert teleport["frames"] == [jump - 1 + (jump - 1) // 4, jump + jump // 4]


def test_a_fade_is_neither_a_break_nor_flicker(results):
    clip = synthetic_clip("bounce").astype(np.float32)
    steps = np.tile([1.0, 1.0, 2.0, 1.0], 4)  # uneven, as a re-timed fade is
    gain = np.ones(len(clip))
    gain[:5], gain[5:21] = 0.3, 0.3 + 0.7 * np.cumsum(steps) / steps.sum()
    faded = score_video(np.clip(clip * gain[:, None, None, None], 0, 255).astype(np.uint8), FPS)
    assert_valid(faded)
    assert faded["subscores"]["frame_continuity"] > 0.9 and faded["subscores"]["flicker"] > 0.9
    assert not {"break", "flicker"} & {v["kind"] for v in faded["violations"]}
    # light that goes back and forth is flicker, even at the fade's size of step
    back_and_forth = gain.copy()
    back_and_forth[5:21:2] = 0.3
    flickering = score_video(np.clip(clip * back_and_forth[:, None, None, None], 0, 255).astype(np.uint8), FPS)
    assert "flicker" in {v["kind"] for v in flickering["violations"]}
    assert flickering["score"] < results["bounce"]["score"] - 0.3


def test_every_kind_found_is_one_the_counters_and_records_know(results):
    # the job record keeps the scorer's violations as found; Prometheus has a series per kind
    found = {v["kind"] for result in results.values() for v in result["violations"]}
    assert {"freeze", "spontaneous_start", "size_change", "disappear"} <= found <= set(VIOLATION_KINDS)
    record = PhysicsResult.of(results["stutter"])
    assert [v["kind"] for v in record.violations][0] == "freeze"


def test_a_regular_pattern_of_holds_is_a_conversion_and_a_lone_one_a_freeze():
    clip = synthetic_clip("roll", frames=12, size=64)
    tripled = clip[np.repeat(np.arange(len(clip)), 3)]  # 8 fps shown at 24: every frame thrice
    held = held_frames(tripled)
    assert held.freezes == [] and len(held.converted) >= 2 * (len(clip) - 2)
    frozen = synthetic_clip("roll", frames=20, size=64)
    frozen[9:12] = frozen[8]  # held for three frames, once
    assert held_frames(frozen).freezes == [[9, 12]]
    still_start = synthetic_clip("roll", frames=20, size=64)
    still_start[:4] = still_start[0]  # the clip starts on a still stretch: the scene at rest, not a freeze
    assert held_frames(still_start).freezes == []
