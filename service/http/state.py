"""The service's shared state, one typed object per app, reached by routes through a FastAPI
dependency (``state: StateDep``), as FastAPI's project template does with its session."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from ..models.registry import ModelRegistry
from ..settings import Settings
from ..telemetry.metrics import ServiceMetrics

ModelsFactory = Callable[[Settings, ServiceMetrics], ModelRegistry]
"""Makes an app's model backend from its settings and metrics (see service.models.registry)."""


@dataclass
class Comparisons:
    """Controlled comparisons: one runs at a time (``lock``); ``running`` names its family; the last
    report of each family is kept."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    running: str | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ServiceState:
    """What every route may need: the settings, the models, the metrics, the comparisons."""

    settings: Settings
    registry: ModelRegistry
    metrics: ServiceMetrics
    comparisons: Comparisons = field(default_factory=Comparisons)

    @classmethod
    def create(cls, settings: Settings, models: ModelsFactory | None = None) -> ServiceState:
        """The state of a new app: its models (by default the repository's, discovered, not loaded yet)."""
        metrics = ServiceMetrics()
        return cls(settings, (models or ModelRegistry)(settings, metrics), metrics)


def get_state_of(request: Request) -> ServiceState:
    """The app's state (set by :func:`service.http.app.create_app`)."""
    return request.app.state.service


async def get_state(request: Request) -> ServiceState:
    """The app's state as a route dependency. A coroutine, as every dependency here: FastAPI runs a
    plain ``def`` dependency in its thread pool, a thread hop per request."""
    return get_state_of(request)


StateDep = Annotated[ServiceState, Depends(get_state)]
