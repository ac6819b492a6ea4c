"""Latency benchmarks: DyT vs LayerNorm vs RMSNorm variants of one model (see ``stats``)."""
