"""transformer_graph.linear: F.linear with float32 CPU products on oneDNN equals F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_graph import linear as linear_mod
from transformer_graph.linear import Linear, linear, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear kernel")


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5), (2, 3, 4, 5), (1, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_backward_equal_f_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = torch.randn(6, 5, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True) if bias else None
    gy = torch.randn(*shape[:-1], 6, generator=g)
    calls = []
    real = linear_mod._mm_t
    linear_mod._mm_t = lambda *a: calls.append(1) or real(*a)
    try:
        y = linear(x, w, b)
        grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], gy)
    finally:
        linear_mod._mm_t = real
    assert len(calls) == 3   # the forward and both backward products ran on oneDNN
    ref = F.linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], gy)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_gradients_only_where_asked_and_through_views():
    x = torch.randn(4, 8, 5)[:, ::2]          # a non-contiguous input
    w = torch.randn(3, 5, requires_grad=True)
    y = linear(x, w)
    (gw,) = torch.autograd.grad(y.sum(), [w])
    torch.testing.assert_close(gw, torch.autograd.grad(F.linear(x, w).sum(), [w])[0], rtol=1e-5, atol=1e-5)


def test_other_dtypes_devices_and_autocast_keep_f_linear(monkeypatch):
    monkeypatch.setattr(linear_mod, "_OneDNNLinear", None)  # any use of the oneDNN path would fail
    x64, w64 = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(linear(x64, w64), F.linear(x64, w64))             # float64: the equality tests' path
    with torch.autocast("cpu", dtype=torch.bfloat16):                      # bf16 is oneDNN already
        x, w = torch.randn(3, 4), torch.randn(2, 4)
        assert linear(x, w).dtype == torch.bfloat16
    assert linear(torch.randn(0, 4), torch.randn(2, 4)).shape == (0, 2)   # empty input


def test_linear_module_is_nn_linear_with_the_same_state_and_init():
    torch.manual_seed(3)
    a = Linear(5, 4)
    torch.manual_seed(3)
    b = nn.Linear(5, 4)
    assert isinstance(a, nn.Linear) and a.state_dict().keys() == b.state_dict().keys()
    for k in b.state_dict():
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])
    x = torch.randn(2, 5)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)
