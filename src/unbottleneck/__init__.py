"""unbottleneck: breaking the activation function bottleneck.

Drop-in ``torch.nn`` modules for the Integral Activation Transform (IAT-ReLU,
GDNN) and, in later releases, adaptive parameterization, plus tools to measure
how non-linear a network really is on its data.
"""

from .iat import GDNN, IAT, IATReLU

__version__ = "0.1.0"

__all__ = ["GDNN", "IAT", "IATReLU", "__version__"]
