"""Label-smoothed loss and token accuracy over target nodes (there is no padding to mask)."""
from __future__ import annotations

import math

import torch


def label_smoothed_loss(logp: torch.Tensor, labels: torch.Tensor, eps: float = 0.0, pad: int | None = 0):
    """KL divergence from the smoothed target distribution, summed over target nodes.

    The smoothed target puts ``1 - eps`` on the label and spreads ``eps`` evenly over
    the other tokens except ``<pad>`` (which never occurs as a label: it gets no mass),
    as in the reference. With ``eps = 0`` this is the plain negative log-likelihood.

    Returns ``(loss_sum, nll_sum)``; divide by the number of target nodes for means.
    """
    nll = -logp.gather(-1, labels[:, None]).squeeze(-1)
    if eps == 0.0:
        s = nll.sum()
        return s, s.detach()
    vocab = logp.shape[-1]
    others = vocab - 1 - (pad is not None)
    conf, low = 1.0 - eps, eps / others
    # -sum_y q(y) log p(y), computed without materialising q.
    total = logp.sum(-1)
    if pad is not None:
        total = total - logp[:, pad]
    cross_entropy = conf * nll - low * (total + nll)  # "total + nll" = sum over the others
    # + sum q log q (a constant) makes it a true KL: zero for a perfect prediction.
    entropy = conf * math.log(conf) + eps * math.log(low)
    loss = (cross_entropy + entropy).sum()
    return loss, nll.sum().detach()


def token_correct(logp: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logp.argmax(-1) == labels).sum())
