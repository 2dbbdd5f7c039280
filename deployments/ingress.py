"""HTTP ingress: the OpenAI-shaped videos API in front of the stage deployments.

A request reads top to bottom like `Pipeline.__call__`: validate, record the job, then
text encoder -> high-noise expert -> low-noise expert -> decoder. The ingress passes
each stage's `DeploymentResponse` straight to the next stage, so embeddings, latents
and scheduler state travel replica to replica as Ray objects and never through here.
"""


import asyncio
import hashlib
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray.serve.handle import DeploymentHandle

from cluster.config import Settings
from cluster.errors import error_summary
from cluster.jobs import Job, JobCancelled, QueueFull, valid_job_id, video_key
from cluster.request import GenerationRequest
from cluster.storage import OutputStore
from cache.keys import result_key
from cache.store import LatentCache
from deployments.api import ApiError, VideoCreateBody, parse_create_body
from deployments.checkpoint import Checkpoint
from deployments.denoising import Scheduler
from monitoring.metrics import metrics

logger = logging.getLogger("ray.serve")
PLAYGROUND = Path(__file__).resolve().parent / "playground"
PLAYGROUND_ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}

api = FastAPI(
    title="t2v-cluster",
    version="0.1.0",
    description="Text to video with a Wan2.2-style Mixture-of-Experts model, in the OpenAI videos API shape.",
)


@api.middleware("http")
async def _count_requests(request: Request, call_next):
    response = await call_next(request)
    route = request.scope.get("route")  # the path template: ids don't explode the label set
    endpoint = getattr(route, "path", "unmatched")
    metrics.inc("http", endpoint=endpoint, method=request.method, status=response.status_code)
    return response


@api.exception_handler(ApiError)
async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# Every error in the same OpenAI shape, also FastAPI's own (unknown path, bad query).
@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if error.status_code == 404 else "http_error"
    return await _api_error(request, ApiError(error.status_code, str(error.detail), code=code, headers=error.headers))


@api.exception_handler(RequestValidationError)
async def _query_error(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = [{"field": str(e["loc"][-1]), "message": e["msg"]} for e in error.errors()]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return await _api_error(request, ApiError(400, message, errors[0]["field"] if errors else None, errors=errors))


async def _read_body(request: Request, limit: int) -> Any:
    """The JSON or form body, refused with 413 past `limit` bytes (before reading it all)."""
    too_large = ApiError(413, f"request body is larger than {limit} bytes", "body", "body_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():  # chunked uploads have no content-length
        body += chunk
        if len(body) > limit:
            raise too_large
    request._body = bytes(body)  # starlette's cache: .json() / .form() read this
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        body: dict[str, Any] = {}
        for key, value in form.items():
            if not isinstance(value, str):
                continue
            name, _, sub = key.partition("[")  # the openai SDK sends a dict as slots[product]=...
            if sub.endswith("]"):
                body.setdefault(name, {})[sub[:-1]] = value
            else:
                body[key] = value
        return body
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "request body is not valid JSON", "body") from None


def _replica_died(error: BaseException) -> bool:
    """A replica (of a stage, or the job store a stage reports to) died under the call,
    here or in a stage this one waited on: Ray wraps the cause once per hop (`cause` of a
    RayTaskError; `__cause__` of Serve's "an upstream actor died" error)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    while error is not None:
        if isinstance(error, (RayActorError, ActorUnavailableError)):
            return True
        error = getattr(error, "cause", None) or error.__cause__
    return False



_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media: {"schema": VideoCreateBody.model_json_schema(by_alias=False)}
            for media in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
        },
    }
}


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
        self.settings = settings
        self.jobs, self.text_encoder, self.decoder = jobs, text_encoder, decoder
        self.high_noise_expert, self.low_noise_expert = high_noise_expert, low_noise_expert
        self.checkpoint = Checkpoint.from_settings(settings)  # configs only: the ingress holds no weights
        self.model_id = self.checkpoint.model_id
        self.scheduler = Scheduler.from_checkpoint(self.checkpoint)
        self.store = OutputStore(settings.output_uri)
        self.cache = LatentCache.from_settings(settings)
        self.api_keys = [hashlib.sha256(k.encode()).hexdigest() for k in settings.serving.api_keys]
        self.max_body = settings.serving.max_body_bytes
        self._tasks: set[asyncio.Task] = set()
        # The job store fails the jobs of an ingress replica that stops heartbeating.
        self.runner = serve.get_replica_context().replica_id.unique_id
        threading.Thread(target=self._heartbeat, name="ingress-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        while True:
            try:
                self.jobs.heartbeat.remote(self.runner).result(timeout_s=30)
            except Exception as error:  # the store restarting: keep beating
                logger.warning("heartbeat to the job store failed: %s", error_summary(error))
            time.sleep(self.settings.serving.heartbeat_seconds)

    # -- creating and running jobs ------------------------------------------------------

    @api.post("/v1/videos", status_code=202, openapi_extra=_CREATE_BODY, summary="Create a video job")
    async def create_video(self, request: Request) -> JSONResponse:
        owner = self._caller(request)
        job, generation = await self._accept(await _read_body(request, self.max_body), owner)
        if job.active:  # not answered from the result cache
            task = asyncio.create_task(self._generate(job.id, generation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return JSONResponse(self._public(job), status_code=202)

    @api.post("/v1/videos/sync", openapi_extra=_CREATE_BODY, summary="Generate a video and return the mp4",
              response_class=Response, responses={200: {"content": {"video/mp4": {}}}})
    async def create_video_sync(self, request: Request) -> Response:
        owner = self._caller(request)
        job, generation = await self._accept(await _read_body(request, self.max_body), owner)
        if job.active:
            job = await self._generate(job.id, generation)
        if job.status != "completed":
            raise ApiError(500 if job.status == "failed" else 409, job.error.message if job.error else job.status,
                           code=job.error.code if job.error else job.status)
        return Response(self.store.read(video_key(job.id)), media_type="video/mp4", headers={"X-Video-Id": job.id})

    async def submit(self, fields: dict[str, Any], keep: bool = False) -> dict[str, Any]:
        """One request through the stages for callers inside the cluster (batch jobs): the
        same validation, job record, capacity and caches as `POST /v1/videos`. Returns the
        finished job record and its mp4 (the record is then deleted unless `keep`), or
        the HTTP status and OpenAI-shaped error that POST would have answered."""
        try:
            job, generation = await self._accept(fields)
        except ApiError as error:
            return {"status": error.status, **error.body(), "headers": error.headers or {}}
        if job.active:
            job = await self._generate(job.id, generation)
        mp4 = self.store.read(video_key(job.id)) if job.status == "completed" else None
        if not keep and not job.active:
            await self.jobs.delete.remote(job.id)
        return {"status": 200, "job": self._public(job), "mp4": mp4}

    async def _accept(self, fields: Any, owner: str | None = None) -> tuple[Job, GenerationRequest]:
        """Validate the body and record the job; 400 names the bad field, 503 when full.
        An identical earlier request's mp4 completes the job at once (result cache)."""
        body = parse_create_body(fields)
        generation = body.to_request(self.settings, self.model_id)
        matched = None
        if self.settings.cache.approximate_match and generation.cache and body.template is None and body.seed is None:
            name, similarity = await self.text_encoder.closest_template.remote(generation.prompt)
            if name is not None and similarity >= self.settings.cache.approximate_threshold:
                generation = generation.matched_to(self.settings.templates().get(name))
                matched = {"template": name, "similarity": round(similarity, 4)}
        steps = self.scheduler.plan(generation.num_inference_steps, self.checkpoint.boundary_ratio).num_steps
        cached, cache_levels = None, {}
        if self.cache is not None and generation.cache:
            cached = self.cache.get("result", result_key(self.checkpoint, generation))
            cache_levels = {"result": cached is not None}
        try:
            job = await self.jobs.create.remote(
                generation, self.model_id, steps, self.settings.serving.max_active_jobs, matched, owner, self.runner,
                cache_levels,
            )
        except QueueFull as full:
            retry = str(self.settings.serving.retry_after_seconds)
            raise ApiError(503, f"server busy: {full}", code="queue_full", headers={"Retry-After": retry})
        if cached is not None:
            self.store.write(video_key(job.id), cached["mp4"])
            await self.jobs.scored.remote(job.id, cached["physics"])
            job = await self.jobs.complete.remote(job.id)
        return job, generation

    async def _generate(self, job_id: str, request: GenerationRequest) -> Job:
        """Run one job through the stages; ends completed, failed or cancelled, whatever
        goes wrong (a job left active with nothing running it would hang forever)."""
        try:
            return await self._attempts(job_id, request)
        except Exception as error:  # the bookkeeping itself failed (e.g. the job store restarting)
            logger.exception("job %s: orchestration failed", job_id)
            return await self.jobs.fail.remote(job_id, "internal_error", error_summary(error))

    async def _attempts(self, job_id: str, request: GenerationRequest) -> Job:
        """The stages, re-run once more per `serving.job_retries` when a stage replica died
        under the job (Serve replaces it)."""
        for attempt in range(self.settings.serving.job_retries + 1):
            try:
                return await self._run_stages(job_id, request)
            except JobCancelled:
                return await self.jobs.get.remote(job_id)
            except Exception as error:
                job = await self.jobs.get.remote(job_id)
                stage = (job.stage if job else None) or "a stage"
                if _replica_died(error) and attempt < self.settings.serving.job_retries and job and job.active:
                    logger.warning("job %s: %s's replica died (%s); running it again",
                                   job_id, stage, error_summary(error))
                    try:
                        await self.jobs.retrying.remote(job_id)
                    except JobCancelled:  # cancelled (or timed out) meanwhile: that stands
                        return await self.jobs.get.remote(job_id)
                    continue
                logger.exception("job %s failed", job_id)
                code = "replica_died" if _replica_died(error) else "generation_failed"
                message = error_summary(error)
                if _replica_died(error):
                    message = f"{stage}'s replica died while running this job ({message}); retried {attempt} times"
                return await self.jobs.fail.remote(job_id, code, message)

    async def _run_stages(self, job_id: str, request: GenerationRequest) -> Job:
        # 1. Encode the prompt (and the negative prompt); a template request's
        #    high-noise phase sees its base prompt
        embeddings = self.text_encoder.encode.remote(job_id, request)
        high_embeddings = embeddings
        if request.template_mode:
            high_embeddings = self.text_encoder.encode.remote(job_id, request, base_prompt=True)
        # 2. High-noise phase: initial noise, layout and motion (shared by a template's
        #    requests: computed once, then read from the cache)
        boundary = self.high_noise_expert.denoise.remote(job_id, request, high_embeddings)
        # 3. Low-noise phase: detail (absent on Wan2.1-style checkpoints)
        state = boundary
        if self.low_noise_expert is not None:
            state = self.low_noise_expert.denoise.remote(job_id, request, embeddings, boundary)
        # 4. Decode, write the mp4 to the shared store, score its physics
        video = await self.decoder.decode.remote(job_id, request, state)
        # 5. Generate, verify, repair: below min_physics_score, re-sample the detail phase
        physics = await self._repair(job_id, request, embeddings, boundary, video)
        await self.jobs.scored.remote(job_id, physics)
        if self.cache is not None and request.cache:  # the next identical request gets it as is
            mp4 = self.store.read(video_key(job_id))
            self.cache.put("result", result_key(self.checkpoint, request), {"mp4": mp4, "physics": physics})
        return await self.jobs.complete.remote(job_id)

    async def _repair(self, job_id, request, embeddings, boundary, video: dict) -> dict:
        """Re-sample the low-noise phase with new seeds while the score is below the
        request's minimum; keep the best video. Returns its physics with every attempt."""
        best, attempts = video, [{"attempt": 0, "seed": request.seed, "score": video["physics"]["score"]}]
        low_steps = self.scheduler.plan(request.num_inference_steps, self.checkpoint.boundary_ratio).low_noise_steps
        for attempt in range(1, request.max_retries + 1):
            if self.low_noise_expert is None or best["physics"]["score"] >= (request.min_physics_score or 0):
                break
            seed = request.resample_seed(attempt)
            await self.jobs.add_steps.remote(job_id, len(low_steps))
            state = self.low_noise_expert.denoise.remote(job_id, request, embeddings, boundary, seed)
            candidate = await self.decoder.decode.remote(job_id, request, state, attempt)
            attempts.append({"attempt": attempt, "seed": seed, "score": candidate["physics"]["score"]})
            if candidate["physics"]["score"] > best["physics"]["score"]:
                best = candidate
        if best["key"] != video_key(job_id):
            self.store.write(video_key(job_id), self.store.read(best["key"]))
        for attempt in attempts[1:]:
            self.store.delete(video_key(job_id, attempt["attempt"]))
        return {**best["physics"], "attempts": attempts}

    # -- reading and managing jobs ------------------------------------------------------

    @api.get("/v1/videos/{video_id}", summary="Retrieve a video job")
    async def retrieve_video(self, video_id: str, request: Request) -> dict:
        return self._public(await self._job(video_id, self._caller(request)))

    @api.get("/v1/videos/{video_id}/content", summary="Download the mp4", response_class=Response,
             responses={200: {"content": {"video/mp4": {}}}})
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
        jobs, has_more = await self.jobs.list.remote(after, limit, order, self._caller(request))
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

    @api.get("/v1/models", summary="Models served")
    async def list_models(self, request: Request) -> dict:
        self._caller(request)
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "t2v-cluster"}]}

    # -- the playground: a static page on the public API ------------------------------------

    @api.get("/", include_in_schema=False)
    async def playground(self) -> FileResponse:
        return FileResponse(PLAYGROUND / "index.html", media_type="text/html")

    @api.get("/playground/{name}", include_in_schema=False)
    async def playground_asset(self, name: str) -> FileResponse:
        if name not in PLAYGROUND_ASSETS:  # a fixed set: no path reaches beyond the folder
            raise ApiError(404, f"no playground file {name!r}", code="not_found")
        return FileResponse(PLAYGROUND / name, media_type=PLAYGROUND_ASSETS[name])

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
            raise ApiError(401, "a valid API key is required: Authorization: Bearer <key>", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return digest[:32]

    async def _job(self, video_id: str, owner: str | None = None) -> Job:
        job = await self.jobs.get.remote(video_id) if valid_job_id(video_id) else None
        if job is None or job.owner != owner:  # another key's job does not exist for this one
            raise ApiError(404, f"no video with id {video_id!r}", "video_id", "video_not_found")
        return job

    @staticmethod
    def _public(job: Job) -> dict[str, Any]:
        return job.model_dump(exclude={"created", "owner", "runner", "stage_since"})
