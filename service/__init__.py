"""The dyt-deploy inference service (Open Inference Protocol v2 over FastAPI).

``create_app(repository, settings)`` (service.app) serves a model repository; ``dyt-serve``
(service.cli:main, also ``dyt serve``) runs it with uvicorn. Routes:

* OIP v2: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{m}[/versions/{v}]``, ``.../ready``, ``.../config``, ``.../stats``,
  ``POST .../infer`` (JSON tensors and Triton's binary tensor extension), ``GET /v2/models/stats``,
  ``POST /v2/repository/index``.
* Latency comparison: ``GET /`` (dashboard), ``GET /api/live``, ``POST /api/compare``,
  ``GET /api/compare/{family}``.
* ``GET /metrics`` (Prometheus), ``GET /openapi.json``.

Modules: schemas (pydantic: the inference request it validates, the OpenAPI models), protocol
(codec and signature checks, pure), settings (pydantic-settings, DYT_*), served_model (one model:
loading, metadata, the request path ``handle``), worker (its runner on its own thread),
registry (the repository's models), model_config (config.pbtxt via Triton's ModelConfig), state
(the app's shared state, ``StateDep``), batching, stats, compare, metrics, admission (the API key
before any body is read; whole bodies on a deadline, body-read slots, size limits, bytes in flight),
middleware (in-flight bound, processing timeout), auth, routes_v2 / routes_extra, background (the
uvicorn server dyt-serve runs, and the same in a thread), demo, cli (Typer: ``dyt-serve`` /
``dyt serve``).
"""
