"""Parameter and FLOP counts for any vidiff network, attention included.

torch's ``FlopCounterMode`` knows matmuls and convolutions, and the CUDA attention kernels,
but counts nothing for the CPU attention kernel. We register its formula (two matmuls of
``2 * B * heads * Lq * Lk * head_dim`` each, i.e. 4·B·h·Lq·Lk·d forward, twice that backward)
so a CPU count and a GPU count of the same model agree.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, register_flop_formula

_aten = torch.ops.aten


def _attention_flops(q_shape, k_shape, v_shape) -> int:
    b, h, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def _register_cpu_attention() -> None:
    op = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return
    try:
        @register_flop_formula(op, get_raw=True)
        def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
            return _attention_flops(query.shape, key.shape, value.shape)

        backward = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
        if backward is not None:
            @register_flop_formula(backward, get_raw=True)
            def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
                # dQ, dK, dV and the recomputed scores: twice the forward's matmul work.
                return 2 * _attention_flops(query.shape, key.shape, value.shape)
    except RuntimeError:  # already registered (e.g. a newer torch counts it natively)
        pass


_register_cpu_attention()


def _register_mkldnn_convolution() -> None:
    # Networks may call oneDNN's convolution directly on CPU (UNet3D does for batch-1 conv3d);
    # count it as the convolution it is. Its backward is aten.convolution_backward (counted).
    op = getattr(_aten, "mkldnn_convolution", None)
    if op is None:
        return
    try:
        @register_flop_formula(op)
        def _fwd(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)
    except RuntimeError:  # already registered
        pass


_register_mkldnn_convolution()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(fn: Callable[[], object], backward: bool = False) -> int:
    """FLOPs of calling ``fn()`` (and of ``.sum().backward()`` on its output when asked).

    One multiply-add counts as 2 FLOPs, as torch's counter does.
    """
    with FlopCounterMode(display=False) as counter:
        out = fn()
        if backward:
            out.float().sum().backward()
    return counter.get_total_flops()
