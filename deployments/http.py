"""The HTTP plumbing of the ingress: the FastAPI app, errors in OpenAI's shape, request
bodies read within a size limit, request metrics and the playground's static files.
The routes themselves are the `Ingress` deployment's methods (ingress.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract import nesting
from contract.errors import ApiError, RequestInvalid
from contract.request import VideoCreateBody
from monitoring.metrics import metrics

PLAYGROUND = Path(__file__).resolve().parent / "playground"


api = FastAPI(
    title="t2v-cluster",
    version="0.1.0",
    description="Text to video with a Wan2.2-style Mixture-of-Experts model, in the OpenAI videos API shape.",
)
api.mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")


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


@api.exception_handler(RequestInvalid)
async def _invalid(request: Request, error: RequestInvalid) -> JSONResponse:
    return await _api_error(request, ApiError.invalid(error))


# Every error in the same OpenAI shape, also FastAPI's own (unknown path, bad query).
@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if error.status_code == 404 else "http_error"
    return await _api_error(request, ApiError(error.status_code, str(error.detail), code=code, headers=error.headers))


@api.exception_handler(RequestValidationError)
async def _query_error(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = [{"field": str(e["loc"][-1]), "message": e["msg"]} for e in error.errors()]
    return await _api_error(request, ApiError.invalid(RequestInvalid(errors)))


def form_fields(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """A form's fields as the JSON body they stand for, decoded the way the openai SDK encodes
    `extra_body`: `slots[product]=x` is a dict, `lora[][name]=a&lora[][scale]=1` a list of dicts
    (a key seen again starts the next one); files are ignored."""
    fields: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(value, str):
            continue
        name, _, rest = key.partition("[")
        if not rest.endswith("]"):
            fields[key] = value
        elif rest.startswith("]["):
            entries = fields.get(name)
            if not isinstance(entries, list):
                entries = fields[name] = []
            sub = rest[2:-1]
            if not entries or not isinstance(entries[-1], dict) or sub in entries[-1]:
                entries.append({})
            entries[-1][sub] = value
        elif rest == "]":
            entries = fields.get(name)
            fields[name] = [*entries, value] if isinstance(entries, list) else [value]
        else:
            entries = fields.get(name)
            fields[name] = {**(entries if isinstance(entries, dict) else {}), rest[:-1]: value}
    return fields


async def read_body(request: Request, limit: int) -> Any:
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
        return form_fields((await request.form()).multi_items())
    try:
        return nesting.loads(request._body)
    except nesting.TooDeep as error:
        raise ApiError(400, f"request body is {error}", "body") from None
    except ValueError:
        raise ApiError(400, "request body is not valid JSON", "body") from None


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` written in place: in an OpenAPI document a `$ref` resolves against
    the whole document, where pydantic's `#/$defs/...` do not exist."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node

    return resolve(schema)


# The create routes read their body by hand (size limit, JSON or form): OpenAPI learns its schema here.
CREATE_SCHEMA = inlined(VideoCreateBody.model_json_schema(by_alias=False))
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media: {"schema": CREATE_SCHEMA}
            for media in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
        },
    }
}

# `POST /v1/videos/{id}/finalize`: an optional body of what a final may set besides its shot.
FINALIZE_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        name: CREATE_SCHEMA["properties"][name]
                        for name in ("preset", "size", "num_inference_steps", "cache", "lora")
                    },
                }
            }
        },
    }
}
