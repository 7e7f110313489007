"""Label-smoothed loss and token accuracy over target nodes (there is no padding to mask)."""
from __future__ import annotations

import math

import torch


class _SmoothedKL(torch.autograd.Function):
    """sum_i KL(q_i || p_i) for log-probabilities ``logp`` (N, V).

    Written as one autograd function because the gradient is simply ``-q``: a
    single fill and scatter over the (N, V) output, instead of the several
    zero-filled (N, V) buffers that gather/slice/sum backward would allocate.
    With a vocabulary of 10k+ words that is the dominant cost of the loss.
    """

    @staticmethod
    def forward(ctx, logp, labels, eps: float, pad: int):
        vocab = logp.shape[-1]
        others = vocab - 1 - (pad >= 0)
        conf, low = 1.0 - eps, (eps / others if others else 0.0)
        label_logp = logp.gather(-1, labels[:, None]).squeeze(-1)
        rest = logp.sum(-1) - label_logp
        if pad >= 0:
            rest = rest - logp[:, pad]
        # + sum q log q (a constant) makes it a true KL: zero for a perfect prediction.
        entropy = conf * math.log(conf) + (eps * math.log(low) if eps > 0 else 0.0)
        loss = (-(conf * label_logp + low * rest) + entropy).sum()
        ctx.save_for_backward(labels)
        ctx.shape, ctx.dtype, ctx.device = logp.shape, logp.dtype, logp.device
        ctx.conf, ctx.low, ctx.pad = conf, low, pad
        return loss, (-label_logp).sum()

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        (labels,) = ctx.saved_tensors
        g = float(grad_loss)  # a scalar: folded into the fill, saving a pass over (N, V)
        grad = torch.full(ctx.shape, -ctx.low * g, dtype=ctx.dtype, device=ctx.device)
        if ctx.pad >= 0:
            grad[:, ctx.pad] = 0.0
        grad.scatter_(-1, labels[:, None], -ctx.conf * g)
        return grad, None, None, None


def label_smoothed_loss(logp: torch.Tensor, labels: torch.Tensor, eps: float = 0.0, pad: int | None = 0):
    """KL divergence from the smoothed target distribution, summed over target nodes.

    The smoothed target puts ``1 - eps`` on the label and spreads ``eps`` evenly over
    the other tokens except ``<pad>`` (which never occurs as a label: it gets no mass),
    as in the reference. With ``eps = 0`` this is the plain negative log-likelihood.

    Returns ``(loss_sum, nll_sum)``; divide by the number of target nodes for means.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing eps: expected a value in [0, 1), got {eps!r}")
    loss, nll = _SmoothedKL.apply(logp, labels, float(eps), -1 if pad is None else int(pad))
    return loss, nll.detach()


def token_correct(logp: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logp.argmax(-1) == labels).sum())
