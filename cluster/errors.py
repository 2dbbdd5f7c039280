"""Errors that name the request field at fault, wherever they are raised."""


class FieldError(ValueError):
    """Bad input in `field` (e.g. "slots.product"); pydantic's own loc can't say it after the fact.
    `code` is the API error code when it is more specific than "invalid_request"."""

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.code = field, message, code


def error_summary(error: BaseException) -> str:
    """The root cause's one-line message, without Ray's wrapping traceback (job errors, batch rows)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]
