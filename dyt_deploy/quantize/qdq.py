"""The INT8 ONNX model (QDQ, per-channel int8 weights) made with ``onnxruntime.quantization``.

Two passes over the fp32 model:

1. ``quantize_static`` (QDQ) on the layers of the plan that are static: the DyT-fed ones get their
   scale through ``TensorQuantOverrides`` (scale = bound/127, zero point 0), and without a
   calibration file no data runs at all: onnxruntime's calibration cache (``calibration_cache_path``)
   is written here with the same bounds, the one way its ``quantize_static`` accepts no data
   reader (an override with a scale still needs a cache entry; the cached range is then unused).
   With ``--activations static`` the calibration file's ranges give the other layers' scales and
   the overrides still fix the DyT-fed ones. Weights are int8, symmetric, per output channel
   (axis 1 of MatMul's B); the MatMul outputs are not quantized, so onnxruntime fuses each
   DQ -> MatMul into ``MatMulIntegerToFloat``.
2. ``quantize_dynamic`` on the plan's dynamic layers (``DynamicQuantizeMatMul`` after fusion).

The static-only model of pass 1 is also what OpenVINO gets (``quantize.openvino``): OpenVINO
decomposes onnxruntime's dynamic ops into slow float arithmetic.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from ..check_data import CheckData
from ..errors import DytDeployError, first_line
from ..runners.onnxruntime_runner import QDQ_DISABLED_OPTIMIZERS
from .plan import Plan

# Why weights default to 7 bits (onnxruntime's reduce_range): on x86 CPUs without VNNI (AVX2, AVX-512
# before VNNI) onnxruntime's u8 x s8 kernels add pairs of products in 16 bits with saturation;
# 255 * 127 * 2 overflows it. Measured on the DyT digit twin (AVX2 AMD EPYC): top-1 agreement with fp32
# 98.6% with 8-bit weights, 99.7% with 7-bit; a PyTorch simulation of the same INT8 arithmetic without
# saturation: 100%. 7-bit weights run correctly on every CPU; --full-range-weights is for VNNI-only fleets.
REDUCE_RANGE_WHY = "7-bit weights: u8 x s8 pairs cannot saturate 16-bit sums on x86 CPUs without VNNI"


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger: muted here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def calibration_cache(plan: Plan, path: Path) -> Path:
    """onnxruntime's MinMax calibration cache with the graph-given range of each fixed input."""
    data = {site.input: {"lowest": -site.bound, "highest": site.bound, "CLS": "TensorData"}
            for site in plan.fixed_sites()}
    cache = {"CLS": "TensorsData", "calibration_method": {"CLS": "CalibrationMethod",
                                                          "value": "CalibrationMethod.MinMax"}, "data": data}
    path.write_text(json.dumps(cache))
    return path


def fixed_overrides(plan: Plan) -> dict[str, list[dict]]:
    """``TensorQuantOverrides``: each fixed input at scale bound/127, int8 zero point 0 (0-d arrays,
    as onnxruntime requires)."""
    return {site.input: [{"scale": np.array(site.scale, np.float32), "zero_point": np.array(0, np.int8)}]
            for site in plan.fixed_sites()}


def quantize_static_part(fp32: Path, target: Path, plan: Plan, calibration: CheckData | None,
                         reduce_range: bool = True) -> bool:
    """Pass 1 into ``target``: the plan's static layers; False (``target`` untouched) when it has none.
    ``reduce_range``: 7-bit weights (see :data:`REDUCE_RANGE_WHY`)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from .calibration import NpzDataReader

    nodes = plan.nodes("static-fixed") + plan.nodes("static-calibrated")
    if not nodes:
        return False
    with tempfile.TemporaryDirectory(prefix="dyt-quantize-") as tmp, _quiet():
        reader = NpzDataReader(calibration) if plan.needs_data and calibration is not None else None
        cache = None if reader is not None else calibration_cache(plan, Path(tmp) / "ranges.json")
        options = {"TensorQuantOverrides": fixed_overrides(plan), "OpTypesToExcludeOutputQuantization": ["MatMul"],
                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
        try:
            quantize_static(fp32, target, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            nodes_to_quantize=nodes, per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, extra_options=options,
                            calibration_cache_path=cache)
        except Exception as err:  # onnxruntime raises ValueError/RuntimeError/KeyError with its own words
            raise DytDeployError(f"onnxruntime static quantization failed: {first_line(err)}") from None
    return True


def quantize_dynamic_part(source: Path, target: Path, plan: Plan, reduce_range: bool = True) -> bool:
    """Pass 2 into ``target``: the plan's dynamic layers; False (``target`` untouched) when it has none."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = plan.nodes("dynamic")
    if not nodes:
        return False
    try:
        with _quiet():
            quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                             per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
    except Exception as err:  # as above
        raise DytDeployError(f"onnxruntime dynamic quantization failed: {first_line(err)}") from None
    return True


def op_counts(path: Path) -> dict[str, int]:
    """Operator counts of an ONNX file (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, ...)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def fused_int8_ops(path: Path, threads: int = 1) -> dict[str, int]:
    """What onnxruntime (CPU, all optimizations) runs after fusing the QDQ model: the count of its
    INT8 kernels (MatMulIntegerToFloat, DynamicQuantizeMatMul, QLinearMatMul, QGemm) and of MatMul/Gemm
    left in float."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dyt-quantize-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(QDQ_DISABLED_OPTIMIZERS))
        ops = op_counts(Path(options.optimized_model_filepath))
    wanted = ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm", "MatMulInteger",
              "MatMul", "Gemm", "FusedMatMul")
    return {op: ops[op] for op in wanted if ops.get(op)}
