"""The service's own routes: the dashboard page, the latency comparison API, Prometheus /metrics."""

from __future__ import annotations

from importlib import resources
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Response
from fastapi.responses import HTMLResponse

from . import compare
from .auth import require_api_key
from .errors import BadRequest, Conflict, NotFound
from .schemas import ERROR_RESPONSES, CompareRequest
from .state import StateDep

router = APIRouter()


@router.get("/", response_class=HTMLResponse, tags=["dashboard"])
async def dashboard() -> HTMLResponse:
    """The dashboard: live latency per variant, DyT/LN ratios, and the controlled comparison."""
    return HTMLResponse(resources.files("service").joinpath("dashboard.html").read_text(encoding="utf-8"))


@router.get("/api/live", tags=["comparison"])
async def live(state: StateDep) -> dict[str, Any]:
    """Per family: served-traffic percentiles (compute and end-to-end, ms) per variant, and each
    variant's ratio of medians to the baseline (LayerNorm, else RMSNorm) with a bootstrap interval;
    ``comparison_running`` names the family of a controlled comparison in progress (else null)."""
    report = await anyio.to_thread.run_sync(compare.live_report, state.registry)
    report["comparison_running"] = state.comparisons.running
    return report


@router.post("/api/compare", tags=["comparison"], responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[400]})
async def run_compare(body: CompareRequest, state: StateDep, _: None = Depends(require_api_key)) -> dict[str, Any]:
    """Controlled comparison: the family's ready variants timed on the same synthetic inputs,
    interleaved and rotated round by round (dyt-bench's method). One runs at a time (409 when busy);
    each timed call waits its turn on the model's worker like a request."""
    settings, comparisons = state.settings, state.comparisons
    if body.rounds > settings.compare_max_rounds:
        raise BadRequest(f"rounds {body.rounds} is over the limit of {settings.compare_max_rounds}")
    models = compare.comparison_models(state.registry, body.family)
    compare.check_dims(models, body.dims, settings.compare_max_elements)
    if comparisons.lock.locked():
        raise Conflict("a comparison is already running; retry when it ends")
    async with comparisons.lock:
        comparisons.running = body.family
        try:
            report = await compare.run_comparison(models, body.dims, body.rounds, body.warmup)
        finally:
            comparisons.running = None
    comparisons.reports[body.family] = report
    return report


@router.get("/api/compare/{family}", tags=["comparison"], responses=ERROR_RESPONSES)
async def last_compare(family: str, state: StateDep) -> dict[str, Any]:
    """The last controlled comparison of ``family`` (404 if none has run)."""
    report = state.comparisons.reports.get(family)
    if report is None:
        raise NotFound(f"no comparison of family {family!r} has run yet; POST /api/compare")
    return report


@router.get("/metrics", tags=["metrics"], response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: request, queue and compute-time histograms by model, family and variant."""
    for model in state.registry.models.values():
        state.metrics.model_ready.labels(*model.labels).set(1.0 if model.ready else 0.0)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
