"""Re-discretise a trained GDNN at another width through its continuous state functions.

A GDNN with ``d`` basis functions is a continuous-width network whose layer maps are
functions of ``s`` in [-1, 1]:

* first layer: the state ``f(s) = p(s)^T (A x + b)``, i.e. weight functions ``A^T p(s)``;
* hidden layer: the kernel ``K(s', s) = p(s')^T W q(s)`` between two IATs;
* last layer: output weight functions ``W q(s)``.

Resampling to ``d'`` functions projects each of these onto the new bases in L2([-1, 1]):
with ``T = Gram(p')^+ integral p' p^T`` (d', d), the coefficients of ``p`` in the ``p'``
basis, ``p(s) ~ T^T p'(s)``.  Writing ``q(s) = C^T p(s)`` (``C`` = the module's dual,
identity or normalisation map, recovered from its discrete ``P`` and ``Q``):

* ``A' = T A``, ``b' = T b``;
* ``W' = T W C^T T^T (C'^T)^+`` (hidden layers; the last layer omits the leading ``T``).

The integrals use a fine midpoint grid (``fine_points``), not the modules' own nodes, so
the result is a property of the continuous functions.  When ``span p`` lies inside
``span p'`` (Fourier to more frequencies) the functions are carried over exactly and the
network changes only by the discretisation error of the new M; going down, or between
hat grids that do not nest, it is the best L2 approximation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .basis import evaluate_basis
from .module import GRAM_RTOL, IAT, Q_MODES, gram_pinv
from .quadrature import quadrature_rule

if TYPE_CHECKING:
    from .gdnn import GDNN


def _functions(iat: IAT, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The IAT's continuous ``p`` (len(s), d) and ``C`` with ``q(s) = C^T p(s)`` (d, d), float64."""
    if not isinstance(iat.q_mode, str) or iat.q_mode.lower() not in Q_MODES:
        raise ValueError("resample needs q in 'dual', 'same', 'normalized' (q is then a map of p)")
    nodes = iat.nodes.detach().cpu().double()
    w = iat.weights.detach().cpu().double()
    P = iat.P.detach().cpu().double()
    raw = evaluate_basis(iat.basis, nodes, iat.in_features)
    shift = (w @ raw) / w.sum() if iat.zero_mean else torch.zeros(iat.in_features, dtype=torch.float64)
    p = evaluate_basis(iat.basis, s, iat.in_features) - shift
    Q = iat.Qw.detach().cpu().double() / w[:, None]
    C = torch.linalg.lstsq(P, Q, driver="gelsd").solution  # exact: Q = P C by construction
    return p, C


def projection(source: IAT, target: IAT, fine_points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``T`` (d', d), ``C`` (d, d) and ``C'^+`` for the target, all float64 (see the module docstring)."""
    s, w = quadrature_rule("midpoint", fine_points)
    p, C = _functions(source, s)
    p_new, C_new = _functions(target, s)
    T = gram_pinv(p_new.t() @ (w[:, None] * p_new)) @ (p_new.t() @ (w[:, None] * p))
    return T, C, torch.linalg.pinv(C_new.t(), rtol=GRAM_RTOL)


def _iat_options(iat: IAT, hidden_features: int, num_points: int | None) -> dict:
    if iat.trainable:
        raise ValueError("resample needs fixed bases; a trainable IAT's learned P and Qw have no continuous form")
    if num_points is None:
        num_points = max(1, round(iat.num_points * hidden_features / iat.in_features))
    from .functional import NONLINEARITIES

    return {"basis": iat.basis, "num_points": num_points, "quadrature": iat.quadrature,
            "zero_mean": iat.zero_mean, "q": iat.q_mode, "implementation": iat.implementation,
            "nonlinearity": iat.sigma_name if iat.sigma_name in NONLINEARITIES else iat.sigma,
            "check_finite": iat.check_finite}


@torch.no_grad()
def resample_gdnn(model: GDNN, hidden_features: int, num_points: int | None = None,
                  fine_points: int | None = None) -> GDNN:
    """A new GDNN with ``hidden_features`` basis functions carrying ``model``'s continuous functions.

    Args:
        model: a GDNN whose IATs have fixed bases and q in 'dual', 'same', 'normalized'.
        hidden_features: d', the new number of basis functions (the new width).
        num_points: M' (default: the source's M / d ratio times d').
        fine_points: nodes of the fine midpoint grid for the projections (default
            ``max(4096, 64 * max(d, d'))``).

    Returns:
        a GDNN on the source's device and dtype, in the source's train/eval mode.
    """
    from .._validate import positive_int
    from .gdnn import GDNN

    positive_int("hidden_features", hidden_features)
    first_act = model.activations[0]
    d = first_act.in_features
    fine = fine_points if fine_points is not None else max(4096, 64 * max(d, hidden_features))
    lin0 = model.linears[0]
    new = GDNN(lin0.in_features, hidden_features, model.linears[-1].out_features, depth=model.depth,
               bias=lin0.bias is not None, init="torch", device=lin0.weight.device, dtype=lin0.weight.dtype,
               **_iat_options(first_act, hidden_features, num_points))
    maps = [projection(old, fresh, fine) for old, fresh in zip(model.activations, new.activations, strict=True)]
    for i, (old_lin, new_lin) in enumerate(zip(model.linears, new.linears, strict=True)):
        W = old_lin.weight.detach().cpu().double()
        b = old_lin.bias.detach().cpu().double() if old_lin.bias is not None else None
        if i > 0:  # the input side is the previous IAT's output: W q(s) projected onto q'
            T_in, C_in, C_new_pinv = maps[i - 1]
            W = W @ C_in.t() @ T_in.t() @ C_new_pinv
        if i < model.depth:  # the output side feeds the next IAT's state: coefficients of p in p'
            T_out = maps[i][0]
            W = T_out @ W
            b = T_out @ b if b is not None else None
        new_lin.weight.copy_(W.to(new_lin.weight))
        if b is not None:
            new_lin.bias.copy_(b.to(new_lin.bias))
    new.train(model.training)
    return new
