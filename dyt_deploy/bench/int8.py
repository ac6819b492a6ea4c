"""``dyt-bench --precisions fp32,int8``: INT8 variants timed beside fp32, and what INT8 buys each norm.

Per variant (its verified fp32 ONNX) and runtime, two INT8 settings, each a group of its own
(``ort-int8/no-data``, ``openvino-int8/calibrated``, ...) so the fp32 answer is untouched:

- ``no-data``: what needs no calibration data. DyT-fed linear inputs at the scale the DyT math
  gives (``dyt_deploy.quantize``), every other input dynamic: onnxruntime's DynamicQuantizeMatMul;
  in OpenVINO, NNCF int8 weights whose activations the CPU plugin quantizes per call (where the CPU
  has VNNI; float compute elsewhere). A LayerNorm/RMSNorm variant has no fixed input: all dynamic.
- ``calibrated``: every linear input static, ranges from calibration data (``--data``'s samples, or
  seeded random inputs when there is none: fine for latency, not for accuracy), DyT-fed ones still
  at their fixed scale. The same QDQ model in both runtimes.

:func:`int8_section` then answers, per runtime and shape: each variant's INT8 / fp32 latency ratio
(fp32 = the ``ort/none`` and ``openvino`` groups: the same graph optimizations), and DyT INT8 without
data against LayerNorm INT8 without data and with calibration data, each with its verdict.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ..runners import Runner, create_runner
from .harness import Timings
from .stats import judge, load_from, median_ratio

PRECISIONS = ("fp32", "int8")
SETTINGS = {"no-data": "dynamic", "calibrated": "static"}
FP32_GROUPS = {"ort": "ort/none", "openvino": "openvino"}
NEEDS = {"no-data": "no data", "calibrated": "calibration data"}
CALIBRATION_SAMPLES = 8


def int8_runtime(runtime: str) -> str:
    return f"{runtime}-int8"


def is_int8_group(group: str) -> bool:
    return group.partition("/")[0].endswith("-int8")


def int8_groups(onnx_files: dict[str, Path], runtimes: list[str], threads: int, work: Path, calibration: Path,
                say: Callable[[str, int, int], None]) -> dict[str, dict[str, Runner]]:
    """Runners of every variant's INT8 models, one group per runtime x setting (not yet activated)."""
    from ..quantize.openvino import write_ir

    groups: dict[str, dict[str, Runner]] = {}
    for variant, fp32 in onnx_files.items():
        say(f"quantize {variant} to INT8", 0, 0)
        for setting, activations in SETTINGS.items():
            static, final = _quantize(fp32, work / "int8" / f"{variant}-{setting}", activations, calibration)
            if "ort" in runtimes:
                groups.setdefault(f"ort-int8/{setting}", {})[variant] = create_runner(
                    "ort", final, threads=threads, spin=False)
            if "openvino" in runtimes:
                xml = static.with_name("model.xml")
                write_ir(static, xml, compress_rest=activations == "dynamic")
                groups.setdefault(f"openvino-int8/{setting}", {})[variant] = create_runner(
                    "openvino", xml, threads=threads)
    return groups


def _quantize(fp32: Path, folder: Path, activations: str, calibration: Path) -> tuple[Path, Path]:
    """(the static QDQ model, the final one with onnxruntime's dynamic layers) of ``fp32`` in ``folder``."""
    from ..quantize import qdq
    from ..quantize.calibration import load_calibration, onnx_input_specs
    from ..quantize.plan import make_plan
    from ..quantize.sites import linear_sites, name_nodes

    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(fp32))
    name_nodes(model)
    named = folder / "fp32.onnx"
    onnx.save(model, str(named))
    data = load_calibration(calibration, onnx_input_specs(model)) if activations == "static" else None
    plan = make_plan(linear_sites(model), activations, data is not None)
    static, final = folder / "static.onnx", folder / "int8.onnx"
    if not qdq.quantize_static_part(named, static, plan, data):
        shutil.copyfile(named, static)
    if not qdq.quantize_dynamic_part(static, final, plan):
        shutil.copyfile(static, final)
    return static, final


def calibration_file(data: Path | None, feed: dict[str, np.ndarray], work: Path) -> tuple[Path, str]:
    """The calibration samples: ``--data``'s file, else seeded random inputs (``feed``'s, repeated
    with noise): (the .npz, where its samples came from)."""
    if data is not None:
        return data, f"{data.name} (the --data samples)"
    rng = np.random.default_rng(0)
    arrays = {name: np.concatenate([a + (rng.standard_normal(a.shape).astype(a.dtype) * 0.1
                                         if np.issubdtype(a.dtype, np.floating) else 0)
                                    for _ in range(max(1, CALIBRATION_SAMPLES // len(a)))])
              for name, a in feed.items()}
    path = work / "int8" / "calibration.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path, "seeded random inputs (latency only: their ranges are not the data's)"


def int8_section(timings: Timings, load: dict | None, calibration_source: str) -> dict:
    """INT8 / fp32 per runtime x shape x variant x setting, and DyT INT8 without data against
    LayerNorm INT8 without and with data; each ratio with its interval and verdict."""
    load_record = load_from(load)
    rows, edges = [], []
    for (group, shape, variant), seconds in sorted(timings.seconds.items()):
        if not is_int8_group(group):
            continue
        runtime, setting = group.split("-int8/")
        base = timings.seconds.get((FP32_GROUPS.get(runtime, runtime), shape, variant))
        if base:
            rows.append(_ratio_entry(runtime, shape, f"{variant} INT8 {setting}", f"{variant} fp32", seconds, base,
                                     load_record) | {"variant": variant, "setting": setting,
                                                     "needs": _needs(variant, setting)})
    for runtime in sorted({g.split("-int8/")[0] for g, _, _ in timings.seconds if is_int8_group(g)}):
        for shape in sorted({s for _, s, _ in timings.seconds}):
            dyt = _pick(timings, f"{runtime}-int8/no-data", shape, ("dyt-folded", "dyt"))
            for setting in SETTINGS:
                ln = _pick(timings, f"{runtime}-int8/{setting}", shape, ("layernorm", "rmsnorm"))
                if dyt and ln:
                    edges.append(_ratio_entry(runtime, shape, f"{dyt[0]} INT8 no-data",
                                              f"{ln[0]} INT8 {setting} ({NEEDS[setting]})", dyt[1], ln[1],
                                              load_record))
    return {"calibration": calibration_source, "fp32_groups": FP32_GROUPS, "vs_fp32": rows, "dyt_edge": edges}


def _needs(variant: str, setting: str) -> str:
    if setting == "calibrated":
        return "calibration data"
    return "no data (DyT-fed inputs at fixed scales, the rest dynamic)" if variant.startswith("dyt") \
        else "no data (dynamic ranges)"


def _pick(timings: Timings, group: str, shape: str, variants: tuple[str, ...]) -> tuple[str, list[float]] | None:
    for variant in variants:
        seconds = timings.seconds.get((group, shape, variant))
        if seconds:
            return variant, seconds
    return None


def _ratio_entry(runtime: str, shape: str, what: str, against: str, seconds: list[float], base: list[float],
                 load) -> dict:
    ratio = median_ratio(seconds, base)
    verdict = judge(ratio, min(len(seconds), len(base)), load)
    return {"runtime": runtime, "shape": shape, "what": what, "against": against, "ratio": ratio.as_dict(),
            "median_ms": float(np.median(seconds)) * 1e3, "against_median_ms": float(np.median(base)) * 1e3,
            **verdict.as_dict()}


def int8_sentences(report: dict) -> list[str]:
    """The INT8 headline: one line per ratio, ``onnxruntime batch=1: dyt-folded INT8 no-data x0.62
    [0.60, 0.64] of dyt-folded fp32 (faster; needs no data ...)``."""
    section = report.get("int8")
    if not section:
        return []
    names = {"ort": "onnxruntime", "openvino": "OpenVINO"}
    lines = []
    for entry in [*section["vs_fp32"], *section["dyt_edge"]]:
        r = entry["ratio"]
        needs = f"; needs {entry['needs']}" if entry.get("needs") else ""
        lines.append(f"{names.get(entry['runtime'], entry['runtime'])} {entry['shape']}: {entry['what']} "
                     f"x{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}] of {entry['against']} "
                     f"({entry['verdict']}{needs})")
    return lines + [f"INT8 calibration data: {section['calibration']}"]
