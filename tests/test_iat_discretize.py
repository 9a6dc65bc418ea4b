"""Regression tests for the discretisation's rank decisions and quadrature (issue 14, section 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unbottleneck import IAT
from unbottleneck.iat.module import discretize
from unbottleneck.iat.quadrature import quadrature_rule

# (d, M) pairs where torch.linalg.pinv's default cutoff used to invert the round-off
# eigenvalue of the singular zero-mean Gram matrix, plus neighbours.
PROJECTOR_GRID = [(4, 8), (4, 256), (16, 64), (16, 128), (16, 1024), (16, 4096), (64, 256),
                  (64, 4096), (128, 1024), (128, 2048)]


@pytest.mark.parametrize("basis", ["rectangular", "piecewise_linear"])
@pytest.mark.parametrize("quadrature", ["midpoint", "trapezoid", "gauss_legendre"])
@pytest.mark.parametrize("d,m", PROJECTOR_GRID)
def test_zero_mean_dual_is_a_rank_d_minus_1_projector(basis, quadrature, d, m):
    """G = integral q p^T must be the orthogonal projector onto the zero-mean span."""
    mats = discretize(d, basis=basis, num_points=m, quadrature=quadrature, zero_mean=True, q="dual")
    G = mats["Qw"].t() @ mats["P"]
    assert (G @ G - G).abs().max() < 1e-10
    assert (G - G.t()).abs().max() < 1e-10
    assert torch.trace(G).item() == pytest.approx(d - 1, abs=1e-10)
    # the removed direction is the constant combination (the functions sum to one)
    assert (G @ torch.ones(d, dtype=torch.float64)).abs().max() < 1e-10


@pytest.mark.parametrize("d", [8, 16, 64])
@pytest.mark.parametrize("q", ["normalized", "same", "dual"])
def test_basis_function_zero_on_the_grid_is_refused(d, q):
    """Fourier with even d and M = d: cos((d/2) pi s) vanishes at every midpoint node; q =
    'normalized' used to divide by its ~1e-30 norm and give outputs of ~1e15."""
    with pytest.raises(ValueError, match=r"basis function\(s\) .* zero at all .*num_points > "):
        IAT(d, basis="fourier", num_points=d, q=q)
    # one more node and the function is visible: outputs are of the size of the inputs
    iat = IAT(d, basis="fourier", num_points=d + 2, q=q, dtype=torch.float64)
    z = torch.randn(32, d, dtype=torch.float64)
    assert iat(z).abs().max() < 10 * z.abs().max() * (d + 2)


def test_cells_without_nodes_are_refused():
    with pytest.raises(ValueError, match="rectangular.*zero at all 16 gauss_legendre nodes"):
        IAT(16, basis="rectangular", num_points=16, quadrature="gauss_legendre")


def test_zero_mean_of_one_constant_function_is_refused():
    with pytest.raises(ValueError, match="zero_mean on a single constant function"):
        IAT(1, basis="rectangular", zero_mean=True)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 17, 64, 255, 1000])
def test_gauss_legendre_matches_numpy(m):
    s, w = (t.numpy() for t in quadrature_rule("gauss_legendre", m))
    s_ref, w_ref = np.polynomial.legendre.leggauss(m)
    assert np.all(np.diff(s) > 0)
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [7, 50, 600])
def test_gauss_legendre_integrates_polynomials_of_degree_2m_minus_1(m):
    s, w = quadrature_rule("gauss_legendre", m)
    for k in (0, 1, 2, m, m + 1, 2 * m - 2, 2 * m - 1):
        exact = 2.0 / (k + 1) if k % 2 == 0 else 0.0
        assert float(w @ s**k) == pytest.approx(exact, abs=1e-14)
