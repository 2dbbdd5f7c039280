"""The stage logic as plain Python, the same in a Serve replica, a Ray Data actor, a batch job
and a test: checkpoint loading, the text encoder, the experts and their denoising plan, the
decoder and mp4, request validation and the content filter, and the stage sequence
(runner.py). Nothing here imports Ray Serve."""
