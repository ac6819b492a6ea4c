"""Throughput with more replicas: the same model served by 1 and by 2 Ray Serve replicas (and, for
reference, by dyt-serve on uvicorn with 1 and 2 worker processes), at concurrency 1, 4 and 16.

Every configuration gets the same cores: onnxruntime threads per replica (or worker) are the CPU
count divided by the replicas, so 2 replicas on 2 cores run 1 thread each. Batch 1, binary tensors
through tritonclient over loopback, ``--seconds`` per concurrency level; requests/s, p50 and p90.

    python benchmarks/scale.py --arch vit_small --norm dyt --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from service_latency import free_port, load, served_call, wait_ready

CONCURRENCY = (1, 4, 16)


def export(arch: str, norm: str, folder: Path) -> tuple[Path, str]:
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    name = f"{arch}-{norm}"
    checkpoint = save_checkpoint(create_model(arch, norm=norm), folder / "model.pt")
    export_onnx(checkpoint, repository=folder / "repo", name=name)
    return folder / "repo", name


def measure_levels(port: int, name: str, array: np.ndarray, seconds: float) -> list[dict]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
    for _ in range(5):  # warm every hop
        served_call(client, name, array)
    client.close()
    return [load(port, name, array, level, seconds) for level in CONCURRENCY]


def uvicorn_rows(repo: Path, name: str, array: np.ndarray, args: argparse.Namespace) -> list[dict]:
    rows = []
    for workers in (1, 2):
        port = free_port()
        threads = max(1, args.cpus // workers)
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "--repository", str(repo), "--port",
                                   str(port), "--workers", str(workers), "--threads", str(threads),
                                   "--log-level", "warning"])
        try:
            wait_ready(f"http://127.0.0.1:{port}", seconds=300)
            rows.append({"engine": "uvicorn", "replicas": workers, "threads": threads,
                         "levels": measure_levels(port, name, array, args.seconds)})
        finally:
            server.terminate()
            server.wait(timeout=60)
    return rows


def ray_rows(repo: Path, name: str, array: np.ndarray, args: argparse.Namespace) -> list[dict]:
    import ray
    from ray import serve

    from service.engines.ray import build_app
    from service.settings import Settings

    port = free_port()
    ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=200 << 20, log_to_driver=False)
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in (1, 2):
            threads = max(1, args.cpus // replicas)
            app = build_app(repo, Settings(threads=threads), num_replicas=replicas,
                            num_cpus=min(1.0, args.cpus / replicas / 2), ingress_cpus=0.1)
            serve.run(app, name="scale", route_prefix="/")
            wait_ready(f"http://127.0.0.1:{port}", seconds=300)
            rows.append({"engine": "ray", "replicas": replicas, "threads": threads,
                         "levels": measure_levels(port, name, array, args.seconds)})
            serve.delete("scale")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def report(results: dict) -> None:
    print(f"{results['model']}, batch 1, binary tensors over loopback, {results['cpus']} CPUs, "
          f"{results['seconds']} s per level")
    print("| engine | replicas x threads | " + " | ".join(f"c={c} req/s (p50 ms)" for c in CONCURRENCY) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in CONCURRENCY) + " |")
    for row in results["rows"]:
        cells = " | ".join(f"{lv['throughput_per_s']:.1f} ({lv['p50_ms']:.0f})" for lv in row["levels"])
        print(f"| {row['engine']} | {row['replicas']} x {row['threads']} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--norm", default="dyt")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per concurrency level")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="cores shared by all replicas")
    parser.add_argument("--engines", default="ray,uvicorn", help="ray, uvicorn or both")
    parser.add_argument("--json", type=Path, default=Path("reports/scale.json"))
    args = parser.parse_args()
    array = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        repo, name = export(args.arch, args.norm, Path(tmp))
        rows = []
        if "ray" in args.engines:
            rows += ray_rows(repo, name, array, args)
        if "uvicorn" in args.engines:
            rows += uvicorn_rows(repo, name, array, args)
    results = {"model": name, "cpus": args.cpus, "seconds": args.seconds, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    report(results)


if __name__ == "__main__":
    main()
