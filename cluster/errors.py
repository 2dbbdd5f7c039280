"""Errors that name the request field at fault, wherever they are raised."""


class FieldError(ValueError):
    """Bad input in `field` (e.g. "slots.product"); pydantic's own loc can't say it after the fact."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message
