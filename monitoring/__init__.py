"""Prometheus metrics, the physics-plausibility scorer and the Grafana dashboard (see issue 5)."""
