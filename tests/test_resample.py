"""GDNN.resample: re-discretisation at another width through the continuous state functions."""

from __future__ import annotations

import pytest
import torch

from unbottleneck import GDNN

DT = torch.float64


def _net(basis="fourier", d=16, num_points=None, **kw):
    torch.manual_seed(0)
    return GDNN(3, d, 2, depth=2, basis=basis, num_points=num_points, dtype=DT, **kw)


def _rel(a, b):
    return float(((a - b).norm() / b.norm()).detach())


X = torch.randn(200, 3, generator=torch.Generator().manual_seed(1), dtype=DT)


@pytest.mark.parametrize("basis,kw", [("fourier", {}), ("piecewise_linear", {}),
                                      ("piecewise_linear", {"zero_mean": True}), ("rectangular", {}),
                                      ("piecewise_linear", {"q": "normalized"}), ("fourier", {"q": "same"})])
def test_same_width_is_the_identity(basis, kw):
    net = _net(basis, **kw)
    back = net.resample(16)
    assert _rel(back(X), net(X)) < 1e-12
    if kw.get("zero_mean"):
        return  # zero-mean hats sum to 0: the constant direction of each weight is projected out
    for old, new in zip(net.parameters(), back.parameters(), strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=1e-10)


def test_nested_rectangular_cells_carry_over_exactly():
    net = _net("rectangular", d=8, num_points=32)
    for d_new in (16, 32):  # every old cell is a union of new cells
        assert _rel(net.resample(d_new)(X), net(X)) < 1e-12


def test_fourier_upsampling_converges_to_the_source_as_m_grows():
    """Fourier bases nest, so 16 -> 32 carries the functions exactly; what is left is the
    quadrature error of both discretisations, which falls as M grows."""
    net = _net("fourier", num_points=1024)
    y = net(X)
    errors = [_rel(net.resample(32, num_points=m)(X), y) for m in (128, 512, 2048)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 2e-4, errors


def test_downsampling_is_the_best_l2_approximation_not_the_identity():
    net = _net("fourier", num_points=256)
    small = net.resample(8)
    assert small.activations[0].in_features == 8 and small.activations[0].num_points == 128
    assert small.linears[0].weight.shape == (8, 3) and small.linears[-1].weight.shape == (2, 8)
    # the kept frequencies' first-layer coefficients are copied (the basis is orthonormal)
    torch.testing.assert_close(small.linears[0].weight, net.linears[0].weight[:8], rtol=0, atol=1e-8)
    assert 0 < _rel(small(X), net(X)) < 1.5


def test_resample_keeps_options_mode_and_leaves_the_source_alone():
    net = _net("piecewise_linear", zero_mean=True, quadrature="gauss_legendre", num_points=40).eval()
    before = [p.clone() for p in net.parameters()]
    big = net.resample(32)
    act = big.activations[1]
    assert (act.in_features, act.num_points, act.quadrature, act.zero_mean) == (32, 80, "gauss_legendre", True)
    assert not big.training and big.linears[0].weight.dtype == DT
    for b, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(b, p)


def test_resample_refuses_what_has_no_continuous_form():
    with pytest.raises(ValueError, match="trainable"):
        GDNN(2, 4, 1, trainable=True).resample(8)
    with pytest.raises(ValueError, match="hidden_features"):
        _net().resample(0)
