"""The floor under the served latency: what HTTP costs with no model at all.

One 602 KB binary-extension POST (a 1x3x224x224 FP32 image) and a 4 KB answer over loopback,
median of ``--calls``, against uvicorn (in a thread of this process) serving:
- ``bare``: an ASGI app that reads the body and answers;
- ``gated``: the same behind the service's middleware (API key, body gate, in-flight bound, timeout);
- ``fastapi``/``fastapi gated``: a FastAPI route that reads the body, without and with them;
- ``tritonclient``: tritonclient.http's whole call (request building, binary response parsing)
  against a canned inference answer.

Set beside ``service_latency.py``'s "outside_server" figure, it says how much of the served
overhead is HTTP and the client, and how much is scheduling between processes.

    python benchmarks/service_floor.py [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response

from service.engines.uvicorn import serve_in_thread
from service.http.admission import ApiKeyGate, BodyGate
from service.http.middleware import InFlightLimit, RequestTimeout
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics

IMAGE = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
HEADER = json.dumps({"model_name": "x", "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 1000],
                                                     "parameters": {"binary_data_size": 4000}}]}).encode()
ANSWER = HEADER + np.zeros(1000, np.float32).tobytes()
ANSWER_HEADERS = [(b"content-length", str(len(ANSWER)).encode()), (b"content-type", b"application/octet-stream"),
                  (b"inference-header-content-length", str(len(HEADER)).encode())]


async def bare(scope: dict, receive: Any, send: Any) -> None:
    """Read the whole body, send the canned answer."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": ANSWER_HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def gated(app: Any) -> Any:
    """``app`` behind the service's middleware, in the service's order."""
    metrics, settings = ServiceMetrics(), Settings()
    app = RequestTimeout(app, settings.request_timeout_s, metrics)
    app = InFlightLimit(app, settings.max_in_flight, settings.retry_after_s, metrics)
    app = BodyGate(app, settings, metrics)
    return ApiKeyGate(app, None, False, metrics)


def fastapi_app() -> Any:
    app = FastAPI()

    @app.post("/v2/models/x/infer")
    async def infer(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, headers={k.decode(): v.decode() for k, v in ANSWER_HEADERS[1:]})

    return app


def raw_calls(app: Any, calls: int) -> float:
    """Median ms of ``calls`` POSTs over one raw keep-alive socket."""
    body = IMAGE.tobytes()
    request = (b"POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 0\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    times = []
    with serve_in_thread(app) as running:
        host, port = running.address.split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(calls):
                started = time.perf_counter()
                raw.sendall(request)
                got = b""
                while not got.endswith(ANSWER):
                    got += raw.recv(1 << 16)
                times.append(time.perf_counter() - started)
    return statistics.median(times[calls // 10:]) * 1e3


def tritonclient_calls(calls: int) -> float:
    import tritonclient.http as httpclient

    times = []
    with serve_in_thread(bare) as running:
        client = httpclient.InferenceServerClient(running.address)
        for _ in range(calls):
            started = time.perf_counter()
            tensor = httpclient.InferInput("pixel_values", list(IMAGE.shape), "FP32")
            tensor.set_data_from_numpy(IMAGE, binary_data=True)
            result = client.infer("x", [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
            result.as_numpy("logits")
            times.append(time.perf_counter() - started)
        client.close()
    return statistics.median(times[calls // 10:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    rows = {"bare": raw_calls(bare, args.calls), "gated": raw_calls(gated(bare), args.calls),
            "fastapi": raw_calls(fastapi_app(), args.calls), "fastapi gated": raw_calls(gated(fastapi_app()),
                                                                                        args.calls),
            "tritonclient (bare server)": tritonclient_calls(args.calls)}
    for name, ms in rows.items():
        print(f"{name:28} p50 {ms:.3f} ms")


if __name__ == "__main__":
    main()
