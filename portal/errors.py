"""The one exception tree. Handlers map these to HTTP status in one place (`portal.api.errors`)."""

from __future__ import annotations


class KaidenError(Exception):
    """Base of every error Kaiden raises on purpose; `message` is safe to show a user."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, fields: dict[str, str] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class ValidationError(KaidenError):
    status = 422
    code = "validation_error"


class BadRequest(KaidenError):
    status = 400
    code = "bad_request"


class Unauthorized(KaidenError):
    status = 401
    code = "unauthorized"


class PermissionDenied(KaidenError):
    status = 403
    code = "forbidden"


class NotFound(KaidenError):
    status = 404
    code = "not_found"


class ConflictError(KaidenError):
    status = 409
    code = "conflict"


class InfrastructureError(KaidenError):
    status = 502
    code = "infrastructure_error"
