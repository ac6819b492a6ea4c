"""Residual-add fusion as a graph pass, so model code stays model code.

A pre-norm block ends with ``x = x + sublayer(norm(x))`` and the next norm reads that ``x``; a
post-norm block computes ``norm(x + sublayer(x))``. Either way an ``add`` feeds a norm, and a norm
that can take the add in (``forward_add``/``forward_sum``, as
:class:`~dyt_deploy.kernels.KernelDynamicTanh` does) saves a trip through memory. Rather than
every model spelling that out, :func:`fuse_residual_adds` finds the pattern in the model's own
``forward``:

1. trace the module with ``torch.fx`` (fusing norms stay single calls; buffers are read from the module);
2. for each ``a + b`` of two traced values whose result a fusing norm takes as its only input,
   call ``norm.forward_add(b, a) -> (h, y)`` instead where the sum is used elsewhere too (pre-norm:
   the residual stream goes on), else ``norm.forward_sum(b, a) -> y`` (post-norm blocks, and the
   last add before a final norm: the sum is never written);
3. install the rewritten code as that module's ``forward``, bound to the module itself: its
   parameters, buffers, state dict, attributes and later ``.to()`` moves are the module's own.

Why a graph pass and not a wrapper around each norm: the adds worth fusing cross block
boundaries (the add closing block ``i`` feeds the first norm of block ``i + 1``), and a wrapper
sees a norm's input, never the add that made it. The trace sees the whole forward, so an
architecture written in plain PyTorch gets the fusion with no kernel knowledge, and with plain
norms nothing is traced or changed at all (export sees the model's own eager ops).

Limits: shapes are unknown when tracing, so the norm's methods check them at run time and add
unfused where the add broadcasts. Python decisions taken while tracing stay fixed (e.g. a branch
on ``self.training``): fuse a model in the mode it will run in. A module fx cannot trace
(data-dependent control flow, ``torch.finfo(x.dtype)``, ...) keeps its forward and its children
are tried one by one; :class:`FusionReport` names each module left untraced, with the reason.
"""

from __future__ import annotations

import inspect
import logging
import operator
import types
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import fx, nn

log = logging.getLogger(__name__)

_ADD_FUNCTIONS = (operator.add, torch.add)


@dataclass(frozen=True)
class FusedAdd:
    """One add handed to the norm after it: ``module`` holds the rewritten forward (``""``: the
    model itself), ``norm`` is the norm's path in the model, ``form`` "add" (sum kept) or "sum"."""

    module: str
    norm: str
    form: Literal["add", "sum"]


@dataclass
class FusionReport:
    """What :func:`fuse_residual_adds` did: the fused adds, and the modules it could not trace (path -> why)."""

    fused: list[FusedAdd] = field(default_factory=list)
    untraced: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"{len(self.fused)} residual add(s) fused into the norm after them"]
        lines += [f"{path or 'the model'} not traced, left unfused: {why}" for path, why in self.untraced.items()]
        return "; ".join(lines)


def fuses_adds(module: nn.Module) -> bool:
    """Whether ``module`` is a norm that can take in the add before it (``forward_add`` and ``forward_sum``)."""
    return callable(getattr(module, "forward_add", None)) and callable(getattr(module, "forward_sum", None))


def _holds_fusing_norm(module: nn.Module) -> bool:
    return any(fuses_adds(m) for m in module.modules())


class _Tracer(fx.Tracer):
    """fx's tracer with fusing norms as single calls, and torch.nn modules traced through where they hold one."""

    proxy_buffer_attributes = True  # buffers (rotary tables, ...) sliced by traced sizes

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if fuses_adds(m):
            return True
        return super().is_leaf_module(m, module_qualified_name) and not _holds_fusing_norm(m)


def fuse_residual_adds(model: nn.Module) -> FusionReport:
    """Rewrite the forward of ``model`` (or of its largest traceable parts) so each residual add
    that feeds a fusing norm runs inside it. Modules without such a pattern keep their forward."""
    report = FusionReport()
    _fuse_tree(model, "", report)
    return report


def _fuse_tree(module: nn.Module, path: str, report: FusionReport) -> None:
    if fuses_adds(module) or not _holds_fusing_norm(module):
        return
    if type(module).forward is not nn.Module.forward:  # containers (ModuleList, ...) have none: look inside
        reason = _fuse_module(module, path, report)
        if reason is None:
            return
        report.untraced[path] = reason
    for name, child in module.named_children():
        _fuse_tree(child, _join(path, name), report)


def _fuse_module(module: nn.Module, path: str, report: FusionReport) -> str | None:
    """Trace, rewrite and install ``module``'s forward; the reason it could not, or None."""
    own = module.__dict__.get("forward")
    if own is not None and not getattr(own, "__dyt_fused__", False):
        return "its forward is replaced on the instance (a hook or wrapper), which tracing would drop"
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # tracing runs arbitrary model code: any failure means "not traceable"
        message = str(e).strip().splitlines()
        return f"{type(e).__name__}: {message[0] if message else 'no message'}"
    sites = _rewrite(graph, module)
    reason = _install(module, graph) if sites else None
    if reason is None:
        report.fused += [FusedAdd(path, _join(path, norm), form) for norm, form in sites]
    return reason


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_tensor_add(node: fx.Node) -> bool:
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target == "add")
    return is_add and not node.kwargs and len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args)


def _norm_of(add: fx.Node, root: nn.Module) -> fx.Node | None:
    """The first user of ``add`` that is a fusing norm called on it alone."""
    for user in add.users:
        if (user.op == "call_module" and user.args == (add,) and not user.kwargs
                and fuses_adds(root.get_submodule(str(user.target)))):
            return user
    return None


def _rewrite(graph: fx.Graph, root: nn.Module) -> list[tuple[str, str]]:
    """Fuse in place; returns (norm target, form) per fused add."""
    sites = []
    for add in list(graph.nodes):
        norm_call = _norm_of(add, root) if _is_tensor_add(add) else None
        if norm_call is None:
            continue
        residual, x = add.args
        keep_sum = len(add.users) > 1
        with graph.inserting_before(add):
            norm = graph.get_attr(str(norm_call.target))
            if keep_sum:
                pair = graph.call_method("forward_add", (norm, x, residual))
                total = graph.call_function(operator.getitem, (pair, 0))
                normed = graph.call_function(operator.getitem, (pair, 1))
            else:
                total, normed = None, graph.call_method("forward_sum", (norm, x, residual))
        norm_call.replace_all_uses_with(normed)
        graph.erase_node(norm_call)
        if total is not None:
            add.replace_all_uses_with(total)
        graph.erase_node(add)
        sites.append((str(norm_call.target), "add" if keep_sum else "sum"))
    graph.lint()
    return sites


def _install(module: nn.Module, graph: fx.Graph) -> str | None:
    """Make the graph ``module``'s forward; the reason it cannot, or None."""
    missing = [n.target for n in graph.nodes if n.op in ("get_attr", "call_module") and not _resolves(module, n.target)]
    if missing:
        return f"the trace holds values the module does not ({', '.join(map(str, missing))})"
    forward = type(fx.GraphModule(module, graph)).forward  # the generated code, over the same attribute paths
    if _parameter_names(forward) != _parameter_names(type(module).forward):
        return "the traced forward renames the module's inputs"
    forward.__dyt_fused__ = True
    module.forward = types.MethodType(forward, module)
    return None


def _resolves(module: nn.Module, target: object) -> bool:
    obj: object = module
    for part in str(target).split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _parameter_names(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def log_report(report: FusionReport) -> None:
    """One log line per :func:`fuse_residual_adds` run: a warning when nothing could be traced."""
    level = logging.WARNING if report.untraced.get("") is not None and not report.fused else logging.INFO
    log.log(level, "residual-add fusion: %s", report.describe())
