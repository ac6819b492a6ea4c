"""Suite-wide setup.

Without a CUDA device, Triton's kernels run through its CPU interpreter. ``TRITON_INTERPRET``
must be set before ``triton.jit`` first runs, i.e. before any test imports
``dyt_deploy.kernels.triton_dyt``, so it is set here, at the root.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
