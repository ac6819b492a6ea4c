"""Helpers of the service tests: request builders, the limits the strict server is configured with,
and the background server (service.background) re-exported."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.background import BackgroundServer, serve_in_thread

__all__ = ["BackgroundServer", "serve_in_thread"]

API_KEY = "test-key-123"
STRICT_BODY_LIMIT = 256 << 10
STRICT_IN_FLIGHT = 3
STRICT_TIMEOUT_S = 2.0
STRICT_BODY_TIMEOUT_S = 1.0
BATCH_DELAY_US = 150_000


def images(batch: int = 2, seed: int = 0) -> np.ndarray:
    """A float32 batch the ViTs take: (batch, 3, 32, 32)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def json_request(array: np.ndarray, name: str = "pixel_values", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.ravel().tolist()}]}


class SlowDecoder:
    """A decoder that sleeps before each step (to leave time to disconnect mid-generation)."""

    def __init__(self, decoder: Any, seconds: float) -> None:
        self.decoder, self.seconds = decoder, seconds
        self.vocab_size, self.max_length = decoder.vocab_size, decoder.max_length

    def __call__(self, *args: Any) -> Any:
        time.sleep(self.seconds)
        return self.decoder(*args)
