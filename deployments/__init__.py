"""The stages, each as a plain class (`text_encoder.py`, `expert.py`, `decoder.py`, ...)
usable in process, in batch jobs and in tests, and next to it the Ray Serve deployment
that wraps it (`*_deployment.py`: `TextEncoder`, `HighNoiseExpert`, `LowNoiseExpert`,
`Decoder`, `JobStore`). `runner.py` is the stage sequence, written once; `ingress.py` (with
`http.py`) is the HTTP API that runs it on the deployments."""
