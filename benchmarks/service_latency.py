"""Served latency against in-process latency, and throughput under concurrent load.

For one model (default vit_small with DyT, batch 1, binary tensors over loopback):
1. p50 of the in-process onnxruntime runner and p50 of the same model served by ``dyt-serve``
   (a separate process) through tritonclient, alternated call by call so drift hits both alike;
   their ratio with a bootstrap interval, and the served time split by the server's own stages
   (queue, input decoding, inference, output encoding, and what is left: client and HTTP);
2. the same against ``minimal_server.py`` (uvicorn and the same runner on a worker thread, nothing
   else): the floor any Python server pays on this machine;
3. throughput and p50 at concurrency 1, 4 and 16, with and without dynamic batching.

    python benchmarks/service_latency.py --arch vit_small,vit_tiny --norm dyt --seconds 10 [--latency-only]
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


BATCHING = ["--dynamic-batching", "all", "--max-batch-size", "16", "--max-queue-delay-us", "2000"]


def wait_ready(url: str, seconds: float = 180, process: subprocess.Popen | None = None) -> None:
    """Until ``url``'s /v2/health/ready answers 200; ``process`` (the server) is killed if it never does."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    if process is not None:
        process.kill()
    raise RuntimeError(f"{url} did not become ready")


def start_server(repo: Path, port: int, extra: list[str] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
    """``dyt-serve`` on ``repo`` at ``port`` in its own process, once it is ready."""
    args = [sys.executable, "-m", "service.cli", "--repository", str(repo), "--port", str(port), "--log-level",
            "warning", *extra]
    server = subprocess.Popen(args, env={**os.environ, **(env or {})})
    wait_ready(f"http://127.0.0.1:{port}", process=server)
    return server


def served_call(client, name: str, array: np.ndarray) -> float:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("pixel_values", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=True)
    start = time.perf_counter()
    client.infer(name, [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
    return time.perf_counter() - start


def server_stages(client, name: str) -> dict[str, float]:
    """The server's cumulative stage times of ``name`` (Triton statistics), in ns, and its count."""
    stats = client.get_inference_statistics(name)["model_stats"][0]["inference_stats"]
    return {stage: float(stats[stage]["ns"]) for stage in ("success", "queue", "compute_input", "compute_infer",
                                                           "compute_output")} | {"count": stats["success"]["count"]}


def latency_interleaved(runner, client, name: str, array: np.ndarray, calls: int, stages: bool = True) -> dict:
    """In-process and served calls alternated one by one (drift and neighbours hit both alike);
    medians with bootstrap intervals, and (``stages``: a dyt-serve server) where the served time went
    by the server's own stages."""
    from dyt_deploy.bench.stats import median_ratio, summarize

    local, served = [], []
    feed = {"pixel_values": array}
    before = server_stages(client, name) if stages else None
    for _ in range(calls):
        start = time.perf_counter()
        runner.infer(feed)
        local.append(time.perf_counter() - start)
        served.append(served_call(client, name, array))
    ratio = median_ratio(served, local)
    result = {"in_process_p50_ms": summarize(local).median_ms, "served_p50_ms": summarize(served).median_ms,
              "ratio": ratio.ratio, "ratio_low": ratio.low, "ratio_high": ratio.high,
              "served_p90_ms": float(np.percentile(served, 90) * 1e3), "calls_each": calls}
    if before is not None:
        after = server_stages(client, name)
        count = after["count"] - before["count"]
        split = {stage: (after[stage] - before[stage]) / count / 1e6 for stage in after if stage != "count"}
        mean_served = float(np.mean(served) * 1e3)
        split["outside_server_ms"] = mean_served - split.pop("success")  # client, HTTP and the event loop's turns
        result["mean_ms_by_stage"] = {"served_total": mean_served, **{k.removesuffix("_ms"): v
                                                                      for k, v in split.items()}}
    return result


def floor_latency(folder: Path, runner, array: np.ndarray, calls: int) -> dict:
    """The same interleaved measurement against ``minimal_server.py`` serving ``folder``: the floor."""
    import tritonclient.http as httpclient

    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("minimal_server.py")), str(folder),
                               str(port)])
    try:
        wait_ready(f"http://127.0.0.1:{port}", process=server)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(10):
            served_call(client, folder.name, array)
        result = latency_interleaved(runner, client, folder.name, array, calls, stages=False)
        client.close()
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


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


def measure(arch: str, norm: str, args: argparse.Namespace) -> dict:
    """Export ``arch`` with ``norm``, serve it, and measure latency (and load unless --latency-only)."""
    import tritonclient.http as httpclient

    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model
    from dyt_deploy.runners import runner_for_folder

    name = f"{arch}-{norm}"
    array = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    results: dict = {"model": name, "batch": 1, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        checkpoint = save_checkpoint(create_model(arch, norm=norm), Path(tmp) / "model.pt")
        export_onnx(checkpoint, repository=repo, name=name)
        for batching in (False,) if args.latency_only else (False, True):
            port = free_port()
            # every client thread here comes from one address: admit as many bodies as the highest concurrency
            server = start_server(repo, port, BATCHING if batching else [], {"DYT_MAX_BODY_READS_PER_CLIENT": "64"})
            try:
                if not batching:
                    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
                    # the runner dyt-serve makes for the folder, in this process
                    with runner_for_folder(repo / name, spin=False) as runner:
                        for _ in range(10):
                            runner.infer({"pixel_values": array})
                            served_call(client, name, array)
                        results["latency"] = latency_interleaved(runner, client, name, array, args.calls)
                        # dyt-serve stays up, idle: its threads do not spin
                        results["floor"] = floor_latency(repo / name, runner, array, args.calls)
                    client.close()
                if not args.latency_only:
                    key = "dynamic_batching" if batching else "no_batching"
                    results[key] = [load(port, name, array, c, args.seconds) for c in (1, 4, 16)]
            finally:
                server.terminate()
                server.wait(timeout=30)
    return results


def report(results: dict) -> None:
    lat = results["latency"]
    print(f"{results['model']}, batch 1, binary tensors over loopback, {results['cpus']} CPUs")
    print(f"  in-process p50 {lat['in_process_p50_ms']:.2f} ms, served p50 {lat['served_p50_ms']:.2f} ms, ratio "
          f"{lat['ratio']:.3f} [{lat['ratio_low']:.3f}, {lat['ratio_high']:.3f}] ({lat['calls_each']} calls each, "
          "interleaved one by one)")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in lat["mean_ms_by_stage"].items())
    print(f"  mean ms by stage: {stages}")
    if "floor" in results:
        floor = results["floor"]
        print(f"  floor (benchmarks/minimal_server.py: uvicorn, the same runner on a worker thread, no checks): "
              f"in-process p50 {floor['in_process_p50_ms']:.2f} ms, served p50 {floor['served_p50_ms']:.2f} ms, "
              f"ratio {floor['ratio']:.3f} [{floor['ratio_low']:.3f}, {floor['ratio_high']:.3f}]")
    for key in ("no_batching", "dynamic_batching"):
        for row in results.get(key, []):
            print(f"  {key:16} concurrency {row['concurrency']:3d}: {row['throughput_per_s']:8.2f} req/s, "
                  f"p50 {row['p50_ms']:.1f} ms, p90 {row['p90_ms']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small", help="one architecture, or several separated by commas")
    parser.add_argument("--norm", default="dyt")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per concurrency level")
    parser.add_argument("--calls", type=int, default=200, help="latency: calls of each kind, interleaved")
    parser.add_argument("--latency-only", action="store_true", help="skip the concurrent load")
    parser.add_argument("--json", type=Path, default=Path("reports/service_latency.json"))
    args = parser.parse_args()
    everything = [measure(arch, args.norm, args) for arch in args.arch.split(",")]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(everything if len(everything) > 1 else everything[0], indent=2) + "\n")
    for results in everything:
        report(results)


if __name__ == "__main__":
    main()
