"""Fuzzing the public modules: any constructor argument or input gives the documented result
or a ValueError / TypeError raised by this library, never an error from deep inside torch."""

import traceback

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unbottleneck import ALSTM, GDNN, IAT, AdaptiveLinear

ARG = st.sampled_from([0, -1, 1, 3, 2.5, True, None, "3", float("nan"), 10**9])


def _ours(exc: BaseException) -> bool:
    return "unbottleneck" in traceback.extract_tb(exc.__traceback__)[-1].filename


def _attempt(fn):
    """fn() or None when it raised a ValueError / TypeError of our own; anything else fails."""
    try:
        return fn()
    except (ValueError, TypeError) as exc:
        assert _ours(exc), f"{type(exc).__name__} from inside torch: {exc}"
        return None


@settings(max_examples=120, deadline=None)
@given(a=ARG, b=ARG)
def test_constructors_accept_or_refuse_clearly(a, b):
    if 10**9 in (a, b):  # refused sizes only: a valid 10**9 would allocate gigabytes
        a, b = (-1 if a == 10**9 else a), (-1 if b == 10**9 else b)
    _attempt(lambda: IAT(a, num_points=b))
    _attempt(lambda: AdaptiveLinear(a, 3, rank=b))
    _attempt(lambda: ALSTM(3, 3, 2, num_layers=a, dropout_hidden=b))
    _attempt(lambda: GDNN(2, 4, 1, a))


MODULES = {"iat": lambda: IAT(4), "iat-fourier": lambda: IAT(4, basis="fourier", num_points=64),
           "adaptive": lambda: AdaptiveLinear(4, 3), "alstm": lambda: ALSTM(4, 3, 2),
           "gdnn": lambda: GDNN(4, 8, 1, 2)}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(MODULES)), shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       last=st.sampled_from([4, 4, 4, 0, 5]), dtype=st.sampled_from(DTYPES), transpose=st.booleans())
def test_forward_gives_a_result_or_a_clear_error(name, shape, last, dtype, transpose):
    module = MODULES[name]()
    x = torch.zeros(*shape, last, dtype=dtype) if shape or last else torch.tensor(1.0, dtype=dtype)
    if transpose and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)  # same shape, non-contiguous strides
    out = _attempt(lambda: module(x))
    if out is None:
        return
    y = out[0] if isinstance(out, tuple) else out
    assert isinstance(y, torch.Tensor) and y.dtype == x.dtype  # a valid input came back whole
    if name != "alstm":
        assert y.shape[:-1] == x.shape[:-1]
