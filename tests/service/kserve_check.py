"""Run by tests/service/test_kserve_sdk.py inside the KServe SDK's own environment (``make kserve-env``):
KServe's Open Inference Protocol v2 REST client (``kserve.InferenceRESTClient``) against a running
dyt-serve. Prints one JSON object: liveness, readiness, model readiness, and the outputs of one
inference sent as JSON and one sent with binary tensors.

    .venv-kserve/bin/python tests/service/kserve_check.py URL MODEL INPUTS.npy
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest


def request(model: str, name: str, array: np.ndarray, binary: bool) -> InferRequest:
    tensor = InferInput(name=name, shape=list(array.shape), datatype="FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=f"kserve-{'binary' if binary else 'json'}")


async def check(url: str, model: str, array: np.ndarray) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
    try:
        found = {"live": await client.is_server_live(url), "ready": await client.is_server_ready(url),
                 "model_ready": await client.is_model_ready(url, model)}
        for binary in (False, True):
            answer = await client.infer(url, request(model, "pixel_values", array, binary), model_name=model)
            output = answer.outputs[0]
            found["binary" if binary else "json"] = {"model_name": answer.model_name, "id": answer.id,
                                                     "name": output.name, "shape": list(output.shape),
                                                     "data": output.as_numpy().ravel().tolist()}
        return found
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(check(sys.argv[1], sys.argv[2], np.load(sys.argv[3])))))
