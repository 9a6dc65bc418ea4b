"""Mixed precision: IAT, AdaptiveLinear and ALSTM under torch.autocast (CPU bfloat16) against float32.

Precision policy (README): the IAT's quadrature sums and the aLSTM's recurrence run in the
module's own dtype with autocast off; outputs return in the input's dtype; the aLSTM state
stays in the parameters' dtype.  Tolerances are bfloat16's: 8 bits of mantissa.
"""

import pytest
import torch
from torch import nn

from unbottleneck import IAT, AdaptiveLinear
from unbottleneck.adaptive import ALSTM


@pytest.mark.parametrize("basis, q", [("rectangular", "dual"), ("piecewise_linear", "normalized"),
                                      ("piecewise_linear", "dual"), ("fourier", "dual")])
def test_iat_between_linears_under_bf16_autocast(basis, q):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), IAT(64, basis=basis, q=q), nn.Linear(64, 4))
    x = torch.randn(32, 8)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
        assert net[1](torch.randn(5, 64).bfloat16()).dtype == torch.bfloat16  # back in the input's dtype
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref, atol=0.03 * float(ref.detach().abs().max()))
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_iat_under_autocast_matches_its_float32_map_exactly_on_float32_input():
    act = IAT(32, basis="fourier")
    z = torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = act(z)
    assert y.dtype == torch.float32 and torch.equal(y, act(z))


def test_adaptive_linear_under_autocast():
    torch.manual_seed(0)
    layer = AdaptiveLinear(16, 8, policy="io")
    x = torch.randn(10, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert torch.allclose(y.float(), layer(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_alstm_under_bf16_autocast(implementation):
    torch.manual_seed(0)
    m = ALSTM(8, 12, 4, num_layers=2, implementation=implementation)
    x = torch.randn(6, 3, 8)
    masks = m.sample_masks(3)
    ref, _ = m(x, masks=masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = m(x.bfloat16(), masks=masks)
        out2, _ = m(x.bfloat16(), state, masks=masks)  # the float32 state goes back in
    assert out.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for s in state for t in s)
    assert torch.allclose(out.float(), ref, atol=0.02)
    out2.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("basis,kernel", [("rectangular", "select"), ("piecewise_linear", "generic"),
                                          ("fourier", "generic")])
def test_half_precision_modules_run_on_cpu(dtype, tol, basis, kernel):
    """A module converted to bf16/fp16 keeps the select kernel (its test is structural) and
    otherwise takes the generic path with dense operators (the CPU has no half CSR kernels).
    Tolerance: relative Frobenius error against the float32 module, a few half-precision ulps;
    5x more for the Fourier basis, whose sums of +-1-sized terms cancel (the dense reference
    in half precision errs as much)."""
    tol = tol * (5 if basis == "fourier" else 1)
    full = IAT(16, basis=basis, implementation="fast")
    half = IAT(16, basis=basis, implementation="fast").to(dtype)
    assert half.kernel == kernel
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    zh = z.to(dtype).requires_grad_()
    zf = zh.detach().float().requires_grad_()
    yh, yf = half(zh), full(zf)
    assert yh.dtype == dtype
    yh.sum().backward()
    yf.sum().backward()
    assert float(((yh.float() - yf).norm() / yf.norm()).detach()) < tol
    assert float((zh.grad.float() - zf.grad).norm() / zf.grad.norm()) < tol


@pytest.mark.parametrize("basis,q", [("piecewise_linear", "dual"), ("fourier", "dual"),
                                     ("piecewise_linear", "fourier")])  # band, fourier, generic
def test_custom_functions_keep_their_precision_with_backward_inside_autocast(basis, q):
    """The kernels' autograd functions run forward and backward with autocast off, so a
    float32 call inside an autocast region (backward included) equals the float32 call."""
    from unbottleneck.iat import iat_fast

    m = IAT(128, basis=basis, q=q, implementation="fast")
    z = torch.randn(16, 128, generator=torch.Generator().manual_seed(5), requires_grad=True)
    y = iat_fast(z, m._ops)
    (g,) = torch.autograd.grad(y.square().sum(), z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ac = iat_fast(z, m._ops)
        (g_ac,) = torch.autograd.grad(y_ac.square().sum(), z)
    assert y_ac.dtype == torch.float32 and g_ac.dtype == torch.float32
    torch.testing.assert_close(y_ac, y, rtol=0, atol=0)
    torch.testing.assert_close(g_ac, g, rtol=1e-6, atol=1e-6)


def test_fused_alstm_backward_inside_autocast():
    m = ALSTM(8, 16, num_layers=2, adapt_size=4)
    x = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(2))
    out, _ = m(x)
    grads = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac, _ = m(x)
        grads_ac = torch.autograd.grad(out_ac.float().square().sum(), list(m.parameters()))
    for g, g_ac in zip(grads, grads_ac, strict=True):
        assert g_ac.dtype == torch.float32
        assert float((g_ac - g).norm() / g.norm().clamp(min=1e-12)) < 3e-2
