"""Physics-plausibility score of a clip, from computable signals only (CPU, numpy/OpenCV, no weights).

`score_video(frames, fps)` takes uint8 frames of shape (T, H, W, 3) (RGB) and the clip's frame rate
(> 0) and returns a JSON-serialisable dict: "score" (in [0, 1], 1 = plausible), "subscores"
(name -> [0, 1] or None), "notes" (why a subscore is None), "dynamics" (how much the scene moves,
camera removed), "evidence" ("motion", "camera" or "none"), "violations" (kind, frames, track),
"object_tracked", "details", "frames", "fps". Bad input raises ValueError.

The camera's motion is measured first and taken out (camera.py); moving objects are found on the
stabilised frames and tracked (tracks.py); the pixels give warping error, flicker, smoothness and
dynamics (pixels.py); each object is held to the laws (laws.py); score.py combines them. The method,
with its formulas and sources: docs/physics.md.
"""

from monitoring.physics.score import NO_EVIDENCE, SUBSCORES, VIOLATION_KINDS, combine, score_video

__all__ = ["NO_EVIDENCE", "SUBSCORES", "VIOLATION_KINDS", "combine", "score_video"]
