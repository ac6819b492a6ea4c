#!/usr/bin/env bash
# GPU checks, on a host with a CUDA GPU: the Triton kernels' tests compiled for the GPU (with the
# hardware tanh's error against float64), the per-call host cost of norm layers
# (benchmarks/kernel_call_cost.py: F.rms_norm, F.layer_norm, eager DyT, the kernel paths), the GPU
# benchmark (dyt-bench --device cuda --suite kernels), the model-level comparison (vit_base, a
# LLaMA-style decoder: DyT vs LayerNorm/RMSNorm on every PyTorch path), timm parity (where timm is
# installed), then the gpu/tensorrt-marked tests.
#
# Runs in the Python environment it is started in (PYTHON, default python3), which must already
# hold torch with CUDA, Triton, onnx, onnxruntime, typer, rich and pytest. Nothing is installed:
# the project runs from this checkout through PYTHONPATH, so the check also works offline.
#   scripts/gpu_check.sh                       # writes gpu-check/: facts, pytest logs, tanh-error.txt,
#                                              # call_cost.{json,md}, gpu_report.*
#   OUT=somewhere BENCH_ARGS="--iters 20" scripts/gpu_check.sh
# Each step has a time limit (TEST_TIMEOUT, BENCH_TIMEOUT seconds), so one hang cannot eat a
# rented GPU's time. Order: kernel tests, tanh error, per-call cost, the benchmark, the model
# comparison, timm parity, then the other GPU tests.
# Exit status: 0 when every test passed (the benchmark's goals are reported, not enforced).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0

"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, "capability", torch.cuda.get_device_capability(0), "SMs", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
for mod in ("triton", "onnxruntime", "tensorrt"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"), getattr(m, "get_available_providers", lambda: "")())
    except ImportError:
        print(mod, "not installed")
PY

echo "== kernel tests on the GPU" | tee "$OUT/pytest-kernels.txt"
timeout "${TEST_TIMEOUT:-300}" "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/kernels \
    tests/bench/test_gpu_bench.py tests/tensorrt/test_engine_plugin.py tests/runners 2>&1 \
    | tee -a "$OUT/pytest-kernels.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== hardware tanh: max error on the stored result vs float64 (bound: 1 bf16 eps, 3 fp16 eps)" \
    | tee "$OUT/tanh-error.txt"
timeout "${TEST_TIMEOUT:-300}" "$PYTHON" -m pytest -q -s -p no:cacheprovider tests/kernels/test_triton_dyt.py \
    -k hardware_tanh_stays_within 2>&1 | tee -a "$OUT/tanh-error.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== per-call host cost: F.rms_norm, F.layer_norm, eager DyT, the kernel (Python call, module, custom op)" \
    | tee "$OUT/call-cost.txt"
timeout "${BENCH_TIMEOUT:-420}" "$PYTHON" benchmarks/kernel_call_cost.py --device cuda --shapes 1x4096,128x4096 \
    --dtype bf16 -o "$OUT" 2>&1 | tee -a "$OUT/call-cost.txt"

echo "== GPU benchmark" | tee "$OUT/bench.txt"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout "${BENCH_TIMEOUT:-420}" "$PYTHON" -c 'from dyt_deploy.cli import bench_app; bench_app()' \
    --device cuda --suite kernels -o "$OUT" ${BENCH_ARGS:-} 2>&1 | tee -a "$OUT/bench.txt"

echo "== model-level comparison: best DyT path vs best LayerNorm/RMSNorm path, bf16" | tee "$OUT/models.txt"
# torch eager, torch.compile, eager with the Triton kernels, and dyt_deploy.optimize (folded, kernels, CUDA graphs);
# vit_base at batch 1 and 64, the LLaMA-style decoder (dim 2048, 8 layers) at 1 and 4096 tokens
MODEL_ARGS="--device cuda --dtypes bf16 --runners torch,torch-compile,torch-triton,torch-optimize --no-layer --no-profile"
# shellcheck disable=SC2086
timeout "${MODEL_TIMEOUT:-600}" "$PYTHON" -c 'from dyt_deploy.cli import bench_app; bench_app()' \
    --model vit_base --variants layernorm,dyt --batch 1,64 $MODEL_ARGS -o "$OUT/model-vit_base" 2>&1 \
    | tee -a "$OUT/models.txt"
# shellcheck disable=SC2086
timeout "${MODEL_TIMEOUT:-600}" "$PYTHON" -c 'from dyt_deploy.cli import bench_app; bench_app()' \
    --model llama_small --set dim=2048 --set heads=16 --set ffn_dim=5632 --set vocab_size=32000 \
    --variants rmsnorm,dyt --baseline rmsnorm --batch 1 --seq 1,4096 $MODEL_ARGS -o "$OUT/model-llama" 2>&1 \
    | tee -a "$OUT/models.txt"

echo "== timm parity: official DyT conversion of timm models loads into the zoo with equal outputs" \
    | tee "$OUT/timm.txt"
timeout "${TEST_TIMEOUT:-300}" "$PYTHON" scripts/timm_parity.py 2>&1 | tee -a "$OUT/timm.txt"

echo "== gpu/tensorrt-marked engine tests" | tee "$OUT/pytest-gpu.txt"
timeout "${TEST_TIMEOUT:-300}" "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m "gpu or tensorrt" tests/tensorrt tests/export/test_aoti_slow.py \
    2>&1 | tee -a "$OUT/pytest-gpu.txt"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || [ "$rc" = 5 ] || status=1  # 5: nothing selected
exit "$status"
