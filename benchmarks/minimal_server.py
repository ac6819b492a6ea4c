"""The least an HTTP inference server can do, as a floor for ``service_latency.py``.

One model folder behind uvicorn (uvloop, httptools) and a bare ASGI app: read the body, view the
binary tensor in place (``np.frombuffer``, no validation), run the runner ``dyt-serve`` makes for
the folder on one worker thread (as dyt-serve does, so the event loop stays free), answer the
binary output. No routing, no gates, no statistics. Whatever ratio this server reaches against the
in-process runner is what any Python server pays on the machine (client, HTTP, two thread hand-offs).

    python benchmarks/minimal_server.py REPOSITORY/MODEL PORT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from dyt_deploy.runners import runner_for_folder
from service.models.worker import WorkerThread


def make_app(folder: Path) -> Any:
    """The ASGI app: ``GET .../ready`` answers 200; any POST is one binary-extension inference."""
    manifest = json.loads((folder / "dyt.json").read_text())
    name = manifest["inputs"][0]["name"]
    runner = runner_for_folder(folder, spin=False)
    runner.activate()
    worker = WorkerThread("model")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            return await send({"type": "http.response.body", "body": b"{}"})
        body = b"".join(chunks)
        header_length = int(dict(scope["headers"])[b"inference-header-content-length"])
        request = json.loads(body[:header_length])
        tensor = request["inputs"][0]
        array = np.frombuffer(memoryview(body)[header_length:], np.float32).reshape(tensor["shape"])
        outputs = await worker.call(runner.infer, {name: array})
        entries, blobs = [], []
        for output, value in outputs.items():
            blobs.append(value.tobytes())
            entries.append({"name": output, "datatype": "FP32", "shape": list(value.shape),
                            "parameters": {"binary_data_size": len(blobs[-1])}})
        head = json.dumps({"model_name": folder.name, "outputs": entries}).encode()
        answer = head + b"".join(blobs)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/octet-stream"), (b"content-length", str(len(answer)).encode()),
            (b"inference-header-content-length", str(len(head)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
