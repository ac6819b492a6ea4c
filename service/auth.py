"""Optional API key for the inference and comparison routes."""

from __future__ import annotations

import secrets

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import Unauthorized
from .state import StateDep

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <the server's --api-key>")


def require_api_key(state: StateDep, header_key: str | None = Depends(_api_key_header),
                    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Pass when the server has no key, or the request carries it (X-API-Key or Bearer); else 401."""
    expected = state.settings.api_key
    if expected is None:
        return
    given = header_key or (bearer.credentials if bearer is not None else None)
    if given is None:
        raise Unauthorized("this route needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("wrong API key")
