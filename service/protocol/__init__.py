"""Wire formats, pure: the Open Inference Protocol v2 codec and signature checks (``oip``), the
pydantic schemas the OpenAPI document shows (``schemas``), and the generate extension's request
fields and server-sent events (``generate``).

May import: service.errors, service.settings (and numpy, pydantic, msgspec). No model, no app, no I/O.
"""
