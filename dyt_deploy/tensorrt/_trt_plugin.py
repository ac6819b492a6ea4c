"""``dyt_deploy::DynamicTanh`` for TensorRT's Python plugin API; imported only by ``plugin.register_plugin()``.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the signatures' annotations
as classes (TensorDesc, Tensor, int) when the decorators run.
"""

import tensorrt.plugin as trtp

from .plugin import PLUGIN_ID, run_dyt


@trtp.register(PLUGIN_ID)
def dynamic_tanh_desc(
    x: trtp.TensorDesc, alpha: trtp.TensorDesc, gamma: trtp.TensorDesc, beta: trtp.TensorDesc
) -> trtp.TensorDesc:
    """The output: x's shape and dtype (plugin.output_shape / output_dtype)."""
    return x.like()


@trtp.impl(PLUGIN_ID)
def dynamic_tanh_impl(
    x: trtp.Tensor, alpha: trtp.Tensor, gamma: trtp.Tensor, beta: trtp.Tensor,
    outputs: tuple[trtp.Tensor], stream: int,
) -> None:
    """``gamma * tanh(alpha * x) + beta`` on TensorRT's stream, zero-copy through torch CUDA tensors:
    the Triton DyT kernel where it fits, else the reference (``plugin.run_dyt``)."""
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        tx, talpha, tgamma, tbeta = (torch.as_tensor(t, device="cuda") for t in (x, alpha, gamma, beta))
        run_dyt(tx, talpha, tgamma, tbeta, out=torch.as_tensor(outputs[0], device="cuda"))
