"""The OpenVINO INT8 model (IR) and what OpenVINO's CPU plugin really runs in INT8.

The IR is converted from the static QDQ model (onnxruntime's dynamic ops would be decomposed into
slow float arithmetic): OpenVINO turns each QuantizeLinear into a FakeQuantize and its low-precision
transformations make the MatMul behind it an INT8 FullyConnected. With ``--activations dynamic``,
the other linear layers' weights are compressed to int8 by NNCF (``compress_weights``, INT8_SYM,
per output channel, no data); OpenVINO's CPU plugin then quantizes their activations per call
where the CPU has VNNI (``DYNAMIC_QUANTIZATION_GROUP_SIZE``), and computes in float elsewhere.

:func:`int8_layers` reads the compiled model's runtime graph: per FullyConnected node its
``runtimePrecision`` and ``primitiveType`` (an ``_i8`` suffix: INT8 compute; i8 weights with an
``_f32``/``_bf16`` primitive: int8 weights decompressed into float compute).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DytDeployError, first_line

INT8_COMPUTE, INT8_WEIGHTS, FLOAT = "int8", "int8 weights, float compute", "float"


def write_ir(static_onnx: Path, xml: Path, compress_rest: bool) -> dict[str, Any]:
    """IR (``xml`` + ``.bin``) from the static QDQ ONNX; NNCF int8 weights for the float linear
    layers when ``compress_rest``. Returns what was done, for the manifest."""
    import openvino as ov

    from ..runners.openvino_runner import read_model

    core = ov.Core()
    model = read_model(core, static_onnx)
    done: dict[str, Any] = {"source": "static QDQ ONNX", "weight_compression": None}
    if compress_rest:
        done["weight_compression"] = _compress_weights(model)
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return done


def _compress_weights(model: Any) -> str:
    import contextlib
    import io
    import logging

    try:
        import nncf
    except ImportError:
        raise DytDeployError("nncf is not installed: pip install nncf (dyt-deploy installs it beside openvino)") \
            from None
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bar, not the command's output
            nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    except Exception as err:  # NNCF raises its own types; all mean "could not compress"
        raise DytDeployError(f"NNCF weight compression failed: {first_line(err)}") from None
    return "nncf INT8_SYM per-channel (activations quantized per call by OpenVINO where the CPU has VNNI)"


def int8_layers(compiled: Any) -> dict[str, int]:
    """FullyConnected/MatMul nodes of a compiled model by what they compute in: :data:`INT8_COMPUTE`,
    :data:`INT8_WEIGHTS` or :data:`FLOAT`."""
    found: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer not in ("FullyConnected", "MatMul"):
            continue
        primitive = info["primitiveType"].astype(str).lower()
        precision = info["runtimePrecision"].astype(str).lower()
        if primitive.endswith(("_i8", "_u8")):
            found[INT8_COMPUTE] += 1
        elif precision in ("i8", "u8"):
            found[INT8_WEIGHTS] += 1
        else:
            found[FLOAT] += 1
    return dict(found)


def runtime_report(path: Path, threads: int = 1) -> dict[str, Any]:
    """What OpenVINO's CPU plugin runs for the model at ``path`` (fp32 inference precision): its
    linear layers by compute precision, the dynamic-quantization group size, and the CPU's
    capabilities (INT8 pays most with VNNI: ``avx512_vnni``/``avx_vnni`` in the CPU flags)."""
    import openvino as ov

    from ..runners.openvino_runner import DEVICE, cpu_capabilities, read_model

    core = ov.Core()
    compiled = core.compile_model(read_model(core, path), DEVICE,
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    return {"linear_layers": int8_layers(compiled),
            "dynamic_quantization_group_size": int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")),
            "capabilities": cpu_capabilities(core), "vnni": cpu_has_vnni()}


def cpu_has_vnni() -> bool | None:
    """Whether the CPU advertises VNNI (int8 dot products); None where /proc/cpuinfo is not readable."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
