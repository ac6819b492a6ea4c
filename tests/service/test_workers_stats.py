"""dyt-serve --workers 2: statistics, /metrics and the live comparison add up over both worker
processes (a real dyt-serve process on loopback, plain HTTP without keep-alive so that the
kernel hands connections to both workers); so do the generate routes' statistics (a second
dyt-serve --workers 2 on tiny llama decoders)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from service_testlib import free_port, images, json_request, wait_ready

from service.telemetry.generation_stats import GenerationRecord, GenerationStats, quantiles
from service.telemetry.stats import STATS_FILE, SqliteStatsStore, merge_entries

REQUESTS = 100
GENERATIONS = 24
GENERATED_TOKENS = 5
PROMPT = "DyT is"



@pytest.fixture(scope="module")
def workers(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """dyt-serve --workers 2 on a free port; its shared folder given as $PROMETHEUS_MULTIPROC_DIR,
    holding an earlier run's statistics (which must not count)."""
    shared = tmp_path_factory.mktemp("multiproc")
    stale = SqliteStatsStore(shared / STATS_FILE)
    stale.publish("vit-dyt", "pid-1", 7, entry(7, 70), [(1, 1.0, 0.1, 0.2)])
    stale.close()
    yield from serve_workers(repository, shared)


@pytest.fixture(scope="module")
def textgen_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repo/llm-dyt and repo/llm-rmsnorm: tiny zoo llama decoders (family llama_gen, byte vocabulary)
    exported with task text-generation."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    root = tmp_path_factory.mktemp("textgen-workers")
    for norm in ("dyt", "rmsnorm"):
        model = create_model("llama_tiny", norm=norm, seed=0, dim=32, depth=1, heads=2, ffn_dim=64, vocab_size=256,
                             max_seq_len=64)
        save_checkpoint(model, root / f"{norm}.pt")
        export_onnx(root / f"{norm}.pt", repository=root / "repo", name=f"llm-{norm}", family="llama_gen",
                    task="text-generation", verify=False)
    return root / "repo"


@pytest.fixture(scope="module")
def generation_workers(textgen_repository: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[tuple[str, Path]]:
    """dyt-serve --workers 2 serving the decoders; its shared folder holds an earlier run's
    generation statistics (which must not count)."""
    shared = tmp_path_factory.mktemp("multiproc-generate")
    stale = SqliteStatsStore(shared / STATS_FILE)
    stale.publish_generation("llm-dyt", "pid-1", 3, generation_entry(finished=3, running=0, pid=1),
                             [(1, "first_token", 1.0, 9.0)])
    stale.close()
    yield from serve_workers(textgen_repository, shared)


def serve_workers(repository: Path, shared: Path) -> Iterator[tuple[str, Path]]:
    """Run dyt-serve --workers 2 on ``repository`` with ``shared`` as its shared folder; yield its
    URL and that folder; stop it."""
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


def generate_once(url: str, index: int) -> dict:
    """One generation of GENERATED_TOKENS on llm-dyt on a new connection: /generate for even
    ``index``, /generate_stream for odd ones; the answer's summary fields."""
    body = {"text_input": f"{PROMPT} {index}", "parameters": {"max_tokens": GENERATED_TOKENS}}
    with httpx.Client(timeout=60, headers={"Connection": "close"}) as client:
        if index % 2 == 0:
            answer = client.post(f"{url}/v2/models/llm-dyt/generate", json=body)
            assert answer.status_code == 200, answer.text
            return answer.json()
        with client.stream("POST", f"{url}/v2/models/llm-dyt/generate_stream", json=body) as stream:
            assert stream.status_code == 200, stream.read()
            events = [json.loads(line[len("data: "):]) for line in stream.iter_lines() if line.startswith("data: ")]
        return events[-1]


def generation_samples(path: Path) -> tuple[dict[str, int], dict[str, list[float]]]:
    """The shared file's llm-dyt generation entries (finished by length, per source) and every
    sample value by kind."""
    with sqlite3.connect(path) as db:
        entries = db.execute("SELECT source, entry FROM generation_entries WHERE model = 'llm-dyt'").fetchall()
        rows = db.execute("SELECT kind, value FROM generation_samples WHERE model = 'llm-dyt' "
                          "ORDER BY at, source, seq").fetchall()
    values: dict[str, list[float]] = {"first_token": [], "gap": [], "tokens_per_s": []}
    for kind, value in rows:
        values[kind].append(value)
    return {source: json.loads(text)["finished"]["length"] for source, text in entries}, values


def test_generations_over_two_workers_add_up_in_live_figures(generation_workers: tuple[str, Path]) -> None:
    url, shared = generation_workers
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda index: generate_once(url, index), range(GENERATIONS)))
    assert all(a["finish_reason"] == "length" and a["output_tokens"] == GENERATED_TOKENS for a in answers)
    prompt_tokens = sum(a["prompt_tokens"] for a in answers)
    per_worker, values = generation_samples(shared / STATS_FILE)
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker  # both workers generated
    assert sum(per_worker.values()) == GENERATIONS
    assert len(values["first_token"]) == len(values["tokens_per_s"]) == GENERATIONS
    assert len(values["gap"]) == GENERATIONS * (GENERATED_TOKENS - 1)
    for _ in range(4):  # whichever worker answers (and the dashboard reads /api/live), the same figures
        live = httpx.get(f"{url}/api/live", headers={"Connection": "close"}).json()
        family = next(f for f in live["families"] if f["family"] == "llama_gen")
        stats = {v["model"]: v["generation"] for v in family["variants"]}["llm-dyt"]
        assert stats["requests"] == GENERATIONS and stats["finish_reasons"]["length"] == GENERATIONS
        assert stats["running"] == 0 and stats["failed"] == 0 and stats["cancelled"] == 0
        assert stats["output_tokens"] == GENERATIONS * GENERATED_TOKENS
        assert stats["prompt_tokens"] == prompt_tokens
        assert stats["time_to_first_token_ms"] == pytest.approx(quantiles(values["first_token"], 1e3))
        assert stats["inter_token_ms"] == pytest.approx(quantiles(values["gap"], 1e3))
        assert stats["tokens_per_s"] == pytest.approx(quantiles(values["tokens_per_s"]))
        ratio = family["ratios"][0]  # llm-rmsnorm generated nothing: no ratio yet
        assert ratio["model"] == "llm-dyt" and ratio["inter_token"] is None


def generation_entry(finished: int, running: int, pid: int, tokens: int = 0) -> dict:
    return {"finished": {"stop": 0, "length": finished, "cancelled": 0}, "failed": 0, "running": running,
            "prompt_tokens": tokens, "output_tokens": tokens, "pid": pid}


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_generation_stores_merge_two_sources(tmp_path: Path) -> None:
    store = SqliteStatsStore(tmp_path / "s.sqlite", 3)
    gone = dead_pid()  # source b's process: its running generations no longer count
    store.publish_generation("m", "a", 2, generation_entry(2, 1, os.getpid()),
                             [(1, "first_token", 1.0, 0.1), (2, "gap", 1.0, 0.01), (3, "gap", 1.0, 0.02)])
    store.publish_generation("m", "a", 1, generation_entry(1, 0, os.getpid()), [(1, "first_token", 1.0, 0.1)])
    store.publish_generation("m", "b", 1, generation_entry(5, 2, gone),
                             [(1, "first_token", 2.0, 0.3), (2, "gap", 2.0, 0.03), (3, "gap", 2.0, 0.04),
                              (4, "tokens_per_s", 2.0, 50.0)])
    store.publish_generation("m", "b", 2, generation_entry(6, 2, gone), [(5, "gap", 3.0, 0.05)])
    store.publish_generation("other", "a", 1, generation_entry(9, 0, os.getpid()), [(1, "gap", 3.0, 9.0)])
    assert sorted(e["finished"]["length"] for e in store.generation_entries("m")) == [2, 6]  # late, older: ignored
    window = store.generation_window("m", 3)
    assert window == {"first_token": [0.1, 0.3], "gap": [0.03, 0.04, 0.05], "tokens_per_s": [50.0]}
    assert store.generation_window("m", 2)["gap"] == [0.04, 0.05]  # the newest, oldest first

    stats = GenerationStats(window=3)
    stats.share(store, "m", "c")
    stats.started()
    stats.record(GenerationRecord(4, 3, "stop", 0.2, 0.5, [0.06, 0.07]))
    summary = stats.summary()
    assert summary["requests"] == 2 + 6 + 1 and summary["finish_reasons"] == {"stop": 1, "length": 8, "cancelled": 0}
    assert summary["running"] == 1  # source a's; b's process is gone
    assert summary["prompt_tokens"] == 4 and summary["output_tokens"] == 3
    assert stats.samples() == ([0.1, 0.3, 0.2], [0.05, 0.06, 0.07])
    assert summary["time_to_first_token_ms"] == pytest.approx(quantiles([0.1, 0.3, 0.2], 1e3))
    assert summary["tokens_per_s"] == pytest.approx(quantiles([50.0, 6.0]))


def test_one_process_keeps_generation_statistics_in_memory() -> None:
    stats = GenerationStats(window=2)
    for gaps in ([0.01], [0.02], [0.03]):
        stats.started()
        stats.record(GenerationRecord(1, 2, "length", 0.1, 0.2, gaps))
    stats.started()
    summary = stats.summary()
    assert stats.shared is None and summary["requests"] == 3 and summary["running"] == 1
    assert stats.samples() == ([0.1, 0.1], [0.02, 0.03])


def test_merged_entries_add_up_and_stale_publishes_never_count_twice(tmp_path: Path) -> None:
    merged = merge_entries("m", "1", [entry(3, 30, last=5), entry(4, 40, last=9)])
    assert merged["inference_count"] == 7 and merged["last_inference"] == 9
    assert merged["inference_stats"]["success"] == {"count": 7, "ns": 70}
    assert merged["batch_stats"][0]["compute_infer"] == {"count": 7, "ns": 70}
    for store in (SqliteStatsStore(tmp_path / "s.sqlite", 4),):
        store.publish("m", "a", 2, entry(2, 20), [(1, 1.0, 0.1, 0.2), (2, 2.0, 0.1, 0.2)])
        store.publish("m", "a", 1, entry(1, 10), [(1, 1.0, 0.1, 0.2)])  # late, older: ignored
        store.publish("m", "b", 1, entry(1, 10), [(1, 3.0, 0.3, 0.4)])
        assert sorted(e["inference_count"] for e in store.entries("m")) == [1, 2]
        assert [s[1] for s in store.window("m", 2)] == [2.0, 3.0]
