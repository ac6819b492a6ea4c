"""An independent reference: timm's ViT and ConvNeXt with DyT in place of every LayerNorm, as the DyT
paper's official code trains them, written as plain functions of a state dict.

Written from timm's layout (parameter names, shapes, the order of operations), not from the zoo: it
imports nothing from dyt_deploy, and tests build their checkpoints with its own init, so a test that
compares an export against it does not check the zoo against itself.

The official conversion turns ``nn.LayerNorm`` into ``DynamicTanh(shape, channels_last=True)`` and
timm's ``LayerNorm2d`` into ``DynamicTanh(shape, channels_last=False)``:
``weight * tanh(alpha * x) + bias``, with ``weight``/``bias`` over the last dim (channels-last) or over
dim 1 of an NCHW tensor (channels-first), ``alpha`` one scalar per site.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

State = dict[str, torch.Tensor]


# -- the pieces ------------------------------------------------------------------------------------

def dyt(x: torch.Tensor, state: State, site: str, channels_last: bool = True) -> torch.Tensor:
    """DynamicTanh at ``site`` (``alpha``, ``weight``, ``bias``)."""
    weight, bias = state[f"{site}.weight"], state[f"{site}.bias"]
    if not channels_last:
        weight, bias = weight[:, None, None], bias[:, None, None]
    return weight * torch.tanh(state[f"{site}.alpha"] * x) + bias


def linear(x: torch.Tensor, state: State, site: str) -> torch.Tensor:
    return x @ state[f"{site}.weight"].T + state[f"{site}.bias"]


def gelu(x: torch.Tensor) -> torch.Tensor:
    """timm's default GELU, the exact (erf) form."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def mlp(x: torch.Tensor, state: State, site: str) -> torch.Tensor:
    return linear(gelu(linear(x, state, f"{site}.fc1")), state, f"{site}.fc2")


def attention(x: torch.Tensor, state: State, site: str, heads: int) -> torch.Tensor:
    """timm's Attention: one qkv projection (with bias), softmax(q k^T / sqrt(d)) v per head, proj."""
    batch, tokens, dim = x.shape
    qkv = linear(x, state, f"{site}.qkv").reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
    return linear((weights @ v).transpose(1, 2).reshape(batch, tokens, dim), state, f"{site}.proj")


# -- ViT -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VitSpec:
    """A timm VisionTransformer: width, depth, heads, patch and image size, classes, pooling."""

    dim: int
    depth: int
    heads: int
    patch: int = 16
    img: int = 224
    num_classes: int = 1000
    global_pool: str = "avg"  # the DyT paper's ViTs; "token": final norm, head on the class token
    in_chans: int = 3


def vit_forward(state: State, spec: VitSpec, pixels: torch.Tensor) -> torch.Tensor:
    """Logits of timm's VisionTransformer (pre-norm blocks, class token, learned position embedding)."""
    x = F.conv2d(pixels, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=spec.patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + state["pos_embed"]
    for index in range(spec.depth):
        block = f"blocks.{index}"
        x = x + attention(dyt(x, state, f"{block}.norm1"), state, f"{block}.attn", spec.heads)
        x = x + mlp(dyt(x, state, f"{block}.norm2"), state, f"{block}.mlp")
    if spec.global_pool == "avg":  # mean of the patch tokens (class token excluded), then fc_norm
        pooled = dyt(x[:, 1:].mean(dim=1), state, "fc_norm")
    else:
        pooled = dyt(x, state, "norm")[:, 0]
    return linear(pooled, state, "head")


def vit_state(spec: VitSpec, seed: int) -> State:
    """Random weights in timm's key layout; every DyT site has its own alpha, weight and bias."""
    draw = _Draw(seed)
    dim, hidden, tokens = spec.dim, 4 * spec.dim, (spec.img // spec.patch) ** 2 + 1
    state = {"cls_token": draw.normal((1, 1, dim), 0.02), "pos_embed": draw.normal((1, tokens, dim), 0.02)}
    state.update(draw.conv("patch_embed.proj", dim, spec.in_chans, spec.patch))
    for index in range(spec.depth):
        block = f"blocks.{index}"
        state.update(draw.dyt(f"{block}.norm1", dim))
        state.update(draw.linear(f"{block}.attn.qkv", 3 * dim, dim))
        state.update(draw.linear(f"{block}.attn.proj", dim, dim))
        state.update(draw.dyt(f"{block}.norm2", dim))
        state.update(draw.linear(f"{block}.mlp.fc1", hidden, dim))
        state.update(draw.linear(f"{block}.mlp.fc2", dim, hidden))
    state.update(draw.dyt("fc_norm" if spec.global_pool == "avg" else "norm", dim))
    state.update(draw.linear("head", spec.num_classes, dim))
    return state


# -- ConvNeXt --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvNextSpec:
    """A timm ConvNeXt: blocks and channels per stage, classes, image size."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    num_classes: int = 1000
    img: int = 224
    in_chans: int = 3


def convnext_forward(state: State, spec: ConvNextSpec, pixels: torch.Tensor) -> torch.Tensor:
    """Logits of timm's ConvNeXt: patchify stem, stages (downsample, blocks), pooled channels-first head."""
    x = F.conv2d(pixels, state["stem.0.weight"], state["stem.0.bias"], stride=4)
    x = dyt(x, state, "stem.1", channels_last=False)
    for stage, depth in enumerate(spec.depths):
        prefix = f"stages.{stage}"
        if stage > 0:
            x = dyt(x, state, f"{prefix}.downsample.0", channels_last=False)
            x = F.conv2d(x, state[f"{prefix}.downsample.1.weight"], state[f"{prefix}.downsample.1.bias"], stride=2)
        for index in range(depth):
            x = convnext_block(x, state, f"{prefix}.blocks.{index}")
    pooled = dyt(x.mean(dim=(2, 3), keepdim=True), state, "head.norm", channels_last=False)
    return linear(pooled.flatten(1), state, "head.fc")


def convnext_block(x: torch.Tensor, state: State, block: str) -> torch.Tensor:
    """7x7 depthwise conv, channels-last DyT and MLP, layer scale ``gamma``, residual."""
    y = F.conv2d(x, state[f"{block}.conv_dw.weight"], state[f"{block}.conv_dw.bias"], padding=3, groups=x.shape[1])
    y = mlp(dyt(y.permute(0, 2, 3, 1), state, f"{block}.norm"), state, f"{block}.mlp").permute(0, 3, 1, 2)
    return x + y * state[f"{block}.gamma"].reshape(1, -1, 1, 1)


def convnext_state(spec: ConvNextSpec, seed: int) -> State:
    """Random weights in timm's key layout, layer scales drawn too (not timm's 1e-6, which would hide the blocks)."""
    draw = _Draw(seed)
    state = {**draw.conv("stem.0", spec.dims[0], spec.in_chans, 4), **draw.dyt("stem.1", spec.dims[0])}
    for stage, (depth, dim) in enumerate(zip(spec.depths, spec.dims, strict=True)):
        prefix = f"stages.{stage}"
        if stage > 0:
            state.update(draw.dyt(f"{prefix}.downsample.0", spec.dims[stage - 1]))
            state.update(draw.conv(f"{prefix}.downsample.1", dim, spec.dims[stage - 1], 2))
        for index in range(depth):
            block = f"{prefix}.blocks.{index}"
            state.update(draw.conv(f"{block}.conv_dw", dim, 1, 7))
            state.update(draw.dyt(f"{block}.norm", dim))
            state.update(draw.linear(f"{block}.mlp.fc1", 4 * dim, dim))
            state.update(draw.linear(f"{block}.mlp.fc2", dim, 4 * dim))
            state[f"{block}.gamma"] = 0.1 + 0.4 * draw.uniform((dim,))
    state.update(draw.dyt("head.norm", spec.dims[-1]))
    state.update(draw.linear("head.fc", spec.num_classes, spec.dims[-1]))
    return state


class _Draw:
    """Seeded random parameters: weights with std 1/sqrt(fan_in), small biases, DyT near its init."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator) * std

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def linear(self, site: str, out: int, inp: int) -> State:
        return {f"{site}.weight": self.normal((out, inp), inp ** -0.5), f"{site}.bias": self.normal((out,), 0.02)}

    def conv(self, site: str, out: int, inp: int, kernel: int) -> State:
        """A conv with ``inp`` input channels per group (1 for a depthwise one)."""
        fan_in = inp * kernel * kernel
        return {f"{site}.weight": self.normal((out, inp, kernel, kernel), fan_in ** -0.5),
                f"{site}.bias": self.normal((out,), 0.02)}

    def dyt(self, site: str, dim: int) -> State:
        """alpha in [0.3, 0.9) (a trained model's differ per site), weight around 1, bias around 0."""
        return {f"{site}.alpha": 0.3 + 0.6 * self.uniform((1,)), f"{site}.weight": 1.0 + self.normal((dim,), 0.2),
                f"{site}.bias": self.normal((dim,), 0.1)}


# -- the checkpoint file the official training code writes ------------------------------------------

def official_checkpoint(model: State, ema: State | None, timm_name: str, nb_classes: int, epoch: int = 299) -> dict:
    """What the DyT paper's training code saves (``utils.save_model``): the model's state dict, AdamW's
    and the GradScaler's states, the epoch, the argparse args, and with EMA ``model_ema``."""
    params = [tensor.clone().requires_grad_(True) for tensor in model.values()]
    optimizer = torch.optim.AdamW(params, lr=4e-3, weight_decay=0.05)
    for param in params:
        param.grad = torch.full_like(param, 1e-3)
    optimizer.step()  # the moments (exp_avg, exp_avg_sq) and step counts exist only after a step
    checkpoint = {
        "model": model,
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "args": training_args(timm_name, nb_classes, model_ema=ema is not None),
    }
    if ema is not None:
        checkpoint["model_ema"] = ema
    return checkpoint


def training_args(timm_name: str, nb_classes: int, model_ema: bool) -> argparse.Namespace:
    """The argparse namespace of the official main.py (a representative subset of its options)."""
    return argparse.Namespace(
        batch_size=128, epochs=300, update_freq=1, model=timm_name, drop_path=0.1, input_size=224,
        layer_scale_init_value=1e-6, model_ema=model_ema, model_ema_decay=0.9999, model_ema_force_cpu=False,
        model_ema_eval=model_ema, opt="adamw", opt_eps=1e-8, opt_betas=None, clip_grad=None, momentum=0.9,
        weight_decay=0.05, weight_decay_end=None, lr=4e-3, layer_decay=1.0, min_lr=1e-6, warmup_epochs=20,
        warmup_steps=-1, color_jitter=0.4, aa="rand-m9-mstd0.5-inc1", smoothing=0.1, train_interpolation="bicubic",
        crop_pct=None, reprob=0.25, remode="pixel", recount=1, resplit=False, mixup=0.8, cutmix=1.0,
        cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", finetune="",
        head_init_scale=1.0, model_key="model|module", model_prefix="", data_path="/datasets/imagenet",
        eval_data_path=None, nb_classes=nb_classes, imagenet_default_mean_and_std=True, data_set="IMNET",
        output_dir="/checkpoint/dyt", log_dir=None, device="cuda", seed=0, resume="", auto_resume=True,
        save_ckpt=True, save_ckpt_freq=1, save_ckpt_num=3, start_epoch=0, eval=False, dist_eval=True,
        disable_eval=False, num_workers=10, pin_mem=True, world_size=64, local_rank=-1, dist_on_itp=False,
        dist_url="env://", use_amp=True, enable_wandb=False, rank=0, gpu=0, distributed=True,
        dist_backend="nccl", dynamic_tanh=True,
    )
