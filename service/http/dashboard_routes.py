"""The service's own routes: the dashboard page, the latency comparison API, Prometheus /metrics."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import re
from collections.abc import Coroutine
from importlib import resources
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from dyt_deploy.bench.palette import palette_document

from ..errors import BadRequest, Conflict, NotFound
from ..protocol import oip
from ..protocol.schemas import ERROR_RESPONSES, CompareRequest
from ..telemetry import compare, examples
from .auth import require_api_key
from .state import StateDep

log = logging.getLogger("dyt_deploy.service")
router = APIRouter()
T = TypeVar("T")


@router.get("/", response_class=HTMLResponse, tags=["dashboard"])
async def dashboard() -> HTMLResponse:
    """The dashboard: live latency per variant, DyT/LN ratios, and the controlled comparison. Sent
    with a Content-Security-Policy that runs only its own inline script (by hash) and talks only to
    this server, and headers that forbid framing and content sniffing."""
    page = dashboard_page()
    return HTMLResponse(page, headers=security_headers(page))


@functools.cache
def dashboard_page() -> str:
    """dashboard.html with the plots' palette (dyt_deploy.bench.palette, the bench report's) in its
    ``application/json`` block, so the page and the report colour each variant alike."""
    page = resources.files("service.http").joinpath("dashboard.html").read_text(encoding="utf-8")
    return page.replace("{{PALETTE}}", json.dumps(palette_document()))


def security_headers(page: str) -> dict[str, str]:
    """CSP (the page's inline scripts allowed by their SHA-256), no framing, no sniffing, no referrer."""
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    policy = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
              "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer"}


@router.get("/api/live", tags=["comparison"])
async def live(state: StateDep) -> dict[str, Any]:
    """Per family: served-traffic percentiles (compute and end-to-end, ms) per variant, and each
    variant's ratio of medians to the baseline (LayerNorm, else RMSNorm) with a bootstrap interval;
    ``comparison_running`` names the family of a controlled comparison in progress (else null);
    ``comparisons``: when each family's last controlled comparison finished; ``examples``: the
    families with labelled examples (``GET /api/examples``)."""
    report = await anyio.to_thread.run_sync(compare.live_report, state.registry)
    report["comparison_running"] = state.comparisons.running
    report["comparisons"] = compare.comparison_index(state.comparisons.reports)
    report["examples"] = await anyio.to_thread.run_sync(examples.families_with_examples, state.registry)
    return report


@router.get("/api/examples", tags=["dashboard"])
async def labelled_examples(state: StateDep) -> dict[str, Any]:
    """Per family with labelled examples (``examples.npz`` in a model folder): the examples' pixels and
    labels, and each READY variant's predicted class, softmax confidence and latency on each, run one at
    a time through the served models' own runners (outside the traffic statistics)."""
    return await examples.examples_report(state.registry)


COMPARE_BODY = {"required": True, "content": {"application/json": {"schema": CompareRequest.model_json_schema()}}}


@router.post("/api/compare", tags=["comparison"], openapi_extra={"requestBody": COMPARE_BODY},
             responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[400]})
async def run_compare(request: Request, state: StateDep, _: None = Depends(require_api_key)) -> dict[str, Any]:
    """Controlled comparison: the family's ready variants timed on the same synthetic inputs,
    interleaved and rotated round by round (dyt-bench's method). One runs at a time (409 when busy);
    each timed call waits its turn on the model's worker like a request; it stops (and nothing is
    kept) when its client disconnects."""
    body = compare_request(await request.body())
    settings, comparisons = state.settings, state.comparisons
    if body.rounds > settings.compare_max_rounds:
        raise BadRequest(f"rounds {body.rounds} is over the limit of {settings.compare_max_rounds}")
    if body.dims.get("batch", 1) > settings.compare_max_batch:
        raise BadRequest(f"batch {body.dims['batch']} is over the comparison's limit of {settings.compare_max_batch}")
    models = compare.comparison_models(state.registry, body.family)
    compare.check_dims(models, body.dims, settings.compare_max_elements)
    if comparisons.lock.locked():
        raise Conflict("a comparison is already running; retry when it ends")
    async with comparisons.lock:
        comparisons.running = body.family
        try:
            report = await until_disconnected(request, compare.run_comparison(models, body.dims, body.rounds,
                                                                              body.warmup))
        finally:
            comparisons.running = None
    if report is None:
        log.info("comparison of %s stopped: its client disconnected", body.family)
        return {}
    comparisons.reports[body.family] = report
    return report


def compare_request(body: bytes) -> CompareRequest:
    """The comparison's JSON body, validated; every problem is one 400."""
    raw = oip.parse_json_header(body)
    try:
        return CompareRequest.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
        raise BadRequest(f"invalid comparison request: {problems}") from None


async def until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None when the client disconnects first (``work`` is then cancelled;
    a backend call under way finishes unseen)."""
    result: list[T] = []
    async with anyio.create_task_group() as group:

        async def run() -> None:
            result.append(await work)
            group.cancel_scope.cancel()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    return result[0] if result else None


@router.get("/api/compare/{family}", tags=["comparison"], responses=ERROR_RESPONSES)
async def last_compare(family: str, state: StateDep) -> dict[str, Any]:
    """The last controlled comparison of ``family`` (404 if none has run)."""
    report = state.comparisons.reports.get(family)
    if report is None:
        raise NotFound(f"no comparison of family {family!r} has run yet; POST /api/compare")
    return report


@router.get("/api/replicas", tags=["statistics"])
async def replicas(state: StateDep) -> dict[str, dict[str, int]]:
    """Per model, the requests answered (inferences and finished generations) by each process or,
    on Ray Serve, each replica (by its id)."""
    return {name: model.answered_by() for name, model in state.registry.models.items()}


@router.get("/metrics", tags=["metrics"], response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: request, queue and compute-time histograms by model, family and variant."""
    for model in state.registry.models.values():
        state.metrics.model_ready.labels(*model.labels).set(1.0 if model.ready else 0.0)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
