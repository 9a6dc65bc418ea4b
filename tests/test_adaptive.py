"""AdaptiveLinear: each policy against its formula, the static limit, gradients, modules."""

import copy
import io

import pytest
import torch
from torch import nn

from unbottleneck import AdaptiveLinear
from unbottleneck.adaptive import LinearPolicy, MLPPolicy, build_policy

D = torch.float64


def make(policy, n=5, m=4, **kw):
    torch.manual_seed(0)
    return AdaptiveLinear(n, m, policy=policy, dtype=D, **kw)


class Ones(nn.Module):
    """A policy that always answers 1: the layer must become its static map."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, c):
        return c.new_ones(*c.shape[:-1], self.size)


def hand_written(layer, x, c):
    """The paper's formulas, written out per sample with explicit diagonal matrices."""
    pi = layer.policy_net(c)
    outs = []
    for xi, pii in zip(x.reshape(-1, x.shape[-1]), pi.reshape(-1, pi.shape[-1]), strict=True):
        parts = dict(zip(layer.policy_sizes, torch.split(pii, list(layer.policy_sizes.values())),
                         strict=True))
        if layer.policy == "output":
            y = torch.diag(parts["out"]) @ layer.weight @ xi
        elif layer.policy == "input":
            y = layer.weight @ torch.diag(parts["in"]) @ xi
        elif layer.policy == "io":
            y = torch.diag(parts["out"]) @ layer.weight @ torch.diag(parts["in"]) @ xi
        else:
            y = layer.weight_out @ torch.diag(parts["sv"]) @ layer.weight_in @ xi
        if layer.bias is not None:
            y = y + (torch.diag(parts["bias"]) @ layer.bias if "bias" in parts else layer.bias)
        outs.append(y)
    return torch.stack(outs).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("policy", ["output", "input", "io", "sva"])
@pytest.mark.parametrize("adapt_bias", [False, True])
@pytest.mark.parametrize("policy_net", ["linear", "tanh", "mlp"])
def test_each_policy_matches_its_formula(policy, adapt_bias, policy_net):
    layer = make(policy, adapt_bias=adapt_bias, policy_net=policy_net, policy_init_scale=1.0)
    with torch.no_grad():
        layer.bias.normal_()  # the reference init zeroes it; a zero bias would hide bias bugs
    x = torch.randn(2, 3, 5, dtype=D)
    torch.testing.assert_close(layer(x), hand_written(layer, x, x), rtol=1e-12, atol=1e-12)
    # adapted_weight is the per-sample matrix of the same map
    W = layer.adapted_weight(x)
    bias = layer.bias * layer.adaptation(x)["bias"] if adapt_bias else layer.bias
    torch.testing.assert_close(layer(x), (W @ x[..., None])[..., 0] + bias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("policy", ["output", "input", "io", "sva"])
def test_separate_context(policy):
    layer = make(policy, context_features=3, policy_init_scale=1.0)
    x, c = torch.randn(6, 5, dtype=D), torch.randn(6, 3, dtype=D)
    torch.testing.assert_close(layer(x, context=c), hand_written(layer, x, c), rtol=1e-12, atol=1e-12)
    # a context that differs changes the output: the layer really adapts
    assert not torch.allclose(layer(x, context=c), layer(x, context=c + 1))
    with pytest.raises(ValueError, match=r"context of shape \(\.\.\., 3\)"):
        layer(x)  # the default context is x, which has the wrong size here


def test_context_broadcasts_over_leading_dims():
    layer = make("io", context_features=3, policy_init_scale=1.0)
    x, c = torch.randn(4, 7, 5, dtype=D), torch.randn(4, 1, 3, dtype=D)
    y = layer(x, context=c)
    torch.testing.assert_close(y[:, 2], layer(x[:, 2], context=c[:, 0]))


@pytest.mark.parametrize("policy", ["output", "input", "io"])
def test_ones_policy_equals_nn_linear(policy):
    layer = make(policy, policy_net=Ones(make(policy).policy_size))
    with torch.no_grad():
        layer.bias.normal_()
    lin = nn.Linear(5, 4, dtype=D)
    lin.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
    x = torch.randn(3, 2, 5, dtype=D)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(make(policy).linearized(x), torch.nn.functional.linear(
        x, make(policy).weight, make(policy).bias), rtol=1e-14, atol=1e-14)


def test_sva_ones_policy_equals_product_linear():
    layer = make("sva", rank=3)
    layer.policy_net = Ones(3)
    x = torch.randn(8, 5, dtype=D)
    W = layer.weight_out @ layer.weight_in
    torch.testing.assert_close(layer(x), x @ W.t() + layer.bias, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(layer.linearized(x), layer(x), rtol=1e-13, atol=1e-13)
    assert layer.static_weight().shape == (4, 5)


def test_sva_with_linear_policy_is_nonlinear_without_activation():
    layer = make("sva", policy_init_scale=1.0)
    x = torch.randn(4, 5, dtype=D)
    with torch.no_grad():
        layer.bias.zero_()
    # a linear map would satisfy f(2x) = 2 f(x); the SVA layer (bilinear + linear) does not
    assert not torch.allclose(layer(2 * x), 2 * layer(x))


def test_reference_init():
    layer = make("sva", n=6, m=4)
    eye = torch.eye(4, dtype=D)
    torch.testing.assert_close(layer.weight_in @ layer.weight_in.t(), eye)  # (k, n) rows orthonormal
    torch.testing.assert_close(layer.weight_out.t() @ layer.weight_out, eye)
    assert torch.count_nonzero(layer.bias) == 0
    io = make("io", n=6, m=4)
    torch.testing.assert_close(io.weight @ io.weight.t(), eye)
    # the built-in policies start at pi = 1 (the static map) up to the init noise
    pol = LinearPolicy(6, 10, init_scale=0.0, dtype=D)
    assert torch.equal(pol(torch.randn(3, 6, dtype=D)), torch.ones(3, 10, dtype=D))
    assert torch.equal(LinearPolicy(6, 10, bounded=True, init_scale=0.0, dtype=D)(torch.randn(2, 6, dtype=D)),
                       torch.ones(2, 10, dtype=D))
    assert torch.equal(MLPPolicy(6, 10, init_scale=0.0, dtype=D)(torch.randn(2, 6, dtype=D)),
                       torch.ones(2, 10, dtype=D))
    torch_init = AdaptiveLinear(6, 4, policy="output", init="torch")
    assert torch.count_nonzero(torch_init.bias) > 0


def test_tanh_policy_is_bounded():
    layer = make("io", policy_net="tanh", policy_init_scale=50.0)
    pi = layer.policy_net(100 * torch.randn(50, 5, dtype=D))
    assert (pi >= 0).all() and (pi <= 2).all()  # closed: tanh saturates in floating point
    assert pi.min() < 0.5 and pi.max() > 1.5  # and the bound is really exercised


@pytest.mark.parametrize("policy", ["output", "input", "io", "sva"])
@pytest.mark.parametrize("policy_net", ["linear", "mlp"])
def test_gradcheck(policy, policy_net):
    layer = make(policy, n=3, m=2, adapt_bias=True, policy_net=policy_net, policy_hidden=3,
                 policy_init_scale=1.0)
    x = torch.randn(2, 3, dtype=D, requires_grad=True)
    c = torch.randn(2, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, c: layer(x, context=c), (x, c))
    params = [p for p in layer.parameters()]

    def wrt_params(*ps):
        state = dict(zip([n for n, _ in layer.named_parameters()], ps, strict=True))
        return torch.func.functional_call(layer, state, (x.detach(),))

    assert torch.autograd.gradcheck(wrt_params, tuple(p.detach().requires_grad_() for p in params))


def test_state_dict_dtype_deepcopy_and_pickle():
    layer = make("sva", policy_net="mlp")
    x = torch.randn(3, 5, dtype=D)
    clone = AdaptiveLinear(5, 4, policy="sva", policy_net="mlp", dtype=D)
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone(x), layer(x))
    torch.testing.assert_close(copy.deepcopy(layer)(x), layer(x))
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), layer(x))
    f32 = copy.deepcopy(layer).float()
    assert f32(x.float()).dtype == torch.float32
    keys = set(layer.state_dict())
    assert {"weight_in", "weight_out", "bias"} <= keys and any(k.startswith("policy_net.") for k in keys)


def test_train_eval_do_not_change_the_map():
    layer = make("io")
    x = torch.randn(3, 5, dtype=D)
    y_train = layer.train()(x)
    torch.testing.assert_close(layer.eval()(x), y_train)


def test_compile_matches_eager():
    torch._dynamo.reset()
    layer = AdaptiveLinear(6, 5, policy="sva", policy_init_scale=1.0)
    x = torch.randn(4, 3, 6)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


def test_user_policy_module_and_wrong_size():
    layer = AdaptiveLinear(5, 4, policy="sva", rank=2, policy_net=nn.Sequential(nn.Linear(5, 2), nn.Sigmoid()))
    assert layer(torch.randn(3, 5)).shape == (3, 4)
    bad = AdaptiveLinear(5, 4, policy="sva", rank=2, policy_net=nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"policy_net returned last dimension 3, expected 2 \(sv=2\)"):
        bad(torch.randn(3, 5))
    assert isinstance(build_policy("mlp", 5, 3, hidden=7), MLPPolicy)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"policy": "diagonal"}, ValueError, "unknown policy 'diagonal'"),
        ({"policy_net": "gru"}, ValueError, "unknown policy_net 'gru'"),
        ({"policy_net": 3}, TypeError, "policy_net must be one of"),
        ({"init": "xavier"}, ValueError, "unknown init 'xavier'"),
        ({"policy": "io", "rank": 2}, ValueError, "rank is only used by policy='sva'"),
        ({"policy": "sva", "rank": 0}, ValueError, "rank must be a positive int"),
        ({"bias": False, "adapt_bias": True}, ValueError, "adapt_bias=True needs bias=True"),
        ({"in_features": 0}, ValueError, "in_features must be a positive int"),
        ({"out_features": 2.5}, ValueError, "out_features must be a positive int"),
        ({"context_features": -1}, ValueError, "context_features must be a positive int"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = {"in_features": 5, "out_features": 4, **kwargs}
    with pytest.raises(exc, match=match):
        AdaptiveLinear(**args)


def test_bad_inputs():
    layer = AdaptiveLinear(5, 4)
    with pytest.raises(ValueError, match=r"input of shape \(\.\.\., 5\), got \(3, 4\)"):
        layer(torch.randn(3, 4))
    with pytest.raises(ValueError, match="input of shape"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating point input"):
        layer(torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[0.0] * 5])


# -- the seed's bias-free policy pi = P x --------------------------------------------------------

def test_bias_free_policy_is_exactly_p_x_and_starts_near_zero():
    torch.manual_seed(0)
    layer = AdaptiveLinear(784, 64, policy="sva", policy_bias=False, dtype=D)
    proj = layer.policy_net.proj
    assert proj.bias is None and "policy_net.proj.bias" not in dict(layer.named_parameters())
    x = torch.rand(256, 784, dtype=D)
    pi = layer.policy_net(x).detach()
    assert torch.equal(pi, x @ proj.weight.t())  # the exact formula, no offset
    # starter init: truncated normal, std 1/sqrt(fan_in), cut at 2 std
    w = proj.weight
    assert w.abs().max() <= 2.0 / 784**0.5 + 1e-12
    assert 0.7 / 784**0.5 < float(w.detach().std()) < 1.0 / 784**0.5
    # pi starts near 0 (not at the static map's 1): |mean| small against 1
    assert abs(float(pi.mean())) < 0.1 and float(pi.abs().mean()) < 0.5
    y = layer(x)
    assert torch.allclose(y, hand_written(layer, x, x))
    with_bias = AdaptiveLinear(784, 64, policy="sva", dtype=D)
    assert float(with_bias.policy_net(x).detach().mean()) == pytest.approx(1.0, abs=0.05)


def test_bias_free_policy_refused_where_undefined():
    with pytest.raises(ValueError, match="policy_net='linear'"):
        AdaptiveLinear(4, 3, policy_net="tanh", policy_bias=False)
    with pytest.raises(ValueError, match="policy_net='linear'"):
        AdaptiveLinear(4, 3, policy_net="mlp", policy_bias=False)
    with pytest.raises(ValueError, match="unbounded"):
        LinearPolicy(4, 3, bounded=True, bias=False)
