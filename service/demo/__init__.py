"""``make demo``: the trained DyT and LayerNorm twins from checkpoint to served models (``run``:
train or reuse, export, serve, check, keep serving with the dashboard) and the checks it runs on the
served repository (``checks``: every model queried with tritonclient, JSON and binary agreeing, the
live view and a controlled comparison). ``python -m service.demo`` is ``make demo``.

The top layer of service/ beside the command line: it may import anything in dyt_deploy and service.
"""
