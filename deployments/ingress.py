"""The `Ingress` Serve deployment: the OpenAI-shaped videos API in front of the stages.

The routes authenticate the caller and hand the request to the replica's job service
(job_service.py: admission, the run through the stage list, how it ended; no HTTP there).
HTTP plumbing (errors, bodies, the OpenAPI schema) lives in http.py.
"""

# No `from __future__ import annotations`: Serve's class-based routes need real annotations.
import asyncio
import hashlib
import hmac
from typing import Any

from fastapi import Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.errors import ApiError, RequestInvalid
from contract.jobs import Job, video_key
from contract.settings import Settings
from deployments.http import CREATE_BODY, FINALIZE_BODY, PLAYGROUND, api, read_body
from deployments.job_service import JobService


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
        interactive_high_noise: DeploymentHandle | None = None,
        interactive_low_noise: DeploymentHandle | None = None,
    ):
        """`interactive_*`: the interactive pool's experts (settings `interactive`), or None."""
        settings.serving.check_open_access(proxy_host(settings.serving.host))
        self.settings, self.jobs = settings, jobs
        self.service = JobService(
            settings,
            serve.get_replica_context().replica_id.unique_id,
            jobs,
            text_encoder,
            high_noise_expert,
            low_noise_expert,
            decoder,
            interactive_high_noise,
            interactive_low_noise,
        )
        self.model_id, self.store = self.service.model_id, self.service.store
        self.api_keys = [hashlib.sha256(k.encode()).hexdigest() for k in settings.serving.api_keys]
        self.max_body = settings.serving.max_body_bytes

    async def __del__(self) -> None:
        await self.service.drain()

    # -- creating jobs -------------------------------------------------------------------

    @api.post("/v1/videos", status_code=202, openapi_extra=CREATE_BODY, summary="Create a video job")
    async def create_video(self, request: Request) -> JSONResponse:
        owner = self._caller(request)
        job, _ = await asyncio.shield(self.service.start(await read_body(request, self.max_body), owner))
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
        job = await self.service.finished(await read_body(request, self.max_body), owner)
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
        job, _ = await asyncio.shield(self.service.start({**fields, "from": video_id}, owner))
        return JSONResponse(self._public(job), status_code=202)

    async def submit(self, fields: dict[str, Any], keep: bool = False) -> dict[str, Any]:
        """One request through the stages for callers inside the cluster (batch jobs): the
        same validation, job record, capacity and caches as `POST /v1/videos`. Returns the
        finished job record and its mp4 (the record is then deleted unless `keep`), or
        the HTTP status and OpenAI-shaped error that POST would have answered."""
        try:
            job = await self.service.finished(fields)
        except (ApiError, RequestInvalid) as error:
            error = ApiError.invalid(error) if isinstance(error, RequestInvalid) else error
            return {"status": error.status, **error.body(), "headers": error.headers or {}}
        mp4 = self.store.read(video_key(job.id)) if job.status == "completed" else None
        if not keep and not job.active:
            await self.jobs.delete.remote(job.id)
        return {"status": 200, "job": self._public(job), "mp4": mp4}

    # -- reading and managing jobs ------------------------------------------------------

    @api.get("/v1/videos/{video_id}", summary="Retrieve a video job")
    async def retrieve_video(self, video_id: str, request: Request) -> dict:
        return self._public(await self.service.job(video_id, self._caller(request)))

    @api.get(
        "/v1/videos/{video_id}/content",
        summary="Download the mp4",
        response_class=Response,
        responses={200: {"content": {"video/mp4": {}}}},
    )
    async def video_content(self, video_id: str, request: Request, variant: str = "video") -> Response:
        job = await self.service.job(video_id, self._caller(request))
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
        job = await self.service.job(video_id, self._caller(request))
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
        listing = await asyncio.to_thread(self.service.validator.adapters.listing)  # may read an object store
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

    @staticmethod
    def _public(job: Job) -> dict[str, Any]:
        return job.model_dump(mode="json", exclude={"created", "owner", "runner", "stage_since"})
