"""Errors that name what is wrong, and the one way to print them (HTTP, CLI, batch rows)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError


class FieldError(ValueError):
    """Bad input in `field` (e.g. "slots.product"); pydantic's own loc can't say it after the fact.
    `code` is the API error code when it is more specific than "invalid_request"."""

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.code = field, message, code

    def __reduce__(self):  # crosses Ray's process boundaries intact
        return (type(self), (self.field, self.message, self.code))


def describe_errors(error: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as `{field, message}` pairs (plus `code` when a check has a more
    specific one than invalid input)."""
    described = []
    for e in error.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):  # it knows the field (e.g. a template slot) better than loc
            described.append(
                {"field": cause.field, "message": cause.message, **({"code": cause.code} if cause.code else {})}
            )
        else:
            field = ".".join(str(p) for p in e["loc"]) or "request"
            described.append({"field": field, "message": e["msg"].removeprefix("Value error, ")})
    return described


def join_errors(errors: list[dict[str, str]]) -> str:
    """`field: message; field: message`: the one-line form of a list of field errors."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


class RequestInvalid(ValueError):
    """A request that failed validation: every problem, each naming its field."""

    def __init__(self, errors: list[dict[str, str]]):
        super().__init__(join_errors(errors))
        self.errors = errors

    @classmethod
    def from_validation(cls, error: ValidationError) -> RequestInvalid:
        return cls(describe_errors(error))

    @classmethod
    def of(cls, field: str, message: str, code: str | None = None) -> RequestInvalid:
        return cls([{"field": field, "message": message, **({"code": code} if code else {})}])

    @property
    def message(self) -> str:
        return str(self)

    @property
    def field(self) -> str | None:
        return self.errors[0]["field"] if self.errors else None

    @property
    def code(self) -> str:
        """The most specific code among the errors (e.g. content_policy_violation)."""
        return next((e["code"] for e in self.errors if "code" in e), "invalid_request")

    def __reduce__(self):
        return (type(self), (self.errors,))


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str = "invalid_request",
        headers: dict[str, str] | None = None,
        errors: list[dict] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers, self.errors = headers, errors

    @classmethod
    def invalid(cls, error: RequestInvalid) -> ApiError:
        return cls(400, error.message, error.field, error.code, errors=error.errors)

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body: dict[str, Any] = {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }
        if self.errors:
            body["error"]["errors"] = self.errors
        return body


def error_summary(error: BaseException) -> str:
    """The root cause's one-line message, without Ray's wrapping traceback (job errors, batch rows)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


# What a client must not read in an error: where the service keeps its files and objects.
_URI = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_PATH = re.compile(r"(?<![\w.~-])(?:~|\.{1,2})?/(?:[^\s'\"/]+/)*[^\s'\"/]+")


def public_error(error: BaseException) -> str:
    """`error_summary` as a client may read it: URIs (buckets, keys) and filesystem paths
    replaced by <uri> and <path>. The log keeps the whole message."""
    return _PATH.sub("<path>", _URI.sub("<uri>", error_summary(error)))
