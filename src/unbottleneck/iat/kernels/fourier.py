"""Kernel ``fourier``: real FFTs for the Fourier basis at midpoint nodes.

The eager kernel (:func:`_fourier_forward` / :func:`_fourier_backward`) works in chunks
of rows with reused spectrum buffers.  :func:`fourier_expression` is the same map in
plain out-of-place real arithmetic around the two FFTs (no complex element-wise ops, which
compilers do not generate), for :mod:`.fused` and compiled user models; below the FFT's
crossover size (``settings.iat_auto_fft_min_size``, :func:`dense_basis`) they take the
dense form with the bases' (M, d) matrix instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ... import settings
from .common import Nonlinearity, _apply_sigma, _chunk, _sigma_backward
from .tridiag import _output_map


@dataclass
class _FourierKernel:
    """``P z`` by an inverse real FFT and ``P^T r`` by a forward one (batch-major).

    Midpoint nodes ``s_k = -1 + (2k + 1) / M`` give ``pi f s_k = f theta_k - f pi`` with
    ``theta_k = 2 pi (k + 1/2) / M``, so ``sin(f pi s_k) = (-1)^f sin(f theta_k)`` (same
    for cos) and the state is ``Re sum_f c_f e^{2 pi i f k / M}`` with
    ``c_f = (-1)^f e^{i pi f / M} (z_cos,f - i z_sin,f)``: an inverse DFT with a
    half-cell phase.  ``out_scale`` folds the (uniform) weight and diagonal K.
    """

    d: int
    M: int
    phase: torch.Tensor  # (F,) complex, (-1)^f e^{i pi f / M}
    out_scale: torch.Tensor  # (d,)
    name: str = "fourier"

    def to(self, **kw) -> _FourierKernel:
        dtype = kw.get("dtype", self.out_scale.dtype)
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return _FourierKernel(
            self.d, self.M, self.phase.to(device=kw.get("device"), dtype=cdtype),
            self.out_scale.to(**kw),
        )

    def supports(self, sigma_name: str) -> bool:
        return True

    def spectrum(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """A zero half-spectrum buffer (n, M/2 + 1) for :meth:`synthesis`."""
        return torch.zeros(n, self.M // 2 + 1, dtype=self.phase.dtype, device=like.device)

    def synthesis(self, z: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """``P z``: (n, d) -> (n, M).  ``spec`` is zero outside bins 1..F (kept so)."""
        nf = self.phase.numel()
        zs, zc = z[:, 0::2], z[:, 1::2]  # sin(f pi s), cos(f pi s) coefficients
        nc = zc.shape[1]
        bins = spec[: z.shape[0], 1 : nf + 1]
        # bins = (M / 2) phase (z_cos - i z_sin): irfft's 1/M and the two conjugate halves.
        torch.mul(zs, self.phase * (-0.5j * self.M), out=bins)
        bins[:, :nc].add_(zc * (self.phase[:nc] * (0.5 * self.M)))
        return torch.fft.irfft(spec[: z.shape[0]], n=self.M)

    def analysis(self, r: torch.Tensor, out: torch.Tensor) -> None:
        """``out = P^T r``: (n, M) -> (n, d)."""
        nf = self.phase.numel()
        spec = torch.view_as_real(torch.fft.rfft(r)[:, 1 : nf + 1].conj() * self.phase)
        out[:, 0::2] = spec[..., 1]  # Im(phase * conj(R)): the sine coefficients
        out[:, 1::2] = spec[:, : self.d // 2, 0]  # Re: the cosines


def _fourier_kernel(
    P: torch.Tensor, Qw: torch.Tensor, w: torch.Tensor, tol: float
) -> _FourierKernel | None:
    from ..basis import fourier

    M, d = P.shape
    nf = (d + 1) // 2
    if 2 * nf >= M:  # the highest frequency must stay below Nyquist
        return None
    nodes = -1.0 + (2.0 * torch.arange(M, dtype=torch.float64) + 1.0) / M
    if float((P - fourier(nodes, d)).abs().max()) > tol:
        return None
    if float((w - 2.0 / M).abs().max()) > tol * 2.0 / M:
        return None
    out = _output_map(P, Qw, w, tol)
    if out is None or out.scale is None:
        return None
    f = torch.arange(1, nf + 1, dtype=torch.float64)
    phase = (1.0 - 2.0 * (f % 2)) * torch.exp(1j * math.pi * f / M)
    kern = _FourierKernel(d, M, phase, out.scale * (2.0 / M))
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, d, generator=gen, dtype=torch.float64)
    r = torch.randn(3, M, generator=gen, dtype=torch.float64)
    v = torch.empty(3, d, dtype=torch.float64)
    kern.analysis(r, v)
    ok = float((kern.synthesis(z, kern.spectrum(3, z)) - z @ P.t()).abs().max()) <= tol * float(
        z.abs().sum(1).max()
    )
    ok = ok and float((v - r @ P).abs().max()) <= tol * float(r.abs().sum(1).max())
    return kern if ok else None


def _fourier_forward(
    z: torch.Tensor, kern: _FourierKernel, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Batch-major (N, d) -> (N, d), in chunks of rows."""
    n = z.shape[0]
    y = z.new_empty(n, kern.d)
    step = _chunk(n, 3 * kern.M, device_type=z.device.type)  # per row: spectrum, state, its transform
    spec = kern.spectrum(min(step, n), z)
    for i0 in range(0, n, step):
        f = kern.synthesis(z[i0 : i0 + step], spec)
        kern.analysis(_apply_sigma(sigma_name, sigma, f), y[i0 : i0 + step])
    return y.mul_(kern.out_scale)


def _fourier_backward(
    kern: _FourierKernel, z: torch.Tensor, gy: torch.Tensor, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Gradient (N, d) w.r.t. the batch-major input, the state recomputed chunk by chunk."""
    # gz overwrites gs chunk by chunk: each chunk of gs is read before it is written.
    gz = gs = gy * kern.out_scale
    n = z.shape[0]
    step = _chunk(n, 3 * kern.M, device_type=z.device.type)
    spec = kern.spectrum(min(step, n), z)
    for i0 in range(0, n, step):
        grad_r = kern.synthesis(gs[i0 : i0 + step], spec)
        f = kern.synthesis(z[i0 : i0 + step], spec)  # recomputed state
        grad_f = _sigma_backward(sigma_name, sigma, f, grad_r)
        kern.analysis(grad_f, gz[i0 : i0 + step])
    return gz


def _phase_parts(kern: _FourierKernel) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.view_as_real(kern.phase).unbind(-1)


def fourier_synthesis(z: torch.Tensor, kern: _FourierKernel) -> torch.Tensor:
    """``P z`` out of place: (n, d) -> (n, M); the spectrum in real arithmetic."""
    nf, half = kern.phase.numel(), kern.M // 2 + 1
    pr, pi = _phase_parts(kern)
    zs, zc = z[:, 0::2], F.pad(z[:, 1::2], (0, nf - kern.d // 2))
    scale = 0.5 * kern.M  # irfft's 1/M and the two conjugate halves
    re, im = scale * (pr * zc + pi * zs), scale * (pi * zc - pr * zs)  # (M/2) phase (zc - i zs)
    spec = F.pad(torch.stack((re, im), -1), (0, 0, 1, half - 1 - nf))
    return torch.fft.irfft(torch.view_as_complex(spec), n=kern.M)


def fourier_analysis(r: torch.Tensor, kern: _FourierKernel) -> torch.Tensor:
    """``P^T r`` out of place: (n, M) -> (n, d)."""
    nf = kern.phase.numel()
    pr, pi = _phase_parts(kern)
    a, b = torch.view_as_real(torch.fft.rfft(r))[:, 1 : nf + 1].unbind(-1)
    re, im = a * pr + b * pi, a * pi - b * pr  # phase * conj(R)
    return torch.stack((im, re), -1).reshape(r.shape[0], 2 * nf)[:, : kern.d]


def dense_basis(kern: _FourierKernel, P: torch.Tensor) -> torch.Tensor | None:
    """``P`` where the dense form beats the FFTs (d M below ``iat_auto_fft_min_size``),
    else None: the ``basis`` argument of the Fourier expressions."""
    return P if kern.d * kern.M < settings.get().iat_auto_fft_min_size else None


def fourier_expression(z: torch.Tensor, kern: _FourierKernel, sigma: Nonlinearity,
                       basis: torch.Tensor | None = None) -> torch.Tensor:
    """(N, d) -> (N, d): by FFTs without ``basis``, else with ``basis`` (P, (M, d)) as two
    dense products (see :func:`dense_basis`)."""
    if basis is None:
        return fourier_analysis(sigma(fourier_synthesis(z, kern)), kern) * kern.out_scale
    return (sigma(z @ basis.t()) @ basis) * kern.out_scale


def fourier_expression_backward(z: torch.Tensor, gy: torch.Tensor, kern: _FourierKernel,
                                negative_slope: float, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of :func:`fourier_expression` for ReLU / leaky ReLU, the state recomputed."""
    gs = gy * kern.out_scale
    if basis is None:
        f, g = fourier_synthesis(z, kern), fourier_synthesis(gs, kern)
        return fourier_analysis(torch.where(f > 0, g, negative_slope * g), kern)
    f, g = z @ basis.t(), gs @ basis.t()
    return torch.where(f > 0, g, negative_slope * g) @ basis
