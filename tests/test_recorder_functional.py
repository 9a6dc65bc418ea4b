"""The recorder measures element-wise activation *functions* called inside forward, and IATs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unbottleneck import IAT
from unbottleneck.diagnostics import BottleneckRecorder


class Functional(nn.Module):
    """The same network as ``modules()`` below, written with functional calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.a(x), inplace=True)  # in place: the recorded input must be the original
        h = torch.sigmoid(self.b(h))
        return self.c(h).tanh() + F.relu(self.c(h))  # a method call; a second relu in one pass


def _modules(f: Functional) -> nn.Sequential:
    return nn.Sequential(f.a, nn.ReLU(), f.b, nn.Sigmoid())


def test_functional_calls_are_recorded_under_their_module_and_equal_module_records():
    torch.manual_seed(0)
    f = Functional()
    x = torch.randn(5, 4)
    with BottleneckRecorder(f) as rec:
        f(x)
    assert set(rec.records) == {"relu", "sigmoid", "tanh", "relu#2"}
    assert all(r.kind == "activation" for r in rec.records.values())
    seq = _modules(f)
    with BottleneckRecorder(seq) as ref:
        seq(x)
    for fname, mname in (("relu", "1"), ("sigmoid", "3")):
        torch.testing.assert_close(rec.records[fname].preactivation, ref.records[mname].preactivation)
        torch.testing.assert_close(rec.records[fname].effect, ref.records[mname].effect)
    # tanh: linearised as a (slope 1, intercept 0); relu#2 had the same input as tanh
    pre = rec.records["tanh"].preactivation
    torch.testing.assert_close(rec.records["tanh"].effect, torch.tanh(pre) - pre)
    torch.testing.assert_close(rec.records["relu#2"].preactivation, pre)


def test_calls_outside_the_model_and_after_detach_are_not_recorded():
    f = Functional()
    x = torch.randn(5, 4)
    with BottleneckRecorder(f) as rec:
        loss = torch.sigmoid(f(x)).sum()  # the user's own sigmoid, outside the model
        F.relu(x)
    assert rec.records["sigmoid"].seen == 5 * 8
    f(x)  # detached: nothing more
    assert rec.records["relu"].seen == 5 * 8 and torch.isfinite(loss)


def test_calls_inside_recorded_modules_are_not_double_counted():
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), IAT(8), nn.Linear(8, 2))
    with BottleneckRecorder(model) as rec:
        model(torch.randn(3, 4))
    assert set(rec.records) == {"1", "3"}  # no "1:gelu", nor the IAT's internal relu
    assert rec.records["3"].kind == "iat"


def test_nested_owner_names_and_include():
    class Inner(nn.Module):
        def forward(self, x):
            return F.silu(x)

    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(Inner()), nn.Linear(3, 3))
    with BottleneckRecorder(model) as rec:
        model(torch.randn(2, 3))
    assert set(rec.records) == {"1.0:silu"}
    with BottleneckRecorder(model, include=["0"], functional=True) as rec2:
        model(torch.randn(2, 3))
    assert rec2.records == {}


def test_the_iat_effect_is_the_transform_minus_its_linearisation():
    """For ReLU (kink "mean": slope 1/2) and the dual output basis the linear part is z / 2."""
    torch.manual_seed(1)
    iat = IAT(16, dtype=torch.float64)
    z = torch.randn(6, 16, dtype=torch.float64)
    with BottleneckRecorder(iat, max_samples=10**6) as rec:
        y = iat(z)
    r = rec.records[""]
    order_z, order_rec = torch.argsort(z.reshape(-1)), torch.argsort(r.preactivation)
    torch.testing.assert_close(r.preactivation[order_rec], z.reshape(-1)[order_z])
    torch.testing.assert_close(r.effect[order_rec], (y - z / 2).reshape(-1)[order_z], rtol=0, atol=1e-10)
