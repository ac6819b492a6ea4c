"""TensorRT optimization profiles: one (min, opt, max) shape per input.

Every dynamic input of an engine needs a shape range. They come from ``--profile
NAME=min:opt:max`` (``x=1x3x224x224:8x3x224x224:32x3x224x224``) or, where not given, from the
named dynamic dims of the model (its dyt.json, or the ONNX ``dim_param`` names):

- ``batch``: 1 / 8 / the model's max batch size (config.pbtxt's ``max_batch_size``, else 32);
- ``seq``: 1 / 128 / the model's ``max_seq_len`` or ``max_positions`` (512 when it names neither);
- static dims: fixed (min = opt = max); other named dims have no default and need ``--profile``.

TensorRT tunes its kernels for ``opt``; a wide range costs speed, a narrow one refuses larger inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DytDeployError

Shape = tuple[int, ...]
# A dim of an input signature: an int (static), a str (a named dynamic dim) or None (unnamed dynamic).
Dim = int | str | None

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_SEQ = 512
DEFAULT_OPT = {"batch": 8, "seq": 128}
# config keys (in order of preference) that bound the sequence length of a model
SEQ_LIMIT_KEYS = ("max_seq_len", "max_positions", "max_position_embeddings", "n_positions")
_PROFILE_RE = re.compile(r"^(?P<name>[^=\s]+)=(?P<shapes>[^=]+)$")


class ProfileError(DytDeployError):
    """A --profile value is malformed or does not fit the model's inputs."""


@dataclass(frozen=True)
class InputProfile:
    """The shape range one input accepts: TensorRT tunes for ``opt`` and refuses shapes outside min..max."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Iterable[int]]) -> InputProfile:
        return cls(name, *(tuple(int(d) for d in data[key]) for key in ("min", "opt", "max")))

    def text(self) -> str:
        """The ``NAME=min:opt:max`` form that ``--profile`` takes."""
        return f"{self.name}=" + ":".join(format_shape(s) for s in (self.min, self.opt, self.max))


Profiles = dict[str, InputProfile]


def format_shape(shape: Iterable[int]) -> str:
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> Shape:
    """``"1x3x224x224"`` -> (1, 3, 224, 224); dims are positive integers."""
    parts = text.strip().lower().split("x")
    if not all(p.strip().isdigit() for p in parts):
        raise ProfileError(f"bad shape {text!r}: expected positive integers joined by 'x', e.g. 1x3x224x224")
    shape = tuple(int(p) for p in parts)
    if 0 in shape:
        raise ProfileError(f"bad shape {text!r}: dims must be positive")
    return shape


def parse_profile(text: str) -> InputProfile:
    """``NAME=min:opt:max`` (each a shape like 1x3x224x224) -> InputProfile, min <= opt <= max checked."""
    match = _PROFILE_RE.match(text.strip())
    shapes = match["shapes"].split(":") if match else []
    if len(shapes) != 3:
        raise ProfileError(f"bad --profile {text!r}: expected NAME=min:opt:max, e.g. "
                           "pixel_values=1x3x224x224:8x3x224x224:32x3x224x224")
    try:
        profile = InputProfile(match["name"], *(parse_shape(s) for s in shapes))
    except ProfileError as err:
        raise ProfileError(f"bad --profile {text!r}: {err}") from None
    problems = order_problems(profile)
    if problems:
        raise ProfileError(f"bad --profile {text!r}: " + "; ".join(problems))
    return profile


def parse_profiles(texts: Iterable[str] | None) -> Profiles:
    """Several ``--profile`` values -> {input name: InputProfile}; an input may appear only once."""
    profiles: Profiles = {}
    for text in texts or ():
        profile = parse_profile(text)
        if profile.name in profiles:
            raise ProfileError(f"--profile given twice for input {profile.name!r}; give one range per input")
        profiles[profile.name] = profile
    return profiles


def order_problems(profile: InputProfile) -> list[str]:
    """Why min <= opt <= max (dim by dim, equal ranks) does not hold; empty when it does."""
    ranks = {len(profile.min), len(profile.opt), len(profile.max)}
    if len(ranks) != 1:
        return [f"{profile.name}: min, opt and max have different ranks ({profile.text()})"]
    triples = zip(profile.min, profile.opt, profile.max, strict=True)
    bad = [i for i, (low, opt, high) in enumerate(triples) if not low <= opt <= high]
    if bad:
        return [f"{profile.name}: min <= opt <= max fails at dim {', '.join(map(str, bad))} ({profile.text()})"]
    return []


def dim_range(dim: Dim, limits: Mapping[str, int]) -> tuple[int, int, int] | None:
    """(min, opt, max) for one dim of an input signature; None where there is no default.

    ``limits`` holds the maxima of named dims (see :func:`model_limits`).
    """
    if isinstance(dim, int):
        return dim, dim, dim
    if dim not in DEFAULT_OPT:
        return None
    high = limits[dim]
    return 1, min(DEFAULT_OPT[dim], high), high


def model_limits(config: Mapping[str, Any] | None = None, max_batch: int | None = None) -> dict[str, int]:
    """Maxima of the named dims: ``batch`` from ``max_batch`` (default 32), ``seq`` from the config's
    ``max_seq_len``/``max_positions``/... (default 512)."""
    config = config or {}
    seq = next((int(config[k]) for k in SEQ_LIMIT_KEYS if isinstance(config.get(k), int) and config[k] > 0), None)
    return {"batch": max_batch or DEFAULT_MAX_BATCH, "seq": seq or DEFAULT_MAX_SEQ}


def default_profile(spec: Mapping[str, Any], limits: Mapping[str, int]) -> InputProfile | None:
    """The default range of one input (``{"name", "shape"}``), or None if a dim has no default."""
    ranges = [dim_range(d, limits) for d in spec["shape"]]
    if any(r is None for r in ranges):
        return None
    return InputProfile(spec["name"], *(tuple(r[i] for r in ranges) for i in range(3)))


def is_dynamic(spec: Mapping[str, Any]) -> bool:
    return any(not isinstance(d, int) for d in spec["shape"])


def shape_problems(profile: InputProfile, spec: Mapping[str, Any]) -> list[str]:
    """Why ``profile`` does not fit the input ``spec``: rank, static dims, ordering."""
    shape = list(spec["shape"])
    if any(len(s) != len(shape) for s in (profile.min, profile.opt, profile.max)):
        return [f"{profile.name}: the input has rank {len(shape)} (shape {describe(shape)}), "
                f"the profile {profile.text()} does not"]
    problems = order_problems(profile)
    for i, dim in enumerate(shape):
        if isinstance(dim, int) and {profile.min[i], profile.opt[i], profile.max[i]} != {dim}:
            problems.append(f"{profile.name}: dim {i} is fixed at {dim} (shape {describe(shape)}); "
                            f"the profile {profile.text()} varies it")
    return problems


def describe(shape: Iterable[Dim]) -> str:
    """A signature shape for messages: [batch, 3, 224, 224]."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def resolve_profiles(inputs: list[Mapping[str, Any]], given: Mapping[str, InputProfile] | None = None,
                     limits: Mapping[str, int] | None = None) -> Profiles:
    """One range per dynamic input: ``given`` where present, else the default; every problem in one error.

    ``inputs`` is the model's signature (``{"name", "shape"}`` dicts, named dims as str); static
    inputs need no range but may be given one that matches their shape. ``limits`` defaults to
    :func:`model_limits` with no config.
    """
    given = dict(given or {})
    limits = limits or model_limits()
    names = [spec["name"] for spec in inputs]
    problems = [f"--profile names {n!r}, which is not an input (inputs: {', '.join(names)})"
                for n in given if n not in names]
    profiles: Profiles = {}
    for spec in inputs:
        profile = given.get(spec["name"]) or (default_profile(spec, limits) if is_dynamic(spec) else None)
        if profile is None and is_dynamic(spec):
            problems.append(f"{spec['name']}: shape {describe(spec['shape'])} has dims with no default range; "
                            f"pass --profile {spec['name']}=min:opt:max")
        elif profile is not None:
            problems.extend(shape_problems(profile, spec))
            profiles[spec["name"]] = profile
    if problems:
        raise ProfileError("optimization profile: " + "; ".join(problems))
    return profiles


def profiles_to_dict(profiles: Mapping[str, InputProfile]) -> dict[str, dict[str, list[int]]]:
    return {name: p.to_dict() for name, p in profiles.items()}


def profiles_from_dict(data: Mapping[str, Mapping[str, Iterable[int]]]) -> Profiles:
    return {name: InputProfile.from_dict(name, ranges) for name, ranges in data.items()}
