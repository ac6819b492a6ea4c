"""The kernels as PyTorch custom operators: registration, opcheck, gradients, and what tracing sees
(torch.export, torch.compile, fake tensors). Runs on the CPU: the ops' CPU implementation is the
interpreted kernel under TRITON_INTERPRET, the eager reference without it."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from dyt_deploy import kernels as K
from dyt_deploy.models import create_model
from dyt_deploy.nn import DynamicTanh

OPS = torch.ops.dyt_deploy
OP_NAMES = {"dyt_deploy.dyt.default", "dyt_deploy.dyt_add.default", "dyt_deploy.dyt_of_sum.default"}


def dyt_args(dtype=torch.float32, rows=3, width=8, weight="C", bias="C", grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"C": (width,), "1": (1,), None: None}

    def make(shape, scale=1.0):
        if shape is None:
            return None
        return (torch.randn(shape, generator=g) * scale).to(dtype).requires_grad_(grad)

    x = make((rows, width), 2.0)
    return x, make((1,)).detach().fill_(0.7).requires_grad_(grad), make(shapes[weight]), make(shapes[bias])


def test_the_three_operators_are_registered_with_their_schemas():
    assert str(OPS.dyt.default._schema) == (
        "dyt_deploy::dyt(Tensor x, Tensor alpha, Tensor? weight=None, Tensor? bias=None, bool precise=False) -> Tensor")
    for name, returns in (("dyt_add", "(Tensor, Tensor)"), ("dyt_of_sum", "Tensor")):
        schema = str(getattr(OPS, name).default._schema)
        assert schema.startswith(f"dyt_deploy::{name}(Tensor x, Tensor residual, Tensor alpha,") and \
            schema.endswith(f"bool precise=False) -> {returns}")


@pytest.mark.parametrize(("dtype", "weight", "bias", "grad"), [
    (torch.float32, "C", "C", False), (torch.float32, "C", None, True), (torch.float32, None, None, True),
    (torch.float32, "1", "1", True), (torch.bfloat16, "C", "C", False), (torch.float64, "C", "C", True),
], ids=str)
def test_opcheck_passes_for_every_operator(dtype, weight, bias, grad):
    x, alpha, w, b = dyt_args(dtype, weight=weight, bias=bias, grad=grad)
    residual = dyt_args(dtype, grad=grad, seed=1)[0]
    torch.library.opcheck(OPS.dyt, (x, alpha, w, b, False))
    torch.library.opcheck(OPS.dyt_add, (x, residual, alpha, w, b, False))
    torch.library.opcheck(OPS.dyt_of_sum, (x, residual, alpha, w, b, True))


@pytest.mark.parametrize(("weight", "bias"), [("C", "C"), ("1", None), (None, "C")])
def test_backward_formulas_match_numerical_gradients(weight, bias):
    x, alpha, w, b = dyt_args(torch.float64, rows=4, width=5, weight=weight, bias=bias, grad=True)
    residual = dyt_args(torch.float64, rows=4, width=5, grad=True, seed=2)[0]
    assert torch.autograd.gradcheck(lambda *a: OPS.dyt(*a, False), (x, alpha, w, b))
    assert torch.autograd.gradcheck(lambda *a: OPS.dyt_add(*a, False), (x, residual, alpha, w, b))
    assert torch.autograd.gradcheck(lambda *a: OPS.dyt_of_sum(*a, False), (x, residual, alpha, w, b))


def test_op_outputs_follow_the_kernels_type_promotion_even_on_the_reference():
    """Eager ``0-dim fp32 alpha * bf16 x`` stays bf16; the kernel (and so the op, everywhere) gives fp32."""
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    y = OPS.dyt(x, torch.tensor(0.5), None, None, False)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tanh(0.5 * x.float()), rtol=1e-2, atol=1e-2)


class OpLog(TorchDispatchMode):
    """Records the name of every operator dispatched under it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_dispatcher_and_traced_ones_become_the_op():
    x, alpha, w, b = dyt_args()
    with torch.no_grad():
        eager = K.dyt(x, alpha, w, b)
        with OpLog() as log:  # a dispatch mode is tracing machinery: the call must become one op
            traced = K.dyt(x, alpha, w, b)
    assert log.names == ["dyt_deploy.dyt.default"]
    torch.testing.assert_close(traced, eager, rtol=0, atol=0)


def small_dyt_models() -> list[tuple[str, nn.Module, dict]]:
    models = []
    for name, extra in (("vit_tiny", {"img_size": 32}), ("llama_tiny", {})):
        model = create_model(name, "dyt", seed=0, depth=2, **extra).eval()
        models.append((name, model, model.example_inputs(batch=2, seq=8)))
    return models


def dyt_count(model: nn.Module) -> int:
    return sum(type(m) is DynamicTanh and m.channels_last for m in model.modules())


def op_nodes(graph: torch.fx.Graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_function" and str(n.target) in OP_NAMES]


@pytest.mark.parametrize(("name", "model", "feeds"), small_dyt_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_export_holds_one_dyt_node_per_norm_and_no_tanh(name, model, feeds):
    sites = dyt_count(model)
    K.use_kernels(model, fuse=False)
    program = torch.export.export(model, (), feeds)
    assert op_nodes(program.graph) == ["dyt_deploy.dyt.default"] * sites
    assert not [n for n in program.graph.nodes if "tanh" in str(n.target) and "dyt_deploy" not in str(n.target)]
    with torch.no_grad():
        torch.testing.assert_close(program.module()(**feeds), model(**feeds), rtol=1e-5, atol=1e-5)


def test_export_of_a_fused_decoder_holds_the_fused_forms_and_precise():
    model = create_model("llama_tiny", "dyt", seed=0, depth=2).eval()
    sites = dyt_count(model)
    K.use_kernels(model, precise=True)
    program = torch.export.export(model, (), model.example_inputs(batch=2, seq=8))
    nodes = [n for n in program.graph.nodes if str(n.target) in OP_NAMES]
    assert sorted(str(n.target) for n in nodes) == sorted(
        ["dyt_deploy.dyt.default"] + ["dyt_deploy.dyt_add.default"] * (sites - 2) + ["dyt_deploy.dyt_of_sum.default"])
    assert all(n.args[-1] is True for n in nodes), "precise=True reaches every node"


def test_compile_fullgraph_traces_each_norm_as_the_op():
    graphs: list[torch.fx.GraphModule] = []

    def keep(gm: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    _, model, feeds = small_dyt_models()[0]
    sites = dyt_count(model)
    K.use_kernels(model, fuse=False)
    compiled = torch.compile(model, fullgraph=True, backend=keep)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**feeds), model(**feeds), rtol=1e-5, atol=1e-5)
    (graph,) = graphs  # fullgraph: one graph, no break
    assert op_nodes_dynamo(graph.graph) == ["dyt_deploy.dyt"] * sites


def op_nodes_dynamo(graph: torch.fx.Graph) -> list[str]:
    """Dynamo's graph calls the overload packet (``dyt_deploy.dyt``), export's the overload."""
    return [str(n.target) for n in graph.nodes if n.op == "call_function" and str(n.target).startswith("dyt_deploy.")]


def test_compile_fullgraph_with_the_eager_backend_runs_in_training_too():
    model = nn.Sequential(nn.Linear(8, 8), DynamicTanh(8), nn.Linear(8, 8), DynamicTanh(8, bias=False))
    x = torch.randn(4, 8)
    model(x).sum().backward()  # eager DynamicTanh: the gradients to match
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    K.use_kernels(model, fuse=False)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    compiled(x).sum().backward()
    for got, want in zip([p.grad for p in model.parameters()], expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fake_tensors_give_shapes_and_dtypes_without_running_anything():
    model = create_model("llama_tiny", "dyt", seed=0, depth=2).eval().to(torch.bfloat16)
    K.use_kernels(model)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
        ids = mode.from_tensor(torch.zeros(3, 5, dtype=torch.long))
        out = model(ids)
        x = torch.empty(7, 64, dtype=torch.bfloat16)
        h, y = K.dyt_add(x, x, torch.ones(1), torch.ones(64, dtype=torch.bfloat16))
    assert type(out).__name__ == "FakeTensor" and out.shape == (3, 5, model.config["vocab_size"])
    assert out.dtype == torch.bfloat16
    assert (h.shape, h.dtype, y.dtype) == ((7, 64), torch.bfloat16, torch.float32)  # fp32 alpha promotes y


class PreNorm(nn.Module):
    """Two pre-norm residual blocks and a final norm: after fusion one dyt, one dyt_add, one dyt_of_sum."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = DynamicTanh(dim), DynamicTanh(dim), DynamicTanh(dim, bias=False)
        self.f1, self.f2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.f1(self.n1(x))
        x = x + self.f2(self.n2(x))
        return self.n3(x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs, Inductor's GPU code)")
def test_cuda_graph_capture_and_inductor_run_the_ops_on_the_gpu():
    model = PreNorm().eval().to(DEVICE, torch.bfloat16)
    x = torch.randn(8, 256, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
        assert K.use_kernels(model)[1] == 3
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(x)  # warm-up outside capture: nothing may compile inside it
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            captured = model(x)
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(eager.float(), expected.float(), rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(captured, eager)
