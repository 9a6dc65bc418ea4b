"""Unit tests of the IAT core: quadrature, bases, the functional forms and the module.

Everything runs on CPU in float64 where exactness matters, on tiny sizes, with
explicit seeds.  Identities tested here are exact for the *discretised* transform
``y = Q^T diag(w) sigma(P z)`` (so they hold to round-off, not to quadrature error).
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from unbottleneck import IAT, IATReLU, settings
from unbottleneck.iat import (
    BASES,
    NONLINEARITIES,
    QUADRATURES,
    basis_properties,
    build_structure,
    discretize,
    evaluate_basis,
    iat_fast,
    iat_reference,
    quadrature_rule,
)
from unbottleneck.iat.basis import piecewise_linear
from unbottleneck.iat.functional import resolve_nonlinearity
from unbottleneck.iat.kernels import tridiag
from unbottleneck.settings import Settings

AUTO_FAST_MIN_SIZE = Settings().iat_auto_fast_min_size
AUTO_FFT_MIN_SIZE = Settings().iat_auto_fft_min_size
AUTO_SELECT_MIN_SIZE = Settings().iat_auto_select_min_size
BAND_MAX_SLOTS = Settings().iat_band_max_slots

DT = torch.float64
Q_MODES = ("dual", "same", "normalized")


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=DT)


def make(d: int = 8, **kw) -> IAT:
    kw.setdefault("dtype", DT)
    return IAT(d, **kw)


def q_kwargs(q: str, d: int) -> dict:
    """``q`` mode as IAT kwargs; ``"fourier_out"`` is an explicit output family with m != d."""
    if q == "fourier_out":
        return {"q": "fourier", "out_features": d - 3}
    return {"q": q}


# --------------------------------------------------------------------------------------
# Quadrature
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUADRATURES)
@pytest.mark.parametrize("m", [2, 5, 16])
def test_quadrature_weights_and_exactness(name, m):
    s, w = quadrature_rule(name, m)
    assert s.shape == w.shape == (m,)
    assert s.dtype == w.dtype == torch.float64
    assert (s >= -1).all() and (s <= 1).all() and (w > 0).all()
    assert torch.all(s[1:] > s[:-1])
    # Every rule is exact for affine functions.
    assert float(w.sum()) == pytest.approx(2.0, abs=1e-14)
    assert float(w @ (3 * s + 1)) == pytest.approx(2.0, abs=1e-13)
    if name == "gauss_legendre":
        # exact up to degree 2M - 1
        for k in (2 * m - 2, 2 * m - 1):
            exact = 2.0 / (k + 1) if k % 2 == 0 else 0.0
            assert float(w @ s**k) == pytest.approx(exact, abs=1e-13)


def test_quadrature_aliases_and_second_order_rules():
    s1, w1 = quadrature_rule("gauss", 7)
    s2, w2 = quadrature_rule("Gauss-Legendre", 7)
    assert torch.equal(s1, s2) and torch.equal(w1, w2)
    # midpoint / trapezoid: error of integral s^2 (= 2/3) is O(h^2) with known constants
    for name, m, err in (("midpoint", 10, -2 * (2 / 10) ** 2 / 24 * 2), ("trapezoid", 11, 2 * (2 / 10) ** 2 / 12 * 2)):
        s, w = quadrature_rule(name, m)
        assert float(w @ s**2) - 2 / 3 == pytest.approx(err, rel=1e-9)


# --------------------------------------------------------------------------------------
# Bases
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("basis", ["rectangular", "piecewise_linear"])
def test_local_bases_are_partitions_of_unity(basis):
    s, _ = quadrature_rule("midpoint", 37)
    P = evaluate_basis(basis, s, 9)
    assert P.shape == (37, 9) and P.dtype == torch.float64
    torch.testing.assert_close(P.sum(1), torch.ones(37, dtype=DT), rtol=0, atol=1e-14)
    assert (P >= 0).all()
    # local: at most two functions are non-zero at any node
    assert int((P != 0).sum(1).max()) <= 2


def test_rectangular_cells_and_boundaries():
    s = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.5, 1.0], dtype=DT)
    P = evaluate_basis("rectangular", s, 4)  # cells [-1,-.5) [-.5,0) [0,.5) [.5,1]
    assert P.argmax(1).tolist() == [0, 1, 1, 2, 3, 3]


def test_piecewise_linear_hats_and_single_function():
    centres = torch.linspace(-1, 1, 5, dtype=DT)
    torch.testing.assert_close(evaluate_basis("hat", centres, 5), torch.eye(5, dtype=DT))
    s = torch.tensor([-0.75], dtype=DT)  # half way between the first two centres
    torch.testing.assert_close(evaluate_basis("piecewise_linear", s, 5), torch.tensor([[0.5, 0.5, 0, 0, 0]], dtype=DT))
    assert torch.equal(evaluate_basis("piecewise_linear", centres, 1), torch.ones(5, 1, dtype=DT))


def test_fourier_is_orthonormal_under_midpoint_rule():
    # The midpoint rule is exact for trigonometric polynomials of degree < M.
    s, w = quadrature_rule("midpoint", 32)
    P = evaluate_basis("fourier", s, 10)
    torch.testing.assert_close(P.t() @ (w[:, None] * P), torch.eye(10, dtype=DT), rtol=0, atol=1e-13)
    torch.testing.assert_close(w @ P, torch.zeros(10, dtype=DT), rtol=0, atol=1e-14)
    torch.testing.assert_close(P[:, 0], torch.sin(math.pi * s))
    torch.testing.assert_close(P[:, 3], torch.cos(2 * math.pi * s))


def test_basis_properties():
    d = 8
    fo = basis_properties("fourier", d)
    torch.testing.assert_close(fo["integral"], torch.zeros(d, dtype=DT), rtol=0, atol=1e-12)
    k = torch.arange(d, dtype=DT) // 2 + 1  # sin(k pi s), cos(k pi s) both vary by 4k on [-1, 1]
    torch.testing.assert_close(fo["total_variation"], 4 * k, rtol=1e-6, atol=0)

    rect = basis_properties("rectangular", d)
    torch.testing.assert_close(rect["integral"], torch.full((d,), 2 / d, dtype=DT), rtol=0, atol=1e-4)
    tv = rect["total_variation"]
    assert torch.equal(tv[1:-1], torch.full((d - 2,), 2.0, dtype=DT))  # interior cells: up and down
    assert torch.equal(tv[[0, -1]], torch.ones(2, dtype=DT))  # cells touching an end: one jump

    pl = basis_properties("piecewise_linear", d)
    h = 2 / (d - 1)
    torch.testing.assert_close(pl["integral"][1:-1], torch.full((d - 2,), h, dtype=DT), rtol=1e-6, atol=0)
    torch.testing.assert_close(pl["integral"][[0, -1]], torch.full((2,), h / 2, dtype=DT), rtol=1e-6, atol=0)
    torch.testing.assert_close(pl["total_variation"][1:-1], torch.full((d - 2,), 2.0, dtype=DT), rtol=0, atol=1e-3)

    for basis in BASES:
        zm = basis_properties(basis, d, zero_mean=True)
        assert torch.equal(zm["integral"], torch.zeros(d, dtype=DT))
        # removing a constant does not change the total variation
        torch.testing.assert_close(zm["total_variation"], basis_properties(basis, d)["total_variation"])


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("quadrature", QUADRATURES)
def test_zero_mean_integrates_to_zero_under_the_rule(basis, quadrature):
    mats = discretize(6, basis=basis, quadrature=quadrature, zero_mean=True)
    torch.testing.assert_close(mats["weights"] @ mats["P"], torch.zeros(6, dtype=DT), rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------
# 1. ReLU oracle
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["fast", "reference", "auto"])
@pytest.mark.parametrize("num_points", [7, 14, 28])
def test_rectangular_midpoint_reproduces_relu(num_points, implementation):
    m = IATReLU(7, basis="rectangular", num_points=num_points, implementation=implementation, dtype=DT)
    assert m.use_fast == (implementation == "fast")
    z = randn(3, 4, 7, seed=num_points)
    y = m(z)
    assert y.shape == (3, 4, 7) and y.dtype == DT
    torch.testing.assert_close(y, torch.relu(z), rtol=0, atol=1e-12)
    # also with a zero coordinate, exactly on the kink
    z0 = torch.tensor([0.0, -1.0, 2.0, 0.0, 3.0, -0.0, 1e-300], dtype=DT)
    torch.testing.assert_close(m(z0), torch.relu(z0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("quadrature,num_points", [("trapezoid", 29), ("gauss_legendre", 28)])
def test_rectangular_dual_is_relu_for_any_rule_hitting_every_cell(quadrature, num_points):
    m = IATReLU(7, basis="rectangular", num_points=num_points, quadrature=quadrature, dtype=DT)
    z = randn(5, 7, seed=1)
    torch.testing.assert_close(m(z), torch.relu(z), rtol=0, atol=1e-12)


def test_relu_oracle_gradient_matches_relu():
    m = IATReLU(7, basis="rectangular", num_points=14, implementation="fast", dtype=DT)
    z = randn(4, 7, seed=3).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    w = randn(4, 7, seed=4)
    (g,) = torch.autograd.grad((m(z) * w).sum(), z)
    (g2,) = torch.autograd.grad((torch.relu(z2) * w).sum(), z2)
    torch.testing.assert_close(g, g2, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# 2. Homogeneity, odd part, Gram matrix
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("quadrature", QUADRATURES)
@pytest.mark.parametrize("zero_mean", [False, True])
@pytest.mark.parametrize("q", [*Q_MODES, "fourier_out"])
@pytest.mark.parametrize("basis", BASES)
def test_homogeneity_and_odd_part(basis, q, zero_mean, quadrature):
    d = 8
    m = make(d, basis=basis, zero_mean=zero_mean, quadrature=quadrature, **q_kwargs(q, d))
    z = randn(5, d, seed=7)
    y = m(z)
    assert y.shape == (5, m.out_features)
    scale = float(y.abs().max()) + 1.0
    for a in (0.0, 0.3, 1.0, 2.5, 17.0):
        torch.testing.assert_close(m(a * z), a * y, rtol=0, atol=1e-12 * scale * max(a, 1.0))
    assert torch.equal(m(torch.zeros(2, d, dtype=DT)), torch.zeros(2, m.out_features, dtype=DT))
    G = m.gram()
    assert G.shape == (m.out_features, d)
    torch.testing.assert_close(y - m(-z), z @ G.t(), rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("quadrature", QUADRATURES)
@pytest.mark.parametrize(
    "basis,zero_mean",
    [("rectangular", False), ("piecewise_linear", False), ("fourier", False), ("fourier", True)],
)
def test_dual_gram_is_identity_for_full_rank_bases(basis, zero_mean, quadrature):
    m = make(8, basis=basis, zero_mean=zero_mean, quadrature=quadrature, q="dual")
    torch.testing.assert_close(m.gram(), torch.eye(8, dtype=DT), rtol=0, atol=1e-12)
    z = randn(3, 8, seed=2)
    torch.testing.assert_close(m(z) - m(-z), z, rtol=0, atol=1e-12)  # the identity ReLU satisfies


@pytest.mark.parametrize("quadrature", QUADRATURES)
@pytest.mark.parametrize("basis", ["rectangular", "piecewise_linear"])
def test_zero_mean_partition_of_unity_gives_projector(basis, quadrature):
    # sum_i p_i = 1, so after removing means the constant vector is in the null space of
    # P; the pinv dual then makes G the orthogonal projector I - 11^T/d.
    d = 8
    m = make(d, basis=basis, zero_mean=True, quadrature=quadrature, q="dual")
    G = m.gram()
    ones = torch.ones(d, dtype=DT)
    torch.testing.assert_close(G @ G, G, rtol=0, atol=1e-12)
    torch.testing.assert_close(G, G.t(), rtol=0, atol=1e-12)
    torch.testing.assert_close(G @ ones, torch.zeros(d, dtype=DT), rtol=0, atol=1e-12)
    assert int(torch.linalg.matrix_rank(G)) == d - 1
    torch.testing.assert_close(G, torch.eye(d, dtype=DT) - torch.outer(ones, ones) / d, rtol=0, atol=1e-12)
    z = randn(4, d, seed=5)
    torch.testing.assert_close(m(z) - m(-z), z - z.mean(-1, keepdim=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("basis", BASES)
def test_same_and_normalized_gram(basis):
    same = make(8, basis=basis, q="same")
    G = same.gram()  # the discrete Gram matrix P^T W P: symmetric positive definite
    torch.testing.assert_close(G, G.t(), rtol=0, atol=1e-14)
    assert float(torch.linalg.eigvalsh(G).min()) > 0
    norm = make(8, basis=basis, q="normalized")
    torch.testing.assert_close(norm.gram().diagonal(), torch.ones(8, dtype=DT), rtol=0, atol=1e-12)
    if basis != "piecewise_linear":  # orthogonal bases: normalized == dual
        torch.testing.assert_close(norm.Qw, make(8, basis=basis).Qw, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# 3. Fast path == reference
# --------------------------------------------------------------------------------------


def _value_and_grad(fn, z: torch.Tensor, w: torch.Tensor):
    z = z.detach().clone().requires_grad_()
    y = fn(z)
    (g,) = torch.autograd.grad((y * w).sum(), z)
    return y.detach(), g


D_FAST = 24  # large enough that local bases are stored sparse, so both operator kinds run


@pytest.mark.parametrize("implementation", ["fast", "auto"])
@pytest.mark.parametrize("nonlinearity", ["relu", "leaky_relu", "gelu", "tanh"])
@pytest.mark.parametrize("q", [*Q_MODES, "fourier_out"])
@pytest.mark.parametrize("basis", BASES)
def test_fast_matches_reference(basis, q, nonlinearity, implementation):
    d = D_FAST
    m = make(d, basis=basis, nonlinearity=nonlinearity, implementation=implementation, **q_kwargs(q, d))
    if implementation == "fast":
        assert m.use_fast
    z = randn(2, 3, d, seed=11)
    w = randn(2, 3, m.out_features, seed=12)
    y_fast, g_fast = _value_and_grad(m, z, w)
    y_ref, g_ref = _value_and_grad(m.reference, z, w)
    assert y_fast.shape == (2, 3, m.out_features)
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-10)
    with torch.no_grad():  # the no-grad branch of the fast path
        torch.testing.assert_close(m(z), y_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("q", Q_MODES)
@pytest.mark.parametrize("basis", BASES)
def test_fast_matches_reference_zero_mean(basis, q):
    m = make(D_FAST, basis=basis, q=q, zero_mean=True, implementation="fast")
    z = randn(7, D_FAST, seed=13)
    w = randn(7, D_FAST, seed=14)
    y_fast, g_fast = _value_and_grad(m, z, w)
    y_ref, g_ref = _value_and_grad(m.reference, z, w)
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-10)


def test_fast_path_uses_sparse_operators_for_local_bases():
    assert make(D_FAST, basis="rectangular")._ops.sparse == (True, True)
    assert make(D_FAST, basis="piecewise_linear", q="normalized")._ops.sparse == (True, True)
    assert make(D_FAST, basis="piecewise_linear", q="dual")._ops.sparse == (True, False)  # dual is dense
    assert make(D_FAST, basis="fourier")._ops.sparse == (False, False)
    # "auto" takes the fast path when something is sparse and d * M is large enough
    assert not make(D_FAST, basis="rectangular").use_fast  # too small to pay off
    big = 128  # d * M = 128 * 512 >= AUTO_FAST_MIN_SIZE
    assert big * 4 * big >= AUTO_FAST_MIN_SIZE
    assert make(big, basis="rectangular").use_fast
    assert make(big, basis="piecewise_linear").use_fast
    assert make(big, basis="fourier").use_fast  # the FFT kernel, from d * M = 65536
    assert not make(big // 2, basis="fourier").use_fast
    assert make(D_FAST, basis="fourier", implementation="fast").use_fast
    assert not make(D_FAST, basis="rectangular", implementation="reference").use_fast


@pytest.mark.parametrize("shape", [(D_FAST,), (0, D_FAST), (2, 0, D_FAST), (1, 1, 1, D_FAST)])
def test_fast_path_odd_shapes(shape):
    m = make(D_FAST, basis="piecewise_linear", q="normalized", implementation="fast")
    assert m.use_fast
    z = randn(*shape, seed=1).requires_grad_()
    y = m(z)
    assert y.shape == shape
    torch.testing.assert_close(y, m.reference(z))
    y.sum().backward()
    assert z.grad.shape == shape


def test_fast_path_non_contiguous_input():
    m = make(D_FAST, basis="rectangular", implementation="fast")
    z = randn(D_FAST, 5, seed=2).t()
    assert not z.is_contiguous()
    torch.testing.assert_close(m(z), m.reference(z), rtol=0, atol=1e-12)


def test_functional_api_directly():
    mats = discretize(6, basis="fourier", num_points=30)
    ops = build_structure(mats["P"], mats["Qw"])
    z = randn(4, 6, seed=3)
    for name in ("relu", "silu", "softplus", "elu"):
        sigma = NONLINEARITIES[name]
        torch.testing.assert_close(iat_fast(z, ops, name, sigma), iat_reference(z, mats["P"], mats["Qw"], sigma))
    # fully dense threshold 0 -> dense operators; threshold 1 -> everything CSR
    assert build_structure(mats["P"], mats["Qw"], max_density=0.0).sparse == (False, False)
    assert build_structure(mats["P"], mats["Qw"], max_density=1.0).sparse == (True, True)
    ops_csr = build_structure(mats["P"], mats["Qw"], max_density=1.0)
    torch.testing.assert_close(iat_fast(z, ops_csr), iat_reference(z, mats["P"], mats["Qw"]))


def _named(name, fn):
    fn.__name__ = name
    return fn


@pytest.mark.parametrize(
    "fn",
    [
        _named("relu", lambda x: 2.0 * torch.relu(x)),
        _named("leaky_relu", lambda x: F.leaky_relu(x, 0.2)),
        _named("tanh", lambda x: torch.tanh(2 * x)),
    ],
    ids=["fake_relu", "fake_leaky_relu", "fake_tanh"],
)
def test_custom_callable_named_like_a_builtin_is_not_mistaken_for_it(fn):
    # Regression: the fast backward and the analysis used to trust __name__.
    m = make(D_FAST, basis="rectangular", nonlinearity=fn, implementation="fast")
    assert m.sigma_name == f"custom_{fn.__name__}"
    z = randn(3, D_FAST, seed=4)
    w = randn(3, D_FAST, seed=5)
    y_fast, g_fast = _value_and_grad(m, z, w)
    y_ref, g_ref = _value_and_grad(m.reference, z, w)
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


def test_resolve_nonlinearity_names():
    assert resolve_nonlinearity("ReLU") == ("relu", torch.relu)
    assert resolve_nonlinearity(torch.relu)[0] == "relu"
    assert resolve_nonlinearity(F.relu)[0] == "relu"
    assert resolve_nonlinearity(F.leaky_relu)[0] == "leaky_relu"
    assert resolve_nonlinearity(torch.nn.SiLU())[0] == "custom"
    assert resolve_nonlinearity(lambda x: x)[0] == "<lambda>"


def test_nn_module_nonlinearity():
    m = make(6, basis="fourier", nonlinearity=torch.nn.LeakyReLU(0.3), implementation="fast")
    z = randn(4, 6, seed=6)
    w = randn(4, 6, seed=7)
    y_fast, g_fast = _value_and_grad(m, z, w)
    y_ref, g_ref = _value_and_grad(lambda t: iat_reference(t, m.P, m.Qw, lambda f: F.leaky_relu(f, 0.3)), z, w)
    torch.testing.assert_close(y_fast, y_ref)
    torch.testing.assert_close(g_fast, g_ref)


# --------------------------------------------------------------------------------------
# 4. gradcheck
# --------------------------------------------------------------------------------------


def _input_away_from_kinks(m: IAT, batch: int, margin: float, seed: int) -> torch.Tensor:
    """First seeded draw whose state function stays ``margin`` away from 0 at every node."""
    g = gen(seed)
    for _ in range(200):
        z = torch.randn(batch, m.in_features, generator=g, dtype=DT)
        if float(m.state_function(z).abs().min()) > margin:
            return z
    raise AssertionError("no input away from the kinks found")


GRADCHECK_CASES = [
    ("rectangular", {"num_points": 20}, 5),
    ("rectangular", {}, D_FAST),  # sparse operators
    ("piecewise_linear", {"q": "normalized"}, D_FAST),  # sparse operators
    ("piecewise_linear", {"num_points": 20}, 5),
    ("fourier", {"num_points": 20}, 5),
    ("fourier", {"q": "piecewise_linear", "out_features": 3, "zero_mean": True}, 5),
]


@pytest.mark.parametrize("implementation", ["fast", "reference"])
@pytest.mark.parametrize("basis,kwargs,d", GRADCHECK_CASES)
def test_gradcheck_relu(basis, kwargs, d, implementation):
    m = make(d, basis=basis, implementation=implementation, **kwargs)
    z = _input_away_from_kinks(m, batch=2, margin=1e-3, seed=0)
    # with eps = 1e-6 no state value can cross zero (|dP z| <= eps * max_k |p(s_k)|_1 < 1e-3)
    assert float(m.P.abs().sum(1).max()) * 1e-6 < 1e-3
    assert gradcheck(m, (z.requires_grad_(),), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("nonlinearity", ["gelu", "tanh", "softplus"])
@pytest.mark.parametrize("implementation", ["fast", "reference"])
@pytest.mark.parametrize("basis", BASES)
def test_gradcheck_smooth(basis, implementation, nonlinearity):
    m = make(5, basis=basis, num_points=20, implementation=implementation, nonlinearity=nonlinearity)
    z = randn(2, 5, seed=1).requires_grad_()
    assert gradcheck(m, (z,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("nonlinearity", ["gelu", "tanh"])
@pytest.mark.parametrize("basis", BASES)
def test_gradgradcheck_reference(basis, nonlinearity):
    m = make(5, basis=basis, num_points=20, implementation="reference", nonlinearity=nonlinearity)
    z = randn(2, 5, seed=2).requires_grad_()
    assert gradgradcheck(m, (z,), eps=1e-6, atol=1e-7)


def test_fast_path_is_once_differentiable():
    m = make(5, basis="fourier", implementation="fast", nonlinearity="gelu")
    z = randn(2, 5, seed=3).requires_grad_()
    (g,) = torch.autograd.grad(m(z).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_trainable_gradcheck_wrt_bases():
    m = make(4, basis="piecewise_linear", num_points=12, trainable=True, nonlinearity="tanh")
    z = randn(3, 4, seed=4)
    P = m.P.detach().clone().requires_grad_()
    Qw = m.Qw.detach().clone().requires_grad_()
    assert gradcheck(lambda p, q: iat_reference(z, p, q, torch.tanh), (P, Qw), eps=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------
# 5. Quadrature convergence
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", ["dual", "normalized", "same"])
@pytest.mark.parametrize("basis", ["piecewise_linear", "fourier"])
def test_quadrature_error_shrinks_with_m(basis, q):
    d = 8
    for seed in range(3):
        z = randn(d, seed=seed)
        exact = make(d, basis=basis, q=q, num_points=16384)(z)
        errs = [float((make(d, basis=basis, q=q, num_points=M)(z) - exact).norm()) for M in (16, 64, 256)]
        # Measured: err ~ M^-2 (ratios 9-40 per factor 4, 125-770 overall); assert
        # better than first order at every step, and overall.
        assert errs[1] < errs[0] / 4, errs
        assert errs[2] < errs[1] / 4, errs
        assert errs[2] < errs[0] / 50, errs
        assert errs[2] < 1e-3


# --------------------------------------------------------------------------------------
# 8. Bad arguments
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"basis": "wavelet"}, ValueError, "rectangular, piecewise_linear, fourier"),
        ({"basis": 3}, TypeError, "basis must be"),
        ({"quadrature": "simpson"}, ValueError, "midpoint, trapezoid, gauss_legendre"),
        ({"quadrature": 3}, TypeError, "quadrature"),
        ({"q": "transpose"}, ValueError, "dual, same, normalized"),
        ({"nonlinearity": "swish"}, ValueError, "relu, leaky_relu"),
        ({"nonlinearity": 3}, TypeError, "nonlinearity"),
        ({"implementation": "triton"}, ValueError, "auto, fast, fused, reference"),
        ({"implementation": "fast", "trainable": True}, ValueError, "trainable"),
        ({"num_points": 0}, ValueError, "num_points"),
        ({"num_points": -4}, ValueError, "num_points"),
        ({"num_points": 8.0}, TypeError, "num_points"),
        ({"num_points": True}, TypeError, "num_points"),
        ({"out_features": 5}, ValueError, "out_features"),
        ({"out_features": 5, "q": "same"}, ValueError, "out_features"),
        ({"out_features": 0, "q": "fourier"}, ValueError, "out_features"),
        ({"quadrature": "trapezoid", "num_points": 1}, ValueError, "trapezoid"),
        ({"basis": lambda s: torch.ones(len(s), 3)}, ValueError, r"expected \(len\(s\), n\)"),
        ({"basis": lambda s: torch.full((len(s), 4), math.nan)}, ValueError, "non-finite"),
        ({"q": lambda s: torch.ones(len(s), 2), "out_features": 3}, ValueError, "custom basis returned"),
        ({"basis": "rectangular", "num_points": 2, "q": "normalized"}, ValueError, "zero at all 2 midpoint nodes"),
        ({"dtype": torch.int64}, TypeError, "floating point"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        IAT(4, **kwargs)


@pytest.mark.parametrize("features,exc", [(0, ValueError), (-1, ValueError), (4.0, TypeError), ("4", TypeError)])
def test_bad_features(features, exc):
    with pytest.raises(exc, match="features"):
        IAT(features)


def test_quadrature_rule_bad_arguments():
    with pytest.raises(ValueError, match=">= 1"):
        quadrature_rule("midpoint", 0)
    with pytest.raises(TypeError, match="int"):
        quadrature_rule("midpoint", 4.0)
    with pytest.raises(ValueError, match="trapezoid"):
        quadrature_rule("trapezoid", 1)
    with pytest.raises(ValueError, match="positive int"):
        evaluate_basis("fourier", torch.zeros(3), 0)


def test_iatrelu_fixes_relu():
    with pytest.raises(ValueError, match="relu"):
        IATReLU(4, nonlinearity="tanh")
    assert IATReLU(4, nonlinearity="relu").sigma_name == "relu"
    assert IATReLU(4).sigma_name == "relu"


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_bad_inputs(implementation):
    m = make(4, implementation=implementation)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        m(torch.zeros(3, 5, dtype=DT))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        m(torch.tensor(1.0, dtype=DT))
    with pytest.raises(TypeError, match="floating point"):
        m(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        m(torch.zeros(3, 4, dtype=torch.float32))
    with pytest.raises(TypeError, match="Tensor"):
        m([0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite(bad):
    z = torch.tensor([[1.0, bad, 0.5, -1.0]], dtype=DT)
    with pytest.raises(ValueError, match="NaN or inf"):
        make(4, check_finite=True)(z)
    y = make(4, check_finite=False)(z)  # no check: propagates silently
    assert not torch.isfinite(y).all()
    make(4, check_finite=True)(torch.ones(2, 4, dtype=DT))  # finite input passes


# --------------------------------------------------------------------------------------
# 9. Module behaviour
# --------------------------------------------------------------------------------------


def test_no_parameters_by_default():
    m = make(8)
    assert list(m.parameters()) == []
    assert {name for name, _ in m.named_buffers()} == {"nodes", "weights", "P", "Qw"}
    assert m.num_points == 32 and m.in_features == m.out_features == 8


def test_trainable_has_two_parameters_and_gradients_flow():
    m = make(6, basis="fourier", trainable=True)
    params = dict(m.named_parameters())
    assert set(params) == {"P", "Qw"}
    assert not m.use_fast
    z = randn(5, 6, seed=1).requires_grad_()
    m(z).pow(2).sum().backward()
    for p in params.values():
        assert p.grad is not None and p.grad.shape == p.shape and float(p.grad.abs().sum()) > 0
    assert z.grad is not None
    # one optimiser step changes the output
    before = m(z).detach()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    assert not torch.allclose(m(z), before)


@pytest.mark.parametrize("basis", BASES)
def test_state_dict_round_trip(basis):
    a = make(D_FAST, basis=basis, q="normalized", zero_mean=True)
    b = make(D_FAST, basis=basis, q="normalized", zero_mean=True)
    b.load_state_dict(a.state_dict())
    z = randn(3, D_FAST, seed=2)
    assert torch.equal(a(z), b(z))


def test_loaded_bases_are_used_by_trainable_module():
    a = make(6, basis="piecewise_linear", trainable=True)
    sd = a.state_dict()
    new_P = sd["P"] * 1.5 + 0.1 * randn(*sd["P"].shape, seed=3)
    sd["P"] = new_P
    b = make(6, basis="piecewise_linear", trainable=True)
    b.load_state_dict(sd)
    z = randn(4, 6, seed=4)
    torch.testing.assert_close(b(z), iat_reference(z, new_P, sd["Qw"]), rtol=0, atol=1e-13)
    assert not torch.allclose(b(z), a(z))


@pytest.mark.parametrize("basis", ["rectangular", "fourier"])
def test_loaded_bases_rebuild_the_fast_operators(basis):
    # Regression guard for the load_state_dict post hook: the cached (possibly CSR)
    # operators must follow the loaded buffers.
    a = make(D_FAST, basis=basis, implementation="fast")
    sd = a.state_dict()
    sd["Qw"] = sd["Qw"] * torch.linspace(0.5, 2.0, D_FAST, dtype=DT)
    b = make(D_FAST, basis=basis, implementation="fast")
    b.load_state_dict(sd)
    z = randn(3, D_FAST, seed=5).requires_grad_()
    torch.testing.assert_close(b(z), iat_reference(z, sd["P"], sd["Qw"]), rtol=0, atol=1e-12)
    # and so must an explicit refresh() after an in-place edit
    with torch.no_grad():
        b.Qw.mul_(2.0)
    b.refresh()
    torch.testing.assert_close(b(z), 2 * iat_reference(z, sd["P"], sd["Qw"]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("convert", ["to", "double"])
@pytest.mark.parametrize("basis", BASES)
def test_dtype_conversion(basis, convert):
    m = IAT(D_FAST, basis=basis, implementation="fast", dtype=torch.float32)
    assert m.P.dtype == torch.float32
    z32 = randn(3, D_FAST, seed=6).float()
    torch.testing.assert_close(m(z32), m.reference(z32))
    m = m.to(torch.float64) if convert == "to" else m.double()
    for t in (m.P, m.Qw, m.nodes, m.weights, m._ops.P, m._ops.qt):
        assert t.dtype == DT
    z = randn(3, D_FAST, seed=6)
    y = m(z)
    assert y.dtype == DT
    # equals a module built in float64 from the start (P, Qw were computed in float64
    # and rounded to float32, so compare at float32 resolution)
    torch.testing.assert_close(y, make(D_FAST, basis=basis)(z), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y, m.reference(z), rtol=0, atol=1e-12)


def test_default_dtype_follows_torch_default():
    assert IAT(4).P.dtype == torch.get_default_dtype()


def _legendre(n: int):
    def legendre(s: torch.Tensor) -> torch.Tensor:
        polys = [torch.ones_like(s), s]
        for k in range(1, n):
            polys.append(((2 * k + 1) * s * polys[k] - k * polys[k - 1]) / (k + 1))
        return torch.stack(polys[1 : n + 1], dim=1)  # P_1 .. P_n (zero integral)

    return legendre


def test_custom_callable_basis_legendre():
    d = 5
    fn = _legendre(d)
    # Gauss-Legendre with M points is exact for degree 2M-1 >= 2d, so the Gram matrix
    # is exactly diag(2 / (2k + 1)) and q="normalized" equals the dual.
    m = make(d, basis=fn, quadrature="gauss_legendre", num_points=16)
    norm = make(d, basis=fn, quadrature="gauss_legendre", num_points=16, q="normalized")
    torch.testing.assert_close(m.Qw, norm.Qw, rtol=0, atol=1e-12)
    same = make(d, basis=fn, quadrature="gauss_legendre", num_points=16, q="same")
    k = torch.arange(1, d + 1, dtype=DT)
    torch.testing.assert_close(same.gram(), torch.diag(2 / (2 * k + 1)), rtol=0, atol=1e-13)
    torch.testing.assert_close(m.gram(), torch.eye(d, dtype=DT), rtol=0, atol=1e-12)
    z = randn(4, d, seed=7)
    torch.testing.assert_close(m(z) - m(-z), z, rtol=0, atol=1e-12)
    torch.testing.assert_close(m(3 * z), 3 * m(z), rtol=0, atol=1e-12)
    assert "legendre" in repr(m)
    # and a custom output family
    mq = make(d, basis="fourier", q=fn, out_features=d)
    assert mq.out_features == d and "legendre" in repr(mq)


def test_extra_repr():
    r = repr(make(6, basis="fourier", q="fourier", out_features=4, quadrature="gauss", num_points=20))
    for part in ("features=6", "out_features=4", "basis=fourier", "num_points=20",
                 "quadrature=gauss_legendre", "q=fourier", "nonlinearity=relu"):
        assert part in r


@pytest.mark.parametrize("basis", BASES)
def test_deepcopy_and_pickle(basis):
    # Regression: the cached CSR operators made copy.deepcopy fail and the lambda
    # load hook made pickling fail.
    m = make(D_FAST, basis=basis, q="normalized", implementation="fast")
    z = randn(3, D_FAST, seed=8)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone.use_fast == m.use_fast
        assert torch.equal(clone(z), m(z))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(z), m(z))


# --------------------------------------------------------------------------------------
# 10. torch.compile (aot_eager: fast; inductor is tested on a GDNN in test_gdnn.py)
# --------------------------------------------------------------------------------------


def test_compile_aot_eager_matches_eager():
    torch._dynamo.reset()
    m = IATReLU(16, basis="piecewise_linear", implementation="fast", dtype=DT)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    z = randn(8, 16, seed=9)
    w = randn(8, 16, seed=10)
    y_c, g_c = _value_and_grad(compiled, z, w)
    y_e, g_e = _value_and_grad(m, z, w)
    torch.testing.assert_close(y_c, y_e, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_c, g_e, rtol=0, atol=1e-12)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------
# 12. Memory: the fast path saves only the input for backward
# --------------------------------------------------------------------------------------


def _saved_bytes(fn, z: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(z)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_saves_only_the_input(dtype):
    B, d, M = 256, 64, 256
    m = IAT(d, basis="piecewise_linear", q="normalized", num_points=M, dtype=dtype,
            implementation="fast")
    assert m.use_fast and m._ops.sparse == (True, True)
    z = torch.randn(B, d, generator=gen(0), dtype=dtype).requires_grad_()
    item = z.element_size()
    fast = _saved_bytes(m, z)
    ref = _saved_bytes(m.reference, z)
    assert fast <= B * d * item + 1024, fast
    assert ref >= B * M * item, ref
    assert ref >= 4 * fast


# --------------------------------------------------------------------------------------
# 13. Structured kernels of the fast path (select / band / fourier) and their dispatch
# --------------------------------------------------------------------------------------

KERNEL_OF = {  # (basis, q, quadrature) -> the kernel iat_fast must pick
    ("rectangular", "dual", "midpoint"): "select",
    ("rectangular", "same", "trapezoid"): "select",
    ("rectangular", "normalized", "gauss_legendre"): "select",
    ("rectangular", "fourier_out", "midpoint"): "select",  # P^T Qw dense: sigma(z) @ G
    ("piecewise_linear", "dual", "midpoint"): "band",  # dense dual: tridiagonal solve
    ("piecewise_linear", "dual", "trapezoid"): "band",
    ("piecewise_linear", "dual", "gauss_legendre"): "band",  # crowded ends: extra rows
    ("piecewise_linear", "same", "midpoint"): "band",
    ("piecewise_linear", "normalized", "gauss_legendre"): "band",
    ("piecewise_linear", "fourier_out", "midpoint"): "generic",  # Qw not diag(w) P K
    ("fourier", "dual", "midpoint"): "fourier",
    ("fourier", "normalized", "midpoint"): "fourier",
    ("fourier", "same", "trapezoid"): "generic",  # FFT needs midpoint nodes
    ("fourier", "dual", "gauss_legendre"): "generic",
}


@pytest.fixture
def small_chunks():
    """Chunks of a few rows, so every chunk boundary of the kernels is exercised."""
    with settings.override(iat_chunk_elements=40, iat_band_chunk_elements=40):
        yield


@pytest.mark.parametrize("nonlinearity", ["relu", "leaky_relu", "softplus"])
@pytest.mark.parametrize("key", list(KERNEL_OF))
def test_kernel_matches_reference(key, nonlinearity, small_chunks):
    basis, q, quadrature = key
    d = 13  # odd: a Fourier basis ending on a sine, a last hat interval of its own
    m = make(d, basis=basis, quadrature=quadrature, nonlinearity=nonlinearity,
             implementation="fast", **q_kwargs(q, d))
    expected = KERNEL_OF[key]
    if expected == "select" and nonlinearity == "softplus":
        assert m.kernel == "select"  # rectangular values are exactly 1: any sigma
    assert m.kernel == expected
    z = randn(3, 4, d, seed=21)
    w = randn(3, 4, m.out_features, seed=22)
    y_fast, g_fast = _value_and_grad(m, z, w)
    y_ref, g_ref = _value_and_grad(m.reference, z, w)
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("basis,q", [("rectangular", "dual"), ("piecewise_linear", "dual"),
                                     ("piecewise_linear", "normalized"), ("fourier", "dual")])
def test_kernel_float32_at_production_size(basis, q):
    d, B = 64, 96
    m = IAT(d, basis=basis, q=q, implementation="fast")  # float32, M = 4d
    z = torch.randn(B, d, generator=gen(3)).requires_grad_()
    w = torch.randn(B, d, generator=gen(4))
    y, g = _value_and_grad(m, z, w)
    y64, g64 = _value_and_grad(m.double().reference, z.double(), w.double())
    torch.testing.assert_close(y.double(), y64, rtol=0, atol=2e-5)
    torch.testing.assert_close(g.double(), g64, rtol=0, atol=2e-5)


KERNEL_GRADCHECK = [
    ("piecewise_linear", {"q": "dual"}, "relu"),
    ("piecewise_linear", {"q": "normalized", "quadrature": "gauss_legendre"}, "relu"),
    ("piecewise_linear", {"q": "dual"}, "tanh"),
    ("fourier", {}, "relu"),
    ("fourier", {}, "gelu"),
    ("rectangular", {"q": "same"}, "relu"),
]


@pytest.mark.parametrize("basis,kwargs,nonlinearity", KERNEL_GRADCHECK)
def test_kernel_gradcheck(basis, kwargs, nonlinearity, small_chunks):
    m = make(9, basis=basis, nonlinearity=nonlinearity, implementation="fast", **kwargs)
    assert m.kernel != "generic"
    z = _input_away_from_kinks(m, batch=3, margin=1e-3, seed=5)
    assert gradcheck(m, (z.requires_grad_(),), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("basis", ["piecewise_linear", "fourier"])
@pytest.mark.parametrize("shape", [(0, 10), (10,), (1, 10), (2, 1, 3, 10)])
def test_kernel_odd_and_leading_shapes(basis, shape):
    m = make(10, basis=basis, implementation="fast")
    z = randn(*shape, seed=6).requires_grad_()
    y = m(z)
    assert y.shape == shape
    torch.testing.assert_close(y, m.reference(z), rtol=0, atol=1e-12)
    y.sum().backward()
    assert z.grad.shape == shape


@pytest.mark.parametrize("basis", ["rectangular", "piecewise_linear", "fourier"])
def test_kernel_non_contiguous_input(basis):
    m = make(12, basis=basis, implementation="fast")
    base = randn(12, 7, seed=7).requires_grad_()
    z = base.t()  # (7, 12), transposed strides
    assert not z.is_contiguous()
    w = randn(7, 12, seed=8)
    y_fast, g_fast = _value_and_grad(m, z, w)
    y_ref, g_ref = _value_and_grad(m.reference, z, w)
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


def test_band_kernel_smallest_and_sparse_node_sets():
    # d = 2 (one interval); M < d - 1 (empty intervals: only extra rows; every hat still
    # sees a node, as IAT refuses a hat that none sees); d = 1 (a constant: select, every
    # node sees the one function with value 1)
    for d, M, kernel in ((2, 8, "band"), (9, 5, "band"), (1, 5, "select")):
        m = make(d, basis="piecewise_linear", num_points=M, q="same", implementation="fast")
        assert m.kernel == kernel, (d, M, m.kernel)
        z = randn(4, d, seed=d)
        w = randn(4, d, seed=d + 1)
        y_fast, g_fast = _value_and_grad(m, z, w)
        y_ref, g_ref = _value_and_grad(m.reference, z, w)
        torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


def test_band_layout_main_and_extra_rows():
    k = make(16, basis="piecewise_linear", implementation="fast")._ops.kernel  # M = 64, J = 15
    assert k.R == 64 // 15 and k.main.A.shape == (2, 4, 15)  # (ends, slots, intervals)
    assert k.extra is not None and int((k.extra.A != 0).any(0).sum()) == 64 - 4 * 15
    assert k.out.kind == "tridiagonal"  # the dense dual of the hats
    assert make(16, basis="piecewise_linear", q="normalized")._ops.kernel.out.kind == "identity"
    exact = make(16, basis="piecewise_linear", num_points=60)._ops.kernel  # M = 4 (d - 1)
    assert exact.extra is None


def test_band_kernel_folds_scales_only_when_exact():
    # hats: state = lerp of the interval ends (norm 1), so ReLU takes the folded path
    k = make(16, basis="piecewise_linear", q="normalized")._ops.kernel
    assert k.main.folded and k.extra.folded
    # negated hats are still a band, but sigma(norm f) != norm sigma(f) for norm = -1:
    # ReLU must take the exact coefficients, and still match the reference
    m = make(16, basis=lambda s: -piecewise_linear(s, 16), q="same", implementation="fast")
    assert m.kernel == "band" and not m._ops.kernel.main.folded
    for name in ("relu", "leaky_relu"):
        m = make(16, basis=lambda s: -piecewise_linear(s, 16), q="same",
                 implementation="fast", nonlinearity=name)
        z, w = randn(5, 16, seed=31), randn(5, 16, seed=32)
        y_fast, g_fast = _value_and_grad(m, z, w)
        y_ref, g_ref = _value_and_grad(m.reference, z, w)
        torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


def test_band_kernel_gives_way_to_generic_beyond_max_slots():
    d = 8  # J = 7 intervals
    at_limit = make(d, basis="piecewise_linear", num_points=7 * BAND_MAX_SLOTS,
                    implementation="fast")
    beyond = make(d, basis="piecewise_linear", num_points=7 * (BAND_MAX_SLOTS + 1),
                  implementation="fast")
    assert at_limit.kernel == "band" and beyond.kernel == "generic"
    z = randn(4, d, seed=33)
    for m in (at_limit, beyond):
        torch.testing.assert_close(m(z), m.reference(z), rtol=0, atol=1e-12)


@pytest.mark.parametrize("zero_mean", [True, False])
def test_generic_path_still_matches_for_local_bases(zero_mean):
    # kernels=False keeps the CSR path (and zero-mean bases always take it)
    for basis in BASES:
        mats = discretize(24, basis=basis, zero_mean=zero_mean, q="normalized")
        ops = build_structure(mats["P"], mats["Qw"], weights=mats["weights"], kernels=False)
        assert ops.kernel is None and ops.kernel_name() == "generic"
        z = randn(5, 24, seed=9)
        torch.testing.assert_close(iat_fast(z, ops), iat_reference(z, mats["P"], mats["Qw"]))
        auto = build_structure(mats["P"], mats["Qw"], weights=mats["weights"])
        # zero mean makes local bases dense; the Fourier functions already integrate to 0
        assert (auto.kernel_name() == "generic") == (zero_mean and basis != "fourier")


def test_build_structure_weights_and_select_rules():
    mats = discretize(8, basis="piecewise_linear", num_points=32)
    # without weights the output side cannot be factored: only select could be found
    assert build_structure(mats["P"], mats["Qw"]).kernel_name() == "generic"
    assert build_structure(mats["P"], mats["Qw"], weights=mats["weights"]).kernel_name() == "band"
    with pytest.raises(ValueError, match="weights must have shape"):
        build_structure(mats["P"], mats["Qw"], weights=mats["weights"][:-1])
    # rectangular rows scaled by 2: exact only for positively homogeneous nonlinearities
    rect = discretize(6, basis="rectangular", num_points=24)
    ops = build_structure(2 * rect["P"], rect["Qw"], weights=rect["weights"])
    assert ops.kernel_name("relu") == "select" and ops.kernel_name("leaky_relu") == "select"
    assert ops.kernel_name("tanh") == "generic"
    z = randn(4, 6, seed=10)
    for name in ("relu", "tanh"):
        sigma = NONLINEARITIES[name]
        torch.testing.assert_close(
            iat_fast(z, ops, name, sigma), iat_reference(z, 2 * rect["P"], rect["Qw"], sigma)
        )
    # half precision: select only (its test is structural); the hats' band is not confirmed
    assert build_structure(rect["P"].half(), rect["Qw"].half(), weights=rect["weights"]).kernel.name == "select"
    hats = discretize(6, basis="piecewise_linear")
    assert build_structure(hats["P"].half(), hats["Qw"].half(), weights=hats["weights"]).kernel is None


def test_auto_dispatch_thresholds():
    small = int(AUTO_SELECT_MIN_SIZE**0.5 / 2)  # d * 4d just above the select threshold
    assert make(small, basis="rectangular").use_fast
    assert not make(small - 1, basis="rectangular").use_fast
    assert 64 * 256 < AUTO_FFT_MIN_SIZE <= 128 * 512
    assert not make(64, basis="fourier").use_fast
    m = make(128, basis="fourier")
    assert m.use_fast and m.kernel == "fourier"
    assert make(128, basis="piecewise_linear", q="normalized").kernel == "band"


@pytest.mark.parametrize("basis", ["piecewise_linear", "fourier"])
def test_kernels_save_only_the_input(basis):
    B, d = 64, 32
    m = make(d, basis=basis, implementation="fast")
    z = randn(B, d, seed=11).requires_grad_()
    assert _saved_bytes(m, z) == B * d * 8
    assert _saved_bytes(m.reference, z) >= 2 * B * 4 * d * 8


def test_kernel_follows_dtype_and_copies():
    m = IAT(20, basis="piecewise_linear", implementation="fast", dtype=DT)
    assert m._ops.kernel.main.A.dtype == DT
    assert m.float()._ops.kernel.main.A.dtype == torch.float32 and m.kernel == "band"
    # back to float64: the bases are rebuilt exactly (float32's rounding would no longer
    # factor in float64 and the layer would lose its kernel), so the band kernel stays
    assert m.double().kernel == "band"
    assert torch.equal(m.P, IAT(20, basis="piecewise_linear", dtype=DT).P)
    m = IAT(20, basis="piecewise_linear", implementation="fast", dtype=DT)
    clone = pickle.loads(pickle.dumps(m))
    z = randn(3, 20, seed=12)
    assert clone.kernel == "band" and torch.equal(clone(z), m(z))


def _recurrence(b: torch.Tensor, c: torch.Tensor, reverse: bool) -> torch.Tensor:
    x = b.clone()
    order = range(len(b) - 2, -1, -1) if reverse else range(1, len(b))
    for i in order:
        x[i] = b[i] + c[i] * x[i + 1 if reverse else i - 1]
    return x


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_log_depth_scan_is_the_recurrence(n, reverse):
    c = 0.9 * torch.rand(n, generator=gen(n), dtype=DT) * torch.sign(randn(n, seed=n))
    b = randn(n, 3, seed=n + 1)
    scan = tridiag._Scan.build(c, reverse, threshold=1e-20)
    out = scan.apply(b, torch.empty_like(b), torch.empty_like(b))
    torch.testing.assert_close(out, _recurrence(b, c[:, None], reverse), rtol=0, atol=1e-12)
    assert len(scan.shifts) <= max(1, math.ceil(math.log2(max(n, 1)))) + 1


def test_tridiagonal_solver_matches_dense_solve():
    n = 30
    lower, upper = randn(n - 1, seed=1), randn(n - 1, seed=2)
    diag = 4.0 + randn(n, seed=3).abs()
    S = torch.diag(diag) + torch.diag(lower, -1) + torch.diag(upper, 1)
    solver = tridiag._tridiag_solver(lower, diag, upper, threshold=1e-20)
    v = randn(n, 5, seed=4)
    y = solver.apply(v.clone(), torch.empty_like(v), torch.empty_like(v))
    torch.testing.assert_close(y, torch.linalg.solve(S, v), rtol=0, atol=1e-12)
    # not diagonally dominant: refused (the scans would not contract)
    assert tridiag._tridiag_solver(lower, 0.1 * diag, upper, threshold=1e-20) is None


def test_compile_fullgraph_of_a_generic_kernel_in_auto_mode():
    """use_fast (which touches the CSR operators) must not run while compiling: the dense
    form is traced instead (a sparse, auto, generic-kernel layer used to break fullgraph)."""
    torch._dynamo.reset()
    m = IAT(128, basis="piecewise_linear", q="fourier", num_points=512, dtype=DT)
    assert m.kernel == "generic" and m.use_fast and any(m._ops.sparse)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    z, w = randn(4, 128, seed=11), randn(4, 128, seed=12)
    y_c, g_c = _value_and_grad(compiled, z, w)
    y_e, g_e = _value_and_grad(m, z, w)
    torch.testing.assert_close(y_c, y_e, rtol=0, atol=1e-10)
    torch.testing.assert_close(g_c, g_e, rtol=0, atol=1e-10)
    torch._dynamo.reset()
