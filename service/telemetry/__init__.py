"""What the service measures and reports: Triton-style statistics per model (``stats``),
generation statistics (``generation_stats``), Prometheus metrics (``metrics``), the live and
controlled DyT-vs-LayerNorm comparisons (``compare``) and the labelled examples the dashboard shows
(``examples``).

May import: service.errors, service.settings, service.protocol, and dyt_deploy.bench's statistics.
Models are passed in (imported for type hints only).
"""
