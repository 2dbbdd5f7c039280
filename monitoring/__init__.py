"""Prometheus metrics (`metrics`), the physics-plausibility scorer (`physics`; its method in
docs/physics.md), the Grafana dashboard and the Prometheus config."""
