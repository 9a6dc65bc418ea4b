"""Property-based tests (hypothesis) over layer shapes, dtypes and options."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unbottleneck import IAT, AdaptiveLinear
from unbottleneck.iat import BASES, QUADRATURES

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

lead_dims = st.lists(st.integers(1, 3), min_size=0, max_size=3)
dtypes = st.sampled_from([torch.float32, torch.float64])


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}


@st.composite
def iat_options(draw):
    basis = draw(st.sampled_from(BASES))
    quadrature = draw(st.sampled_from(QUADRATURES))
    d = draw(st.integers(1, 9))
    m_points = draw(st.integers(max(2, d), 6 * d + 2))
    return {
        "features": d,
        "basis": basis,
        "num_points": m_points,
        "quadrature": quadrature,
        "zero_mean": draw(st.booleans()),
        "q": draw(st.sampled_from(["dual", "same", "normalized"])),
    }


def _build_iat(opts, dtype, implementation="auto"):
    try:
        return IAT(**opts, dtype=dtype, implementation=implementation)
    except ValueError as exc:
        # the one documented refusal: a basis function zero at every node (too few nodes)
        assert "zero at all" in str(exc)
        return None


@SETTINGS
@given(opts=iat_options(), lead=lead_dims, dtype=dtypes, scale=st.floats(0.0, 10.0))
def test_iat_shape_homogeneity_and_odd_part(opts, lead, dtype, scale):
    iat = _build_iat(opts, dtype)
    if iat is None:
        return
    gen = torch.Generator().manual_seed(len(lead) * 31 + opts["features"])
    z = torch.randn(*lead, opts["features"], generator=gen, dtype=torch.float64).to(dtype)
    y = iat(z)
    assert y.shape == (*lead, iat.out_features) and y.dtype == dtype
    assert torch.isfinite(y).all()
    torch.testing.assert_close(iat(scale * z), scale * y, **_tol(dtype))
    G = iat.gram()
    torch.testing.assert_close(iat(z) - iat(-z), z @ G.t(), **_tol(dtype))


@SETTINGS
@given(opts=iat_options(), lead=lead_dims)
def test_iat_fast_equals_reference(opts, lead):
    fast = _build_iat(opts, torch.float64, implementation="fast")
    if fast is None:
        return
    z = torch.randn(*lead, opts["features"], dtype=torch.float64, requires_grad=True)
    y = fast(z)
    y_ref = fast.reference(z)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * w).sum(), z)
    (g_ref,) = torch.autograd.grad((y_ref * w).sum(), z)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@st.composite
def adaptive_options(draw):
    policy = draw(st.sampled_from(["output", "input", "io", "sva"]))
    n, m = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    opts = {"in_features": n, "out_features": m, "policy": policy,
            "bias": draw(st.booleans()), "policy_net": draw(st.sampled_from(["linear", "tanh", "mlp"])),
            "policy_hidden": draw(st.integers(1, 5))}
    if policy == "sva":
        opts["rank"] = draw(st.integers(1, 6))
    opts["adapt_bias"] = opts["bias"] and draw(st.booleans())
    return opts


@SETTINGS
@given(opts=adaptive_options(), lead=lead_dims, dtype=dtypes)
def test_adaptive_shapes_and_static_limit(opts, lead, dtype):
    torch.manual_seed(0)
    layer = AdaptiveLinear(**opts, dtype=dtype)
    x = torch.randn(*lead, opts["in_features"], dtype=dtype)
    y = layer(x)
    assert y.shape == (*lead, opts["out_features"]) and y.dtype == dtype
    # per-sample effective weight reproduces the forward
    bias = 0.0 if layer.bias is None else layer.bias
    if opts["adapt_bias"]:
        bias = layer.bias * layer.adaptation(x)["bias"]
    torch.testing.assert_close(y, (layer.adapted_weight(x) @ x[..., None])[..., 0] + bias, **_tol(dtype))
    # the static limit is an ordinary linear map
    lin = layer.linearized(x)
    ref = x @ layer.static_weight().t() + (0.0 if layer.bias is None else layer.bias)
    torch.testing.assert_close(lin, ref, **_tol(dtype))


@SETTINGS
@given(d=st.integers(-3, 0), basis=st.sampled_from(BASES))
def test_iat_rejects_non_positive_sizes(d, basis):
    with pytest.raises(ValueError, match="must be >= 1"):
        IAT(d, basis=basis)
    with pytest.raises(ValueError, match="positive int"):
        AdaptiveLinear(d, 3)
