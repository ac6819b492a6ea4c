#!/usr/bin/env bash
# GPU checks: the gpu/tensorrt-marked tests and the GPU runner conformance, on a host with a CUDA
# GPU. Uses the Python environment it is started in (PYTHON, default python3), which must already
# have torch with CUDA; the project is installed into it without touching torch.
#   scripts/gpu_check.sh            # writes gpu-check/ with the pytest log and the device facts
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
"$PYTHON" -m pip install --quiet --no-deps -e . >/dev/null
"$PYTHON" -m pip install --quiet typer rich onnxscript onnx-ir pytest >/dev/null 2>&1 || true
"$PYTHON" - <<'PY' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for mod in ("onnxruntime", "tensorrt", "triton"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"), getattr(m, "get_available_providers", lambda: "")())
    except ImportError:
        print(mod, "not installed")
PY
"$PYTHON" -m pytest -q -m "gpu or tensorrt" -rs tests 2>&1 | tee "$OUT/pytest-gpu.txt"
exit "${PIPESTATUS[0]}"
