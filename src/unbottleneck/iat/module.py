"""``IAT`` / ``IATReLU``: the Integral Activation Transform as an ``nn.Module``.

Dispatch (``implementation=``):

* ``"reference"`` -- always the dense oracle :func:`~.functional.iat_reference`
  (so are trainable bases).  Under ``torch.compile`` every mode traces
  :meth:`IAT._traced`: the structured kernel's expression, else the dense form.
* ``"fast"`` -- always :func:`~.functional.iat_fast`: the structured kernel found
  for the bases (``select`` for rectangular, ``band`` for piecewise-linear, ``fourier``
  for the Fourier basis at midpoint nodes; see :mod:`.functional`), else the
  generic CSR/dense recomputing path.
* ``"fused"`` -- as ``"fast"``, with the structured kernel (select, band, fourier)
  compiled by ``torch.compile`` (:mod:`.kernels.fused`) for ReLU and leaky ReLU; never
  chosen by ``"auto"`` (not faster than eager on CPU: ``benchmarks/results/``).
* ``"auto"`` (default) -- the fast path when it is the faster one:

  ===========  ======================================  ===================================
  kernel       bases                                   taken by "auto" when
  ===========  ======================================  ===================================
  ``select``   rectangular (q dual/same/normalized,    ``d * M >= iat_auto_select_min_size``
               or an output family)                    (4096)
  ``band``     piecewise_linear, q dual/same/          ``d * M >= iat_auto_fast_min_size``
               normalized, any quadrature              (65536)
  ``fourier``  fourier at midpoint nodes, q dual/      ``d * M >= iat_auto_fft_min_size``
               same/normalized                         (65536)
  ``generic``  anything else with a sparse P or Qw     ``d * M >= iat_auto_fast_min_size``
  (none)       dense bases without structure           never: the recomputation costs an
                                                       extra dense matmul
  ===========  ======================================  ===================================

  The thresholds are measured crossovers against the dense path (Linear + IAT forward +
  backward, float32, M = 2d-4d; 1 thread at batch 64 and 2 threads at batch 1024): at
  d * M = 65536 the ``band`` kernel takes 0.82x (q normalized) / 1.16x (dual) of the
  dense time at batch 64 and 0.34x / 0.46x at batch 1024; the FFT 0.98x and 0.78x, and
  0.65-0.68x from 131072 on; ``select`` (an element-wise op) wins at every size, and
  its small threshold only keeps tiny layers on the exact oracle path.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import settings
from .basis import BasisSpec, basis_name, canonical_basis, evaluate_basis
from .functional import (
    Nonlinearity,
    StructuredIAT,
    build_structure,
    iat_fast,
    iat_reference,
    resolve_nonlinearity,
)
from .kernels.band import _BandKernel
from .kernels.fused import traced_expression
from .quadrature import canonical_quadrature, quadrature_rule

Q_MODES = ("dual", "same", "normalized")
#: The discretised tensors of a layer (buffers, or parameters when trainable).
_BASES = ("P", "Qw", "nodes", "weights")
IMPLEMENTATIONS = ("auto", "fast", "fused", "reference")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _output_basis(q: str | BasisSpec) -> BasisSpec:
    """Canonical output family for a ``q`` that is not one of ``Q_MODES``."""
    try:
        return canonical_basis(q)
    except ValueError:
        raise ValueError(
            f"unknown q {q!r}; choose one of {', '.join(Q_MODES)} or an output basis "
            "(rectangular, piecewise_linear, fourier or a callable)"
        ) from None


#: A basis function whose discrete L2 norm is below this share of the largest one is
#: zero on the grid up to round-off (e.g. cos((d/2) pi s) at d midpoint nodes, or a hat
#: or cell that no node falls into).
VANISHING_RTOL = 1e-8
#: Eigenvalues of the Gram matrix below this share of the largest count as zero.  A
#: zero-mean partition of unity (rectangular, piecewise linear) has an exactly singular
#: Gram whose round-off eigenvalue (~1e-15 relative) torch.linalg.pinv's default cutoff
#: (~d * 2.2e-16) sometimes keeps, and then inverts; 1e-10 is far above round-off and
#: far below any eigenvalue of a usable basis.
GRAM_RTOL = 1e-10


def gram_pinv(gram: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of a symmetric PSD Gram matrix (d, d) with a robust rank decision,
    so that ``gram_pinv(A) @ A`` is the orthogonal projector onto A's range."""
    return torch.linalg.pinv(gram, hermitian=True, rtol=GRAM_RTOL)


def _check_visible(P: torch.Tensor, w: torch.Tensor, basis: BasisSpec, quadrature: str,
                   zero_mean: bool) -> None:
    """Refuse basis functions that are zero at every node: their input coordinate would be
    ignored, and any mode that divides by their norm would blow up (~1e15 outputs)."""
    norms = (w @ (P * P)).clamp(min=0).sqrt()
    dead = (norms <= VANISHING_RTOL * norms.max()).nonzero().flatten().tolist()
    if not dead:
        return
    d, m = P.shape[1], P.shape[0]
    shown = ", ".join(map(str, dead[:5])) + (", ..." if len(dead) > 5 else "")
    hint = ("zero_mean on a single constant function leaves nothing" if zero_mean and d == 1 else
            f"use more quadrature nodes (num_points > {m}, e.g. the default 4 * {d}) or another quadrature")
    raise ValueError(
        f"basis function(s) {shown} of {basis_name(basis)!r} (d={d}) are zero at all {m} "
        f"{quadrature} nodes, so their inputs would be ignored; {hint}"
    )


def discretize(
    features: int,
    out_features: int | None = None,
    basis: BasisSpec = "piecewise_linear",
    num_points: int | None = None,
    quadrature: str = "midpoint",
    zero_mean: bool = False,
    q: str | BasisSpec = "dual",
) -> dict[str, torch.Tensor]:
    """Build nodes, weights, ``P`` (M, d) and ``Qw = diag(w) Q`` (M, m) in float64.

    ``q`` says how the output basis relates to ``p``:

    * ``"dual"`` (default): ``q = p Gram^+`` with ``Gram = integral p p^T`` (by the
      same quadrature), so ``integral q p^T = I`` and IAT(z) - IAT(-z) = z, the
      identity ReLU satisfies.  For the rectangular basis this is indicator / cell
      width (the spec's ReLU oracle); for the orthonormal Fourier basis it is p.
      If p is rank deficient (e.g. ``zero_mean`` on a partition of unity) the
      pseudo-inverse makes G the orthogonal projector onto the span instead (rank
      decided with a relative cutoff :data:`GRAM_RTOL`, far above round-off).
    * ``"same"``: ``q = p``.
    * ``"normalized"``: ``q_i = p_i / integral p_i^2``; equals ``"dual"`` for
      orthogonal bases and stays local (banded) for local ones, which is faster.
    * a basis name or callable: an independent output family with ``out_features``
      functions (then m may differ from d).
    """
    d = _check_int("features", features, 1)
    m_points = 4 * d if num_points is None else _check_int("num_points", num_points, 1)
    s, w = quadrature_rule(quadrature, m_points)
    P = evaluate_basis(basis, s, d)
    if zero_mean:
        # Subtract each function's mean *under the quadrature in use*, so the
        # discretised functions integrate to exactly zero.
        P = P - (w @ P) / w.sum()
    _check_visible(P, w, basis, quadrature, zero_mean)
    if isinstance(q, str) and q.lower() in Q_MODES:
        mode = q.lower()
        if out_features is not None and out_features != d:
            raise ValueError(
                f"q={mode!r} ties the output size to the input size ({d}); got out_features="
                f"{out_features}.  Pass an output basis (e.g. q='fourier') to change it."
            )
        if mode == "same":
            Q = P
        elif mode == "normalized":
            Q = P / (w @ (P * P))  # _check_visible: no norm is (numerically) zero
        else:
            Q = P @ gram_pinv(P.t() @ (w[:, None] * P))
    else:
        m = d if out_features is None else _check_int("out_features", out_features, 1)
        Q = evaluate_basis(_output_basis(q), s, m)
        if zero_mean:
            Q = Q - (w @ Q) / w.sum()
    return {"nodes": s, "weights": w, "P": P, "Qw": w[:, None] * Q}


def _refresh_after_load(module: IAT, incompatible_keys: object) -> None:
    module.refresh()


class IAT(nn.Module):
    r"""Integral Activation Transform: a drop-in activation layer.

    Lifts ``z`` (..., d) to the state function ``f(s) = p(s)^T z`` on [-1, 1],
    applies ``sigma`` pointwise and integrates against ``q``:
    ``y_j = \int q_j(s) sigma(f(s)) ds``, discretised with M quadrature nodes as
    ``y = Q^T diag(w) sigma(P z)``.

    Args:
        features: d, size of the last input dimension.
        out_features: m (default d; only differs with an explicit output basis ``q``).
        basis: ``"rectangular"``, ``"piecewise_linear"`` (default), ``"fourier"`` or a
            callable ``fn(s) -> Tensor[M, d]``.
        num_points: M, quadrature nodes (default ``4 * features``).
        quadrature: ``"midpoint"`` (default), ``"trapezoid"`` or ``"gauss_legendre"``.
        zero_mean: subtract each basis function's mean so it integrates to zero.
        q: output basis: ``"dual"`` (default), ``"same"``, ``"normalized"``, or a family.
        nonlinearity: ``"relu"`` (default) or another name/callable.
        trainable: make the discretised bases ``P`` and ``Qw`` trainable parameters.
        implementation: ``"auto"`` (fast unless trainable), ``"fast"``, ``"fused"`` or ``"reference"``.
        check_finite: raise on NaN/inf input (costs a device sync, breaks compile graphs).
        dim: the dimension that holds the d features (default -1, as ``nn.Linear``);
            ``dim=1`` for channels-first activations such as a convolution's (N, C, H, W)
            output, as ``nn.Softmax(dim)`` takes it.

    Shape:
        input (..., d) -> output (..., m); with ``dim``: d at ``dim`` -> m at ``dim``.
    """

    def __init__(
        self,
        features: int,
        out_features: int | None = None,
        basis: BasisSpec = "piecewise_linear",
        num_points: int | None = None,
        quadrature: str = "midpoint",
        zero_mean: bool = False,
        q: str | BasisSpec = "dual",
        nonlinearity: str | Nonlinearity = "relu",
        trainable: bool = False,
        implementation: str = "auto",
        check_finite: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        dim: int = -1,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {dim!r}")
        self.dim = dim
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}"
            )
        if implementation in ("fast", "fused") and trainable:
            raise ValueError(f"implementation={implementation!r} treats the bases as constants; "
                             "use trainable=False")
        self.basis = canonical_basis(basis)
        self.quadrature = canonical_quadrature(quadrature)
        self.q_mode = q if isinstance(q, str) and q.lower() in Q_MODES else _output_basis(q)
        self.zero_mean = bool(zero_mean)
        self.sigma_name, self.sigma = resolve_nonlinearity(nonlinearity)
        self.trainable = bool(trainable)
        self.implementation = implementation
        self.check_finite = bool(check_finite)

        # The bases are computed on the CPU in float64 whatever device is the default
        # (e.g. ``with torch.device("meta")``), then placed where the module lives.
        target = torch.device(device) if device is not None else torch.empty(0).device
        with torch.device("cpu"):
            mats = discretize(features, out_features, basis, num_points, quadrature, zero_mean, q)
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be floating point, got {dtype}")
        factory = {"device": target, "dtype": dtype}
        self.in_features = features
        self.out_features = mats["Qw"].shape[1]
        self.num_points = mats["P"].shape[0]
        self.register_buffer("nodes", mats["nodes"].to(**factory))
        self.register_buffer("weights", mats["weights"].to(**factory))
        if self.trainable:
            self.P = nn.Parameter(mats["P"].to(**factory))
            self.Qw = nn.Parameter(mats["Qw"].to(**factory))
        else:
            self.register_buffer("P", mats["P"].to(**factory))
            self.register_buffer("Qw", mats["Qw"].to(**factory))
        self._ops: StructuredIAT | None = None
        self.refresh()
        # A loaded state dict may carry different bases: rebuild the operators.
        # (A module-level function, not a lambda, so the module stays picklable.)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # -- structure --------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the fast operators from ``P`` and ``Qw``.

        Called automatically after ``.to()``/``.double()``/``load_state_dict``; call it
        yourself only after editing ``P`` or ``Qw`` in place.
        """
        self._traced_output = None
        if self.trainable or self.implementation == "reference" or self.P.is_meta:
            self._ops = None  # meta tensors: built once to_empty / load_state_dict give real ones
        else:
            self._ops = build_structure(self.P.detach(), self.Qw.detach(), weights=self.weights)
            kern = self._ops.kernel_for(self.sigma_name)
            if isinstance(kern, _BandKernel) and kern.out.kind != "identity":
                # The output map as a dense (d, d) matrix for compiled graphs: the rows of
                # K^T applied to the identity, y = v @ R (one matmul inductor can trace).
                eye = torch.eye(kern.d, dtype=self.P.dtype, device=self.P.device)
                kern.out.forward(eye)
                self._traced_output = eye

    def __getstate__(self):  # type: ignore[override]
        # The operators may hold sparse CSR tensors, which copy.deepcopy cannot copy;
        # they are derived from P and Qw, so drop them and rebuild on unpickling.
        state = super().__getstate__()
        state = dict(state)
        state["_ops"] = None
        return state

    def __setstate__(self, state):  # type: ignore[override]
        super().__setstate__(state)
        self.refresh()

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # .to(), .cuda(), .double() ... replace the buffers; the gathers must follow.
        before = self.P.dtype
        out = super()._apply(fn, recurse)
        if self.P.dtype.itemsize > before.itemsize and not self.trainable and not self.P.is_meta:
            self._restore_exact_bases(before)
        self.refresh()
        return out

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Write the discretised bases (``P``, ``Qw``, nodes, weights) afresh, in the
        module's dtype and device, and rebuild the operators: what meta-device init
        followed by ``to_empty()`` needs (trainable bases restart from the discretisation)."""
        if self.P.is_meta:
            return
        mats = self._discretization()
        for k in _BASES:
            getattr(self, k).copy_(mats[k])
        self.refresh()

    def _discretization(self) -> dict[str, torch.Tensor]:
        """This layer's bases discretised afresh, float64 on the CPU (keys :data:`_BASES`)."""
        with torch.device("cpu"):
            return discretize(self.in_features, self.out_features, self.basis, self.num_points,
                              self.quadrature, self.zero_mean, self.q_mode)

    @torch.no_grad()
    def _restore_exact_bases(self, before: torch.dtype) -> None:
        """After a cast to a wider dtype (float32 -> float64) the bases carry float32's
        rounding, which the exact structure tests reject (the layer would silently lose
        its kernel); rebuild them from the float64 discretisation unless they were edited."""
        mats = self._discretization()
        current = {k: getattr(self, k) for k in _BASES}
        exact = {k: mats[k].to(device=current[k].device) for k in _BASES}
        if all(torch.equal(exact[k].to(before).to(current[k].dtype), current[k]) for k in _BASES):
            for k in _BASES:
                current[k].copy_(exact[k])

    @property
    def kernel(self) -> str | None:
        """What :func:`iat_fast` runs for this layer: ``"select"``, ``"band"``, ``"fourier"``
        or ``"generic"`` (None when the module has no fast operators)."""
        return None if self._ops is None else self._ops.kernel_name(self.sigma_name)

    @property
    def use_fast(self) -> bool:
        """Whether forward takes the fast (structured, recomputing) path.

        ``"auto"`` takes it when ``in_features * num_points`` reaches the
        threshold of the kernel the bases allow (``iat_auto_select_min_size``,
        ``iat_auto_fast_min_size`` or ``iat_auto_fft_min_size`` in :mod:`unbottleneck.settings`);
        below that (measured crossovers on a 2-core CPU) one or two dense BLAS
        calls win.  Dense bases without structure keep the reference path: there
        the recomputation costs an extra matmul, and ``"fast"`` opts into the
        memory saving.
        """
        if self.implementation == "reference" or self.trainable:
            return False
        if self.implementation in ("fast", "fused"):
            return True
        if self._ops is None:
            return False
        size = self.in_features * self.num_points
        kernel, knobs = self.kernel, settings.get()
        if kernel == "fourier":
            return size >= knobs.iat_auto_fft_min_size
        if kernel == "select":
            return size >= knobs.iat_auto_select_min_size
        if kernel == "band":
            return size >= knobs.iat_auto_fast_min_size
        return size >= knobs.iat_auto_fast_min_size and any(self._ops.sparse)

    # -- forward ----------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Apply the transform to ``z`` (..., d) -> (..., m) (d and m at ``self.dim``)."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"IAT expects a torch.Tensor, got {type(z).__name__}")
        if self.dim != -1:
            if not -z.dim() <= self.dim < z.dim():
                raise ValueError(f"IAT(dim={self.dim}) got an input with {z.dim()} dimensions, "
                                 f"shape {tuple(z.shape)}")
            if z.shape[self.dim] != self.in_features:
                raise ValueError(f"IAT(dim={self.dim}) expects {self.in_features} features at dimension "
                                 f"{self.dim}, got shape {tuple(z.shape)}")
            return self._transform(z.movedim(self.dim, -1)).movedim(-1, self.dim)
        if z.dim() == 0 or z.shape[-1] != self.in_features:
            raise ValueError(
                f"IAT expects input of shape (..., {self.in_features}), got {tuple(z.shape)}"
            )
        return self._transform(z)

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        """The transform over the last dimension, (..., d) -> (..., m)."""
        if not z.is_floating_point():
            raise TypeError(f"IAT expects a floating point input, got {z.dtype}")
        if torch.is_autocast_enabled(z.device.type):
            # Precision policy under autocast: the quadrature sums run in the module's own
            # dtype (float32 by default) and the result goes back in the input's dtype, so
            # the next autocast layer continues in low precision.
            with torch.autocast(z.device.type, enabled=False):
                return self._transform(z.to(self.P.dtype)).to(z.dtype)
        if z.dtype != self.P.dtype:
            raise TypeError(
                f"input dtype {z.dtype} does not match the IAT's dtype {self.P.dtype}; "
                f"call .to({z.dtype}) on the module or cast the input"
            )
        if self.check_finite and not torch.isfinite(z).all():
            raise ValueError("IAT input contains NaN or inf values")
        # The custom autograd kernels and CSR operators do not trace under torch.compile,
        # so compiled graphs take _traced.  The compiling check comes first: use_fast
        # touches the (CSR) operators.
        if torch.compiler.is_compiling():
            return self._traced(z)
        if self.use_fast:
            return iat_fast(z, self._ops, self.sigma_name, self.sigma, fused=self.implementation == "fused")
        return iat_reference(z, self.P, self.Qw, self.sigma)

    def _traced(self, z: torch.Tensor) -> torch.Tensor:
        """What an enclosing ``torch.compile`` traces: the structured kernel's expression
        (:func:`~.kernels.fused.traced_expression`), which inductor fuses (element-wise for
        select and band, O(N M) instead of the dense form's two O(N M d) products; FFTs
        for large Fourier layers), followed for the hats' dual by its output map as one
        (d, d) matmul; the dense form otherwise."""
        kern = None if self._ops is None or self.trainable else self._ops.kernel_for(self.sigma_name)
        if kern is not None and self.use_fast and z.numel():
            lead = z.shape[:-1]
            y = traced_expression(z.reshape(-1, self.in_features), kern, self.sigma, self.P)
            if isinstance(kern, _BandKernel) and self._traced_output is not None:
                y = y @ self._traced_output  # the dual's output map, as one matmul
            return y.reshape(*lead, -1)
        return iat_reference(z, self.P, self.Qw, self.sigma)

    def reference(self, z: torch.Tensor) -> torch.Tensor:
        """The dense reference path, whatever ``implementation`` says (for checks)."""
        return iat_reference(z, self.P, self.Qw, self.sigma)

    # -- analysis helpers -------------------------------------------------------------
    def state_function(self, z: torch.Tensor) -> torch.Tensor:
        """``f(s_k; z)`` at the quadrature nodes, (..., M)."""
        return z @ self.P.t()

    def gram(self) -> torch.Tensor:
        """``G = integral q p^T`` (m, d): IAT(z) - IAT(-z) = G z for IAT-ReLU."""
        return self.Qw.t() @ self.P

    def extra_repr(self) -> str:
        q = self.q_mode if isinstance(self.q_mode, str) else basis_name(self.q_mode)
        return (
            f"features={self.in_features}, out_features={self.out_features}, "
            f"basis={basis_name(self.basis)}, num_points={self.num_points}, "
            f"quadrature={self.quadrature}, zero_mean={self.zero_mean}, q={q}, "
            f"nonlinearity={self.sigma_name}, trainable={self.trainable}"
            + (f", dim={self.dim}" if self.dim != -1 else "")
        )


class IATReLU(IAT):
    """IAT with the ReLU nonlinearity (the seed's IAT-ReLU); same arguments as :class:`IAT`."""

    def __init__(self, features: int, *args, **kwargs) -> None:
        if "nonlinearity" in kwargs and kwargs["nonlinearity"] != "relu":
            raise ValueError("IATReLU fixes nonlinearity='relu'; use IAT for other nonlinearities")
        kwargs["nonlinearity"] = "relu"
        super().__init__(features, *args, **kwargs)
