"""The optional API key. :class:`service.http.admission.ApiKeyGate` enforces it on every route but the
health probes (before any body is read); :func:`require_api_key` is the same check as a FastAPI
dependency, which also shows the key's two header forms in the OpenAPI document."""

from __future__ import annotations

import secrets

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ..errors import Unauthorized
from .state import StateDep

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <the server's --api-key>")

MISSING_KEY = "this route needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


def key_problem(given: str | None, expected: str | None) -> str | None:
    """Why a request with key ``given`` is refused (None: it passes, or the server has no key)."""
    if expected is None:
        return None
    if given is None:
        return MISSING_KEY
    if not secrets.compare_digest(given.encode(), expected.encode()):
        return "wrong API key"
    return None


async def require_api_key(state: StateDep, header_key: str | None = Depends(_api_key_header),
                          bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Pass when the server has no key, or the request carries it (X-API-Key or Bearer); else 401.
    (A coroutine: FastAPI would run a plain function in its thread pool, a thread hop per request.)"""
    problem = key_problem(header_key or (bearer.credentials if bearer is not None else None), state.settings.api_key)
    if problem is not None:
        raise Unauthorized(problem)
