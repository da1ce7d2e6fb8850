"""rsg_timm: RSG (Rare-class Sample Generator, CVPR 2021) for long-tailed classification on timm.

Importing this package registers the ``cifar_resnet*`` and ``rsg_*`` models with timm's registry.
"""
from .version import __version__
from .rsg import RSG
from . import models  # noqa: F401  (import registers the models with timm)

__all__ = ['RSG', '__version__']
