"""Schema fuzzing of the real app from its own OpenAPI spec (schemathesis + hypothesis):
valid and invalid requests for every operation; none may get a 5xx other than the
designed 503 queue_full, and no replica may die."""

from __future__ import annotations

from bench.reliability import DEPLOYMENTS, cancel_active, fuzz, replica_pids
from cluster.client import T2VClient


def test_fuzzing_finds_no_server_error_and_kills_no_replica(serve_app):
    before = {d: replica_pids(d) for d in DEPLOYMENTS}
    counts, failures = fuzz(serve_app.url, serve_app.headers, examples=25)
    assert not failures, "\n".join(failures[:10])
    assert counts["requests"] > 200 and counts["4xx"] > 50  # it did reach the validation

    client = T2VClient(serve_app.url, serve_app.api_key)
    cancel_active(client)  # the fuzzer's valid requests
    assert {d: replica_pids(d) for d in DEPLOYMENTS} == before
    assert client.wait(client.create("a calm sea after the storm", steps=3, seed=3)["id"])["status"] == "completed"
