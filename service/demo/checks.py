"""Demo hook of the service: serve a model repository on loopback, query every model with the
standard ``tritonclient`` (JSON and binary tensors, which must agree), then show the live latency
per variant and run a controlled comparison per family.

    python -m service.demo.checks --repository demo-out/repo

``run_service_demo`` is what ``make demo`` (service.demo.run) calls after it has exported the
repository; it returns the figures as a dict and prints tables when given a rich Console.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from dyt_deploy.errors import DytDeployError

from ..engines.uvicorn import serve_in_thread
from ..http.app import create_app
from ..models.served import example_feed
from ..protocol.oip import datatype_of_array, numpy_dtype_of
from ..settings import Settings


def _tritonclient() -> Any:
    try:
        import tritonclient.http as httpclient
    except ImportError:
        raise DytDeployError("the service demo uses tritonclient: pip install 'tritonclient[http]' "
                             "(or the test extra: pip install -e '.[test]')") from None
    return httpclient


def demo_inputs(metadata: dict[str, Any], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs for a model from its metadata: -1 dims become ``batch`` (first) or 8 (others)."""
    inputs = [{"name": t["name"], "dtype": numpy_dtype_of(t["datatype"]).name,
               "shape": [d if d >= 0 else ("batch" if i == 0 else "other") for i, d in enumerate(t["shape"])]}
              for t in metadata["inputs"]]
    return example_feed(inputs, {"batch": batch, "other": 8}, seed)


def demo_batch(seed: int) -> int:
    """The batch size of the demo's request ``seed``: 1, 2, 3, 4, 1, ... (every request is sent as
    JSON and as binary tensors, so both encodings meet batches above 1)."""
    return 1 + seed % 4


def query_model(client: Any, httpclient: Any, name: str, requests: int) -> bool:
    """Send ``requests`` inferences, each as JSON and as binary tensors; True if every pair agrees.
    A refused request raises :class:`DytDeployError` naming the model, the batch and the encoding."""
    metadata = client.get_model_metadata(name)
    agree = True
    for seed in range(requests):
        results = []
        for binary in (False, True):
            feed = demo_inputs(metadata, demo_batch(seed), seed)
            try:
                results.append(_infer(client, httpclient, name, metadata, feed, binary))
            except httpclient.InferenceServerException as err:
                encoding = "binary tensors" if binary else "JSON"
                raise DytDeployError(f"{name} refused a batch-{demo_batch(seed)} request as {encoding}: "
                                     f"{err.message()} (status {err.status()})") from None
        agree &= all(np.array_equal(a, b) for a, b in zip(*results, strict=True))
    return agree


def _infer(client: Any, httpclient: Any, name: str, metadata: dict[str, Any], feed: dict[str, np.ndarray],
           binary: bool) -> list[np.ndarray]:
    """One inference of ``feed`` through tritonclient; the outputs in the metadata's order."""
    tensors = []
    for tensor_name, array in feed.items():
        tensor = httpclient.InferInput(tensor_name, list(array.shape), datatype_of_array(array))
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]]
    result = client.infer(name, tensors, outputs=outputs)
    return [result.as_numpy(o["name"]) for o in metadata["outputs"]]


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def run_service_demo(repository: str | Path, requests: int = 20, rounds: int = 30, batch: int = 1,
                     threads: int = 0, console: Any = None, generate_prompt: str | None = None) -> dict[str, Any]:
    """Serve ``repository`` in the background and exercise it; returns what it measured. With
    ``generate_prompt``, each text-generation model also continues it greedily (``generated``), and the
    labelled examples beside image models are run through every variant (``examples``)."""
    httpclient = _tritonclient()
    with serve_in_thread(create_app(repository, Settings(threads=threads))) as running:
        client = httpclient.InferenceServerClient(url=running.address, network_timeout=300)
        generative = generative_models(_get_json(f"{running.url}/api/live"))  # checked by generating instead
        try:
            index = client.get_model_repository_index()
            ready = [m["name"] for m in index if m["state"] == "READY" and m["name"] not in generative]
            agreement = {name: query_model(client, httpclient, name, requests) for name in ready}
        finally:
            client.close()
        live = _get_json(f"{running.url}/api/live")
        comparisons = [_post_json(f"{running.url}/api/compare", {"family": f["family"], "rounds": rounds,
                                                                 "dims": {"batch": batch}})
                       for f in live["families"] if sum(v["state"] == "READY" for v in f["variants"]) >= 2]
        examples = _get_json(f"{running.url}/api/examples")
        generated = {} if generate_prompt is None else generate_all(running.url, generative, generate_prompt)
    report = {"models": index, "json_binary_agree": agreement, "live": live, "comparisons": comparisons,
              "examples": examples, "prompt": generate_prompt, "generated": generated}
    if console is not None:
        print_report(report, console)
    return report


GENERATED_TOKENS = 120


def generative_models(live: dict[str, Any]) -> list[str]:
    """The ready text-generation models of a ``/api/live`` answer."""
    return [v["model"] for f in live["families"] for v in f["variants"]
            if v["state"] == "READY" and v.get("generation") is not None]


def generate_all(url: str, names: list[str], prompt: str) -> dict[str, str]:
    """Each model's greedy continuation of ``prompt`` (the generate route), the prompt not included."""
    body = {"text_input": prompt, "parameters": {"max_tokens": GENERATED_TOKENS, "temperature": 0.0}}
    return {name: _post_json(f"{url}/v2/models/{name}/generate", body)["text_output"] for name in names}


def examples_table(family: dict[str, Any]) -> Any:
    """Per variant: how many labelled examples it got right, its mean confidence and median latency."""
    from rich.table import Table

    labels = [e["label"] for e in family["examples"]]
    table = Table("model", "variant", "correct", "mean confidence", "median ms",
                  title=f"held-out examples, {family['family']} ({len(labels)} samples)")
    for v in family["variants"]:
        p = v["predictions"]
        right = sum(x["label"] == y for x, y in zip(p, labels, strict=True) if y is not None)
        table.add_row(v["model"], v["series"], f"{right} of {sum(y is not None for y in labels)}",
                      f"{np.mean([x['confidence'] for x in p]):.3f}",
                      f"{np.median([x['latency_ms'] for x in p]):.3f}")
    return table


def print_report(report: dict[str, Any], console: Any) -> None:
    """Rich tables of the demo's figures."""
    from rich.table import Table

    models = Table("model", "state", "JSON = binary", "reason", title="served models (tritonclient)")
    for m in report["models"]:
        agree = report["json_binary_agree"].get(m["name"])
        models.add_row(m["name"], m["state"], "-" if agree is None else ("yes" if agree else "NO"), m["reason"])
    console.print(models)
    for comparison in report["comparisons"]:
        table = Table("model", "variant", "median ms", "p90 ms", "p99 ms",
                      title=f"controlled comparison, {comparison['family']}, {comparison['rounds']} rounds")
        for v in comparison["variants"]:
            s = v["summary"]
            table.add_row(v["model"], v["variant"], f"{s['median_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['p99_ms']:.3f}")
        console.print(table)
        for r in comparison["ratios"]:
            console.print(f"{r['model']} / {r['baseline']}: x{r['ratio']:.3f} [{r['low']:.3f} - {r['high']:.3f}] "
                          f"{r.get('verdict', '')}", highlight=False)
    for family in report.get("examples", {}).get("families", []):
        console.print(examples_table(family))
    for name, text in report.get("generated", {}).items():
        console.print(f"\n[bold]{name}[/], greedy, {GENERATED_TOKENS} tokens after the prompt {report['prompt']!r}:")
        console.print(report["prompt"] + text, markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=20, help="inferences per model (each JSON and binary)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the controlled comparison")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the controlled comparison")
    args = parser.parse_args(argv)
    from rich.console import Console
    console = Console(width=140)
    try:
        report = run_service_demo(args.repository, args.requests, args.rounds, args.batch, console=console)
    except DytDeployError as err:
        console.print(f"service demo: error: {err}")
        return 2
    passed = demo_passed(report)
    console.print("PASSED" if passed else "FAILED")
    return 0 if passed else 1


def demo_passed(report: dict[str, Any]) -> bool:
    """Every model answered, its JSON and binary answers agreed, and every text asked for was generated."""
    agree = report["json_binary_agree"]
    return bool(agree) and all(agree.values()) and all(report.get("generated", {}).values())


if __name__ == "__main__":
    raise SystemExit(main())
