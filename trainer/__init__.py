"""stagewatch trainer: timing core (``trainer.timing``), VRT+spike model, training loop.

Importing this package must not import torch: the monitor and other loops use the timing core.
"""

__version__ = "0.1.0"
