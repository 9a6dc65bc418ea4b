"""implementation="fused" (the band kernel through torch.compile) and the band expression that
an enclosing torch.compile traces: float64 equivalence with the dense reference."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from unbottleneck import IAT
from unbottleneck.iat.kernels import band_fused

DT = torch.float64


def _value_and_grad(fn, z):
    z = z.detach().requires_grad_()
    y = fn(z)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (g,) = torch.autograd.grad((y * w).sum(), z)
    return y.detach(), g


@pytest.mark.parametrize("q,num_points,quadrature", [
    ("normalized", None, "midpoint"),       # M = 4d: main slots and extra rows
    ("dual", None, "midpoint"),             # the tridiagonal output map
    ("normalized", 60, "midpoint"),         # M = 4 (d - 1): main slots only
    ("same", 40, "gauss_legendre"),         # crowded intervals at the ends
])
def test_fused_equals_the_reference(q, num_points, quadrature):
    m = IAT(16, basis="piecewise_linear", q=q, num_points=num_points, quadrature=quadrature,
            implementation="fused", dtype=DT)
    assert m.kernel == "band" and m.use_fast
    z = torch.randn(6, 3, 16, generator=torch.Generator().manual_seed(2), dtype=DT)
    y, g = _value_and_grad(m, z)
    y_ref, g_ref = _value_and_grad(m.reference, z)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    # non-contiguous input and an empty batch
    zt = torch.randn(16, 5, dtype=DT).t()
    torch.testing.assert_close(m(zt), m.reference(zt), rtol=0, atol=1e-12)
    assert m(torch.empty(0, 16, dtype=DT)).shape == (0, 16)


@pytest.mark.parametrize("nonlinearity", ["relu", "leaky_relu"])
def test_fused_gradcheck(nonlinearity):
    m = IAT(6, basis="piecewise_linear", nonlinearity=nonlinearity, implementation="fused", dtype=DT)
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(m, (z,))
    torch.testing.assert_close(m(z), m.reference(z), rtol=0, atol=1e-12)


def test_fused_without_a_fused_backward_runs_the_eager_kernel():
    m = IAT(6, basis="piecewise_linear", nonlinearity="softplus", implementation="fused", dtype=DT)
    z = torch.randn(3, 6, dtype=DT)
    assert band_fused.band_fused(z, m._ops.kernel, "softplus", torch.nn.functional.softplus) is None
    y, g = _value_and_grad(m, z)
    y_ref, g_ref = _value_and_grad(m.reference, z)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_fused_falls_back_to_the_eager_kernel_with_one_warning(monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler (test)")
        return call

    monkeypatch.setattr(band_fused, "_compiled", {})
    monkeypatch.setattr(band_fused, "_failed", set())
    monkeypatch.setattr(torch, "compile", broken)
    m = IAT(16, basis="piecewise_linear", q="normalized", implementation="fused", dtype=DT)
    z = torch.randn(4, 16, dtype=DT)
    with pytest.warns(RuntimeWarning, match="could not compile.*eager band kernel"):
        y = m(z)
    torch.testing.assert_close(y, m.reference(z), rtol=0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(z)  # the failure is remembered: no second warning, no second attempt


@pytest.mark.parametrize("q", ["normalized", "dual"])
def test_compiled_models_trace_the_band_expression(q):
    """torch.compile(fullgraph=True) of a model with hat IATs traces the O(N M) band
    expression (and the dual's output map as one matmul), not the dense form."""
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 16), IAT(16, basis="piecewise_linear", q=q, implementation="fast"),
                          nn.Linear(16, 4)).double()
    assert model[1].kernel == "band"
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), dtype=DT)
    y, g = _value_and_grad(compiled, z)
    y_ref, g_ref = _value_and_grad(model, z)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    seen = []
    real = band_fused.band_expression

    def spy(*a, **k):
        seen.append(1)
        return real(*a, **k)

    import unbottleneck.iat.module as module

    torch._dynamo.reset()
    module.band_expression, saved = spy, module.band_expression
    try:
        torch.compile(model, backend="aot_eager", fullgraph=True)(z)
    finally:
        module.band_expression = saved
    assert seen, "the compiled graph did not go through the band expression"
    torch._dynamo.reset()


def test_fused_backward_twice_with_retain_graph():
    m = IAT(16, basis="piecewise_linear", q="normalized", implementation="fused", dtype=DT)
    z = torch.randn(4, 16, dtype=DT, requires_grad=True)
    y = m(z).square().sum()
    (g1,) = torch.autograd.grad(y, z, retain_graph=True)
    (g2,) = torch.autograd.grad(y, z)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_a_cast_to_float64_keeps_exact_bases_and_the_kernel():
    m = IAT(16, basis="piecewise_linear", q="normalized").double()  # built in float32
    assert m.kernel == "band"
    exact = IAT(16, basis="piecewise_linear", q="normalized", dtype=DT)
    assert torch.equal(m.P, exact.P) and torch.equal(m.Qw, exact.Qw)
    edited = IAT(16, basis="piecewise_linear", q="normalized")
    with torch.no_grad():
        edited.P.mul_(1.5)
    assert torch.equal(edited.double().P, (1.5 * IAT(16, basis="piecewise_linear", q="normalized").P).double())
