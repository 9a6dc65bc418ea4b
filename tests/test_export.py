"""torch.export and torch.compile of the IAT and adaptive layers."""

import pytest
import torch
from torch import nn

from unbottleneck import GDNN, IAT, AdaptiveLinear


@pytest.mark.parametrize("basis", ["rectangular", "piecewise_linear", "fourier"])
def test_iat_exports_with_a_dynamic_batch(basis):
    # d * M large enough that eager "auto" takes the structured fast path for local bases
    iat = IAT(64, basis=basis, num_points=1024)
    x = torch.randn(8, 64)
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(iat, (x,), dynamic_shapes={"z": {0: batch}})
    for n in (3, 17):
        z = torch.randn(n, 64)
        torch.testing.assert_close(ep.module()(z), iat(z), rtol=1e-5, atol=1e-5)
    # the exported program is self-contained: its buffers travel with it
    assert {"P", "Qw"} <= {name.split(".")[-1] for name in ep.state_dict}


@pytest.mark.parametrize("policy", ["output", "input", "io", "sva"])
def test_adaptive_linear_exports(policy):
    torch.manual_seed(0)
    layer = AdaptiveLinear(12, 5, policy=policy, policy_net="mlp", adapt_bias=True, policy_init_scale=1.0)
    x = torch.randn(4, 12)
    ep = torch.export.export(layer, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}})
    z = torch.randn(9, 12)
    torch.testing.assert_close(ep.module()(z), layer(z))


def test_adaptive_linear_exports_with_context():
    layer = AdaptiveLinear(6, 3, policy="io", context_features=2)
    x, c = torch.randn(4, 6), torch.randn(4, 2)
    ep = torch.export.export(layer, (x, c))
    torch.testing.assert_close(ep.module()(x, c), layer(x, c))


def test_gdnn_and_mixed_model_export_and_compile():
    torch.manual_seed(0)
    model = nn.Sequential(AdaptiveLinear(3, 16, policy="sva"), GDNN(16, 32, 2, depth=2, basis="fourier"))
    x = torch.randn(5, 3)
    ep = torch.export.export(model, (x,))
    torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()  # gradients flow through the compiled graph
    assert all(p.grad is not None for p in model.parameters())
