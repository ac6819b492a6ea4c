"""Stress dyt-serve as a hostile or busy world would: a burst, a sustained load and a fuzz set
against a live server process, with the server's memory before and after.

1. burst: ``--burst`` requests at once (one thread each): status counts, p50/p99;
2. sustained: ``--concurrency`` clients for ``--seconds``: status counts, throughput, p50/p99;
3. fuzz: hand-written malformed requests (bad JSON, huge integers, wrong shapes and datatypes,
   lying length headers, compressed bombs, slow and abandoned bodies, malformed HTTP) and seeded
   byte mutations of a valid request; after each the server must still answer liveness, and no
   answer may be a 500.

4. hostile: the attacks of the service's hostile hour, each with the server's memory around it:
   40 gzip JSON bodies at once that inflate ~1000 times; all-JSON bodies of 48 MiB announced as
   binary-extension requests (Inference-Header-Content-Length = their length); 300 MiB of request
   headers; slow bodies from many loopback addresses (127.0.x.y, 8 each, reconnecting when dropped)
   while a prompt client's probes must be served;
5. json-rss (``--phases json-rss``): the peak memory of the largest valid JSON inference request
   (``--json-batch``; run it with ``--image-size 224``).

RSS (and its peak, VmHWM) of the server is read from /proc before and after each phase; with
``--engine ray`` (``dyt-serve --engine ray``: Ray, its proxy, the ingress and the model replica are
processes under the server's), the RSS of the whole process tree, added up, is read too.

    python benchmarks/stress.py [--arch vit_tiny] [--burst 200] [--concurrency 8] [--seconds 30]
                                [--phases burst,sustained,fuzz,hostile] [--addresses 32,64]
                                [--engine uvicorn|ray]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from service_latency import free_port, start_server

MODEL = "stress-dyt"
INFER = f"/v2/models/{MODEL}/infer"


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process in MiB (empty where /proc is missing)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM") if key in fields}


def tree_rss_mib(pid: int) -> float:
    """The RSS of ``pid`` and every process under it, added up, in MiB (0 where /proc is missing)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | found, bool(found)
    return sum(memory_mib(p).get("VmRSS", 0.0) for p in tree)


def memory_of(pid: int) -> dict[str, float]:
    """:func:`memory_mib` of the server, and its process tree's RSS (``tree_rss``)."""
    return {**memory_mib(pid), "tree_rss": tree_rss_mib(pid)}


def valid_body(image_size: int, seed: int = 0) -> dict:
    array = np.random.default_rng(seed).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    return {"inputs": [{"name": "pixel_values", "shape": list(array.shape), "datatype": "FP32",
                        "data": array.ravel().tolist()}]}


def timed_post(client: httpx.Client, body: dict) -> tuple[int, float]:
    """Status and seconds of one inference (status 0: the connection failed)."""
    started = time.perf_counter()
    try:
        status = client.post(INFER, json=body).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.perf_counter() - started


def summary(results: list[tuple[int, float]], seconds: float | None = None) -> dict:
    latencies = sorted(t for status, t in results if status == 200)
    row = {"requests": len(results), "statuses": dict(sorted(Counter(s for s, _ in results).items()))}
    if latencies:
        row |= {"p50_ms": statistics.median(latencies) * 1e3,
                "p99_ms": float(np.percentile(latencies, 99)) * 1e3}
    if seconds:
        row["ok_per_s"] = len(latencies) / seconds
    return row


def burst(url: str, body: dict, count: int) -> dict:
    """``count`` requests at once, one client each."""
    gate = threading.Barrier(count)

    def one(_: int) -> tuple[int, float]:
        with httpx.Client(base_url=url, timeout=120) as client:
            gate.wait()
            return timed_post(client, body)

    with ThreadPoolExecutor(count) as pool:
        return summary(list(pool.map(one, range(count))))


def sustained(url: str, body: dict, concurrency: int, seconds: float) -> dict:
    stop = time.monotonic() + seconds

    def client_loop(_: int) -> list[tuple[int, float]]:
        mine = []
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.monotonic() < stop:
                mine.append(timed_post(client, body))
        return mine

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for part in pool.map(client_loop, range(concurrency)) for r in part]
    return summary(results, time.monotonic() - started)


def raw_exchange(port: int, data: bytes, wait_s: float = 5.0, close_early: bool = False) -> int:
    """Send raw bytes; the answer's status (0: none, the connection closed or timed out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as raw:
        try:
            raw.sendall(data)
            if close_early:
                return 0
            reply = raw.recv(4096)
        except OSError:
            return 0
    parts = reply.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body


def fuzz_cases(image_size: int) -> list[tuple[str, Callable[[int], int]]]:
    """(name, send(port) -> status) for each hand-written malformed request."""
    good = valid_body(image_size)
    good_json = json.dumps(good).encode()

    def post(body: bytes, headers: dict[str, str] | None = None, path: str = INFER) -> Callable[[int], int]:
        return lambda port: raw_exchange(port, http_request(path, body, headers))

    def with_input(**changes: object) -> bytes:
        return json.dumps({"inputs": [{**good["inputs"][0], **changes}]}).encode()

    huge = "9" * 5000
    cases = [
        ("not json", post(b"{nope")),
        ("json array", post(b"[1,2,3]")),
        ("empty object", post(b"{}")),
        ("invalid utf-8", post(b'{"inputs": "\xff\xfe"}')),
        ("nested 100000 deep", post(b"[" * 100_000 + b"]" * 100_000)),
        ("huge integer in data", post(f'{{"inputs":[{{"name":"pixel_values","shape":[1],"datatype":"FP32",'
                                      f'"data":[{huge}]}}]}}'.encode())),
        ("huge integer id", post(f'{{"id":{huge},"inputs":[]}}'.encode())),
        ("huge timeout", post(json.dumps({**good, "parameters": {"timeout": 10**400}}).encode())),
        ("huge index body", post(f'{{"ready":{huge}}}'.encode(), path="/v2/repository/index")),
        ("huge compare rounds", post(f'{{"family":"x","rounds":{huge}}}'.encode(), path="/api/compare")),
        ("wrong shape", post(with_input(shape=[1, 3, image_size + 1, image_size]))),
        ("negative dim", post(with_input(shape=[-1, 3, image_size, image_size]))),
        ("huge dims", post(with_input(shape=[2**40, 2**40]))),
        ("wrong datatype", post(with_input(datatype="INT8"))),
        ("unknown datatype", post(with_input(datatype="FP128"))),
        ("strings as data", post(with_input(data=["a"] * 3))),
        ("nan in data", post(with_input(data=[float("nan")] * (3 * image_size * image_size)))),
        ("unknown input", post(with_input(name="nope"))),
        ("unknown model", post(good_json, path="/v2/models/nope/infer")),
        ("binary size past the end", post(b'{"inputs":[{"name":"pixel_values","shape":[1,3,2,2],"datatype":"FP32",'
                                          b'"parameters":{"binary_data_size":99999}}]}',
                                          {"Inference-Header-Content-Length": "96"})),
        ("header length not a number", post(good_json, {"Inference-Header-Content-Length": "abc"})),
        ("header length past the body", post(good_json, {"Inference-Header-Content-Length": str(10**9)})),
        ("header length 5000 digits", post(good_json, {"Inference-Header-Content-Length": huge})),
        ("gzip bomb", post(gzip.compress(b" " * (200 << 20)), {"Content-Encoding": "gzip"})),
        ("bad gzip", post(b"not gzip", {"Content-Encoding": "gzip"})),
        ("unknown encoding", post(good_json, {"Content-Encoding": "br"})),
        ("content-length 5000 digits", lambda port: raw_exchange(
            port, f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {huge}\r\n\r\n{{".encode())),
        ("body shorter than announced", lambda port: raw_exchange(
            port, f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode(), wait_s=30)),
        ("abandoned mid-body", lambda port: raw_exchange(
            port, f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode(), close_early=True)),
        ("malformed HTTP", lambda port: raw_exchange(port, b"GARBAGE \x00\x01\r\n\r\n")),
        ("wrong method", lambda port: raw_exchange(port, http_request(INFER, b"", method="DELETE"))),
        ("path traversal", lambda port: raw_exchange(port, http_request("/v2/models/../../etc/passwd", b"",
                                                                        method="GET"))),
        ("compare unknown family", post(b'{"family":"nope"}', path="/api/compare")),
        ("compare huge batch", post(b'{"family":"stress","dims":{"batch":100000}}', path="/api/compare")),
    ]
    return cases


def mutations(image_size: int, count: int, seed: int) -> list[tuple[str, Callable[[int], int]]]:
    """Seeded byte mutations (flips, cuts, duplications) of a valid JSON request."""
    rng = random.Random(seed)
    base = bytearray(json.dumps(valid_body(image_size)).encode())
    cases = []
    for index in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            kind = rng.choice(("flip", "cut", "dup", "byte"))
            if kind == "flip":
                data[position] ^= 1 << rng.randrange(8)
            elif kind == "cut":
                del data[position:position + rng.randint(1, 64)]
            elif kind == "dup":
                data[position:position] = data[position:position + rng.randint(1, 64)]
            else:
                data[position] = rng.choice(b'{}[]",:0-eE.\\ nul')
        body = bytes(data)
        cases.append((f"mutation {index}", lambda port, b=body: raw_exchange(port, http_request(INFER, b))))
    return cases


def fuzz(port: int, url: str, image_size: int, count: int, seed: int) -> dict:
    statuses: Counter = Counter()
    problems = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for name, send in fuzz_cases(image_size) + mutations(image_size, count, seed):
            status = send(port)
            statuses[status] += 1
            if status >= 500 and status != 503:
                problems.append(f"{name}: {status}")
            if client.get("/v2/health/live").status_code != 200:
                problems.append(f"{name}: server not live afterwards")
    return {"cases": sum(statuses.values()), "statuses": dict(sorted(statuses.items())), "problems": problems}


def concurrently(count: int, work: Callable[[int], int]) -> dict[int, int]:
    """Status counts of ``count`` calls of ``work`` started together."""
    gate = threading.Barrier(count)

    def one(index: int) -> int:
        gate.wait()
        return work(index)

    with ThreadPoolExecutor(count) as pool:
        return dict(sorted(Counter(pool.map(one, range(count))).items()))


def with_memory(pid: int, attack: Callable[[], dict]) -> dict:
    """``attack``'s figures with the server's RSS before, after (1 s later) and its peak."""
    before = memory_mib(pid)
    row = attack()
    time.sleep(1)
    after = memory_mib(pid)
    if before and after:
        row |= {"rss_before_mib": round(before["VmRSS"]), "rss_after_mib": round(after["VmRSS"]),
                "peak_mib": round(after["VmHWM"])}
    return row


def gzip_flood(port: int, image_size: int, count: int = 40, inflated_mib: float = 7.5) -> dict:
    """``count`` gzip JSON bodies at once, each ~1000 times smaller than what it inflates to."""
    text = json.dumps(valid_body(image_size)).encode()
    packed = gzip.compress(text[:-1] + b" " * int(inflated_mib * (1 << 20)) + b"}")
    request = http_request(INFER, packed, {"Content-Encoding": "gzip"})
    return {"compressed_kb": round(len(packed) / 1e3, 1), "statuses": concurrently(
        count, lambda _: raw_exchange(port, request, wait_s=60))}


def json_sidestep(port: int, count: int = 4, mib: int = 48) -> dict:
    """``count`` all-JSON bodies of ``mib`` MiB at once, each announced as a binary-extension request
    whose JSON part is all of it."""
    data = b"0.123456789," * (mib * (1 << 20) // 12)
    body = b'{"inputs":[{"name":"pixel_values","shape":[1],"datatype":"FP32","data":[' + data + b'0]}]}'
    request = http_request(INFER, body, {"Inference-Header-Content-Length": str(len(body))})
    return {"body_mib": mib, "statuses": concurrently(count, lambda _: raw_exchange(port, request, wait_s=120))}


def header_flood(port: int, mib: int = 300) -> dict:
    """A request whose headers go on for ``mib`` MiB: how much the server takes before it answers."""
    sent, started, status = 0, time.monotonic(), 0
    piece = b"a" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        try:
            raw.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            while sent < mib << 20:
                raw.sendall(piece)
                sent += len(piece)
            raw.sendall(b"\r\n\r\n")
            reply = raw.recv(4096).split()
            status = int(reply[1]) if len(reply) > 1 and reply[1].isdigit() else 0
        except OSError:
            status = 0
    return {"offered_mib": mib, "sent_mib": round(sent / (1 << 20), 1), "status": status,
            "seconds": round(time.monotonic() - started, 2)}


def slow_sender(port: int, source: str, stop: float, counts: Counter) -> None:
    """Hold a body read from ``source`` with a byte every half second; reconnect when dropped."""
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{{".encode()
    while time.monotonic() < stop:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as raw:
                raw.sendall(head)
                counts["connections"] += 1
                while time.monotonic() < stop:
                    time.sleep(0.5)
                    raw.sendall(b" ")
        except OSError:
            counts["dropped"] += 1
            time.sleep(0.05)


def slow_addresses(port: int, url: str, image_size: int, addresses: int, per_address: int = 8,
                   probes: int = 21) -> dict:
    """Slow senders from ``addresses`` loopback addresses (``per_address`` each, the per-client
    limit) while a prompt client sends ``probes`` inference requests, one every 0.3 s."""
    stop, counts = time.monotonic() + 4 + probes * 0.3 + 2, Counter()
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(addresses)]
    threads = [threading.Thread(target=slow_sender, args=(port, source, stop, counts), daemon=True)
               for source in sources for _ in range(per_address)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    results = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(probes):
            results.append(timed_post(client, valid_body(image_size)))
            time.sleep(0.3)
    for thread in threads:
        thread.join()
    return {"addresses": addresses, "slow_connections": counts["connections"],
            "slow_dropped": counts["dropped"], "probes": summary(results)}


def hostile(pid: int, port: int, url: str, image_size: int, addresses: list[int]) -> dict:
    """The hostile hour's attacks, each with the server's memory around it."""
    report = {"gzip_flood": with_memory(pid, lambda: gzip_flood(port, image_size)),
              "json_sidestep": with_memory(pid, lambda: json_sidestep(port)),
              "header_flood": with_memory(pid, lambda: header_flood(port))}
    for count in addresses:
        attack = functools.partial(slow_addresses, port, url, image_size, count)
        report[f"slow_from_{count}_addresses"] = with_memory(pid, attack)
    return report


def json_rss(pid: int, url: str, image_size: int, batch: int) -> dict:
    """The server's peak RSS around one JSON inference request of ``batch`` images."""
    images = np.random.default_rng(0).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "pixel_values", "shape": list(images.shape), "datatype": "FP32",
                                   "data": images.ravel().tolist()}]}).encode()
    before = memory_mib(pid)
    with httpx.Client(base_url=url, timeout=300) as client:
        status = client.post(INFER, content=body, headers={"content-type": "application/json"}).status_code
    after = memory_mib(pid)
    return {"batch": batch, "body_mb": round(len(body) / 1e6, 1), "status": status,
            "rss_before_mib": round(before["VmRSS"]), "peak_before_mib": round(before["VmHWM"]),
            "peak_after_mib": round(after["VmHWM"]), "peak_growth_mib": round(after["VmHWM"] - before["VmHWM"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--mutations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phases", default="burst,sustained,fuzz,hostile",
                        help="comma-separated: burst, sustained, fuzz, hostile, json-rss")
    parser.add_argument("--addresses", default="32,64", help="hostile: slow senders' address counts")
    parser.add_argument("--json-batch", type=int, default=2, help="json-rss: the batch of the JSON request")
    parser.add_argument("--engine", default="uvicorn", choices=["uvicorn", "ray"], help="dyt-serve's --engine")
    parser.add_argument("--json", type=Path, default=Path("reports/stress.json"))
    args = parser.parse_args()

    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    report: dict = {"arch": args.arch, "image_size": args.image_size, "engine": args.engine}
    with tempfile.TemporaryDirectory() as tmp:
        model = create_model(args.arch, norm="dyt", img_size=args.image_size)
        export_onnx(save_checkpoint(model, Path(tmp) / "model.pt"), repository=Path(tmp) / "repo", name=MODEL)
        port = free_port()
        server = start_server(Path(tmp) / "repo", port, ["--threads", "1", "--engine", args.engine])
        url = f"http://127.0.0.1:{port}"
        body = valid_body(args.image_size)
        phases = args.phases.split(",")
        try:
            report["memory_start"] = memory_of(server.pid)
            if "burst" in phases:
                report["burst"] = burst(url, body, args.burst)
                report["memory_after_burst"] = memory_of(server.pid)
            if "sustained" in phases:
                report["sustained"] = sustained(url, body, args.concurrency, args.seconds)
                report["memory_after_sustained"] = memory_of(server.pid)
            if "fuzz" in phases:
                report["fuzz"] = fuzz(port, url, args.image_size, args.mutations, args.seed)
            if "hostile" in phases:
                report["hostile"] = hostile(server.pid, port, url, args.image_size,
                                            [int(n) for n in args.addresses.split(",")])
            if "json-rss" in phases:
                report["json_rss"] = json_rss(server.pid, url, args.image_size, args.json_batch)
            report["memory_end"] = memory_of(server.pid)
        finally:
            server.terminate()
            report["exit_status"] = server.wait(timeout=60)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    if report.get("fuzz", {}).get("problems") or report["exit_status"] != 0:
        sys.exit(1)


def print_report(report: dict) -> None:
    def latency(row: dict) -> str:
        return f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms" if "p50_ms" in row else "no successes"

    print(f"dyt-serve stress ({report.get('engine', 'uvicorn')}), {report['arch']} ({report['image_size']} px), DyT")
    if "burst" in report:
        row = report["burst"]
        print(f"burst:     {row['requests']} at once -> {row['statuses']}; {latency(row)}")
    if "sustained" in report:
        load = report["sustained"]
        print(f"sustained: {load['requests']} requests -> {load['statuses']}; {load.get('ok_per_s', 0):.1f}/s; "
              f"{latency(load)}")
    if "fuzz" in report:
        fuzzed = report["fuzz"]
        print(f"fuzz:      {fuzzed['cases']} cases -> {fuzzed['statuses']}; problems: {fuzzed['problems'] or 'none'}")
    for name, row in report.get("hostile", {}).items():
        print(f"{name:23} {json.dumps(row)}")
    if "json_rss" in report:
        print(f"json-rss:  {json.dumps(report['json_rss'])}")
    for key in ("memory_start", "memory_after_burst", "memory_after_sustained", "memory_end"):
        memory = report.get(key)
        if memory:
            print(f"{key:23} RSS {memory['VmRSS']:.0f} MiB (peak {memory['VmHWM']:.0f} MiB); "
                  f"its process tree {memory.get('tree_rss', 0):.0f} MiB")
    print(f"exit status after SIGTERM: {report['exit_status']}")


if __name__ == "__main__":
    main()
