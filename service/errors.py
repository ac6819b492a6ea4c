"""Errors of the service, each carrying the HTTP status the Open Inference Protocol gives it.

All are ``DytDeployError`` subclasses (the project's one exception family); the app turns any of
them into ``{"error": message}`` with :attr:`ServiceError.status`.
"""

from __future__ import annotations

from dyt_deploy.errors import DytDeployError


class ServiceError(DytDeployError):
    """A request the service refuses; ``status`` is the HTTP status (400 unless a subclass says)."""

    status: int = 400
    headers: dict[str, str] = {}


class BadRequest(ServiceError):
    """Malformed or invalid request: bad JSON, wrong names, shapes, datatypes, sizes (400)."""


class Unauthorized(ServiceError):
    """Missing or wrong API key (401)."""

    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    """Unknown model, version or family (404)."""

    status = 404


class Conflict(ServiceError):
    """The resource is busy with another request of the same kind (409)."""

    status = 409


class PayloadTooLarge(ServiceError):
    """Request body over the configured limit (413)."""

    status = 413


class DeadlineExceeded(ServiceError):
    """The request's own ``timeout`` parameter ran out before the model answered (504)."""

    status = 504


class Unavailable(ServiceError):
    """Model not ready, or the server is at its bound of requests in flight (503)."""

    status = 503

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}

    def __reduce__(self) -> tuple:
        """Pickled with its Retry-After (raised in a Ray replica, answered by the ingress)."""
        return type(self), (str(self), self.retry_after_s)
