"""implementation="fused" (the structured kernels through torch.compile) and the expressions that
an enclosing torch.compile traces: float64 equivalence with the dense reference."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from unbottleneck import IAT, settings
from unbottleneck.iat.kernels import band_fused, fused

DT = torch.float64


@pytest.fixture(autouse=True)
def _no_silent_fallback():
    """A compile failure would quietly test the eager kernel: make it an error here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not compile")
        yield


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
    assert fused.fused_iat(z, m._ops.kernel, "softplus", torch.nn.functional.softplus, m.P) is None
    y, g = _value_and_grad(m, z)
    y_ref, g_ref = _value_and_grad(m.reference, z)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_fused_falls_back_to_the_eager_kernel_with_one_warning(monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler (test)")
        return call

    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_failed", set())
    monkeypatch.setattr(torch, "compile", broken)
    m = IAT(16, basis="piecewise_linear", q="normalized", implementation="fused", dtype=DT)
    z = torch.randn(4, 16, dtype=DT)
    with pytest.warns(RuntimeWarning, match="could not compile.*eager kernels"):
        y = m(z)
    torch.testing.assert_close(y, m.reference(z), rtol=0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(z)  # the failure is remembered: no second warning, no second attempt


def test_a_backward_that_fails_to_compile_runs_uncompiled_with_one_warning(monkeypatch):
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_failed", set())
    real = torch.compile

    def backward_breaks(fn, **kw):
        if fn.__name__ != "backward":
            return real(fn, **kw)

        def call(*a, **k):
            raise RuntimeError("backward compiler crash (test)")
        return call

    monkeypatch.setattr(torch, "compile", backward_breaks)
    m = IAT(16, basis="rectangular", implementation="fused", dtype=DT)
    z = torch.randn(4, 16, dtype=DT)
    with pytest.warns(RuntimeWarning, match="could not compile.*eager kernels"):
        y, g = _value_and_grad(m, z)
    y_ref, g_ref = _value_and_grad(m.reference, z)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


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

    torch._dynamo.reset()
    saved = fused.EXPRESSIONS[band_fused._BandKernel]
    fused.EXPRESSIONS[band_fused._BandKernel] = (spy, saved[1])
    try:
        torch.compile(model, backend="aot_eager", fullgraph=True)(z)
    finally:
        fused.EXPRESSIONS[band_fused._BandKernel] = saved
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


# -- select and fourier ---------------------------------------------------------------
# (basis, d, num_points, auto-fft threshold): the Fourier cases cover the dense form (small
# d M) and the FFTs (threshold 1: every size), each with even and odd d.
OTHER_KERNELS = [
    ("rectangular", 16, None, None),
    ("rectangular", 7, 20, None),
    ("fourier", 16, None, None),
    ("fourier", 16, None, 1),
    ("fourier", 9, 40, 1),
]


def _with_fft_threshold(threshold):
    return settings.override(iat_auto_fft_min_size=threshold) if threshold else warnings.catch_warnings()


@pytest.mark.parametrize("basis,d,num_points,fft_from", OTHER_KERNELS)
@pytest.mark.parametrize("nonlinearity", ["relu", "leaky_relu"])
def test_fused_select_and_fourier_equal_the_reference(basis, d, num_points, fft_from, nonlinearity):
    with _with_fft_threshold(fft_from):
        m = IAT(d, basis=basis, num_points=num_points, nonlinearity=nonlinearity,
                implementation="fused", dtype=DT)
        assert m.kernel == ("select" if basis == "rectangular" else "fourier")
        z = torch.randn(6, 3, d, generator=torch.Generator().manual_seed(2), dtype=DT)
        y, g = _value_and_grad(m, z)
        y_ref, g_ref = _value_and_grad(m.reference, z)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
        zt = torch.randn(d, 5, dtype=DT).t()  # non-contiguous
        torch.testing.assert_close(m(zt), m.reference(zt), rtol=0, atol=1e-12)
        assert m(torch.empty(0, d, dtype=DT)).shape == (0, d)
        zg = torch.randn(3, d, generator=torch.Generator().manual_seed(4), dtype=DT, requires_grad=True)
        assert torch.autograd.gradcheck(m, (zg,))


def test_the_fourier_expressions_equal_the_eager_fft_kernel():
    m = IAT(10, basis="fourier", dtype=DT)
    kern = m._ops.kernel
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(5), dtype=DT)
    from unbottleneck.iat.kernels import fourier

    torch.testing.assert_close(fourier.fourier_synthesis(z, kern), z @ m.P.t(), rtol=0, atol=1e-12)
    r = torch.randn(4, m.num_points, dtype=DT)
    torch.testing.assert_close(fourier.fourier_analysis(r, kern), r @ m.P, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_fused_select_in_half_precision_against_float32(dtype, tol):
    """Half-precision modules keep the select kernel (its test is structural); the fused
    kernel's values and gradients stay within the half type's rounding (relative to the
    output's scale) of the float32 module's."""
    m32 = IAT(32, basis="rectangular", implementation="fused")
    mh = IAT(32, basis="rectangular", implementation="fused", dtype=dtype)
    assert mh.kernel == "select"
    z = torch.randn(64, 32, generator=torch.Generator().manual_seed(6))
    y32, g32 = _value_and_grad(m32, z)
    yh, gh = _value_and_grad(mh, z.to(dtype))
    assert yh.dtype == gh.dtype == dtype
    assert float((yh.float() - y32).abs().max()) <= tol * float(y32.abs().max())
    assert float((gh.float() - g32).abs().max()) <= tol * float(g32.abs().max())


@pytest.mark.parametrize("basis", ["rectangular", "piecewise_linear", "fourier"])
def test_fused_under_autocast_runs_in_the_module_dtype(basis):
    """Under CPU autocast a bf16 input (what the previous autocast layer returns) is
    transformed in the module's own float32 and comes back in bf16: the only error is the
    final rounding of the output (bf16: 2^-8 relative)."""
    m = IAT(32, basis=basis, implementation="fused")
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(7)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(z)
    assert y.dtype == torch.bfloat16
    ref = m.reference(z.float())
    assert float((y.float() - ref).abs().max()) <= 2**-8 * float(ref.abs().max())


@pytest.mark.parametrize("basis", ["rectangular", "fourier"])
def test_compiled_models_trace_the_select_and_fourier_expressions(basis):
    torch._dynamo.reset()
    seen = []
    with settings.override(iat_auto_fft_min_size=1):
        model = nn.Sequential(nn.Linear(8, 16), IAT(16, basis=basis, implementation="fused"),
                              nn.Linear(16, 4)).double()
        kind = type(model[1]._ops.kernel)
        saved = fused.EXPRESSIONS[kind]

        def spy(*a, **k):
            seen.append(1)
            return saved[0](*a, **k)

        fused.EXPRESSIONS[kind] = (spy, saved[1])
        try:
            compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
            z = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), dtype=DT)
            y, g = _value_and_grad(compiled, z)
        finally:
            fused.EXPRESSIONS[kind] = saved
        y_ref, g_ref = _value_and_grad(model, z)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    assert seen, "the compiled graph did not go through the kernel's expression"
    torch._dynamo.reset()


def test_fullgraph_inductor_compile_of_a_model_with_fused_iats():
    """The whole model through inductor (what users run), one IAT of each kernel."""
    torch._dynamo.reset()
    model = nn.Sequential(
        nn.Linear(8, 16), IAT(16, basis="rectangular", implementation="fused"),
        nn.Linear(16, 16), IAT(16, basis="piecewise_linear", q="dual", implementation="fused"),
        nn.Linear(16, 16), IAT(16, basis="fourier", implementation="fused"), nn.Linear(16, 2))
    z = torch.randn(12, 8, generator=torch.Generator().manual_seed(8))
    y, g = _value_and_grad(torch.compile(model, fullgraph=True), z)
    y_ref, g_ref = _value_and_grad(model, z)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
