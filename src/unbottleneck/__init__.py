"""unbottleneck: breaking the activation function bottleneck.

Drop-in ``torch.nn`` modules for the Integral Activation Transform (IAT-ReLU,
GDNN) and adaptive parameterization (AdaptiveLinear, the adaptive LSTM ALSTM), plus tools to measure
how non-linear a network really is on its data.
"""

from .adaptive import ALSTM, AdaptiveLinear
from .convert import make_adaptive, swap_activations
from .iat import GDNN, IAT, IATReLU

__version__ = "0.1.0"

__all__ = [
    "ALSTM", "GDNN", "IAT", "AdaptiveLinear", "IATReLU", "__version__", "make_adaptive", "swap_activations",
]
