"""Suite-wide setup.

Without a CUDA device, Triton's kernels run through its CPU interpreter. ``TRITON_INTERPRET``
must be set before ``triton.jit`` first runs, i.e. before any test imports
``dyt_deploy.kernels.triton_dyt``, so it is set here, at the root. Below: the session's cache of
torch.onnx.export captures.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Test names for the zoo's timm-name map (as vit_base_patch16_224 -> vit_base): tiny configs of the official
# layouts, so official-format checkpoints can be written and exported in seconds. Fixture: tiny_timm_names.
TINY_TIMM_NAMES = {
    "test_vit_tiny_patch16_32": ("vit_small", {"dim": 64, "depth": 2, "heads": 4, "img_size": 32, "patch_size": 16}),
    "test_convnext_tiny_32": ("convnext_tiny", {"depths": (1, 1, 2, 1), "dims": (16, 32, 48, 64), "img_size": 32}),
}


@pytest.fixture
def tiny_timm_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's timm-name map knows TINY_TIMM_NAMES for the test."""
    from dyt_deploy.models import registry

    for name, mapping in TINY_TIMM_NAMES.items():
        monkeypatch.setitem(registry._TIMM_NAMES, name, mapping)


# -- one torch.onnx.export per distinct small model in a session ---------------------------------
#
# Many test modules export the same tiny model (same class, weights, inputs, dtype and opset) to
# check different things about the result. Capturing a model with torch.onnx.export is
# deterministic and the costliest step of the suite, so the session keeps each capture of a small
# model and hands every later caller its own copy; everything after the capture (forms, folding,
# saving, verification) still runs in each test. Failures are not kept; models above
# _CACHE_MAX_PARAMS (the full-size checkpoints) are captured every time. DYT_TEST_EXPORT_CACHE=0
# turns it off.

_CAPTURE = "torch_to_onnx"  # the exporter's one call of torch.onnx.export (dyt_deploy/export/api.py)
_CACHE_MAX_PARAMS = 5_000_000


def _model_key(model: torch.nn.Module, specs: list, dtype: str, opset: int) -> str:
    digest = hashlib.sha256(f"{type(model).__qualname__}|{model!r}|{getattr(model, 'config', None)!r}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(repr([(s.name, s.shape, s.dtype) for s in specs]).encode())
    digest.update(f"{dtype}|{opset}".encode())
    return digest.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def _one_export_per_model() -> Iterator[None]:
    if os.environ.get("DYT_TEST_EXPORT_CACHE", "1") == "0":
        yield
        return
    import onnx
    import onnx_ir as ir

    from dyt_deploy.export import api

    capture = getattr(api, _CAPTURE)
    kept: dict[str, bytes] = {}

    def capture_once(model, specs, dtype, opset):
        if sum(p.numel() for p in model.parameters()) > _CACHE_MAX_PARAMS:
            return capture(model, specs, dtype, opset)
        key = _model_key(model, specs, dtype, opset)
        if key not in kept:
            kept[key] = ir.serde.serialize_model(capture(model, specs, dtype, opset)).SerializeToString()
        proto = onnx.ModelProto()
        proto.ParseFromString(kept[key])
        return ir.serde.deserialize_model(proto)

    setattr(api, _CAPTURE, capture_once)
    yield
    setattr(api, _CAPTURE, capture)
