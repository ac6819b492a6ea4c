"""Served latency against in-process latency, and throughput under concurrent load.

For one model (default vit_small with DyT, batch 1, binary tensors over loopback):
1. p50 of the in-process onnxruntime runner and p50 of the same model served by ``dyt-serve``
   (a separate process) through tritonclient, measured in alternating blocks so drift hits both;
2. throughput and p50 at concurrency 1, 4 and 16, with and without dynamic batching.

    python benchmarks/service_latency.py --arch vit_small --norm dyt --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: Path, port: int, batching: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "service.cli", "--repository", str(repo), "--port", str(port), "--log-level",
            "warning"] + (["--dynamic-batching", "all", "--max-batch-size", "16", "--max-queue-delay-us", "2000"]
                          if batching else [])
    server = subprocess.Popen(args)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("dyt-serve did not become ready")


def served_call(client, name: str, array: np.ndarray) -> float:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("pixel_values", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=True)
    start = time.perf_counter()
    client.infer(name, [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
    return time.perf_counter() - start


def latency_blocks(runner, client, name: str, array: np.ndarray, blocks: int, per_block: int) -> dict:
    """Alternate blocks of in-process and served calls; medians in ms."""
    local, served = [], []
    feed = {"pixel_values": array}
    for _ in range(blocks):
        for _ in range(per_block):
            start = time.perf_counter()
            runner.infer(feed)
            local.append(time.perf_counter() - start)
        served.extend(served_call(client, name, array) for _ in range(per_block))
    p50_local, p50_served = statistics.median(local) * 1e3, statistics.median(served) * 1e3
    return {"in_process_p50_ms": p50_local, "served_p50_ms": p50_served, "ratio": p50_served / p50_local,
            "served_p90_ms": float(np.percentile(served, 90) * 1e3), "calls_each": len(local)}


def load(port: int, name: str, array: np.ndarray, concurrency: int, seconds: float) -> dict:
    import tritonclient.http as httpclient

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        mine = []
        while time.monotonic() < stop:
            mine.append(served_call(client, name, array))
        client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return {"concurrency": concurrency, "requests": len(latencies), "throughput_per_s": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies) * 1e3, "p90_ms": float(np.percentile(latencies, 90) * 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--norm", default="dyt")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per concurrency level")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--per-block", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("reports/service_latency.json"))
    args = parser.parse_args()

    import tritonclient.http as httpclient

    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model
    from dyt_deploy.runners import runner_for_folder

    name = f"{args.arch}-{args.norm}"
    array = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    results: dict = {"model": name, "batch": 1, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        checkpoint = save_checkpoint(create_model(args.arch, norm=args.norm), Path(tmp) / "model.pt")
        export_onnx(checkpoint, repository=repo, name=name)
        for batching in (False, True):
            port = free_port()
            server = start_server(repo, port, batching)
            try:
                if not batching:
                    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
                    # the runner dyt-serve makes for the folder, in this process
                    with runner_for_folder(repo / name, spin=False) as runner:
                        for _ in range(5):
                            runner.infer({"pixel_values": array})
                            served_call(client, name, array)
                        results["latency"] = latency_blocks(runner, client, name, array, args.blocks, args.per_block)
                    client.close()
                key = "dynamic_batching" if batching else "no_batching"
                results[key] = [load(port, name, array, c, args.seconds) for c in (1, 4, 16)]
            finally:
                server.terminate()
                server.wait(timeout=30)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    lat = results["latency"]
    print(f"{name}, batch 1, binary tensors over loopback, {os.cpu_count()} CPUs")
    print(f"in-process p50 {lat['in_process_p50_ms']:.2f} ms, served p50 {lat['served_p50_ms']:.2f} ms, "
          f"ratio {lat['ratio']:.3f} ({lat['calls_each']} calls each, alternating blocks)")
    print(f"{'batching':16} {'concurrency':>11} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8}")
    for key in ("no_batching", "dynamic_batching"):
        for row in results[key]:
            print(f"{key:16} {row['concurrency']:11d} {row['throughput_per_s']:8.2f} {row['p50_ms']:8.1f} "
                  f"{row['p90_ms']:8.1f}")


if __name__ == "__main__":
    main()
