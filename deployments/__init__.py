"""The Ray Serve deployments, one module per stage, each wrapping the plain stage class of the
same name in `stages/`: `TextEncoder` (text_encoder.py), `HighNoiseExpert`
(high_noise_expert.py), `LowNoiseExpert` (low_noise_expert.py), `Experts`
(co_located_experts.py), `Decoder` (decoder.py), `JobStore` (job_store.py); the `Ingress`
(ingress.py: routes, with http.py) in front of them."""
