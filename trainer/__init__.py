"""The bundled VRT + spike deblurring trainer, timed with :mod:`stagewatch`.

Needs the ``[train]`` extra (torch, bitsandbytes, pyyaml). Importing this package itself
does not import torch (``trainer --help`` stays fast).
"""

__version__ = "0.1.0"
