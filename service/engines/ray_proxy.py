"""Ray's HTTP proxy, made to answer as dyt-serve does: :func:`proxy_middlewares` is Ray's proxy
callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, run in the proxy process before it serves);
:func:`ray_environment` is what Ray's processes need to find it.
"""

from __future__ import annotations

import os
from typing import Any

from ..settings import SETTINGS_ENV, Settings

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
# a client could lift Ray's request time-out or its cancellation on disconnect with these
EDGE_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})



class EdgeHeaders:
    """Drops the request headers with which a client could lift Ray's request time-out or its
    cancellation when the client leaves (``x-request-timeout-seconds``,
    ``x-request-disconnect-disabled``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(k in EDGE_HEADERS for k, _ in scope["headers"]):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k not in EDGE_HEADERS]}
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Any]:
    """Ray's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, run in the proxy
    process before it serves): the API key of ``$DYT_SERVE_SETTINGS`` checked before Ray's own
    routes as before the app's (health probes open), the edge headers dropped, and dyt-serve's HTTP
    parser (JSON 400 for malformed HTTP, 431 for heads over 64 KiB) for the proxy's server."""
    import uvicorn.config
    from starlette.middleware import Middleware

    from ..http.admission import ApiKeyGate
    from . import uvicorn as engine

    if engine.HttpToolsProtocol is not None:  # the proxy's server takes uvicorn's "auto" protocol
        uvicorn.config.HTTP_PROTOCOLS["auto"] = "service.engines.uvicorn:BoundedHttpToolsProtocol"
    text = os.environ.get(SETTINGS_ENV)
    settings = Settings.from_json(text) if text else Settings()
    return [Middleware(ApiKeyGate, api_key=settings.api_key, public_metrics=settings.public_metrics),
            Middleware(EdgeHeaders)]


def ray_environment(settings: Settings) -> dict[str, str]:
    """The environment Ray's processes need (set before Ray starts: its processes inherit it): the
    proxy callback and the settings it reads."""
    return {PROXY_CALLBACK_ENV: "service.engines.ray_proxy:proxy_middlewares", SETTINGS_ENV: settings.to_json()}


