"""The HTTP layer: the one FastAPI app (``app.create_app``) that both engines serve, its routes
(``oip_routes``: the Open Inference Protocol v2; ``generate_routes``: Triton's generate extension;
``dashboard_routes``: the dashboard, the latency comparison API, /metrics), the middleware in front
of them (``auth`` and ``admission``: the API key and the body gate; ``middleware``: in-flight bound,
processing timeout), the app's shared state (``state``) and the dashboard page.

May import: service.errors, service.settings, service.protocol, service.telemetry, service.models.
Nothing here knows which engine (uvicorn or Ray Serve) runs the app.
"""
