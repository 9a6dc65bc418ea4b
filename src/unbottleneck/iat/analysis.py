"""Tools for the seed's analysis of IAT-ReLU.

* :func:`activation_pattern` -- ``D(z)`` on the quadrature grid.
* :func:`activation_matrix` -- ``S(z) = integral_{D(z)} q p^T`` so ``y = S(z) z``.
* :func:`pattern_events` / :func:`pattern_jump` -- the exact switches of the pattern
  along a segment and the largest change of ``S`` at one: O(1) for rectangular bases
  (a whole cell switches), O(d/M) for continuous ones (one node at a time).
* :func:`pattern_along_path` -- ``D(z(t))`` on a path, as an image (t, s).
* :func:`pattern_sensitivity` -- share of nodes whose sign flips under a small
  random perturbation of z.
* :func:`iat_gain` -- the He-style gain of an IAT (exact for ReLU via the
  arc-cosine kernel), used by :class:`~unbottleneck.GDNN` for its init.
"""

from __future__ import annotations

import math

import torch

from .module import IAT


def _check(iat: IAT, z: torch.Tensor) -> torch.Tensor:
    if not isinstance(iat, IAT):
        raise TypeError(f"expected an IAT module, got {type(iat).__name__}")
    if z.shape[-1] != iat.in_features:
        raise ValueError(f"expected z of shape (..., {iat.in_features}), got {tuple(z.shape)}")
    return z.to(iat.P.dtype)


def activation_pattern(iat: IAT, z: torch.Tensor) -> torch.Tensor:
    """Boolean pattern ``f(s_k; z) > 0`` at the M nodes, (..., M)."""
    z = _check(iat, z)
    return iat.state_function(z) > 0


def _slopes(iat: IAT, f: torch.Tensor) -> torch.Tensor:
    if iat.sigma_name == "relu":
        return (f > 0).to(f.dtype)
    if iat.sigma_name == "leaky_relu":
        return torch.where(f > 0, torch.ones_like(f), torch.full_like(f, 0.01))
    raise ValueError(
        "the activation matrix y = S(z) z exists for positively homogeneous piecewise-linear "
        f"nonlinearities (relu, leaky_relu), not {iat.sigma_name!r}"
    )


def activation_matrix(iat: IAT, z: torch.Tensor) -> torch.Tensor:
    """``S(z) = Q^T diag(w * 1[P z > 0]) P``, shape (..., m, d); ``IAT(z) = S(z) z``."""
    z = _check(iat, z).detach()
    slopes = _slopes(iat, iat.state_function(z))  # (..., M)
    return torch.einsum("km,...k,kd->...md", iat.Qw.detach(), slopes, iat.P.detach())


def _segment(iat: IAT, z0: torch.Tensor, z1: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    z0, z1 = _check(iat, z0), _check(iat, z1)
    if z0.dim() != 1 or z1.dim() != 1:
        raise ValueError(f"{name} expects two vectors of shape (d,)")
    return z0, z1


#: Nodes whose switching times differ by less than this are one event (the nodes of one
#: rectangular cell have identical rows of P, so their times agree to round-off).
EVENT_TOL = 1e-9


@torch.no_grad()
def pattern_events(iat: IAT, z0: torch.Tensor, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every switch of the activation pattern on the segment ``z(t) = (1 - t) z0 + t z1``, exactly.

    The state at node k, ``f_k(t) = (1 - t) (P z0)_k + t (P z1)_k``, is linear in t, so node k
    switches once, at ``t_k = f_k(0) / (f_k(0) - f_k(1))`` when that lies in (0, 1).  At t_k the
    activation matrix changes by ``(slope after - slope before) * w_k q_k p_k^T``; nodes that
    switch at the same t (a rectangular cell) form one event.

    Args:
        z0, z1: (d,) end points.

    Returns:
        (t, jump): event times in (0, 1), ascending, and the Frobenius norm of S's change at
        each, both (E,) in the module's dtype.  For a continuous basis an event is one node
        and ``jump = w_k |q(s_k)| |p(s_k)|`` = O(d / M); for the rectangular basis it is a
        whole cell and the jump is O(1).
    """
    z0, z1 = _segment(iat, z0, z1, "pattern_events")
    P, Qw = iat.P.detach(), iat.Qw.detach()
    f0, f1 = P @ z0, P @ z1  # (M,)
    crossing = (f0 > 0) != (f1 > 0)
    nodes = crossing.nonzero().flatten()
    if nodes.numel() == 0:
        empty = torch.empty(0, dtype=P.dtype, device=P.device)
        return empty, empty
    t = f0[nodes] / (f0[nodes] - f1[nodes])
    order = t.argsort()
    nodes, t = nodes[order], t[order]
    # slope change when f goes from <= 0 to > 0 (or back)
    sign = torch.where(f1[nodes] > 0, 1.0, -1.0).to(P.dtype)
    neg = _slopes(iat, torch.tensor([-1.0], dtype=P.dtype, device=P.device))
    delta = sign * (1.0 - neg)
    group = torch.cat([t.new_zeros(1, dtype=torch.long), (t.diff() > EVENT_TOL).long()]).cumsum(0)
    times, jumps = [], []
    for g in range(int(group[-1]) + 1):
        sel = group == g
        k = nodes[sel]
        change = torch.einsum("km,k,kd->md", Qw[k], delta[sel], P[k])
        times.append(t[sel].mean())
        jumps.append(change.norm())
    return torch.stack(times), torch.stack(jumps)


@torch.no_grad()
def pattern_jump(iat: IAT, z0: torch.Tensor, z1: torch.Tensor, steps: int | None = None) -> float:
    """Largest Frobenius jump of ``S`` along the segment ``z0 -> z1`` (1-D inputs (d,)).

    By default exact, from :func:`pattern_events`: the largest discontinuity of the
    Jacobian on the path.  With ``steps`` it is instead the largest change of S between
    ``steps + 1`` equally spaced points (the sampled reference the exact form is tested
    against; too coarse a path merges neighbouring events into one bigger change).
    """
    if steps is None:
        _, jumps = pattern_events(iat, z0, z1)
        return float(jumps.max()) if jumps.numel() else 0.0
    z0, z1 = _segment(iat, z0, z1, "pattern_jump")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=z0.dtype, device=z0.device)[:, None]
    path = (1 - t) * z0 + t * z1
    best = 0.0
    prev = None
    for chunk in path.split(256):
        S = activation_matrix(iat, chunk)
        if prev is not None:
            S = torch.cat([prev[None], S])
        jumps = (S[1:] - S[:-1]).flatten(1).norm(dim=1)
        best = max(best, float(jumps.max()))
        prev = S[-1]
    return best


@torch.no_grad()
def pattern_sensitivity(
    iat: IAT, z: torch.Tensor, eps: float = 1e-2, trials: int = 16, seed: int = 0
) -> float:
    """Mean share of nodes whose pattern flips when z moves by ``eps * ||z||`` at random."""
    z = _check(iat, z)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = activation_pattern(iat, z)
    flips = []
    for _ in range(trials):
        noise = torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)
        noise = noise / noise.norm(dim=-1, keepdim=True) * z.norm(dim=-1, keepdim=True) * eps
        flips.append((activation_pattern(iat, z + noise) != base).to(z.dtype).mean())
    return float(torch.stack(flips).mean())


@torch.no_grad()
def iat_gain(iat: IAT, samples: int = 8192, seed: int = 0) -> float:
    """``sqrt(E||z||^2 / E||IAT(z)||^2)`` for ``z ~ N(0, I_d)``.

    For ReLU this is computed exactly: ``f = P z`` is Gaussian with covariance
    ``C = P P^T`` and ``E[relu(f_k) relu(f_l)]`` is the arc-cosine kernel
    ``sqrt(C_kk C_ll) (sin t + (pi - t) cos t) / (2 pi)``, ``cos t = C_kl / sqrt(C_kk C_ll)``.
    Other nonlinearities use a Monte-Carlo estimate with a private generator (the
    global RNG is untouched).  For the rectangular basis with ``q="dual"`` the gain
    is sqrt(2), i.e. He initialisation.
    """
    P = iat.P.detach().to("cpu", torch.float64)
    Qw = iat.Qw.detach().to("cpu", torch.float64)
    d = P.shape[1]
    if iat.sigma_name == "relu":
        C = P @ P.t()
        std = C.diagonal().clamp(min=0).sqrt()
        A = Qw @ Qw.t()
        total = 0.0
        for rows in torch.arange(P.shape[0]).split(1024):
            denom = std[rows, None] * std[None, :]
            cos = torch.where(denom > 0, C[rows] / denom.clamp(min=1e-300), torch.zeros_like(denom))
            theta = torch.arccos(cos.clamp(-1.0, 1.0))
            k = denom * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
            total += float((A[rows] * k).sum())
        second_moment = total
    else:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(samples, d, generator=gen, dtype=torch.float64)
        y = iat.sigma(z @ P.t()) @ Qw
        second_moment = float((y * y).sum(1).mean())
    if second_moment <= 0:
        raise ValueError("the IAT maps Gaussian inputs to zero; no finite gain exists")
    return math.sqrt(d / second_moment)


@torch.no_grad()
def pattern_along_path(iat: IAT, z0: torch.Tensor, z1: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """``D(z(t))`` at ``steps + 1`` points of the segment ``z0 -> z1``: bool (steps + 1, M).

    Row i is the pattern at ``t = i / steps``; column k is node ``s_k`` (ascending), so the
    array is directly an image with t on one axis and s on the other.
    """
    z0, z1 = _segment(iat, z0, z1, "pattern_along_path")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=z0.dtype, device=z0.device)[:, None]
    return activation_pattern(iat, (1 - t) * z0 + t * z1)
