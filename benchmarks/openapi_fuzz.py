"""Schemathesis against dyt-serve's own OpenAPI document: every documented operation (the Open
Inference Protocol, the generate extension, the OpenAI routes, the dashboard's API) gets
property-based requests, valid and invalid, generated from the document; no answer may be a 5xx,
and every answer must match the document (its status, content type and schema).

The server runs in this process (uvicorn on loopback) over a temporary repository: a tiny ViT in
its DyT and LayerNorm variants, a zoo llama decoder exported for text generation and a BERT-style
encoder, with small generation and comparison bounds so that random requests stay quick.

    python benchmarks/openapi_fuzz.py [--max-examples 25] [--max-time 240] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
TINY_LLM = {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "max_seq_len": 64}


def build_repository(root: Path) -> Path:
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    for norm in ("layernorm", "dyt"):
        save_checkpoint(create_model("vit_tiny", norm=norm, depth=1, img_size=32), root / f"vit-{norm}.pt")
        export_onnx(root / f"vit-{norm}.pt", repository=root / "repo", name=f"vit-{norm}", verify=False)
    save_checkpoint(create_model("llama_tiny", norm="dyt", seed=0, **TINY_LLM), root / "llm.pt")
    export_onnx(root / "llm.pt", repository=root / "repo", name="llm-dyt", task="text-generation", verify=False)
    save_checkpoint(create_model("bert_tiny", norm="dyt", depth=1), root / "bert.pt")
    export_onnx(root / "bert.pt", repository=root / "repo", name="bert-dyt", verify=False)
    return root / "repo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=25, help="examples per operation and phase")
    parser.add_argument("--max-time", type=int, default=240, help="time budget of the whole run, seconds")
    parser.add_argument("--workers", default="2", help="concurrent schemathesis workers")
    args = parser.parse_args(argv)

    from service.engines.uvicorn import serve_in_thread
    from service.http.app import create_app
    from service.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="dyt-openapi-fuzz-"))
    try:
        repository = build_repository(root)
        settings = Settings(threads=1, warmup_runs=1, max_generate_tokens=16, max_prompt_tokens=48,
                            compare_max_rounds=3, compare_max_batch=2, max_in_flight=64)
        with serve_in_thread(create_app(repository, settings)) as server:
            command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json",
                       "--checks", CHECKS, "--max-examples", str(args.max_examples), "--max-time",
                       str(args.max_time), "--workers", args.workers, "--suppress-health-check", "all",
                       "--request-timeout", "30", "--seed", "0"]
            started = time.monotonic()
            done = subprocess.run(command, cwd=root)  # its .schemathesis/ cache stays out of the checkout
            print(f"schemathesis: exit {done.returncode} in {time.monotonic() - started:.0f} s")
            return done.returncode
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
