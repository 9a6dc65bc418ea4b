"""``python -m unbottleneck`` (and ``torchrun -m unbottleneck``): the command line."""

import sys

from .cli import main

sys.exit(main())
