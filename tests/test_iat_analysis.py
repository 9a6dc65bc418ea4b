"""Tests of the IAT analysis tools: activation pattern/matrix, pattern jumps and
sensitivity, and the analytic gain."""

from __future__ import annotations

import math

import pytest
import torch

from unbottleneck.iat import (
    BASES,
    IAT,
    activation_matrix,
    activation_pattern,
    iat_gain,
    pattern_along_path,
    pattern_events,
    pattern_jump,
    pattern_sensitivity,
)

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def make(d: int = 8, **kw) -> IAT:
    kw.setdefault("dtype", DT)
    return IAT(d, **kw)


# --------------------------------------------------------------------------------------
# 7. Activation pattern and matrix
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", ["relu", "leaky_relu"])
@pytest.mark.parametrize("zero_mean", [False, True])
@pytest.mark.parametrize("q", ["dual", "same", "normalized", "fourier"])
@pytest.mark.parametrize("basis", BASES)
def test_output_is_activation_matrix_times_input(basis, q, zero_mean, nonlinearity):
    d = 8
    kw = {"out_features": 5} if q == "fourier" else {}
    m = make(d, basis=basis, q=q, zero_mean=zero_mean, nonlinearity=nonlinearity, **kw)
    z = randn(2, 3, d, seed=1)
    S = activation_matrix(m, z)
    assert S.shape == (2, 3, m.out_features, d)
    torch.testing.assert_close(torch.einsum("...md,...d->...m", S, z), m(z), rtol=0, atol=1e-12)
    # S is the Jacobian of the IAT (away from kinks)
    J = torch.autograd.functional.jacobian(m, z[0, 0])
    torch.testing.assert_close(S[0, 0], J, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_points", [8, 16, 32])
def test_rectangular_dual_activation_matrix_is_relu_mask(num_points):
    m = make(8, basis="rectangular", num_points=num_points)
    z = randn(4, 8, seed=2)
    z[0, :3] = 0.0  # the kink itself counts as "off", like ReLU's derivative
    S = activation_matrix(m, z)
    torch.testing.assert_close(S, torch.diag_embed((z > 0).to(DT)), rtol=0, atol=1e-13)


@pytest.mark.parametrize("basis", BASES)
def test_activation_pattern(basis):
    m = make(6, basis=basis, num_points=30)
    z = randn(2, 4, 6, seed=3)
    pat = activation_pattern(m, z)
    assert pat.shape == (2, 4, 30) and pat.dtype == torch.bool
    assert torch.equal(pat, m.state_function(z) > 0)
    assert torch.equal(activation_pattern(m, -z), m.state_function(z) < 0)
    # positive scaling leaves the pattern unchanged
    assert torch.equal(activation_pattern(m, 3.0 * z), pat)


def test_zero_integral_basis_always_has_both_signs():
    # f has zero integral, so the pattern is never all-on or all-off (the seed's argument).
    m = make(8, basis="fourier", num_points=64)
    pat = activation_pattern(m, randn(500, 8, seed=4))
    assert pat.any(-1).all() and (~pat).any(-1).all()
    # without zero mean, a positive z gives an all-on pattern for a partition of unity
    m = make(8, basis="piecewise_linear")
    assert activation_pattern(m, torch.rand(3, 8, dtype=DT) + 0.1).all()


def test_analysis_bad_arguments():
    m = make(8)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        activation_matrix(m, torch.zeros(3, 7, dtype=DT))
    with pytest.raises(TypeError, match="IAT"):
        activation_pattern(torch.nn.ReLU(), torch.zeros(3, 8, dtype=DT))
    with pytest.raises(ValueError, match="tanh"):
        activation_matrix(make(8, nonlinearity="tanh"), torch.zeros(3, 8, dtype=DT))
    with pytest.raises(ValueError, match=r"\(d,\)"):
        pattern_jump(m, torch.zeros(2, 8, dtype=DT), torch.ones(2, 8, dtype=DT))


def test_analysis_casts_input_dtype():
    m = make(8)
    z = randn(3, 8, seed=5)
    assert torch.equal(activation_pattern(m, z.float()), activation_pattern(m, z.float().double()))


# --------------------------------------------------------------------------------------
# 6. Pattern jumps: O(1/M) for continuous bases, O(1) for rectangular ones
# --------------------------------------------------------------------------------------

D_JUMP = 8
STEPS = 10_000  # fine enough that (almost always) one node flips per step


def _segments(n: int):
    g = torch.Generator().manual_seed(123)
    return [(torch.randn(D_JUMP, generator=g, dtype=DT), torch.randn(D_JUMP, generator=g, dtype=DT)) for _ in range(n)]


def _single_flip_bound(m: IAT) -> float:
    """Frobenius norm of S's change when node k flips, maximised over k: w_k |q_k| |p_k|."""
    return float((m.Qw.norm(dim=1) * m.P.norm(dim=1)).max())


@pytest.mark.parametrize("basis", ["piecewise_linear", "fourier"])
def test_pattern_jump_shrinks_like_one_over_m_for_continuous_bases(basis):
    coarse = make(D_JUMP, basis=basis, num_points=4 * D_JUMP)
    fine = make(D_JUMP, basis=basis, num_points=16 * D_JUMP)
    # the per-node jump bound itself scales like 1/M (4x for fourier, 3.3x for the hats)
    assert _single_flip_bound(coarse) / _single_flip_bound(fine) > 3.0
    ratios = []
    for z0, z1 in _segments(3):
        j_coarse = pattern_jump(coarse, z0, z1, steps=STEPS)
        j_fine = pattern_jump(fine, z0, z1, steps=STEPS)
        # A jump is one node flipping, or two when a pair of roots is born/annihilated
        # (a local extremum of f crossing 0).
        for m, j in ((coarse, j_coarse), (fine, j_fine)):
            assert 0 < j <= 2 * _single_flip_bound(m) * (1 + 1e-9)
        assert j_coarse < 0.7 and j_fine < 0.2
        # so the ratio is >= ~2 even on a segment with a root pair at the fine M ...
        assert j_coarse / j_fine > 1.8
        ratios.append(j_coarse / j_fine)
    # ... and about 4 (= the ratio of the Ms) on a typical one.  Measured: 3.3 (hats), 4.0 / 2.1 (fourier).
    assert sorted(ratios)[1] > 2.5, ratios


@pytest.mark.parametrize("q", ["dual", "normalized"])
def test_pattern_jump_is_order_one_for_rectangular_basis(q):
    jumps = {}
    for num_points in (4 * D_JUMP, 16 * D_JUMP):
        m = make(D_JUMP, basis="rectangular", num_points=num_points, q=q)
        jumps[num_points] = [pattern_jump(m, z0, z1, steps=2000) for z0, z1 in _segments(2)]
    for js in jumps.values():
        assert all(j >= 0.5 for j in js)  # a whole cell switches: S changes by e_i e_i^T
    # and it does not shrink with M
    for j_coarse, j_fine in zip(jumps[4 * D_JUMP], jumps[16 * D_JUMP], strict=False):
        assert j_fine >= 0.9 * j_coarse


def test_pattern_jump_is_zero_without_sign_change():
    m = make(D_JUMP, basis="rectangular")
    z0 = torch.rand(D_JUMP, dtype=DT) + 0.1
    assert pattern_jump(m, z0, 2 * z0, steps=100) == 0.0


# --------------------------------------------------------------------------------------
# Pattern sensitivity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("basis", BASES)
def test_pattern_sensitivity(basis):
    m = make(8, basis=basis, num_points=64)
    z = randn(32, 8, seed=6)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    small = pattern_sensitivity(m, z, eps=1e-3)
    large = pattern_sensitivity(m, z, eps=0.5)
    assert torch.equal(torch.get_rng_state(), state)  # private generator
    assert pattern_sensitivity(m, z, eps=1e-3) == small  # deterministic
    assert pattern_sensitivity(m, z, eps=0.0) == 0.0
    assert 0.0 <= small < large <= 1.0


# --------------------------------------------------------------------------------------
# Gain
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("quadrature,num_points", [("midpoint", 64), ("gauss_legendre", 48), ("trapezoid", 65)])
def test_rectangular_dual_gain_is_sqrt2(quadrature, num_points):
    m = make(16, basis="rectangular", quadrature=quadrature, num_points=num_points)
    assert iat_gain(m) == pytest.approx(math.sqrt(2), abs=1e-9)


@pytest.mark.parametrize(
    "basis,q,zero_mean",
    [
        ("rectangular", "dual", True),
        ("rectangular", "same", False),
        ("piecewise_linear", "dual", False),
        ("piecewise_linear", "normalized", True),
        ("piecewise_linear", "same", False),
        ("fourier", "dual", False),
        ("fourier", "fourier", True),
    ],
)
def test_analytic_gain_matches_monte_carlo(basis, q, zero_mean):
    d = 16
    m = make(d, basis=basis, q=q, zero_mean=zero_mean)
    z = randn(100_000, d, seed=7)
    with torch.no_grad():
        y = m(z)
    mc = math.sqrt(d / float((y * y).sum(1).mean()))
    assert iat_gain(m) == pytest.approx(mc, rel=0.02)


def test_gain_monte_carlo_branch():
    m = make(8, basis="fourier", nonlinearity="tanh")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    g1 = iat_gain(m, samples=4096, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert iat_gain(m, samples=4096, seed=1) == g1
    z = randn(100_000, 8, seed=8)
    with torch.no_grad():
        mc = math.sqrt(8 / float(m(z).pow(2).sum(1).mean()))
    assert g1 == pytest.approx(mc, rel=0.05)


def test_gain_fails_for_a_zero_map():
    m = make(4, basis="fourier", trainable=True)
    with torch.no_grad():
        m.Qw.zero_()
    with pytest.raises(ValueError, match="zero"):
        iat_gain(m)


# exact switching events (issue 14): the analytic form the iat-points order fit uses

@pytest.mark.parametrize("basis", ["piecewise_linear", "fourier", "rectangular"])
def test_exact_events_match_a_fine_sampled_path(basis):
    m = make(D_JUMP, basis=basis, num_points=4 * D_JUMP)
    for z0, z1 in _segments(3):
        t, jumps = pattern_events(m, z0, z1)
        assert t.numel() > 0 and bool((t > 0).all() and (t < 1).all() and (t.diff() > 0).all())
        # sampled S changes exactly where the events are, by the event's jump
        grid = torch.linspace(0, 1, 4001, dtype=DT)
        S = activation_matrix(m, (1 - grid[:, None]) * z0 + grid[:, None] * z1)
        change = (S[1:] - S[:-1]).flatten(1).norm(dim=1)
        steps_with_change = change.nonzero().flatten()
        bins = torch.bucketize(t, grid) - 1
        if bins.unique().numel() == bins.numel():  # one event per sampled step
            assert torch.equal(steps_with_change, bins)
            torch.testing.assert_close(change[bins], jumps, rtol=1e-9, atol=1e-12)
        assert pattern_jump(m, z0, z1) == pytest.approx(float(jumps.max()))


def test_exact_jump_is_d_over_m_for_fourier_and_one_for_rectangular():
    """One Fourier node flipping changes S by (2/M) |p(s_k)|^2 = (2/M)(d/2) = d/M; a whole
    rectangular cell (M/d nodes) changes it by e_i e_i^T, norm 1, at every M."""
    for factor in (1, 2, 4, 16, 64):
        fourier = make(D_JUMP, basis="fourier", num_points=factor * D_JUMP + 1)
        rect = make(D_JUMP, basis="rectangular", num_points=factor * D_JUMP)
        for z0, z1 in _segments(2):
            _, jf = pattern_events(fourier, z0, z1)
            torch.testing.assert_close(jf, torch.full_like(jf, D_JUMP / (factor * D_JUMP + 1)))
            _, jr = pattern_events(rect, z0, z1)
            torch.testing.assert_close(jr, torch.ones_like(jr))


def test_events_and_path_patterns_check_their_input():
    m = make(D_JUMP)
    with pytest.raises(ValueError, match=r"two vectors of shape \(d,\)"):
        pattern_events(m, randn(2, D_JUMP), randn(D_JUMP))
    z0, z1 = randn(D_JUMP, seed=1), randn(D_JUMP, seed=2)
    img = pattern_along_path(m, z0, z1, steps=50)
    assert img.shape == (51, m.num_points) and img.dtype == torch.bool
    assert torch.equal(img[0], activation_pattern(m, z0)) and torch.equal(img[-1], activation_pattern(m, z1))
    t, _ = pattern_events(m, z0, -z0)  # through the origin: every node switches at t = 1/2
    assert t.numel() == 1 and float(t[0]) == pytest.approx(0.5)
