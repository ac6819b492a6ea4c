"""dyt-serve --workers 2: statistics, /metrics and the live comparison add up over both worker
processes (a real dyt-serve process on loopback, plain HTTP without keep-alive so that the
kernel hands connections to both workers)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from service_testlib import images, json_request

from service.stats import STATS_FILE, MemoryStatsStore, SqliteStatsStore, merge_entries

REQUESTS = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workers(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """dyt-serve --workers 2 on a free port; its shared folder given as $PROMETHEUS_MULTIPROC_DIR,
    holding an earlier run's statistics (which must not count)."""
    shared = tmp_path_factory.mktemp("multiproc")
    stale = SqliteStatsStore(shared / STATS_FILE)
    stale.publish("vit-dyt", "pid-1", 7, entry(7, 70), [(1, 1.0, 0.1, 0.2)])
    stale.close()
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "DYT_THREADS": "1", "DYT_WARMUP_RUNS": "1"}
    command = [sys.executable, "-m", "service.cli", "--repository", str(repository), "--port", str(port),
               "--workers", "2", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, shared
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "dyt-serve --workers 2 exited"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("dyt-serve --workers 2 did not become ready")


def infer_once(url: str, seed: int) -> int:
    body = json_request(images(batch=1, seed=seed))
    with httpx.Client(timeout=30, headers={"Connection": "close"}) as client:
        return client.post(f"{url}/v2/models/vit-dyt/infer", json=body).status_code


def test_a_hundred_requests_over_two_workers_count_a_hundred(workers: tuple[str, Path]) -> None:
    url, shared = workers
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda seed: infer_once(url, seed), range(REQUESTS)))
    assert statuses == [200] * REQUESTS
    for _ in range(3):  # whichever worker answers, the numbers are the same
        stats = httpx.get(f"{url}/v2/models/vit-dyt/stats").json()["model_stats"][0]
        assert stats["inference_count"] == REQUESTS
        assert stats["execution_count"] == REQUESTS
        assert stats["inference_stats"]["success"]["count"] == REQUESTS
    everything = {m["name"]: m for m in httpx.get(f"{url}/v2/models/stats").json()["model_stats"]}
    assert everything["vit-dyt"]["inference_count"] == REQUESTS
    assert everything["vit-layernorm"]["inference_count"] == 0
    per_worker = per_source_counts(shared / STATS_FILE)
    assert len(per_worker) == 2, per_worker  # both workers answered some
    assert sum(per_worker.values()) == REQUESTS


def per_source_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT source, entry FROM entries WHERE model = 'vit-dyt'").fetchall()
    return {source: json.loads(entry)["inference_count"] for source, entry in rows}


def test_metrics_and_live_figures_cover_both_workers(workers: tuple[str, Path]) -> None:
    url, _ = workers
    text = httpx.get(f"{url}/metrics").text
    line = next(li for li in text.splitlines()
                if li.startswith("dyt_inference_requests_total{") and 'model="vit-dyt"' in li and "success" in li)
    assert float(line.rsplit(" ", 1)[1]) == REQUESTS
    count = next(li for li in text.splitlines()
                 if li.startswith("dyt_request_duration_seconds_count") and 'model="vit-dyt"' in li)
    assert float(count.rsplit(" ", 1)[1]) == REQUESTS
    live = httpx.get(f"{url}/api/live").json()
    variants = {v["model"]: v for f in live["families"] for v in f["variants"]}
    assert variants["vit-dyt"]["total_count"] == REQUESTS
    assert variants["vit-dyt"]["count"] == REQUESTS  # the window holds every worker's samples


def entry(count: int, ns: int, last: int = 0) -> dict:
    duration = {"count": count, "ns": ns}
    return {"name": "", "version": "", "last_inference": last, "inference_count": count, "execution_count": count,
            "inference_stats": {"success": duration, "queue": duration},
            "batch_stats": [{"batch_size": 1, "compute_input": duration, "compute_infer": duration,
                             "compute_output": duration}]}


def test_merged_entries_add_up_and_stale_publishes_never_count_twice(tmp_path: Path) -> None:
    merged = merge_entries("m", "1", [entry(3, 30, last=5), entry(4, 40, last=9)])
    assert merged["inference_count"] == 7 and merged["last_inference"] == 9
    assert merged["inference_stats"]["success"] == {"count": 7, "ns": 70}
    assert merged["batch_stats"][0]["compute_infer"] == {"count": 7, "ns": 70}
    for store in (MemoryStatsStore(4), SqliteStatsStore(tmp_path / "s.sqlite", 4)):
        store.publish("m", "a", 2, entry(2, 20), [(1, 1.0, 0.1, 0.2), (2, 2.0, 0.1, 0.2)])
        store.publish("m", "a", 1, entry(1, 10), [(1, 1.0, 0.1, 0.2)])  # late, older: ignored
        store.publish("m", "b", 1, entry(1, 10), [(1, 3.0, 0.3, 0.4)])
        assert sorted(e["inference_count"] for e in store.entries("m")) == [1, 2]
        assert [s[1] for s in store.window("m", 2)] == [2.0, 3.0]
