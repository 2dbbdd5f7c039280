"""Job records, videos and batch runs on an S3-compatible object store (moto's server on
loopback, started by the `s3_uri` fixture), and the job store's writes behind its answers."""

from __future__ import annotations

import json
import threading

from typer.testing import CliRunner

from cluster.cli import app as cli
from cluster.manifest import Manifest
from contract.jobs import JobCreate, JobError, video_key
from contract.messages import StageProgress
from contract.request import GenerationRequest
from contract.storage import OutputStore, child_uri
from stages.job_store import JobStore
from stages.video import probe_mp4


def test_the_output_store_on_s3(s3_uri):
    uri = s3_uri("store")
    store = OutputStore(uri)
    store.write("jobs/a.json", b'{"id": "a"}')
    store.write("videos/a.mp4", b"\x00" * 10)
    assert store.read("jobs/a.json") == b'{"id": "a"}' and store.exists("videos/a.mp4")
    assert store.keys("jobs") == ["jobs/a.json"] and store.read("jobs/missing.json") is None
    assert store.local_path("videos/a.mp4") is None  # HTTP serves the bytes, not a file
    assert store.location("videos/a.mp4") == child_uri(uri, "videos/a.mp4")
    assert child_uri(uri, "videos/a.mp4").startswith("s3://t2v-test/store/videos/a.mp4?endpoint_override=")
    store.delete("videos/a.mp4")
    assert not store.exists("videos/a.mp4")
    assert OutputStore(uri).read("jobs/a.json") == b'{"id": "a"}'  # another replica sees it


class HeldStore(OutputStore):
    """An object store whose writes wait until let go (a slow or stalled endpoint), or fail."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.release = threading.Event()
        self.failing = False
        self.writes: list[str] = []

    def write(self, key: str, data: bytes) -> None:
        self.release.wait()
        if self.failing:
            raise OSError("connection reset by the object store")
        self.writes.append(key)
        super().write(key, data)


def test_a_job_is_on_the_store_when_its_creation_returns(tmp_path, settings):
    """Accepted means durable: a restart right after the 202 still knows the job; so does its end."""
    output = OutputStore(str(tmp_path))
    store = JobStore(output, write_delay=10)  # progress waits long; a new or ended job does not
    request = GenerationRequest.build(settings, prompt="a cat", seed=1)
    job = store.create(JobCreate(request=request, model_id="m", steps_total=4)).job
    assert JobStore(output).get(job.id).status == "queued"
    store.complete(job.id)
    assert JobStore(output).get(job.id).status == "completed"


def test_the_job_store_answers_while_the_object_store_is_stalled(tmp_path, settings):
    output = HeldStore(str(tmp_path))
    store = JobStore(output, durable_timeout=0.1)  # a new or ended job's call waits this long at most
    request = GenerationRequest.build(settings, prompt="a cat", seed=1)
    jobs = [store.create(JobCreate(request=request, model_id="m", steps_total=4)).job for _ in range(3)]
    # Every call returns while no write gets through: the records' copies wait, the answers do not.
    for job in jobs:
        assert store.report(StageProgress(job_id=job.id, stage="encode"))
        assert store.report(StageProgress(job_id=job.id, stage="high_noise", steps=2, expert="high_noise"))
    store.complete(jobs[0].id)
    store.fail(jobs[1].id, JobError(code="generation_failed", message="boom"))
    assert store.get(jobs[0].id).status == "completed" and output.writes == []
    assert not store.flush(timeout=0.2)

    output.release.set()
    assert store.flush(timeout=30)
    # Changes made while a record waited were written together: its latest state, once or twice.
    assert len(output.writes) <= 2 * len(jobs)
    restarted = JobStore(OutputStore(str(tmp_path)))
    assert [restarted.get(j.id).status for j in jobs] == ["completed", "failed", "in_progress"]
    assert restarted.get(jobs[2].id).steps_done == 2

    store.delete(jobs[0].id)
    assert store.flush(timeout=30)
    assert not output.exists(f"jobs/{jobs[0].id}.json") and not output.exists(video_key(jobs[0].id))


def test_the_job_store_keeps_a_record_its_store_refused_and_writes_it_later(tmp_path, settings):
    output = HeldStore(str(tmp_path))
    output.failing = True
    output.release.set()
    store = JobStore(output, durable_timeout=0.1)
    request = GenerationRequest.build(settings, prompt="a cat", seed=1)
    job = store.create(JobCreate(request=request, model_id="m", steps_total=4)).job
    assert not store.flush(timeout=0.5)  # refused, kept, retried
    output.failing = False
    assert store.flush(timeout=30)
    assert json.loads(output.read(f"jobs/{job.id}.json"))["id"] == job.id


def test_the_job_store_reloads_its_records_from_s3(s3_uri, settings):
    uri = s3_uri("jobs-reload")
    store = JobStore(OutputStore(uri))
    request = GenerationRequest.build(settings, prompt="a cat", seed=1)
    job = store.create(JobCreate(request=request, model_id="m", steps_total=4)).job
    store.complete(job.id)
    assert store.flush(timeout=30)
    assert JobStore(OutputStore(uri)).get(job.id).status == "completed"


def test_a_batch_run_reads_and_writes_s3(s3_uri, settings, tmp_path):
    """`t2v batch` with the prompt table and the output on the object store: videos, manifest,
    and a rerun that makes nothing again."""
    rows = [
        {"id": "ball", "prompt": "a red ball bouncing on a wooden floor", "steps": 3, "seed": 4},
        {"id": "bad", "prompt": "a dog", "size": "100x64"},
    ]
    table_uri = s3_uri("tables/prompts.jsonl")
    output_uri = s3_uri("runs/one")
    OutputStore(s3_uri("tables")).write("prompts.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    config = tmp_path / "settings.yaml"
    config.write_text(json.dumps({"model": str(settings.model), "cache_dir": str(settings.cache_dir)}))

    def run():
        args = ["batch", "--input", table_uri, "--output", output_uri, "--engine", "local", "--config", str(config)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output  # a failed row is a manifest row, not a failed run
        return result.output

    first = run()
    assert "completed 1, failed 1 (this run: 1 videos made" in first, first
    output = OutputStore(output_uri)
    entries = Manifest(output).load()
    assert entries["ball"]["status"] == "completed" and entries["bad"]["status"] == "failed"
    assert entries["ball"]["output"] == child_uri(output_uri, "videos/ball.mp4")
    assert probe_mp4(output.read("videos/ball.mp4"))["frames"] > 0
    second = run()
    assert "this run: 0 videos made, 1 rows failed, 1 skipped as done" in second, second


def test_adapters_from_an_s3_adapter_store(s3_uri, settings):
    """`adapters.uri` on an object store: listed and checked from each file's header, loaded into an
    expert from there, and a request naming one resolves against it."""
    from pathlib import Path

    from contract.experts import ExpertKind
    from stages.adapter_store import TEST_ADAPTERS_DIR, AdapterStore, ExpertAdapters
    from stages.checkpoint import Checkpoint
    from stages.validation import RequestValidator

    uri = s3_uri("adapters")
    upload = OutputStore(uri)
    for path in Path(TEST_ADAPTERS_DIR, "studio").iterdir():
        upload.write(f"studio/{path.name}", path.read_bytes())
    s3_settings = settings.model_copy(update={"adapters": settings.adapters.model_copy(update={"uri": uri})})
    checkpoint = Checkpoint.from_settings(s3_settings)
    store = AdapterStore.from_settings(s3_settings, checkpoint)
    listing = store.listing()
    assert list(listing) == ["studio"] and listing["studio"].problem is None
    assert listing["studio"].experts == ("high_noise", "low_noise") and listing["studio"].rank == 8
    request = RequestValidator(s3_settings, checkpoint).request(prompt="a ball", lora=[{"name": "studio"}])
    assert request.lora[0].revision == listing["studio"].revision
    adapters = ExpertAdapters(checkpoint.expert(ExpertKind.LOW_NOISE), ExpertKind.LOW_NOISE, store, max_loaded=2)
    assert adapters.load([("studio", listing["studio"].revision)]) is False and list(adapters.loaded) == ["studio"]
