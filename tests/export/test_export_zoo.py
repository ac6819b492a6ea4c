"""Every zoo model class x norm exports, verifies, and converts to the function form.

The sizes of one class (vit_tiny/small/base, ...) differ only in width, and the exporter tests
build every model at depth 1, so one size per class covers the same code at a third of the time.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
import torch

from dyt_deploy.export import DOMAIN, OP_TYPE, current_form, dyt_nodes
from dyt_deploy.export.api import verify_onnx
from dyt_deploy.export.forms import count_bare_dyt_chains
from dyt_deploy.export.signature import input_specs
from dyt_deploy.models import create_model, get_arch, list_models
from dyt_deploy.nn import DynamicTanh

NORMS = ("layernorm", "rmsnorm", "dyt")
ONE_PER_CLASS = [name for name in list_models() if name.endswith("_tiny")]
CASES = [(arch, norm) for arch in ONE_PER_CLASS for norm in NORMS]


def test_the_zoo_is_what_these_tests_cover() -> None:
    assert set(list_models()) == {"vit_tiny", "vit_small", "vit_base", "vit_large", "llama_tiny", "llama_small",
                                  "bert_tiny", "bert_small", "convnext_tiny", "convnext_small", "convnext_base",
                                  "convnext_large"}
    assert ONE_PER_CLASS == ["bert_tiny", "convnext_tiny", "llama_tiny", "vit_tiny"]
    assert {get_arch(a).family for a in ONE_PER_CLASS} == {get_arch(a).family for a in list_models()}
    # the sizes of a class share one module class and differ only in config values
    for name in list_models():
        same_class = next(a for a in ONE_PER_CLASS if get_arch(a).family == get_arch(name).family)
        with torch.device("meta"):  # full size, no memory
            assert type(create_model(name, init_weights=False)) is type(create_model(same_class, init_weights=False))


@pytest.mark.parametrize(("arch", "norm"), CASES, ids=[f"{a}-{n}" for a, n in CASES])
def test_exports_and_verifies_in_pattern_and_function_form(zoo_export, arch: str, norm: str) -> None:
    done = zoo_export(arch, norm)

    assert done.result.parity is not None and done.result.parity.passed, done.result.parity.rows()
    assert done.result.form == "pattern"
    assert done.result.onnx_path == done.pattern and done.pattern.is_file()
    assert current_form(ir.load(done.pattern)) == "pattern"

    assert done.conversion.before == "pattern" and done.conversion.after == "function"
    assert done.conversion.max_abs_diff is not None and done.conversion.max_abs_diff <= 1e-5
    reference = done.model  # the module that was saved to model.pt
    parity = verify_onnx(done.function, reference, input_specs(reference, None, None), "fp32", 3, None, None)
    assert parity.passed, parity.rows()
    assert len(parity.shapes) == 3
    onnx.checker.check_model(str(done.function), full_check=True)


@pytest.mark.parametrize(("arch", "norm"), CASES, ids=[f"{a}-{n}" for a, n in CASES])
def test_function_form_has_one_node_per_dyt_module(zoo_export, arch: str, norm: str) -> None:
    done = zoo_export(arch, norm)
    modules = sum(isinstance(m, DynamicTanh) for m in done.model.modules())
    function_model = ir.load(done.function)
    nodes = dyt_nodes(function_model)

    # depth 1: two per block + one more (final or embedding); ConvNeXt: stem, 3 downsamples, 4 blocks, head
    assert modules == ((9 if arch.startswith("convnext") else 3) if norm == "dyt" else 0)
    assert len(nodes) == modules
    assert all(n.domain == DOMAIN and n.op_type == OP_TYPE for n in nodes)
    assert count_bare_dyt_chains(function_model) == 0
    # the pattern file holds the chains the function form replaced, one per module
    assert count_bare_dyt_chains(ir.load(done.pattern)) == modules

    overloads = {n.overload for n in nodes}
    proto = onnx.load(done.function)
    functions = [(f.domain, f.name, f.overload) for f in proto.functions]
    assert sorted(functions) == sorted((DOMAIN, OP_TYPE, o) for o in overloads)
    assert done.conversion.counts == ({} if not modules else {o: modules for o in overloads})
    if norm == "dyt":
        expected = "no_bias" if arch.startswith("llama") else ""
        assert overloads == {expected}
        assert (DOMAIN, 1) in [(o.domain, o.version) for o in proto.opset_import]
