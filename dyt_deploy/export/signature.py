"""What a model takes and returns: from the zoo, or from ``--input-shape`` for other models."""

from __future__ import annotations

import re

import onnx_ir as ir
from torch import nn

from ..errors import DytDeployError
from ..models.base import TensorSpec, ZooModel, flatten_outputs  # noqa: F401 (part of this module's API)

# Dynamic dims a user may name with --dynamic, and the sizes verification tries beyond the export's.
KNOWN_DYNAMIC = ("batch", "seq")
EXPORT_SIZES = {"batch": 2, "seq": 16}
ALTERNATE_SIZES = ({"batch": 3, "seq": 11}, {"batch": 1, "seq": 7})
_SHAPE_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.:-]*)=(?P<dims>\d+(,\d+)*)(:(?P<dtype>\w+))?$")
_DTYPES = ("float32", "float16", "int64", "int32", "bool")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...], str]:
    """``NAME=d0,d1,...[:dtype]`` -> (name, dims, dtype); dtype defaults to float32."""
    match = _SHAPE_RE.match(text.strip())
    if match is None:
        raise DytDeployError(
            f"bad --input-shape {text!r}: expected NAME=d0,d1,...[:dtype] with integer dims, "
            "e.g. pixel_values=1,3,224,224 or input_ids=1,128:int64"
        )
    dims = tuple(int(d) for d in match["dims"].split(","))
    dtype = match["dtype"] or "float32"
    if dtype not in _DTYPES:
        raise DytDeployError(f"bad --input-shape {text!r}: dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if 0 in dims:
        raise DytDeployError(f"bad --input-shape {text!r}: dims must be positive")
    return match["name"], dims, dtype


def parse_dynamic(text: str | None) -> tuple[str, ...] | None:
    """``"batch,seq"`` -> ("batch", "seq"); ``"none"`` -> (); None -> None (the default)."""
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in KNOWN_DYNAMIC]
    if unknown:
        raise DytDeployError(f"bad --dynamic {text!r}: known dims are {', '.join(KNOWN_DYNAMIC)} (or 'none')")
    return names


def input_specs(model: nn.Module, input_shapes: list[str] | None, dynamic: tuple[str, ...] | None) -> list[TensorSpec]:
    """The inputs to export with: the zoo model's own, or parsed ``--input-shape`` values.

    Dims named in ``dynamic`` (default: all the model names) stay symbolic; others are fixed at
    their export size. For ``--input-shape`` inputs, dim 0 is "batch" and, for integer inputs
    (token ids), dim 1 is "seq".
    """
    if input_shapes:
        specs = [_spec_from_shape(*parse_input_shape(s)) for s in input_shapes]
    elif isinstance(model, ZooModel):
        specs = model.input_specs()
    else:
        raise DytDeployError(
            "this model is not from the dyt-deploy zoo, so its inputs are unknown; "
            "pass --input-shape NAME=d0,d1,... for each input (e.g. x=1,3,224,224)"
        )
    allowed = KNOWN_DYNAMIC if dynamic is None else dynamic
    return [_fix_static(spec, allowed, _sizes_of(spec, input_shapes)) for spec in specs]


def _spec_from_shape(name: str, dims: tuple[int, ...], dtype: str) -> TensorSpec:
    shape: list[int | str] = list(dims)
    shape[0] = "batch"
    if dtype.startswith("int") and len(shape) >= 2:
        shape[1] = "seq"
    return TensorSpec(name, tuple(shape), dtype, 0, 2)


def _sizes_of(spec: TensorSpec, input_shapes: list[str] | None) -> dict[str, int]:
    """Export sizes: the --input-shape dims where given, else the defaults."""
    sizes = dict(EXPORT_SIZES)
    for text in input_shapes or []:
        name, dims, _ = parse_input_shape(text)
        if name == spec.name:
            sizes.update({d: dims[i] for i, d in enumerate(spec.shape) if isinstance(d, str)})
    return sizes


def _fix_static(spec: TensorSpec, dynamic: tuple[str, ...], sizes: dict[str, int]) -> TensorSpec:
    shape = tuple(d if not isinstance(d, str) or d in dynamic else sizes[d] for d in spec.shape)
    return TensorSpec(spec.name, shape, spec.dtype, spec.low, spec.high)


def sample_sizes(index: int, specs: list[TensorSpec]) -> dict[str, int]:
    """Sizes of the dynamic dims for verification sample ``index``: 0 is the export's, then others."""
    named = {d for spec in specs for d in spec.shape if isinstance(d, str)}
    if index == 0 or not named:
        return dict(EXPORT_SIZES)
    return {**EXPORT_SIZES, **ALTERNATE_SIZES[(index - 1) % len(ALTERNATE_SIZES)]}


def output_names(model: nn.Module, count: int | None = None) -> list[str]:
    if isinstance(model, ZooModel):
        return [spec.name for spec in model.output_specs()]
    return ["output"] if count in (None, 1) else [f"output_{i}" for i in range(count)]


def graph_signature(model: ir.Model) -> tuple[list[dict], list[dict]]:
    """The ONNX graph's inputs and outputs as ``{"name", "dtype", "shape"}`` dicts (named dims as str)."""

    def describe(value: ir.Value) -> dict:
        shape = [d if isinstance(d, int) else str(d) for d in (value.shape or [])]
        return {"name": value.name, "dtype": value.dtype.numpy().name if value.dtype else "unknown", "shape": shape}

    return [describe(v) for v in model.graph.inputs], [describe(v) for v in model.graph.outputs]
