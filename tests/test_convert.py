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


# -- which dimension holds the features ---------------------------------------------------------

def _iats(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, IAT)]


@pytest.mark.parametrize("conv, bn, shape", [
    (nn.Conv1d, nn.BatchNorm1d, (2, 3, 10)),
    (nn.Conv2d, nn.BatchNorm2d, (2, 3, 8, 8)),
    (nn.Conv3d, nn.BatchNorm3d, (2, 3, 4, 4, 4)),
])
def test_swap_after_convolutions_mixes_channels_not_the_last_axis(conv, bn, shape):
    torch.manual_seed(0)
    spatial = 1
    for s in shape[2:]:
        spatial *= s
    model = nn.Sequential(conv(3, 16, 3, padding=1), nn.ReLU(), conv(16, 8, 3, padding=1), bn(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * spatial, 4)).double()
    x = torch.randn(*shape, dtype=D)
    model, names = swap_activations(model, x, basis="piecewise_linear", num_points=40)
    assert names == ["1", "4"]
    assert [(m.in_features, m.dim) for _, m in _iats(model)] == [(16, 1), (8, 1)]
    act = model[1]
    z = torch.randn(2, 16, *shape[2:], dtype=D)
    by_hand = act._transform(z.movedim(1, -1)).movedim(-1, 1)  # the transform over the channels
    assert torch.allclose(act(z), by_hand)
    assert model(x).shape == (2, 4)


def test_swap_with_channels_last_memory_and_channels_last_layout():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 7, 7).to(memory_format=torch.channels_last)
    cnn, _ = swap_activations(cnn, x)
    assert cnn[1].dim == 1 and cnn[1].in_features == 6  # memory format does not move the logical dims
    # an image model written features-last (B, H, W, C) through Linear layers
    mlp = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    mlp, _ = swap_activations(mlp, torch.randn(2, 4, 4, 3))
    assert mlp[1].dim == -1 and mlp[1].in_features == 5


class Block(nn.Module):
    """A pre-LayerNorm transformer block with a ReLU feed-forward."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


def test_swap_in_a_transformer_block_uses_the_feature_axis():
    torch.manual_seed(0)
    block = Block()
    x = torch.randn(2, 5, 8)
    block, names = swap_activations(block, x)
    assert names == ["ff.1"] and block.ff[1].dim == -1 and block.ff[1].in_features == 32
    assert block(x).shape == (2, 5, 8)


class Permuted(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x).permute(0, 2, 3, 1) * 1.0)  # (N, H, W, C): not the conv's layout


def test_swap_refuses_layouts_it_cannot_identify():
    with pytest.raises(ValueError, match="cannot tell which dimension of 'act'"):
        swap_activations(Permuted(), torch.randn(2, 3, 5, 6))
    loose = nn.Sequential(nn.ReLU(), nn.Linear(6, 2))  # a 3-D input straight into the activation
    with pytest.raises(ValueError, match="no layer before it"):
        swap_activations(loose, torch.randn(2, 4, 6))
    two_d = nn.Sequential(nn.ReLU(), nn.Linear(6, 2))  # 2-D: only one candidate, swapped
    assert swap_activations(two_d, torch.randn(2, 6))[1] == ["0"]


def test_iat_dim_argument_checks_and_round_trips():
    act = IAT(4, dim=1, basis="fourier", dtype=D)
    z = torch.randn(3, 4, 5, dtype=D)
    assert torch.allclose(act(z), IAT(4, basis="fourier", dtype=D)(z.transpose(1, 2)).transpose(1, 2))
    with pytest.raises(ValueError, match="expects 4 features at dimension 1"):
        act(torch.randn(3, 5, 4, dtype=D))
    with pytest.raises(ValueError, match="1 dimensions"):
        act(torch.randn(4, dtype=D))
    with pytest.raises(TypeError, match="dim must be an int"):
        IAT(4, dim="1")
    assert "dim=1" in repr(act)
