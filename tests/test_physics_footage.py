"""The physics scorer on real camera footage (bench/footage/), plausible by construction, and on the same
footage with violations applied: it must rank the footage above its violations on the held-out
clips, and say what it found."""

from __future__ import annotations

import numpy as np
import pytest

from bench.footage import (
    DROPPED,
    FOLDER,
    HELD,
    HELD_OUT,
    JUMP,
    TUNING,
    VIOLATIONS,
    auc,
    crops,
    read_video,
    samples,
    violate,
    visible,
)
from monitoring.physics import score_video


@pytest.fixture(scope="module")
def held_out() -> list[tuple]:
    return [(s, score_video(s.frames, s.fps)) for s in samples(HELD_OUT)]


def test_every_clip_has_its_source_and_licence():
    readme = (FOLDER / "README.md").read_text()
    for name in TUNING + HELD_OUT:
        frames, fps = read_video(FOLDER / f"{name}.mp4")
        assert frames.dtype == np.uint8 and frames.ndim == 4 and fps > 0
        row = next(line for line in readme.splitlines() if line.startswith(f"| {name}.mp4"))
        assert "@" in row and ("Apache" in row or "BSD" in row or "CC-BY" in row)  # source commit and licence


def test_violations_change_the_footage_as_named():
    frames, _ = read_video(FOLDER / "juggle_lawn.mp4")
    part, extra = frames[:33], frames[33 : 33 + JUMP]
    for kind in VIOLATIONS:
        out = violate(part, kind, extra)
        assert out.shape == part.shape and out.dtype == np.uint8
        assert visible(part, out), kind
    dropped = violate(part, "drop", extra)
    cut = 33 // 2  # the middle of the 39 frames it took
    assert np.array_equal(dropped[:cut], part[:cut]) and np.array_equal(dropped[cut], part[cut + DROPPED])
    assert np.array_equal(violate(part, "rewind", extra)[11:22], part[11:22][::-1])
    assert np.array_equal(violate(part, "reverse", extra), part[::-1])
    stutter = violate(part, "stutter", extra)  # a frame held, then the footage where it had got to
    held = (33 - HELD - 1) // 2
    assert all(np.array_equal(stutter[held + k], part[held]) for k in range(HELD + 1))
    assert np.array_equal(stutter[held + HELD + 1], part[held + HELD + 1])
    jumped = violate(part, "jump_cut", extra)  # from the middle on, the footage JUMP frames later
    assert np.array_equal(jumped[16], part[16 + JUMP]) and np.array_equal(jumped[15], part[15])
    assert violate(part, "jump_cut", extra[: JUMP - 1]) is None  # the clip has no frames for it
    assert not visible(part, part)
    with pytest.raises(ValueError, match="unknown violation"):
        violate(part, "levitate")


def test_a_pan_sweeps_the_crop_that_stays_still():
    frames, _ = read_video(FOLDER / "street_a.mp4")
    fixed, panned = crops(frames)
    assert fixed.shape == panned.shape and fixed.shape[1] < frames.shape[1]
    middle = len(frames) // 2  # halfway through the sweep, the panned crop is the centred one (to a pixel)
    assert np.abs(panned[middle].astype(int) - fixed[middle]).mean() < 12
    assert np.abs(panned[0].astype(int) - fixed[0]).mean() > np.abs(panned[middle].astype(int) - fixed[middle]).mean()


def test_held_out_footage_ranks_above_its_violations(held_out):
    plausible = [r["score"] for s, r in held_out if s.violation is None and r["evidence"] != "none"]

    def ranked(kind=None) -> float:
        return auc(plausible, [r["score"] for s, r in held_out if s.violation and kind in (None, s.violation)])

    # Measured 0.89 overall (BENCHMARKS.md; the goal is 0.95): a floor that catches a regression
    assert ranked() >= 0.85
    for kind in ("stutter", "jump_cut", "vanish"):  # the goal, 0.9 each, is met
        assert ranked(kind) >= 0.9, kind
    for kind in ("stutter", "flicker", "zoom"):  # caught on every held-out window
        assert ranked(kind) == 1.0, kind


def test_what_it_found_is_named(held_out):
    for sample, result in held_out:
        kinds = {v["kind"] for v in result["violations"]}
        if sample.violation == "flicker":
            assert "flicker" in kinds, (sample.name, result["violations"])
        if sample.violation == "stutter" and result["evidence"] == "motion":
            assert "freeze" in kinds, (sample.name, result["violations"])
        if sample.violation == "zoom":
            assert "break" in kinds, (sample.name, result["violations"])
            (pair,) = [v["frames"] for v in result["violations"] if v["kind"] == "break"]
            stretch = len(sample.frames) // 5
            start = (len(sample.frames) - stretch) // 2
            assert pair[0] in (start - 1, start + stretch - 1)  # where the zoom starts or ends


def test_every_whole_clip_scores_above_the_median_violation(held_out):
    median = float(np.median([r["score"] for s, r in held_out if s.violation]))
    for name in HELD_OUT:
        frames, fps = read_video(FOLDER / f"{name}.mp4")
        result = score_video(frames, fps)
        assert result["score"] > median, (name, result["score"], median, result["violations"])
        if name == "pancake_flip":  # 20 fps shown at 25: every fifth frame twice, taken out
            assert len(result["details"]["repeated_frames"]) >= len(frames) // 10
            assert "freeze" not in {v["kind"] for v in result["violations"]}
