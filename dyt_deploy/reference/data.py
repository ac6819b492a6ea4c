"""The reference twins' data, present without a download.

- image: scikit-learn's handwritten digits (``load_digits``: 1797 8x8 images, 10 classes, shipped
  inside the scikit-learn wheel), split by seed (stratified), scaled to [-1, 1] and upscaled
  bilinearly to a patch-friendly size.
- text: the source of a pinned list of Python standard-library modules, read from the running
  interpreter's stdlib, as bytes (one token per byte, vocabulary 256). Another Python version ships
  other sources, so it gives another corpus: the card records the version and the corpus sha256.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DytDeployError

# Pure-Python modules present in every CPython 3.10+ (paths relative to the stdlib folder), in this order.
STDLIB_MODULES = (
    "argparse.py", "ast.py", "calendar.py", "collections/__init__.py", "configparser.py", "csv.py",
    "dataclasses.py", "datetime.py", "difflib.py", "enum.py", "fractions.py", "functools.py", "gettext.py",
    "heapq.py", "inspect.py", "ipaddress.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py",
    "pathlib.py", "pprint.py", "random.py", "shutil.py", "statistics.py", "string.py", "tarfile.py",
    "textwrap.py", "threading.py", "tokenize.py", "typing.py", "zipfile.py",
)
BYTE_VOCAB = 256


@dataclass(frozen=True)
class Split:
    """Inputs and labels of the training and the held-out set."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor


def digits_split(seed: int, img_size: int, test_fraction: float = 0.2) -> Split:
    """The digits, split by ``seed`` (stratified), as ``(N, 1, img_size, img_size)`` float32 in [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(digits.images, digits.target, test_size=test_fraction,
                                                        random_state=seed, stratify=digits.target)
    return Split(_digit_pixels(train_x, img_size), torch.from_numpy(train_y).long(),
                 _digit_pixels(test_x, img_size), torch.from_numpy(test_y).long())


def _digit_pixels(images: np.ndarray, img_size: int) -> torch.Tensor:
    """8x8 images of 0..16 -> ``(N, 1, img_size, img_size)`` in [-1, 1], upscaled bilinearly."""
    pixels = torch.from_numpy(images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    if img_size == pixels.shape[-1]:
        return pixels.contiguous()
    return F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False).contiguous()


def stdlib_folder() -> Path:
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_corpus(modules: tuple[str, ...] = STDLIB_MODULES) -> bytes:
    """The sources of ``modules`` from this interpreter's stdlib, concatenated in order."""
    folder = stdlib_folder()
    missing = [name for name in modules if not (folder / name).is_file()]
    if missing:
        raise DytDeployError(f"the text corpus needs the stdlib sources {', '.join(missing)}, not found in {folder}; "
                             "this Python installation has no .py sources (install its full stdlib)")
    return b"".join((folder / name).read_bytes() for name in modules)


def corpus_record(corpus: bytes, modules: tuple[str, ...] = STDLIB_MODULES) -> dict:
    """What the card says of the text corpus: where it comes from and what pins it."""
    return {"source": "Python standard-library sources", "modules": list(modules),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "bytes": len(corpus), "sha256": hashlib.sha256(corpus).hexdigest(),
            "note": "read from the running interpreter's stdlib: another Python version gives another corpus"}


def text_split(corpus: bytes, seq_len: int, test_fraction: float = 0.1, max_windows: int | None = None) -> Split:
    """Byte tokens: the first part of the corpus to train on (as one stream, windows drawn later), the
    last ``test_fraction`` as non-overlapping windows of ``seq_len`` inputs and their next bytes (the
    first ``max_windows`` of them; None: all)."""
    tokens = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).long()
    cut = int(len(tokens) * (1 - test_fraction))
    train, test = tokens[:cut], tokens[cut:]
    windows = min((len(test) - 1) // seq_len, max_windows or len(test))
    if windows < 1:
        raise DytDeployError(f"the text corpus is too small for windows of {seq_len} bytes")
    inputs = test[:windows * seq_len].view(windows, seq_len)
    labels = test[1:windows * seq_len + 1].view(windows, seq_len)
    return Split(train, train, inputs.contiguous(), labels.contiguous())
