"""Kernel ``fourier``: real FFTs for the Fourier basis at midpoint nodes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
