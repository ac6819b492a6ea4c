"""AOTInductor runner: a ``model.pt2`` package (``torch._inductor.aoti_compile_and_package``) loaded
with ``torch._inductor.aoti_load_package``: compiled code and weights, no Python tracing at start-up.

dyt-build ``--backend aoti`` writes the package with its IO signature in the package metadata
(:data:`META_INPUTS`, :data:`META_OUTPUTS`, :data:`META_DTYPE`), so the file alone says how to feed
it. Inputs come in as float32 (or any float) numpy arrays and are cast to the package's precision;
outputs come back as float32, as the torch runners do.

Loading a CUDA package crashed the whole process (segmentation fault) with torch 2.11 on an H200
host, even for a Linear+tanh model. So a CUDA package is first loaded and run once in a child
process (``probe``); if that child dies, activation fails with the reason and the caller (the
service, dyt-check) carries on without it.

Before torch opens a package, its archive is inspected (:mod:`dyt_deploy.pt2_safety`): torch's
loader also unpickles any exported program a ``.pt2`` holds, so entries it would unpickle beyond
plain tensors are refused unless ``trust_pickle``. The package's compiled library runs when it loads
(native code, by design): load only packages you built.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dtypes import torch_dtype
from ..models.base import flatten_outputs
from ..pt2_safety import refuse_pickled_entries
from .base import MissingBackendError, Runner, RunnerError, Timer

META_INPUTS, META_OUTPUTS, META_DTYPE = "dyt_deploy.inputs", "dyt_deploy.outputs", "dyt_deploy.dtype"
_DEVICE_KEY = "AOTI_DEVICE_KEY"  # torch's own metadata entry: the device the package was compiled for
PROBE_TIMEOUT_S = 600


def package_metadata(path: str | Path) -> dict[str, str]:
    """The metadata a package carries (torch's ``AOTI_*`` entries and dyt-deploy's), read from the
    archive without loading it; {} when the archive holds none where torch 2.6-2.13 put it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("wrapper_metadata.json")]
            return json.loads(archive.read(names[0])) if names else {}
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def signature_from_metadata(metadata: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """The package's inputs and outputs as dyt.json entries (``{"name", "dtype", "shape"}``); ([], [])
    for a package dyt-build did not write."""
    return (json.loads(metadata.get(META_INPUTS, "[]")), json.loads(metadata.get(META_OUTPUTS, "[]")))


class AotiRunner(Runner):
    """Runs an AOTInductor package (``model.pt2``) on the device it was compiled for.

    Args:
        path: the .pt2 file.
        input_names, output_names: IO names, in the order of the model's arguments and flattened
            outputs [default: from the package metadata dyt-build writes; required for others].
        threads: intra-op threads of CPU packages (``torch.set_num_threads``; 0: torch's default).
        device_index: the CUDA device of a CUDA package (-1: the current one).
        probe: load and run the package once in a child process first, so a crash of the loader
            cannot take this process down [default: for CUDA packages only].
        trust_pickle: load a package whose archive holds pickled entries (unpickling runs code from
            the file; see :mod:`dyt_deploy.pt2_safety`) [default: refuse it].
    """

    name = "aoti"

    def __init__(self, path: str | Path, input_names: list[str] | None = None,
                 output_names: list[str] | None = None, *, threads: int = 0, device_index: int = -1,
                 probe: bool | None = None, trust_pickle: bool = False) -> None:
        super().__init__()
        if threads < 0:
            raise RunnerError(f"threads must be 0 (torch's default) or more, not {threads}")
        self.path, self.threads, self.device_index, self.probe = Path(path), threads, device_index, probe
        self.trust_pickle = trust_pickle
        self.input_names, self.output_names = input_names, output_names
        self.metadata: dict[str, str] = {}
        self.device, self.dtype = "cpu", "fp32"
        self._float_inputs: set[str] = set()
        self._compiled: Any = None

    def _activate(self) -> None:
        if not self.path.is_file():
            raise RunnerError(f"{self.path}: no such AOTInductor package (build one: dyt-build MODEL --backend aoti)")
        self._inspect_archive()
        self.metadata = package_metadata(self.path)
        self.device = "cuda" if self.metadata.get(_DEVICE_KEY) == "cuda" else "cpu"
        self._require_device()
        if self.probe if self.probe is not None else self.device == "cuda":
            probe_in_child(self.path, self.device_index, trust_pickle=self.trust_pickle)
        self._compiled = load_package(self.path, self.device_index)
        self.metadata = {**self.metadata, **self._compiled.get_metadata()}
        self.device = "cuda" if self.metadata.get(_DEVICE_KEY) == "cuda" else "cpu"  # the loaded package's word
        self._read_signature()

    def _inspect_archive(self) -> None:
        """Refuse a file that is no zip archive, or one with pickled entries (unless trusted),
        before torch opens it."""
        if not zipfile.is_zipfile(self.path):
            raise RunnerError(f"{self.path}: torch {torch.__version__} cannot load this AOTInductor package (not a "
                              "zip archive); rebuild it with dyt-build MODEL --backend aoti")
        refuse_pickled_entries(self.path, self.trust_pickle, RunnerError)

    def _require_device(self) -> None:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise MissingBackendError(f"{self.path} was compiled for CUDA and this host has no CUDA device (PyTorch "
                                      f"{torch.__version__}); run it on a GPU host, or build with --device cpu")

    def _read_signature(self) -> None:
        inputs, outputs = signature_from_metadata(self.metadata)
        self.input_names = self.input_names or [t["name"] for t in inputs]
        self.output_names = self.output_names or [t["name"] for t in outputs]
        if not self.input_names or not self.output_names:
            raise RunnerError(f"{self.path}: the package does not name its inputs and outputs (not written by "
                              "dyt-build); pass input_names and output_names")
        self._float_inputs = {t["name"] for t in inputs if t["dtype"].startswith(("float", "bfloat"))}
        self.dtype = self.metadata.get(META_DTYPE, "fp32")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.name}: feed lacks input(s) {', '.join(missing)}")
        args = [self._tensor(name, feed[name]) for name in self.input_names]
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # per calling thread for OpenMP: set where the calls run
        with torch.inference_mode(), Timer() as timer:
            outputs = flatten_outputs(self._compiled(*args))
            if self.device == "cuda":
                torch.cuda.synchronize()
        self.last_inference_time = timer.seconds
        return {name: t.detach().float().cpu().numpy() for name, t in zip(self.output_names, outputs, strict=False)}

    def _tensor(self, name: str, array: np.ndarray) -> Any:
        if name in self._float_inputs or np.issubdtype(array.dtype, np.floating) or array.dtype.kind == "V":
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch_dtype(self.dtype))
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(self.device) if self.device != "cpu" else tensor

    def _deactivate(self) -> None:
        self._compiled = None


def load_package(path: Path, device_index: int = -1) -> Any:
    """``torch._inductor.aoti_load_package``, its failures as one RunnerError line."""
    try:
        return torch._inductor.aoti_load_package(str(path), device_index=device_index)
    except Exception as err:  # torch raises RuntimeError, ValueError, zip and pickle errors here
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunnerError(f"{path}: torch {torch.__version__} cannot load this AOTInductor package ({reason}); "
                          "rebuild it with dyt-build MODEL --backend aoti on this torch version") from None


def probe_in_child(path: Path, device_index: int = -1, timeout_s: float = PROBE_TIMEOUT_S,
                   trust_pickle: bool = False) -> None:
    """Load ``path`` and run it once on metadata-shaped inputs in a child Python process; a child
    that crashes, fails or hangs is a RunnerError saying how, and this process is untouched."""
    command = [sys.executable, "-m", __name__, str(path), str(device_index), "trust" if trust_pickle else "refuse"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RunnerError(f"{path}: loading and running the package in a child process took over {timeout_s:.0f} s"
                          ) from None
    if done.returncode == 0:
        return
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    if done.returncode < 0:
        name = _signal_name(-done.returncode)
        raise RunnerError(f"{path}: loading the package killed a child process ({name}: {last}); not loaded here. "
                          "Known with CUDA packages on torch 2.11: build with --device cpu, or use another "
                          "backend (TensorRT, ONNX)")
    raise RunnerError(f"{path}: the package failed in a child process: {last}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _probe_main(argv: list[str]) -> int:
    """The child's side of :func:`probe_in_child`: load, run once (every named dim 2), exit 0."""
    path, device_index = Path(argv[0]), int(argv[1]) if len(argv) > 1 else -1
    trust_pickle = len(argv) > 2 and argv[2] == "trust"
    runner = AotiRunner(path, device_index=device_index, probe=False, trust_pickle=trust_pickle)
    with runner:
        inputs, _ = signature_from_metadata(runner.metadata)
        feed = {t["name"]: _zeros(t) for t in inputs}
        if feed:
            runner.infer(feed)
    return 0


def _zeros(tensor: dict) -> np.ndarray:
    shape = [d if isinstance(d, int) else 2 for d in tensor["shape"]]
    return np.zeros(shape, np.float32 if tensor["dtype"].startswith(("float", "bfloat")) else tensor["dtype"])


if __name__ == "__main__":
    try:
        sys.exit(_probe_main(sys.argv[1:]))
    except Exception as error:  # the parent shows this line
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
