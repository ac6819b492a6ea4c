"""``--calibration FILE.npz``: samples whose activation ranges give static INT8 scales.

The file has ``dyt-check --data``'s format (one array per model input, named after it, first dim =
samples; a ``labels`` array is ignored here). It is validated against the model's inputs before
anything runs (names, ranks, fixed dims, dtypes: every problem in one error), so a bad file fails
before a model is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from ..check_data import CheckData, load_check_data
from ..errors import DytDeployError
from ..specs import TensorSpec

CALIBRATION_BATCH = 8
MAX_CALIBRATION_SAMPLES = 512


def onnx_input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph inputs of ``model`` as specs (named dims as their names)."""
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "dim") for d in tensor.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append(TensorSpec(value.name, dims, dtype))
    return specs


def load_calibration(path: str | Path, specs: list[TensorSpec]) -> CheckData:
    """The calibration samples of ``path`` for a model with inputs ``specs``; a clear error otherwise."""
    path = Path(path)
    if path.suffix != ".npz" and path.is_file():
        raise DytDeployError(f"{path}: a calibration file is a .npz archive (numpy.savez(path, INPUT_NAME=array))")
    try:
        return load_check_data(path, specs)
    except DytDeployError as err:
        raise DytDeployError(f"bad calibration file: {err}") from None


class NpzDataReader(CalibrationDataReader):
    """An onnxruntime ``CalibrationDataReader`` over the first :data:`MAX_CALIBRATION_SAMPLES`
    samples of a calibration file, :data:`CALIBRATION_BATCH` at a time."""

    def __init__(self, data: CheckData) -> None:
        self.data = data
        self._batches: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        limit = min(self.data.samples, MAX_CALIBRATION_SAMPLES)
        self._batches = iter({k: v[start:min(start + CALIBRATION_BATCH, limit)] for k, v in self.data.inputs.items()}
                             for start in range(0, limit, CALIBRATION_BATCH))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        return iter(self._batches)
