"""Batch runs: a prompt table in; videos and a Parquet manifest out.

    ray job submit --working-dir . -- python -m cluster.batch --input prompts.jsonl --output out/
    t2v batch --input prompts.parquet --output s3://bucket/run-1 --engine local

Three engines behind `--engine`, all running the stage classes the Serve app runs:

- `serve` (the default when the Serve app runs): every row goes to the running Serve app's
  ingress through a deployment handle (`Ingress.submit`), with the validation, content
  filter, capacity limit, latent cache, physics scoring and metrics of `POST /v1/videos`.
  Rows overlap across the stage deployments; the models stay loaded between runs.
- `data` (the default on a Ray cluster without the app): Ray Data, one actor pool per stage,
  sized from the settings (cluster/data_engine.py): a backfill on the whole cluster without
  sharing the online app's capacity.
- `local`: the in-process `Pipeline` in the job's driver, one row at a time, for a
  machine without Ray.

Rows of one template run next to each other, so the boundary-latent cache answers the
rest of a group once its first row has computed the high-noise phase. Each finished row
is in the manifest at once; a rerun skips rows completed with the same request and
model and retries failed ones, so a killed run resumed ends with every row exactly once.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from cluster.batch_engine import BatchEngine, EngineError, Outcome, RequestEngine, video_key
from cluster.launch import APP_NAME
from cluster.manifest import MANIFEST, STAGES, Manifest
from cluster.prompt_table import InputError, Row, locate, read_table
from contract.errors import RequestInvalid, error_summary
from contract.storage import OutputStore

COMPACT_EVERY = 64  # finished rows between folds of the manifest's parts


class ServeEngine(RequestEngine):
    """Rows through the running Serve app, as HTTP requests would go."""

    name = "serve"
    default_concurrency = 8
    read_table = staticmethod(read_table)  # in the job's driver: the rows go to the app one by one

    def __init__(self, app_name: str = APP_NAME, address: str | None = None):
        import ray
        from ray import serve

        from cluster.launch import ray_environment, running_cluster

        ray_environment()
        if not ray.is_initialized():
            address = address or running_cluster()  # `ray job submit` sets RAY_ADDRESS
            if address is None:
                raise EngineError("no running Ray cluster: start one with `t2v serve` (or use --engine local)")
            ray.init(address=address, logging_level="WARNING")
        try:
            self.handle = serve.get_app_handle(app_name)
        except Exception as e:  # Serve not started, or no such app
            raise EngineError(
                f"no Serve app {app_name!r} on this Ray cluster ({error_summary(e)}): "
                "start it with `t2v serve` (or use --engine local)"
            ) from None

    async def model_id(self) -> str:
        return (await self.handle.healthz.remote())["model"]

    async def generate(self, fields: dict[str, Any]) -> Outcome:
        while True:
            try:
                result = await self.handle.submit.remote(fields)
            except Exception as error:  # a replica died under the row, or the app went away
                return Outcome.failed("generation_failed", error_summary(error))
            if result["status"] == 503:  # the cluster is full: wait, as HTTP clients do
                await asyncio.sleep(float(result["headers"].get("Retry-After", 5)))
                continue
            if result["status"] != 200:
                return Outcome.failed(result["error"]["code"], result["error"]["message"])
            job = result["job"]
            if job["status"] != "completed":
                error = job.get("error") or {}
                return Outcome(
                    "failed", job, None, error.get("code", job["status"]), error.get("message", job["status"])
                )
            return Outcome("completed", job, result["mp4"])


class LocalEngine(RequestEngine):
    """Rows through the stages in this process (no Serve app needed)."""

    name = "local"
    default_concurrency = 1  # one pipeline, one request at a time
    read_table = staticmethod(read_table)

    def __init__(self, settings):
        from cluster.pipeline import Pipeline

        self.settings = settings
        self.pipeline = Pipeline.from_settings(settings)

    async def model_id(self) -> str:
        return self.pipeline.model_id

    async def generate(self, fields: dict[str, Any]) -> Outcome:
        try:
            request = self.pipeline.validator.body(fields)
        except RequestInvalid as e:
            return Outcome.failed(e.code, e.message)
        try:
            result = await asyncio.to_thread(self.pipeline, request)
        except Exception as error:
            return Outcome.failed("generation_failed", error_summary(error))
        job = {
            "request": request.model_dump(),
            "timings": result.timings,
            "cache": result.cache,
            "physics": result.physics.model_dump(),
            "model": result.model_id,
            "id": None,
        }
        return Outcome("completed", job, result.mp4)


def manifest_entry(row: Row, outcome: Outcome, output: str | None, seconds: float) -> dict[str, Any]:
    """One manifest row (see `cluster.manifest.SCHEMA`)."""
    request = outcome.job.get("request") or {}
    physics = outcome.job.get("physics") or {}
    timings = dict(outcome.job.get("timings") or {})
    if "encode_base" in timings:  # a template's base prompt: part of encoding
        timings["encode"] = timings.get("encode", 0.0) + timings.pop("encode_base")
    slots = request.get("slots") if request else row.fields.get("slots")
    return {
        "id": row.id,
        "row": row.index,
        "request_hash": row.request_hash,
        "status": outcome.status,
        "error_code": outcome.error_code,
        "error": outcome.error,
        "output": output,
        "prompt": request.get("prompt") or row.fields.get("prompt"),
        "template": request.get("template") or row.template,
        "slots": {str(k): str(v) for k, v in slots.items()} if isinstance(slots, dict) else None,
        "seed": request.get("seed"),
        "preset": request.get("preset"),
        "size": f"{request['width']}x{request['height']}" if request else None,
        "num_frames": request.get("num_frames"),
        "num_inference_steps": request.get("num_inference_steps"),
        "guidance_scale": request.get("guidance_scale"),
        "guidance_scale_2": request.get("guidance_scale_2"),
        "lora": [{"name": a["name"], "scale": a["scale"]} for a in request.get("lora") or []] if request else None,
        "physics_score": physics.get("score"),
        "physics_subscores": physics.get("subscores"),
        "physics_attempts": len(physics.get("attempts") or []) or None,
        "physics_dynamics": physics.get("dynamics"),
        "physics_violations": [
            {"kind": v.get("kind"), "frames": v.get("frames"), "track": v.get("track")}
            for v in physics.get("violations") or []
        ]
        if physics
        else None,
        "cache_hits": sorted(level for level, hit in (outcome.job.get("cache") or {}).items() if hit),
        "seconds_total": seconds,
        **{f"seconds_{stage}": timings.get(stage) for stage in STAGES},
        "model_id": outcome.job.get("model"),
        "job_id": outcome.job.get("id"),
    }


class Progress:
    """One line per finished row (what `ray job logs -f` shows), with rate and ETA."""

    def __init__(self, total: int, skipped: int, log=print):
        self.total, self.todo, self.skipped, self.log = total, total - skipped, skipped, log
        self.completed = self.failed = 0
        self.start = time.monotonic()

    def row_done(self, entry: dict[str, Any]) -> None:
        if entry["status"] == "completed":
            self.completed += 1
        else:
            self.failed += 1
        done = self.completed + self.failed
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.todo - done)
        detail = (
            f"physics {entry['physics_score']:.2f}"
            + (f", cache {'+'.join(entry['cache_hits'])}" if entry["cache_hits"] else "")
            if entry["status"] == "completed"
            else f"{entry['error_code']}: {entry['error']}"
        )
        self.log(
            f"[{self.skipped + done:>{len(str(self.total))}}/{self.total}] {entry['status']:<9} {entry['id']} "
            f"{entry['seconds_total']:.1f}s {detail} | {done / elapsed * 60:.1f} rows/min, ETA {_duration(eta)}"
        )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class BatchRun:
    def __init__(
        self,
        rows: list[Row],
        engine: BatchEngine,
        output: OutputStore,
        concurrency: int | None = None,
        retry_failed: bool = True,
        log=print,
    ):
        self.rows, self.engine, self.output, self.log = rows, engine, output, log
        self.concurrency = concurrency
        self.retry_failed = retry_failed
        self.manifest = Manifest(output)

    def _done_before(self, row: Row, earlier: dict | None, model_id: str) -> bool:
        if earlier is None or earlier["request_hash"] != row.request_hash:
            return False
        if earlier["status"] == "completed":
            return earlier["model_id"] == model_id and self.output.exists(video_key(row))
        return not self.retry_failed

    def _record(self, row: Row, outcome: Outcome, output: str | None, seconds: float, progress: Progress) -> None:
        entry = manifest_entry(row, outcome, output, seconds)
        self.manifest.record(entry)
        progress.row_done(entry)
        self.recorded += 1
        if self.recorded % COMPACT_EVERY == 0:
            self.manifest.compact([r.id for r in self.rows])

    async def run(self) -> dict[str, Any]:
        model_id = await self.engine.model_id()
        earlier = self.manifest.load()
        todo = [r for r in self.rows if not self._done_before(r, earlier.get(r.id), model_id)]
        # Rows of the same adapters together (an expert loads them once, and batches only
        # requests of the same weights), and within them one template's rows together: the
        # first computes the shared high-noise phase, the rest find it in the cache (or wait
        # for it: single flight).
        todo.sort(key=lambda r: (r.adapters, r.template is None, r.template or "", r.index))
        self.log(
            f"{len(self.rows)} rows: {len(self.rows) - len(todo)} already done, {len(todo)} to run "
            f"on the {self.engine.name} engine ({model_id}), {self.engine.how(self.concurrency)}"
        )
        progress = Progress(len(self.rows), len(self.rows) - len(todo), self.log)
        self.recorded = 0
        started = time.monotonic()
        for row in todo:
            if row.error is not None:  # unreadable as read: failed before any engine sees it
                self._record(row, Outcome.failed("invalid_request", row.error), None, 0.0, progress)
        async for result in self.engine.results([r for r in todo if r.error is None], self.output, self.concurrency):
            self._record(result.row, result.outcome, result.output, result.seconds, progress)
        table = self.manifest.compact([r.id for r in self.rows])
        summary = self._summary(table.to_pylist(), progress, time.monotonic() - started)
        self.output.write("summary.txt", "\n".join(summary["lines"]).encode())
        for line in summary["lines"]:
            self.log(line)
        return summary

    def _summary(self, entries: list[dict], progress: Progress, seconds: float) -> dict[str, Any]:
        ids = {r.id for r in self.rows}
        entries = [e for e in entries if e["id"] in ids]
        completed = [e for e in entries if e["status"] == "completed"]
        failed = [e for e in entries if e["status"] != "completed"]
        scores = [e["physics_score"] for e in completed if e["physics_score"] is not None]
        hits: dict[str, int] = {}
        for e in completed:
            for level in e["cache_hits"] or []:
                hits[level] = hits.get(level, 0) + 1
        lines = [
            f"batch: {len(self.rows)} rows -> {self.output.location(MANIFEST)}",
            f"  completed {len(completed)}, failed {len(failed)} (this run: {progress.completed} videos made, "
            f"{progress.failed} rows failed, {progress.skipped} skipped as done, in {_duration(seconds)}"
            + (f", {progress.completed / seconds * 60:.1f} videos/min)" if seconds > 0 and progress.completed else ")"),
        ]
        if scores:
            lines.append(
                f"  physics score: mean {statistics.fmean(scores):.3f}, min {min(scores):.3f}, max {max(scores):.3f}"
            )
        if hits:
            lines.append("  cache hits: " + ", ".join(f"{level} {n}" for level, n in sorted(hits.items())))
        if failed:
            lines.append("  failed rows:")
            lines += [f"    {e['id']} (row {e['row'] + 1}): {e['error_code']}: {e['error']}" for e in failed[:50]]
            if len(failed) > 50:
                lines.append(f"    ... and {len(failed) - 50} more (see the manifest)")
        return {
            "rows": len(self.rows),
            "completed": len(completed),
            "failed": len(failed),
            "made": progress.completed,
            "skipped": progress.skipped,
            "seconds": seconds,
            "lines": lines,
        }


class EngineName(StrEnum):
    serve = "serve"
    data = "data"
    local = "local"


def batch(
    input: str = typer.Option(
        ...,
        "--input",
        "-i",
        help="Prompt table: .parquet, .jsonl or .csv (or a folder of them); a path or pyarrow.fs URI.",
    ),
    output: str = typer.Option(
        ..., "--output", "-o", help="Where videos/ and manifest.parquet go; a path or pyarrow.fs URI."
    ),
    engine: EngineName | None = typer.Option(
        None,
        help="serve: the running Serve app (handles); data: Ray Data, an actor pool per stage; local: the "
        "stages in this process. Default: serve when the app runs on the Ray cluster, else data.",
    ),
    concurrency: int | None = typer.Option(None, min=1, help="Rows in flight (default: 8 on serve, 1 on local)."),
    retry_failed: bool = typer.Option(True, "--retry-failed/--no-retry-failed", help="Rerun rows that failed before."),
    app_name: str = typer.Option(APP_NAME, "--app", help="Name of the Serve app (serve engine)."),
    address: str | None = typer.Option(
        None, help="Ray cluster (serve engine; default: RAY_ADDRESS, which `ray job submit` sets)."
    ),
    model: Path | None = typer.Option(
        None, help="Checkpoint for the data and local engines (default: the embedded model)."
    ),
    config: Path | None = typer.Option(None, help="YAML settings for the data and local engines."),
) -> None:
    """Generate a video per row of a prompt table; write videos/<id>.mp4 and manifest.parquet.
    Rerunning the same command skips the rows already done."""
    try:
        locate(input)  # a missing table is named before any engine starts
        from contract.settings import Settings

        settings = Settings.from_yaml(config) if config else Settings()
        settings = settings.model_copy(update={"model": model}) if model else settings
        reason = ""
        if engine in (None, EngineName.serve):
            try:
                runner_engine = ServeEngine(app_name, address)
            except EngineError as e:
                if engine is not None:
                    raise
                reason = f" ({str(e).split(':')[0].split(' (')[0]})"  # e.g. no Serve app 't2v' on this Ray cluster
                engine = EngineName.data
        if engine == EngineName.data:
            from cluster.data_engine import DataEngine

            runner_engine = DataEngine(settings, address)
        elif engine == EngineName.local:
            runner_engine = LocalEngine(settings)
        log = lambda line: print(line, flush=True)  # noqa: E731 - unbuffered: job logs follow it live
        log(f"engine: {runner_engine.name}{reason}")
        rows, ignored = runner_engine.read_table(input)
    except (InputError, EngineError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if ignored:
        typer.echo(f"note: columns ignored (not request fields): {', '.join(ignored)}")
    summary = asyncio.run(BatchRun(rows, runner_engine, OutputStore(output), concurrency, retry_failed, log).run())
    if summary["completed"] + summary["failed"] != summary["rows"]:
        raise typer.Exit(1)  # should not happen: every row ends in the manifest


def main() -> None:
    typer.run(batch)


if __name__ == "__main__":
    sys.exit(main())
