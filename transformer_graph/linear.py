"""``F.linear`` whose float32 CPU products run on oneDNN, forward and backward.

PyTorch's float32 ``torch.mm``/``F.linear`` on CPU is MKL's sgemm, which on this project's
AMD CPUs takes a code path without AVX-512: about 100 GFLOP/s on one core, where oneDNN's
linear kernel (``torch.ops.mkldnn._linear_pointwise``, the kernel torch.compile's CPU
backend emits) reaches 215-235 (docs/BENCHMARKS.md, the matmul ceiling). The kernel has no
autograd formula, so :class:`_OneDNNLinear` supplies the two backward products, each again one
oneDNN linear (``dX = dY W`` and ``dW = dYᵀ X``; the kernel reads transposed views without
copying them).

Only float32 on CPU outside autocast takes this path: bfloat16 products are oneDNN already,
float64 (the equality tests) and CUDA keep ``F.linear``. Results equal ``F.linear``'s to
float32 rounding (another summation order), which the tests check. :class:`Linear` is
``nn.Linear`` with this forward: same parameters, same state_dict keys, same initialisation.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear kernel and it runs on this CPU."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        out = op(torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4), "none", [], "")
    except (RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(out, torch.full((2, 4), 3.0)))


def _mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` on oneDNN; a (n, k), b (m, k)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _mm_t(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x.reshape(-1, x.shape[-1]), weight)
        ctx.has_bias = bias is not None
        return _forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, weight.shape[0])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _mm_t(g2, weight.t()).view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            dw = _mm_t(g2.t(), x2.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db


def _autocast_query():
    """The "is CPU autocast on?" function of this torch, chosen once (it runs on every linear call)."""
    try:
        torch.is_autocast_enabled("cpu")            # torch >= 2.4
    except TypeError:
        return torch.is_autocast_cpu_enabled        # torch 2.2
    return lambda: torch.is_autocast_enabled("cpu")


_autocast_on_cpu = _autocast_query()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; float32 on CPU (outside autocast) through oneDNN."""
    if (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.numel() and not _autocast_on_cpu()
            and (bias is None or bias.dtype == torch.float32) and onednn_available()):
        # Without autograd (decoding, evaluation) the Function's bookkeeping is pure overhead:
        # ~45 us a call, 6% of a greedy decode of test2016 with the Tiny model.
        return _OneDNNLinear.apply(x, weight, bias) if torch.is_grad_enabled() else _forward(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
