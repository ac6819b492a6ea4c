"""INT8 without calibration data: DyT's bounded activations give static scales from the graph alone.

After DyT's gamma/beta are folded into the next linear layer, that layer's input is
``tanh(alpha * x)`` in [-1, 1]: its INT8 scale is 1/127 with zero point 0, no data needed. A
LayerNorm's output range depends on the data (calibration, or ranges measured per call).

Modules:

- ``sites``: the linear layers of an ONNX graph and where each one's input range comes from;
- ``plan``: how each input is quantized (fixed, calibrated, dynamic, float), and what it refuses;
- ``calibration``: the ``--calibration FILE.npz`` samples, checked against the model's inputs;
- ``qdq``: the INT8 ONNX model with ``onnxruntime.quantization`` (QDQ, per-channel weights);
- ``openvino``: the INT8 IR (NNCF weight compression) and what OpenVINO runs in INT8;
- ``source``: the fp32 model (a checkpoint exported and folded, or an .onnx) and its reference;
- ``verify``: the INT8 verdict (cosine on seeded inputs, agreement and accuracy on held-out data);
- ``api``: ``quantize_model``, the whole path to a written file or model folder;
- ``cli``: ``dyt quantize``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Int8VerificationFailed", "QuantizeOptions", "QuantizeResult", "quantize_model"]


def __getattr__(name: str) -> Any:
    """The API, imported on first use (onnxruntime.quantization and torch load then)."""
    if name == "QuantizeOptions":
        from .config import QuantizeOptions

        return QuantizeOptions
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
