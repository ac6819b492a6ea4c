""".pt2 archives inspected before torch opens them: refuse the entries torch would unpickle.

A ``.pt2`` file (``torch.export.save``, or an AOTInductor package) is a zip archive. Most of it is
data torch never unpickles: JSON (the program, the payload configs, metadata) and raw tensor bytes
(``data/weights/weight_N``, ``data/constants/tensor_N``, read with ``torch.frombuffer``). But
``torch.export.load`` and ``torch._inductor.aoti_load_package`` (torch 2.6-2.13) also unpickle:

- a weight or tensor constant whose payload config says ``use_pickle`` (tensor subclasses):
  ``torch.load(weights_only=False)``, the full unpickler;
- an opaque constant (``opaque_obj_N``): ``pickle.loads``; a TorchScript object (``custom_obj_N``):
  TorchScript's unpickler;
- the sample inputs (``data/sample_inputs/MODEL.pt``) and the legacy weight/constant files
  (``data/weights/MODEL.pt``, ``data/constants/MODEL.pt``, and the pre-2.7 archive's
  ``serialized_*.pt`` entries): ``torch.load(weights_only=True)``, and when that fails,
  ``torch.load(weights_only=False)``.

So a hostile archive runs its code inside those calls, before any caller can refuse the file.
:func:`refuse_pickled_entries` reads the archive with :mod:`zipfile` first and, unless trusted,
refuses it when any entry would reach a code-running unpickler:

- the first group is refused outright: the full unpickler runs whatever the pickle names, and
  ``torch.export.save`` writes such entries only for tensor subclasses and opaque objects, which a
  model dyt-deploy reads never needs;
- the second group is allowed when torch's weights-only unpickler (its loader for untrusted files,
  the one dyt-deploy's ``.pt`` reading relies on) loads it here: torch's own first try then
  succeeds too, so its full-unpickler fallback is never reached. Plain tensors, tuples and dicts
  (every program ``torch.export.save`` writes from tensors) pass;
- any other entry that parses completely as a pickle (:func:`pickletools.genops`) and names code
  (``GLOBAL``, ``REDUCE``, ...) is held to the second rule too, whatever its name, so an entry a
  later torch starts unpickling is not waved through. Entries a payload config lists as raw
  tensor bytes are data and are not parsed.

An archive :mod:`zipfile` cannot read, or one holding two entries of the same name (two readers
could each pick another one), is refused as well: only an archive inspected entry by entry is
handed to torch. An AOTInductor package also holds a compiled shared library, which runs when the
package loads: that is native code by design, which no inspection makes safe, so serve only
packages you built (``dyt-build --backend aoti``).
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import zipfile
from collections import Counter
from dataclasses import dataclass

from .errors import CheckpointError, DytDeployError, first_line

# Pickle opcodes that import a name or call something: a pickle without them builds only numbers,
# strings, bytes, lists, tuples, dicts and sets.
CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD",
                          "EXT1", "EXT2", "EXT4"})
_CONFIG_SUFFIXES = ("_weights_config.json", "_constants_config.json")
_WEIGHTS_ONLY_SUFFIXES = (".pt",)  # sample inputs, legacy weight/constant files, pre-2.7 serialized_*.pt
_FULL_UNPICKLE_PREFIXES = ("opaque_obj_", "custom_obj_")
_PROTOCOLS = range(2, 6)
# What zipfile raises for a file it cannot read as an archive (not a zip, damaged, an unknown compression)
UNREADABLE = (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class PickledEntry:
    """An archive entry that would reach a code-running unpickler: its name and what it is."""

    name: str
    what: str


def refuse_pickled_entries(path: str | os.PathLike, trust_pickle: bool = False,
                           error: type[DytDeployError] = CheckpointError) -> None:
    """Raise ``error`` (one line: what was found, what to do) when the ``.pt2`` archive at ``path``
    holds entries torch would unpickle with code-running unpicklers; nothing when ``trust_pickle``."""
    if trust_pickle:
        return
    try:
        found = pickled_entries(path)
    except UNREADABLE as err:
        raise error(f"{path}: not a readable .pt2 archive (a zip archive; {type(err).__name__}: {first_line(err)}); "
                    "re-save or re-download it") from None
    if not found:
        return
    shown = "; ".join(f"{entry.name}: {entry.what}" for entry in found[:3])
    more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
    raise error(f"{path}: the archive holds pickled Python objects ({shown}{more}). Loading it would run code "
                "from the file, so it is refused. If you made or trust this file, allow it with --trust-pickle "
                "(Python: trust_pickle=True); better, export it again from plain tensors")


def pickled_entries(path: str | os.PathLike) -> list[PickledEntry]:
    """Every entry of the archive that torch would unpickle beyond what its weights-only unpickler
    allows (see the module docstring). Raises one of :data:`UNREADABLE` for a file :mod:`zipfile`
    cannot read."""
    with zipfile.ZipFile(path) as archive:
        return _inspect(archive)


def _inspect(archive: zipfile.ZipFile) -> list[PickledEntry]:
    infos = [info for info in archive.infolist() if not info.is_dir()]
    twice = sorted(name for name, count in Counter(info.filename for info in infos).items() if count > 1)
    if twice:
        return [PickledEntry(name, "an entry name that occurs twice") for name in twice]
    full, raw = _configured_payloads(archive, infos)
    found = [PickledEntry(name, what) for name, what in sorted(full.items())]
    for info in infos:
        if info.filename not in full and info.filename not in raw:
            what = _entry_problem(archive, info)
            if what:
                found.append(PickledEntry(info.filename, what))
    return found


def _configured_payloads(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> tuple[dict[str, str], set[str]]:
    """From the payload configs: the entries torch unpickles fully (name -> what) and those it reads
    as raw tensor bytes."""
    full: dict[str, str] = {}
    raw: set[str] = set()
    for info in infos:
        if not info.filename.endswith(_CONFIG_SUFFIXES):
            continue
        folder = info.filename.rpartition("/")[0]
        for fqn, meta in _payload_config(archive, info).items():
            entry = f"{folder}/{meta.get('path_name', '')}"
            if meta.get("use_pickle") or str(meta.get("path_name", "")).startswith(_FULL_UNPICKLE_PREFIXES):
                full[entry] = f"{fqn!r} is stored as a pickle, which torch loads with its full unpickler"
            else:
                raw.add(entry)
    return full, raw


def _payload_config(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, dict]:
    """A payload config's ``config`` mapping ({} for one that is not the JSON torch writes)."""
    try:
        config = json.loads(archive.read(info)).get("config")
    except (ValueError, AttributeError):
        return {}
    return {str(k): v for k, v in config.items() if isinstance(v, dict)} if isinstance(config, dict) else {}


def _entry_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """What is wrong with an entry not named by a payload config ("" when nothing): a ``.pt`` entry
    (torch's weights-only-then-full loads) or a pickle naming code that the weights-only unpickler refuses."""
    with archive.open(info) as entry:
        head = entry.read(4)
    weights_only_entry = info.filename.endswith(_WEIGHTS_ONLY_SUFFIXES)
    if not weights_only_entry and not _names_code(archive, info, head):
        return ""
    if _loads_weights_only(archive.read(info)):
        return ""
    return "a pickle that torch's weights-only unpickler refuses (it names Python code to run)"


def _names_code(archive: zipfile.ZipFile, info: zipfile.ZipInfo, head: bytes) -> bool:
    """Whether an entry is a complete pickle using :data:`CODE_OPCODES`, or a torch.save archive
    (a zip holding ``data.pkl``; weights-only loading judges those)."""
    if head[:4] == b"PK\x03\x04":
        return True
    if len(head) < 2 or head[0] != 0x80 or head[1] not in _PROTOCOLS:
        return False
    try:
        return any(op.name in CODE_OPCODES for op, _, _ in pickletools.genops(archive.read(info)))
    except (ValueError, EOFError, KeyError, UnicodeDecodeError):  # not a complete pickle: raw bytes
        return False


def _loads_weights_only(data: bytes) -> bool:
    """Whether torch's weights-only unpickler loads ``data`` (its loader for untrusted files)."""
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # the unpickler refuses with UnpicklingError; damaged data raises nearly any type
        return False
    return True
