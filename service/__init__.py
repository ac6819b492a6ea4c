"""The dyt-deploy inference service (Open Inference Protocol v2 over FastAPI).

``create_app(repository, settings)`` (service.app) serves a model repository; ``dyt-serve``
(service.cli:main) runs it with uvicorn. Routes:

* OIP v2: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{m}[/versions/{v}]``, ``.../ready``, ``.../config``, ``.../stats``,
  ``POST .../infer`` (JSON tensors and Triton's binary tensor extension), ``GET /v2/models/stats``,
  ``POST /v2/repository/index``.
* Latency comparison: ``GET /`` (dashboard), ``GET /api/live``, ``POST /api/compare``,
  ``GET /api/compare/{family}``.
* ``GET /metrics`` (Prometheus), ``GET /openapi.json``.

Modules: protocol (codec, pure), models (repository -> runners, readiness, workers), batching,
stats, compare, metrics, middleware (body limit, in-flight bound, timeouts), auth, schemas
(OpenAPI), routes_v2 / routes_extra, background (uvicorn in a thread), demo, cli.
"""
