"""The structured IAT kernels, one per file, each with its forward and backward.

* :mod:`.select` -- rectangular bases: an element-wise map;
* :mod:`.band` -- piecewise-linear hats: per node slot, element-wise ops on two
  neighbouring columns;
* :mod:`.fourier` -- the Fourier basis at midpoint nodes: real FFTs;
* :mod:`.tridiag` -- the output side shared by band and fourier (diagonal or tridiagonal K);
* :mod:`.generic` -- everything else: CSR or dense products, feature-major;
* :mod:`.fused` -- ``implementation="fused"``: select, band (:mod:`.band_fused`) and
  fourier written as plain-tensor expressions and compiled by ``torch.compile``; the same
  expressions are what an enclosing compile of a user's model traces.

:mod:`unbottleneck.iat.functional` keeps the dense reference and the dispatch.
"""
