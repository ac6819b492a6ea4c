# Entry points named in the README. Each target creates and reuses .venv; a fresh machine needs
# only Python >= 3.10 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch, pinned. Which build pip picks depends on the index: where the index offers a CPU build of
# this version it is taken; on a stock PyPI index, Linux x86_64 gets the CUDA build (several GB of
# nvidia-* wheels). For the CPU build there: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: demo reference test test-docker docs mutation lint bench bench-int8 bench-generate bench-export bench-service stress kserve-env bench-scale bench-gpu gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]" "$(TORCH)"
	touch $@

# make demo PORT=8001 serves the dashboard on another port
PORT   ?= 8000
# make demo trains (first time) or reuses the image twins in $(REFERENCE_DIR)/image; TEXT=1 adds the text twins
demo: $(STAMP)
	$(BIN)/python -m service.demo --port $(PORT) --reference $(REFERENCE_DIR)$(if $(TEXT), --text)

# the trained reference twins (README "Reference models"): reused while reference/TASK/card.json matches;
# make reference REFERENCE_FLAGS=--retrain trains them again
REFERENCE_DIR ?= reference
reference: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dyt train-reference --task image -o $(REFERENCE_DIR)/image $(REFERENCE_FLAGS)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dyt train-reference --task text -o $(REFERENCE_DIR)/text $(REFERENCE_FLAGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not docker"

# builds docker/Dockerfile with podman on a debootstrapped bookworm base and tests the running
# container (needs root on Debian; a host where podman cannot run skips with the reason)
test-docker: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m docker tests/docker

# the documentation site (MkDocs Material, API reference from the docstrings) into site/; --strict: a
# broken link or an API reference that does not resolve fails the build
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

$(VENV)/.installed-docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,docs]" "$(TORCH)"
	touch $@

# mutation testing of the core modules with mutmut ([tool.mutmut] in pyproject.toml; not part of `make test`):
# each mutant runs only the selected tests that reach its function, fastest first. Later runs reuse the
# results of unchanged mutants; MUTANTS='dyt_deploy.parity.*' reruns one module; rm -rf mutants/ starts afresh.
# Prints killed/survived per module and lists the survivors (those judged equivalent, with why: docs/mutation.md).
# mutmut forks a worker per mutant; one OpenMP/MKL thread keeps torch fork-safe (pools do not survive a fork).
mutation: $(VENV)/.installed-mutation
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run $(if $(MUTATION_JOBS),--max-children $(MUTATION_JOBS)) $(MUTANTS)
	$(BIN)/python scripts/mutation_score.py --survivors

$(VENV)/.installed-mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,mutation]" "$(TORCH)"
	touch $@

# the standard latency comparison: vit_small, onnxruntime CPU and torch, batch 1 and 8
bench: $(STAMP)
	$(BIN)/dyt-bench --model vit_small --runners ort,openvino,torch --batch 1,8 --threads 2 --warmup 5 --iters 30 -o reports/bench

# INT8 (README "INT8 without calibration data", docs/int8.md): latency of vit_small (random weights) DyT folded and
# LayerNorm, fp32 and INT8 without/with calibration data, onnxruntime and OpenVINO, 2 threads, interleaved; accuracy
# and agreement of the trained digit twins (make reference's, reused); then which layers run INT8 and where the time goes
bench-int8: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dyt-bench --model vit_small --variants dyt-folded,layernorm --baseline layernorm \
		--runners ort,openvino --precisions fp32,int8 --optimizers none --batch 1,8 --threads 2 --warmup 2 --iters 15 \
		--no-layer --no-profile -o reports/bench-int8/latency
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dyt train-reference --task image -o $(REFERENCE_DIR)/image
	OMP_WAIT_POLICY=PASSIVE $(BIN)/dyt-bench $(REFERENCE_DIR)/image/dyt/checkpoint.pth --variants dyt-folded,layernorm \
		--runners ort,openvino --precisions fp32,int8 --optimizers none --batch 8 --threads 2 --warmup 2 --iters 5 \
		--no-layer --no-profile --data $(REFERENCE_DIR)/image/test.npz -o reports/bench-int8/accuracy
	$(BIN)/python benchmarks/int8_profile.py --arch vit_small --batch 1 --threads 2

# text generation, DyT vs RMSNorm: a zoo decoder scaled to ~100 M parameters (llama_small at dim 768, 12 layers),
# time to first token at prompts 16/64/256 and decode tokens/s at batch 1 and 8, torch/onnxruntime/onnxruntime-genai
bench-generate: $(STAMP)
	$(BIN)/dyt-bench --task text-generation --model llama_small --set dim=768 --set depth=12 --set heads=12 \
		--set ffn_dim=2048 --seq 16,64,256 --batch 1,8 --threads 2 --warmup 2 --iters 10 -o reports/bench-generate

# export + verify wall time and peak memory for vit_base (figures in the README)
bench-export: $(STAMP)
	$(BIN)/python benchmarks/export_time.py --arch vit_base --norms layernorm,dyt --repeats 3

# served vs in-process latency and throughput at concurrency 1/4/16, with and without dynamic batching
bench-service: $(STAMP)
	$(BIN)/python benchmarks/service_latency.py --arch vit_small,vit_tiny --norm dyt --seconds 10

# a burst, a sustained load and a fuzz set against a live dyt-serve, then Schemathesis over its OpenAPI
# document (every operation; under 5 minutes); not part of make test
stress: $(STAMP)
	$(BIN)/python benchmarks/stress.py
	$(BIN)/python benchmarks/openapi_fuzz.py --max-examples 25 --max-time 240

# KServe's Python SDK in its own environment (its pins, protobuf < 7 and psutil < 6, are older than
# .venv's); tests/service/test_openai_conformance.py runs its client from there, and skips without it
kserve-env: .venv-kserve/.installed
.venv-kserve/.installed:
	test -x .venv-kserve/bin/python || $(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/python -m pip install --quiet kserve numpy
	touch $@

# throughput at concurrency 1/4/16 with 1 vs 2 Ray Serve replicas (and 1 vs 2 uvicorn workers), same cores
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --arch vit_small --norm dyt --seconds 10

# on a CUDA host, inside a Python environment that has torch with CUDA
gpu-check:
	scripts/gpu_check.sh

# the GPU suite alone (norm layer vs copy bandwidth, decoder); needs a CUDA GPU and torch with CUDA
bench-gpu: $(STAMP)
	$(BIN)/dyt-bench --device cuda --suite kernels -o reports/gpu

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache mutants
