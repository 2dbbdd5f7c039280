"""The `Ingress` Serve deployment: the OpenAI-shaped videos API in front of the stages.

A request reads top to bottom: authenticate, validate, record the job (or answer it from
the result cache), then run it through the stage list with the Serve executor (job_service.py:
the shared `JobRunner` on the stage deployments' handles). HTTP plumbing lives in http.py.
"""

# No `from __future__ import annotations`: Serve's class-based routes need real annotations.
import asyncio
import contextvars
import hashlib
import hmac
import logging
import threading
import time
from typing import Any

from fastapi import Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.errors import RequestInvalid, error_summary
from contract.jobs import Job, JobCreate, JobError, latent_key, valid_job_id, video_key
from contract.request import GenerationRequest
from contract.settings import Settings
from contract.storage import OutputStore
from deployments.http import CREATE_BODY, FINALIZE_BODY, PLAYGROUND, ApiError, api, read_body
from deployments.job_service import serve_runner
from stages.checkpoint import Checkpoint
from stages.job_state import JobState
from stages.runner import Outcome
from stages.validation import RequestValidator

logger = logging.getLogger("ray.serve")


def proxy_host(default: str) -> str:
    """Where Serve's HTTP proxies listen: `http_options.host` of `t2v serve`, a Serve config or
    KubeRay, read from the controller (the app's own settings need not know it)."""
    from ray.serve.context import _get_global_client

    try:
        return _get_global_client().http_config.host
    except Exception:  # no controller to ask (not on Serve): the settings' word
        return default


# Helpers above live before the class: serve.ingress pickles the app when the class is defined.
@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        settings: Settings,
        jobs: DeploymentHandle,
        text_encoder: DeploymentHandle,
        high_noise_expert: DeploymentHandle,
        low_noise_expert: DeploymentHandle | None,
        decoder: DeploymentHandle,
    ):
        settings.serving.check_open_access(proxy_host(settings.serving.host))
        self.settings = settings
        self.jobs, self.text_encoder = jobs, text_encoder
        checkpoint = Checkpoint.from_settings(settings)  # configs only: the ingress holds no weights
        self.model_id = checkpoint.model_id
        self.validator = RequestValidator(settings, checkpoint)
        self.store = OutputStore(settings.output_uri)
        self.runner = serve_runner(
            settings, checkpoint, jobs, text_encoder, high_noise_expert, low_noise_expert, decoder
        )
        self.two_experts = checkpoint.has_low_noise_expert
        self.api_keys = [hashlib.sha256(k.encode()).hexdigest() for k in settings.serving.api_keys]
        self.max_body = settings.serving.max_body_bytes
        self._tasks: set[asyncio.Task] = set()
        # The job store fails the jobs of an ingress replica that stops heartbeating.
        self.replica = serve.get_replica_context().replica_id.unique_id
        threading.Thread(target=self._heartbeat, name="ingress-heartbeat", daemon=True).start()

    async def __del__(self) -> None:
        """Serve is stopping this replica (scale-down, redeploy): its jobs finish first, for at
        most `serving.drain_seconds`; any still running then fail as interrupted (`_generate`)."""
        if self._tasks:
            logger.info("ingress stopping: draining %d jobs", len(self._tasks))
            await asyncio.wait(self._tasks, timeout=self.settings.serving.drain_seconds)

    def _heartbeat(self) -> None:
        while True:
            try:
                self.jobs.heartbeat.remote(self.replica).result(timeout_s=30)
            except Exception as error:  # the store restarting: keep beating
                logger.warning("heartbeat to the job store failed: %s", error_summary(error))
            time.sleep(self.settings.serving.heartbeat_seconds)

    # -- creating and running jobs ------------------------------------------------------

    @api.post("/v1/videos", status_code=202, openapi_extra=CREATE_BODY, summary="Create a video job")
    async def create_video(self, request: Request) -> JSONResponse:
        owner = self._caller(request)
        job, _ = await asyncio.shield(self._start(await read_body(request, self.max_body), owner))
        return JSONResponse(self._public(job), status_code=202)

    @api.post(
        "/v1/videos/sync",
        openapi_extra=CREATE_BODY,
        summary="Generate a video and return the mp4",
        response_class=Response,
        responses={200: {"content": {"video/mp4": {}}}},
    )
    async def create_video_sync(self, request: Request) -> Response:
        owner = self._caller(request)
        job = await self._finished(await read_body(request, self.max_body), owner)
        if job.status != "completed":
            raise ApiError(
                500 if job.status == "failed" else 409,
                job.error.message if job.error else job.status,
                code=job.error.code if job.error else job.status,
            )
        return Response(self.store.read(video_key(job.id)), media_type="video/mp4", headers={"X-Video-Id": job.id})

    @api.post(
        "/v1/videos/{video_id}/finalize",
        status_code=202,
        openapi_extra=FINALIZE_BODY,
        summary="Make the final of a finished video's shot",
    )
    async def finalize_video(self, video_id: str, request: Request) -> JSONResponse:
        """`POST /v1/videos` with `"from": video_id`: the body (optional) may set preset, size, steps."""
        owner = self._caller(request)
        has_body = request.headers.get("content-length", "0") not in ("", "0") or "chunked" in request.headers.get(
            "transfer-encoding", ""
        )
        fields = await read_body(request, self.max_body) if has_body else {}
        if not isinstance(fields, dict):
            raise ApiError(400, "request body must be a JSON object or a form", "body")
        job, _ = await asyncio.shield(self._start({**fields, "from": video_id}, owner))
        return JSONResponse(self._public(job), status_code=202)

    async def submit(self, fields: dict[str, Any], keep: bool = False) -> dict[str, Any]:
        """One request through the stages for callers inside the cluster (batch jobs): the
        same validation, job record, capacity and caches as `POST /v1/videos`. Returns the
        finished job record and its mp4 (the record is then deleted unless `keep`), or
        the HTTP status and OpenAI-shaped error that POST would have answered."""
        try:
            job = await self._finished(fields)
        except (ApiError, RequestInvalid) as error:
            error = ApiError.invalid(error) if isinstance(error, RequestInvalid) else error
            return {"status": error.status, **error.body(), "headers": error.headers or {}}
        mp4 = self.store.read(video_key(job.id)) if job.status == "completed" else None
        if not keep and not job.active:
            await self.jobs.delete.remote(job.id)
        return {"status": 200, "job": self._public(job), "mp4": mp4}

    async def _start(self, fields: Any, owner: str | None = None) -> tuple[Job, asyncio.Task | None]:
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

    async def _finished(self, fields: Any, owner: str | None = None) -> Job:
        """The job run to its end; a caller that goes away stops waiting, not the job."""
        job, task = await asyncio.shield(self._start(fields, owner))
        return job if task is None else await asyncio.shield(task)

    async def _accept(self, fields: Any, owner: str | None = None) -> tuple[Job, GenerationRequest]:
        """Validate the body and record the job; 400 names the bad field, 503 when full.
        An identical earlier request's mp4 completes the job at once (result cache)."""
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
        cached = self.runner.results.cached(generation, owner)
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
                steps_total=self.runner.steps_total(generation),
                max_active=self.settings.serving.max_active_jobs,
                matched_template=matched,
                owner=owner,
                runner=self.replica,
                cache={"result": cached is not None} if self.runner.results.used(generation) else {},
            )
        )
        if not admission.accepted:
            raise self._queue_full(admission.refused)
        job = admission.job
        if cached is not None:
            try:
                if cached.video is not None:
                    await asyncio.to_thread(self.store.copy, cached.video, video_key(job.id))
                else:
                    self.store.write(video_key(job.id), cached.mp4)
                job = await self.jobs.complete.remote(job.id, cached.physics)
            except BaseException as error:  # never leave the job queued with nothing to run it
                await self.jobs.fail.remote(job.id, JobError(code="internal_error", message=error_summary(error)))
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
            preview = await self._job(video_id, owner)
        except ApiError as missing:
            raise ApiError(404, f"from: {missing.message}", "from", "video_not_found") from None
        if preview.status != "completed":
            raise ApiError(409, f"from: video {video_id} is {preview.status}, not completed", "from", "video_not_ready")
        if not await asyncio.to_thread(self.store.exists, latent_key(video_id)):
            raise ApiError(409, f"from: video {video_id} kept no latent to start a final from", "from", "no_latent")
        return GenerationRequest.load(preview.request, self.settings)

    async def _generate(self, job_id: str, request: GenerationRequest, owner: str | None) -> Job:
        """Run one job through the stages and record how it ended; a job left active with
        nothing running it would hang forever, so it ends even if the bookkeeping fails."""
        try:
            return await self._record(job_id, await self.runner.run(JobState(job_id, request), owner))
        except Exception as error:  # the bookkeeping itself failed (e.g. the job store restarting)
            logger.exception("job %s: orchestration failed", job_id)
            return await self.jobs.fail.remote(job_id, JobError(code="internal_error", message=error_summary(error)))
        except asyncio.CancelledError:  # this replica is going away under the job
            error = JobError(code="interrupted", message="the ingress running this job stopped; submit it again")
            await asyncio.shield(self.jobs.fail.remote(job_id, error))
            raise

    async def _record(self, job_id: str, outcome: Outcome) -> Job:
        if outcome.status == "completed":
            return await self.jobs.complete.remote(job_id, outcome.physics, outcome.trace)
        if outcome.status == "failed":
            return await self.jobs.fail.remote(job_id, outcome.error)
        return await self.jobs.get.remote(job_id)  # cancelled (or ended otherwise): the record says so

    # -- reading and managing jobs ------------------------------------------------------

    @api.get("/v1/videos/{video_id}", summary="Retrieve a video job")
    async def retrieve_video(self, video_id: str, request: Request) -> dict:
        return self._public(await self._job(video_id, self._caller(request)))

    @api.get(
        "/v1/videos/{video_id}/content",
        summary="Download the mp4",
        response_class=Response,
        responses={200: {"content": {"video/mp4": {}}}},
    )
    async def video_content(self, video_id: str, request: Request, variant: str = "video") -> Response:
        job = await self._job(video_id, self._caller(request))
        if variant != "video":
            raise ApiError(400, f"variant: only 'video' is available, got {variant!r}", "variant")
        if job.status != "completed":
            raise ApiError(409, f"video {video_id} is {job.status}, not completed", code="video_not_ready")
        path = self.store.local_path(video_key(video_id))
        if path is not None:
            return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")
        return Response(self.store.read(video_key(video_id)), media_type="video/mp4")

    @api.get("/v1/videos", summary="List video jobs")
    async def list_videos(
        self,
        request: Request,
        after: str | None = None,
        limit: int = Query(20, ge=1, le=100),
        order: str = Query("desc", pattern="^(asc|desc)$"),
    ) -> dict:
        owner = self._caller(request)
        jobs, has_more = await self.jobs.list.remote(after=after, limit=limit, order=order, owner=owner)
        data = [self._public(j) for j in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }

    @api.delete("/v1/videos/{video_id}", summary="Cancel a job in flight, or delete a finished one")
    async def delete_video(self, video_id: str, request: Request) -> dict:
        job = await self._job(video_id, self._caller(request))
        if job.active:
            job = await self.jobs.cancel.remote(video_id)
            return {"id": video_id, "object": "video.deleted", "deleted": False, "status": job.status}
        deleted = await self.jobs.delete.remote(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": deleted}

    @api.get("/v1/templates", summary="Prompt templates")
    async def list_templates(self, request: Request) -> dict:
        self._caller(request)
        return {"object": "list", "data": self.settings.templates().public()}

    @api.get("/v1/adapters", summary="LoRA adapters")
    async def list_adapters(self, request: Request) -> dict:
        """The adapters requests may name in `lora`, with the experts each changes; one that does
        not fit this model is listed with the reason (a request naming it gets a 400)."""
        self._caller(request)
        listing = await asyncio.to_thread(self.validator.adapters.listing)  # may read an object store
        return {"object": "list", "data": [info.public() for info in listing.values()]}

    @api.get("/v1/models", summary="Models served")
    async def list_models(self, request: Request) -> dict:
        self._caller(request)
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "t2v-cluster"}]}

    # -- the playground: a static page on the public API (its assets: http.py) ---------------

    @api.get("/", include_in_schema=False)
    async def playground(self) -> FileResponse:
        return FileResponse(PLAYGROUND / "index.html", media_type="text/html")

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.model_id}

    # -- helpers -----------------------------------------------------------------------

    def _caller(self, request: Request) -> str | None:
        """The owner of the caller's jobs (a hash of its API key); None when keys are off.
        401 without a valid key."""
        if not self.api_keys:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        # Every key compared, in constant time: no timing tells how close a guess was.
        valid = [hmac.compare_digest(digest, known) for known in self.api_keys]
        if scheme.lower() != "bearer" or not any(valid):
            raise ApiError(
                401,
                "a valid API key is required: Authorization: Bearer <key>",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return digest[:32]

    async def _job(self, video_id: str, owner: str | None = None) -> Job:
        job = await self.jobs.get.remote(video_id) if valid_job_id(video_id) else None
        if job is None or job.owner != owner:  # another key's job does not exist for this one
            raise ApiError(404, f"no video with id {video_id!r}", "video_id", "video_not_found")
        return job

    def _queue_full(self, reason: str) -> ApiError:
        retry = str(self.settings.serving.retry_after_seconds)
        return ApiError(503, f"server busy: {reason}", code="queue_full", headers={"Retry-After": retry})

    @staticmethod
    def _public(job: Job) -> dict[str, Any]:
        return job.model_dump(mode="json", exclude={"created", "owner", "runner", "stage_since"})
