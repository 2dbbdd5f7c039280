"""A job's life on the Serve app, with no HTTP in it: admission (validation, capacity, the result
cache), its run through the stage list on the Serve executor (serve_executor.py), and how it
ended, recorded in the job store. The ingress routes requests here; batch jobs reach it through
the ingress's `submit`.

Each ingress replica hosts one service: it heartbeats to the job store (which fails the jobs of a
replica that stops) and, when Serve stops the replica, drains the jobs it runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time
from typing import Any

from ray.serve.handle import DeploymentHandle

from contract.errors import ApiError, error_summary, public_error
from contract.jobs import Job, JobCreate, JobError, latent_key, valid_job_id, video_key
from contract.request import GenerationRequest
from contract.settings import Settings
from contract.storage import OutputStore
from deployments.app_state import app_deleting
from deployments.serve_executor import serve_runner
from stages.checkpoint import Checkpoint
from stages.job_state import JobState
from stages.runner import JobRunner, Outcome
from stages.validation import RequestValidator

logger = logging.getLogger("ray.serve")


class JobService:
    def __init__(
        self,
        settings: Settings,
        replica: str,
        jobs: DeploymentHandle,
        text_encoder: DeploymentHandle,
        high_noise_expert: DeploymentHandle,
        low_noise_expert: DeploymentHandle | None,
        decoder: DeploymentHandle,
        interactive_high_noise: DeploymentHandle | None = None,
        interactive_low_noise: DeploymentHandle | None = None,
    ):
        self.settings, self.replica = settings, replica
        self.jobs, self.text_encoder = jobs, text_encoder
        checkpoint = Checkpoint.from_settings(settings)  # configs only: the service holds no weights
        self.model_id = checkpoint.model_id
        self.two_experts = checkpoint.has_low_noise_expert
        self.validator = RequestValidator(settings, checkpoint)
        self.store = OutputStore(settings.output_uri)
        self._runner: concurrent.futures.Future[JobRunner] = concurrent.futures.Future()
        handles = (jobs, text_encoder, high_noise_expert, low_noise_expert, decoder)
        handles += (interactive_high_noise, interactive_low_noise)
        threading.Thread(target=self._load, args=(checkpoint, handles), name="job-service-load", daemon=True).start()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = "the ingress running this job stopped"  # why a job cancelled here ended
        threading.Thread(target=self._heartbeat, name="job-service-heartbeat", daemon=True).start()

    def _load(self, checkpoint: Checkpoint, handles: tuple) -> None:
        """What admitting and running a job needs of the model (the tokenizer, the scheduler's plan,
        the result cache's model identity) imports torch, diffusers and transformers: seconds of CPU
        that would hold the replica's start (and /healthz) while the stage replicas start beside it.
        Loaded here instead, after the replica is up; a request that comes first waits for it."""
        try:
            runner = serve_runner(self.settings, checkpoint, *handles)
            self.validator.check_prompt("a red ball")  # the tokenizer and the prompt cleaner
            self._runner.set_result(runner)
        except BaseException as error:  # the requests that wait on it answer with the cause
            logger.exception("job service: loading the model's configs failed")
            self._runner.set_exception(error)

    async def runner(self) -> JobRunner:
        if not self._runner.done():  # shielded: a waiter cancelled must not cancel everyone's load
            await asyncio.shield(asyncio.wrap_future(self._runner))
        return self._runner.result()

    # -- starting jobs -------------------------------------------------------------------

    async def start(self, fields: Any, owner: str | None = None) -> tuple[Job, asyncio.Task | None]:
        """Admit the request and start its job. Callers shield this: a client that disconnects
        (Serve then cancels its handler) cannot leave a job recorded with nothing to run it."""
        job, generation = await self._accept(fields, owner)
        if not job.active:  # answered from the result cache
            return job, None
        # A context of its own: Serve would cancel the stage calls of a handler that was
        # cancelled (its client went away) as the handler's children; this job is nobody's child.
        task = asyncio.create_task(self._generate(job.id, generation, owner), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job, task

    async def finished(self, fields: Any, owner: str | None = None) -> Job:
        """The job run to its end; a caller that goes away stops waiting, not the job."""
        job, task = await asyncio.shield(self.start(fields, owner))
        return job if task is None else await asyncio.shield(task)

    async def _accept(self, fields: Any, owner: str | None) -> tuple[Job, GenerationRequest]:
        """Validate the body and record the job; 400 names the bad field, 503 when full.
        An identical earlier request's video completes the job at once (result cache)."""
        runner = await self.runner()
        source = fields.get("from", fields.get("from_video")) if isinstance(fields, dict) else None
        if source is not None:
            generation = self.validator.final_of(await self._preview(source, owner), fields, source)
        else:
            generation = self.validator.body(fields)
        matched = None
        # A final of a shot keeps its preview's seed and so its match, if it had one.
        approximate = self.settings.cache.approximate_match and generation.cache and source is None
        if approximate and generation.template is None and fields.get("seed") is None:
            # Admission before a text-encoder forward: a full cluster answers 503 at once.
            if await self.jobs.count_active.remote() >= self.settings.serving.max_active_jobs:
                raise self._queue_full(
                    f"{self.settings.serving.max_active_jobs} jobs are already queued or in progress"
                )
            matched = await self.text_encoder.closest_template.remote(generation.prompt)
            if matched is not None and matched.similarity >= self.settings.cache.approximate_threshold:
                generation = generation.matched_to(self.settings.templates().get(matched.template))
            else:
                matched = None
        cached = runner.results.cached(generation, owner)
        if (
            cached is not None
            and cached.video is not None
            and not await asyncio.to_thread(self.store.exists, cached.video)
        ):
            cached = None  # the video it was has been deleted since
        admission = await self.jobs.create.remote(
            JobCreate(
                request=generation,
                model_id=self.model_id,
                steps_total=runner.steps_total(generation),
                max_active=self.settings.serving.max_active_jobs,
                matched_template=matched,
                owner=owner,
                runner=self.replica,
                cache={"result": cached is not None} if runner.results.used(generation) else {},
            )
        )
        if not admission.accepted:
            raise self._queue_full(admission.refused)
        job = admission.job
        if cached is not None:
            try:
                if cached.video is not None:
                    await asyncio.to_thread(self.store.copy, cached.video, video_key(job.id))
                    if cached.latent is not None and await asyncio.to_thread(self.store.exists, cached.latent):
                        await asyncio.to_thread(self.store.copy, cached.latent, latent_key(job.id))
                else:
                    self.store.write(video_key(job.id), cached.mp4)
                job = await self.jobs.complete.remote(job.id, cached.physics)
            except BaseException as error:  # never leave the job queued with nothing to run it
                await self.jobs.fail.remote(job.id, JobError(code="internal_error", message=public_error(error)))
                raise
        return job, generation

    async def _preview(self, video_id: Any, owner: str | None) -> GenerationRequest:
        """The request of the finished video whose shot a `from` request finishes; 400/404/409 when
        there is none to finish."""
        if not isinstance(video_id, str) or not valid_job_id(video_id):
            raise ApiError(400, f"from: not a video id: {video_id!r}", "from")
        if not self.two_experts:
            raise ApiError(400, "from: the final of a shot needs a two-expert (Wan2.2) checkpoint", "from")
        try:
            preview = await self.job(video_id, owner)
        except ApiError as missing:
            raise ApiError(404, f"from: {missing.message}", "from", "video_not_found") from None
        if preview.status != "completed":
            raise ApiError(409, f"from: video {video_id} is {preview.status}, not completed", "from", "video_not_ready")
        if not await asyncio.to_thread(self.store.exists, latent_key(video_id)):
            raise ApiError(409, f"from: video {video_id} kept no latent to start a final from", "from", "no_latent")
        return GenerationRequest.load(preview.request, self.settings)

    def _queue_full(self, reason: str) -> ApiError:
        retry = str(self.settings.serving.retry_after_seconds)
        return ApiError(503, f"server busy: {reason}", code="queue_full", headers={"Retry-After": retry})

    # -- running them --------------------------------------------------------------------

    async def _generate(self, job_id: str, request: GenerationRequest, owner: str | None) -> Job:
        """Run one job through the stages and record how it ended; a job left active with
        nothing running it would hang forever, so it ends even if the bookkeeping fails."""
        try:
            runner = await self.runner()
            return await self._record(job_id, await runner.run(JobState(job_id, request), owner))
        except Exception as error:  # the bookkeeping itself failed (e.g. the job store restarting)
            logger.exception("job %s: orchestration failed", job_id)
            return await self.jobs.fail.remote(job_id, JobError(code="internal_error", message=public_error(error)))
        except asyncio.CancelledError:  # this replica is going away under the job
            error = JobError(code="interrupted", message=f"{self._stopping}; submit it again")
            await asyncio.shield(self.jobs.fail.remote(job_id, error))
            raise

    async def _record(self, job_id: str, outcome: Outcome) -> Job:
        if outcome.status == "completed":
            return await self.jobs.complete.remote(job_id, outcome.physics, outcome.trace)
        if outcome.status == "failed":
            return await self.jobs.fail.remote(job_id, outcome.error)
        return await self.jobs.get.remote(job_id)  # cancelled (or ended otherwise): the record says so

    async def drain(self) -> None:
        """Serve is stopping this replica. Alone (scale-down, redeploy), its jobs finish first, for
        at most `serving.drain_seconds`; with the whole app (deployments/app_state.py), at once.
        Any still running then fail as interrupted, recorded before the replica goes (else the
        store would only notice the lost heartbeat)."""
        if not self._tasks:
            return
        # The whole app going (its job store and stages too): nothing to finish the jobs with.
        deleting = await asyncio.to_thread(app_deleting)
        logger.info("ingress stopping: %s %d jobs", "ending" if deleting else "draining", len(self._tasks))
        limit = 0 if deleting else self.settings.serving.drain_seconds
        _, running = await asyncio.wait(self._tasks, timeout=limit)
        if running:
            self._stopping = (
                "the app was stopped while this job ran"
                if deleting
                else f"the ingress running this job stopped and the job did not finish within "
                f"serving.drain_seconds ({limit:g} s)"
            )
            logger.warning(
                "ingress stopping: %d jobs did not finish in time, failing them as interrupted", len(running)
            )
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=5)

    def _heartbeat(self) -> None:
        while True:
            try:
                self.jobs.heartbeat.remote(self.replica).result(timeout_s=30)
            except Exception as error:  # the store restarting: keep beating
                logger.warning("heartbeat to the job store failed: %s", error_summary(error))
            time.sleep(self.settings.serving.heartbeat_seconds)

    # -- reading jobs --------------------------------------------------------------------

    async def job(self, video_id: str, owner: str | None = None) -> Job:
        """The caller's job; 404 for an unknown id and for another key's job (it does not exist
        for this one)."""
        job = await self.jobs.get.remote(video_id) if valid_job_id(video_id) else None
        if job is None or job.owner != owner:
            raise ApiError(404, f"no video with id {video_id!r}", "video_id", "video_not_found")
        return job
