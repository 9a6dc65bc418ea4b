"""make_adaptive / swap_activations: conversions keep what they do not convert."""

import pytest
import torch
from torch import nn

from unbottleneck import IAT, AdaptiveLinear, make_adaptive, swap_activations

D = torch.float64


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).to(D)


class WithSkippedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.unused = nn.ReLU()  # never called by forward

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("policy", ["output", "input", "io", "sva"])
def test_make_adaptive_keeps_the_static_map(policy):
    model, x = mlp(), torch.randn(5, 6, dtype=D)
    before = model(x)
    untouched = model[2]
    # init scale 0: the linear policy is exactly 1, so only the static map remains
    model, names = make_adaptive(model, policy=policy, include=["0", "4"], policy_init_scale=0.0)
    assert names == ["0", "4"]
    assert isinstance(model[0], AdaptiveLinear) and isinstance(model[4], AdaptiveLinear)
    assert model[2] is untouched and type(model[2]) is nn.Linear
    torch.testing.assert_close(model(x), before, rtol=1e-12, atol=1e-12)


def test_make_adaptive_predicate_and_all():
    model = mlp()
    _, names = make_adaptive(model, policy="io", include=lambda name, mod: mod.out_features == 8)
    assert names == ["0", "2"] and type(model[4]) is nn.Linear
    _, names = make_adaptive(mlp(), policy="output")
    assert names == ["0", "2", "4"]


def test_make_adaptive_trains():
    model, _ = make_adaptive(mlp(), policy="sva")
    x, y = torch.randn(16, 6, dtype=D), torch.randn(16, 3, dtype=D)
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_make_adaptive_bad_arguments():
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        make_adaptive(mlp(), include=["nope"])
    with pytest.raises(ValueError, match="not nn.Linear layers: '1'"):
        make_adaptive(mlp(), include=["1"])
    with pytest.raises(TypeError, match="list of module names"):
        make_adaptive(mlp(), include="0")
    with pytest.raises(ValueError, match="unknown policy"):
        make_adaptive(mlp(), policy="bogus")


def test_swap_to_rectangular_iat_keeps_outputs_exactly():
    model, x = mlp(), torch.randn(7, 6, dtype=D)
    before = model(x)
    model, names = swap_activations(model, x, basis="rectangular", num_points=32)
    assert names == ["1", "3"]
    assert all(isinstance(model[i], IAT) for i in (1, 3))
    assert model[1].P.dtype == D
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)  # rectangular IAT-ReLU == ReLU


def test_swap_activations_selected_and_unreached_are_kept():
    model = WithSkippedBranch()
    x = torch.randn(4, 6, dtype=D)
    model, names = swap_activations(model, x, include=["body.3", "unused"], basis="fourier")
    assert names == ["body.3"]
    assert type(model.body[1]) is nn.ReLU and type(model.unused) is nn.ReLU
    assert isinstance(model.body[3], IAT) and model.body[3].basis == "fourier"
    assert model(x).shape == (4, 3)


def test_swap_activations_restores_training_mode():
    model = mlp().train()
    swap_activations(model, torch.randn(2, 6, dtype=D))
    assert model.training


def test_swap_activations_bad_arguments():
    with pytest.raises(ValueError, match="no submodule named"):
        swap_activations(mlp(), torch.randn(2, 6, dtype=D), include=["x"])
    with pytest.raises(ValueError, match="unknown basis"):
        swap_activations(mlp(), torch.randn(2, 6, dtype=D), basis="wavelet")
