"""The quantization plan: how each linear layer's input is quantized, from the sites and the options.

``fixed``: static INT8 with the scale the DyT math gives (no data). The other layers follow
``activations``: ``dynamic`` (ranges measured per call at run time: onnxruntime's
DynamicQuantizeMatMul; in OpenVINO, int8 weights whose activations the CPU plugin quantizes per
call), ``static`` (ranges from a calibration file), or ``float`` (left in fp32).

What a plan refuses, with the way out: a LayerNorm/RMSNorm model asked for ``float`` (its
post-norm inputs need data or run-time ranges, and nothing would be quantized), ``static``
without a calibration file, and a model with no linear layer at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import DytDeployError
from .sites import DYT_KINDS, NORM_KINDS, LinearSite

ACTIVATIONS = ("dynamic", "static", "float")
HOWS = ("static-fixed", "static-calibrated", "dynamic", "float")


@dataclass
class Plan:
    """Per linear layer (node name) how its input is quantized, and notes for the user."""

    sites: list[LinearSite]
    how: dict[str, str]
    activations: str
    notes: list[str] = field(default_factory=list)

    def nodes(self, how: str) -> list[str]:
        return [s.node for s in self.sites if self.how[s.node] == how]

    def fixed_sites(self) -> list[LinearSite]:
        return [s for s in self.sites if self.how[s.node] == "static-fixed"]

    @property
    def needs_data(self) -> bool:
        return "static-calibrated" in self.how.values()

    def table(self) -> dict[str, dict[str, int]]:
        """``{input kind: {how: layers}}``: what was quantized how, per kind (the manifest's summary)."""
        out: dict[str, Counter] = {}
        for site in self.sites:
            out.setdefault(site.kind, Counter())[self.how[site.node]] += 1
        return {kind: dict(c) for kind, c in out.items()}


def make_plan(sites: list[LinearSite], activations: str, calibration: bool) -> Plan:
    """The plan for ``sites`` with ``activations`` for the layers the DyT math does not bound.

    Raises:
        DytDeployError: no linear layer; ``static`` without ``calibration``; a LayerNorm/RMSNorm
            model with ``float`` (nothing it could quantize without data).
    """
    if activations not in ACTIVATIONS:
        raise DytDeployError(f"--activations {activations!r}: use one of {', '.join(ACTIVATIONS)}")
    if not sites:
        raise DytDeployError("the model has no linear layer (a MatMul with a constant 2-D weight): nothing to "
                             "quantize to INT8")
    if activations == "static" and not calibration:
        raise DytDeployError("--activations static takes its ranges from data: pass --calibration FILE.npz "
                             "(one array per model input), or use --activations dynamic (no data)")
    other_how = {"dynamic": "dynamic", "static": "static-calibrated", "float": "float"}[activations]
    how = {s.node: "static-fixed" if s.fixed else other_how for s in sites}
    plan = Plan(sites, how, activations)
    norm_sites = [s for s in sites if s.kind in NORM_KINDS]
    dyt_sites = [s for s in sites if s.kind in DYT_KINDS]
    if norm_sites and activations == "float":
        kinds = "/".join(sorted({s.kind for s in norm_sites}))
        raise DytDeployError(
            f"{len(norm_sites)} linear layer(s) read a {kinds} output, whose range depends on the data: without "
            "calibration data they cannot get a static INT8 scale. Pass --calibration FILE.npz with --activations "
            "static, or use --activations dynamic (ranges measured per call); a DyT model needs neither")
    if norm_sites:
        kinds = "/".join(sorted({s.kind for s in norm_sites}))
        source = "from the calibration data" if activations == "static" else "dynamically (ranges measured per call)"
        plan.notes.append(f"{len(norm_sites)} post-{kinds} linear input(s) quantized {source}: a {kinds} output's "
                          "range depends on the data, so it needs calibration data or run-time ranges")
    if not dyt_sites:
        plan.notes.append("no foldable DyT site (a DyT whose output feeds linear layers): no input gets a scale "
                          "from the graph alone")
        if activations == "float":
            raise DytDeployError("no foldable DyT site feeds a linear layer and --activations float leaves the "
                                 "rest in float: nothing to quantize. Use --activations dynamic, or static with "
                                 "--calibration FILE.npz")
    return plan
