"""Label-smoothed loss and token accuracy over target nodes (there is no padding to mask).

:func:`label_smoothed_loss` takes log-probabilities (what the models' public ``forward``
returns); :func:`label_smoothed_loss_from_logits` is the same loss from the generator's
logits, fused with the log-softmax, which training uses (``model(batch, logits=True)``).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch.autograd.function import once_differentiable


class _SmoothedKL(torch.autograd.Function):
    """sum_i KL(q_i || p_i) for log-probabilities ``logp`` (N, V).

    Written as one autograd function because the gradient is simply ``-q``: a
    single fill and scatter over the (N, V) output, instead of the several
    zero-filled (N, V) buffers that gather/slice/sum backward would allocate.
    With a vocabulary of 10k+ words that is the dominant cost of the loss.
    """

    @staticmethod
    def forward(ctx, logp, labels, eps: float, pad: int):
        conf, low, entropy, _ = _smoothing(logp.shape[-1], eps, pad)
        label_logp = logp.gather(-1, labels[:, None]).squeeze(-1)
        rest = logp.sum(-1) - label_logp
        if pad >= 0:
            rest = rest - logp[:, pad]
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


def _smoothing(vocab: int, eps: float, pad: int) -> tuple[float, float, float, int]:
    """(label mass, mass of every other token but pad, sum q log q, how many such tokens)."""
    others = vocab - 1 - (pad >= 0)
    conf, low = 1.0 - eps, (eps / others if others else 0.0)
    # + sum q log q (a constant) makes it a true KL: zero for a perfect prediction.
    entropy = conf * math.log(conf) + (eps * math.log(low) if eps > 0 else 0.0)
    return conf, low, entropy, others


# Rows of logits per block of the fused loss: about 512k values (2 MB in float32, a core's L2
# cache here), so that a block's float32 working tensors stay in cache between the kernels that
# read them. Measured at 2043 x 14550 (1 thread, fwd + bwd): 131k values 36 ms, 512k 31 ms,
# 2M 34-38 ms; the unfused path 38 ms (fp32) and 50 ms (bf16 autocast: 34 ms fused).
_BLOCK_VALUES = 1 << 19
_log_softmax_backward = torch.ops.aten._log_softmax_backward_data


class _SmoothedKLFromLogits(torch.autograd.Function):
    """``_SmoothedKL(log_softmax(logits))`` without the (N, V) log-probabilities.

    One pass over row blocks of ``logits`` (any float dtype; float32 arithmetic, float64
    for float64): each block's log-probabilities, the loss terms :class:`_SmoothedKL`
    takes from them (label, row sum, pad column: the same formula), and, when a gradient
    is wanted, the gradient itself: the log-softmax's backward kernel applied to ``-q``
    (the loss's gradient with respect to the log-probabilities), ``softmax(z) - q``, is
    written into the one (N, V) tensor training needs anyway, the gradient of the logits,
    in their dtype (bf16 under autocast: no (N, V) casts). The same ATen kernels as
    ``log_softmax`` + :class:`_SmoothedKL` + the log-softmax's backward, row by row, so
    the numbers are theirs; only the (N, V) float32 tensors between them are gone (two in
    float32, four under bf16 autocast). Backward scales the kept gradient in place, so a
    second backward through the same graph (``retain_graph``) is refused.
    """

    @staticmethod
    def forward(ctx, logits, labels, eps: float, pad: int, want_grad: bool):
        n, vocab = logits.shape
        conf, low, entropy, _ = _smoothing(vocab, eps, pad)
        compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
        label_logp = torch.empty(n, dtype=compute, device=logits.device)
        rest = torch.empty(n, dtype=compute, device=logits.device)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if want_grad else None
        rows = max(1, min(n, _BLOCK_VALUES // max(vocab, 1)))
        block = partial(torch.empty, rows, vocab, dtype=compute, device=logits.device)
        logp = block()
        target = block() if want_grad else None      # -q: the loss's gradient w.r.t. logp
        # bf16 (or fp16) logits: a float32 block of them, reused for the block's gradient.
        widened = block() if logits.dtype != compute else None
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            z, lp, lab = logits[start:stop], logp[:stop - start], labels[start:stop, None]
            if widened is not None:
                z = widened[:stop - start].copy_(z)
            torch.log_softmax(z, -1, out=lp)
            torch.gather(lp, -1, lab, out=label_logp[start:stop, None])
            torch.sum(lp, -1, out=rest[start:stop])
            if pad >= 0:
                rest[start:stop] -= lp[:, pad]
            if grad is not None:
                t = target[:stop - start].fill_(-low)
                if pad >= 0:
                    t[:, pad] = 0.0
                t.scatter_(-1, lab, -conf)
                out = grad[start:stop] if widened is None else z
                _log_softmax_backward.out(t, lp, -1, compute, out=out)
                if widened is not None:
                    grad[start:stop].copy_(out)
        rest -= label_logp
        # + sum q log q (a constant) makes it a true KL: zero for a perfect prediction.
        loss = (-(conf * label_logp + low * rest) + entropy).sum()
        nll = (-label_logp).sum()
        ctx.mark_non_differentiable(nll)
        ctx.grad = grad   # not save_for_backward: backward scales it in place (see the class doc)
        return loss, nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_nll):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("label_smoothed_loss_from_logits: backward ran twice through the same loss "
                               "(retain_graph), or the logits did not require a gradient when the loss was "
                               "computed; compute the loss again for each backward pass")
        g = float(grad_loss)  # a scalar: folded into one in-place pass over (N, V)
        if g != 1.0:
            grad.mul_(g)
        return grad, None, None, None, None


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


def label_smoothed_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.0,
                                    pad: int | None = 0):
    """:func:`label_smoothed_loss` of ``log_softmax(logits)``, fused: ``logits`` (N, V) are the
    generator's output before the log-softmax (``model(batch, logits=True)``), in any float
    dtype (bf16 under autocast is read as it is; the arithmetic is float32).

    Equal to ``label_smoothed_loss(logits.float().log_softmax(-1), labels, eps, pad)`` in value
    and gradient up to float rounding, without materialising the (N, V) log-probabilities or
    any second (N, V) tensor (see :class:`_SmoothedKLFromLogits`). Returns ``(loss_sum,
    nll_sum)``, float32 (float64 for float64 logits). One backward pass per call.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing eps: expected a value in [0, 1), got {eps!r}")
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits: expected shape (N, vocab) with labels of shape (N,), got logits "
                         f"{tuple(logits.shape)} and labels {tuple(labels.shape)}")
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, nll = _SmoothedKLFromLogits.apply(logits, labels, float(eps), -1 if pad is None else int(pad),
                                            want_grad)
    return loss, nll.detach()


def token_correct(logp: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logp.argmax(-1) == labels).sum())
